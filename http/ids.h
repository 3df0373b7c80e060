/*
 * Request-target parsing for corrd, free of h2o types so that a fuzzer can drive it directly.
 * Every function returns 0 on success, or an HTTP status (400, 404) with *error set to a static
 * one-line message.
 */
#ifndef corrd_ids_h
#define corrd_ids_h

#include <stddef.h>
#include <stdint.h>

enum corrd_endpoint {
    CORRD_ENDPOINT_START,
    CORRD_ENDPOINT_ACK,
};

struct corrd_target {
    enum corrd_endpoint endpoint;
    const char *id_raw; /* the still percent-encoded id segment */
    size_t id_raw_len;
    const char *query; /* after '?', or NULL */
    size_t query_len;
};

/*
 * Split a request path (as sent, query included) into endpoint, id segment and query.
 * Returns 404 for a path outside /start/ and /ack/, 400 for a missing or multi-segment id; with
 * 400, out->endpoint still names the endpoint the path was meant for.
 */
int corrd_target_parse(const char *path, size_t path_len, struct corrd_target *out,
                       const char **error);

/*
 * Percent-decode an id segment into @out (room for @max_bytes bytes). The rule is the same for
 * both endpoints: %XX with hex digits of either case becomes one byte, every other byte stands
 * for itself ('+' included), and the decoded id must be 1..max_bytes bytes with no control byte
 * (0x00-0x1F, 0x7F).
 */
int corrd_id_decode(const char *raw, size_t raw_len, size_t max_bytes, char *out, size_t *out_len,
                    const char **error);

/*
 * Read the query of /start: the only parameter is timeout=MS, a decimal integer of at least 1.
 * Values above @max_ms are clamped to @max_ms. Without the parameter, *timeout_ms = @default_ms.
 */
int corrd_start_query_parse(const char *query, size_t query_len, uint64_t default_ms,
                            uint64_t max_ms, uint64_t *timeout_ms, const char **error);

/* Check the query of /ack: it takes no parameters, so any non-empty query is rejected. */
int corrd_ack_query_parse(const char *query, size_t query_len, const char **error);

#endif
