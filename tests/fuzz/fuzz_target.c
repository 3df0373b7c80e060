/*
 * libFuzzer driver for corrd's request-target parsing (http/ids.c): path splitting, id
 * percent-decoding and query parsing. Besides memory errors it checks the parsers' contracts:
 * a decoded id is 1..max bytes without control bytes, re-encoding and decoding it gives the same
 * bytes, and a parsed timeout lies in 1..max.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "ids.h"

#define CHECK(cond)  \
    do {             \
        if (!(cond)) \
            abort(); \
    } while (0)

static const size_t max_id_choices[] = {1, 16, 256, 4096};
static const uint64_t max_timeout_choices[] = {1, 1000, 60000, 86400000};

static void check_id_round_trip(const char *id, size_t len, size_t max_bytes)
{
    static const char hex[] = "0123456789ABCDEF";
    char *encoded = malloc(len * 3);
    char *decoded = malloc(max_bytes);
    size_t decoded_len = 0;
    const char *error = NULL;

    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)id[i];
        encoded[3 * i] = '%';
        encoded[3 * i + 1] = hex[c >> 4];
        encoded[3 * i + 2] = hex[c & 15];
    }
    CHECK(corrd_id_decode(encoded, len * 3, max_bytes, decoded, &decoded_len, &error) == 0);
    CHECK(decoded_len == len);
    CHECK(memcmp(decoded, id, len) == 0);
    free(encoded);
    free(decoded);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    size_t max_id = max_id_choices[data[0] & 3];
    uint64_t max_timeout = max_timeout_choices[(data[0] >> 2) & 3];
    const char *path = (const char *)data + 1;
    size_t path_len = size - 1;
    struct corrd_target target;
    const char *error = NULL;

    int status = corrd_target_parse(path, path_len, &target, &error);
    CHECK(status == 0 || ((status == 400 || status == 404) && error != NULL && error[0] != '\0'));
    if (status != 0)
        return 0;
    CHECK(target.id_raw_len >= 1);
    CHECK(memchr(target.id_raw, '/', target.id_raw_len) == NULL);

    char *id = malloc(max_id);
    size_t id_len = 0;
    error = NULL;
    status = corrd_id_decode(target.id_raw, target.id_raw_len, max_id, id, &id_len, &error);
    CHECK(status == 0 || (status == 400 && error != NULL));
    if (status == 0) {
        CHECK(id_len >= 1);
        CHECK(id_len <= max_id);
        for (size_t i = 0; i < id_len; i++) {
            CHECK((unsigned char)id[i] >= 0x20);
            CHECK((unsigned char)id[i] != 0x7f);
        }
        check_id_round_trip(id, id_len, max_id);
    }
    free(id);

    uint64_t timeout = 0;
    error = NULL;
    if (target.endpoint == CORRD_ENDPOINT_START) {
        status = corrd_start_query_parse(target.query, target.query_len, 10000, max_timeout,
                                         &timeout, &error);
        CHECK(status == 0 || (status == 400 && error != NULL));
        if (status == 0) {
            CHECK(timeout >= 1);
            CHECK(timeout <= max_timeout);
        }
    } else {
        status = corrd_ack_query_parse(target.query, target.query_len, &error);
        CHECK(status == 0 || (status == 400 && error != NULL));
    }
    return 0;
}
