/* Keyed hash of ids, so that a client cannot choose ids that all land in one probe chain. */
#ifndef corr_siphash_h
#define corr_siphash_h

#include <stddef.h>
#include <stdint.h>

/* SipHash-1-3 (Aumasson and Bernstein, "SipHash: a fast short-input PRF", 2012) with a 128-bit key. */
uint64_t corr__siphash13(const uint64_t key[2], const void *data, size_t len);

#endif
