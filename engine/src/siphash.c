/*
 * SipHash-1-3: one compression round per 8-byte word and three finalisation rounds, as defined in
 * Aumasson and Bernstein, "SipHash: a fast short-input PRF" (2012). Written from that description.
 */
#include <string.h>
#include "siphash.h"

static inline uint64_t rotl64(uint64_t x, int bits)
{
    return (x << bits) | (x >> (64 - bits));
}

struct sip_state {
    uint64_t v0, v1, v2, v3;
};

static inline void sip_round(struct sip_state *s)
{
    s->v0 += s->v1;
    s->v1 = rotl64(s->v1, 13);
    s->v1 ^= s->v0;
    s->v0 = rotl64(s->v0, 32);
    s->v2 += s->v3;
    s->v3 = rotl64(s->v3, 16);
    s->v3 ^= s->v2;
    s->v0 += s->v3;
    s->v3 = rotl64(s->v3, 21);
    s->v3 ^= s->v0;
    s->v2 += s->v1;
    s->v1 = rotl64(s->v1, 17);
    s->v1 ^= s->v2;
    s->v2 = rotl64(s->v2, 32);
}

static inline uint64_t load_le64(const unsigned char *p)
{
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    uint64_t v;
    memcpy(&v, p, sizeof(v)); /* one unaligned load on little-endian machines */
    return v;
#else
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
#endif
}

uint64_t corr__siphash13(const uint64_t key[2], const void *data, size_t len)
{
    const unsigned char *in = data;
    struct sip_state s = {
        .v0 = key[0] ^ 0x736f6d6570736575ULL,
        .v1 = key[1] ^ 0x646f72616e646f6dULL,
        .v2 = key[0] ^ 0x6c7967656e657261ULL,
        .v3 = key[1] ^ 0x7465646279746573ULL,
    };
    size_t full = len & ~(size_t)7;

    for (size_t off = 0; off < full; off += 8) {
        uint64_t m = load_le64(in + off);
        s.v3 ^= m;
        sip_round(&s);
        s.v0 ^= m;
    }

    /* The last word carries the remaining bytes and the input length modulo 256 in its top byte. */
    unsigned char tail[8] = {0};
    memcpy(tail, in + full, len - full);
    uint64_t last = load_le64(tail) | ((uint64_t)(len & 0xff) << 56);
    s.v3 ^= last;
    sip_round(&s);
    s.v0 ^= last;

    s.v2 ^= 0xff;
    sip_round(&s);
    sip_round(&s);
    sip_round(&s);
    return s.v0 ^ s.v1 ^ s.v2 ^ s.v3;
}
