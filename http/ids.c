#include <string.h>
#include "ids.h"

static const char start_prefix[] = "/start/";
static const char ack_prefix[] = "/ack/";

static int path_has_prefix(const char *path, size_t len, const char *prefix, size_t prefix_len)
{
    return len >= prefix_len && memcmp(path, prefix, prefix_len) == 0;
}

int corrd_target_parse(const char *path, size_t path_len, struct corrd_target *out,
                       const char **error)
{
    const char *question = memchr(path, '?', path_len);
    size_t route_len = question != NULL ? (size_t)(question - path) : path_len;
    size_t prefix_len;

    out->query = question != NULL ? question + 1 : NULL;
    out->query_len = question != NULL ? path_len - route_len - 1 : 0;

    if (path_has_prefix(path, route_len, start_prefix, sizeof(start_prefix) - 1)) {
        out->endpoint = CORRD_ENDPOINT_START;
        prefix_len = sizeof(start_prefix) - 1;
    } else if (path_has_prefix(path, route_len, ack_prefix, sizeof(ack_prefix) - 1)) {
        out->endpoint = CORRD_ENDPOINT_ACK;
        prefix_len = sizeof(ack_prefix) - 1;
    } else if ((route_len == 6 && memcmp(path, "/start", 6) == 0) ||
               (route_len == 4 && memcmp(path, "/ack", 4) == 0)) {
        out->endpoint = route_len == 6 ? CORRD_ENDPOINT_START : CORRD_ENDPOINT_ACK;
        *error = "missing id: use /start/{id} or /ack/{id}";
        return 400;
    } else {
        *error = "not found: corrd serves /start/{id} and /ack/{id}";
        return 404;
    }

    out->id_raw = path + prefix_len;
    out->id_raw_len = route_len - prefix_len;
    if (out->id_raw_len == 0) {
        *error = "missing id: use /start/{id} or /ack/{id}";
        return 400;
    }
    if (memchr(out->id_raw, '/', out->id_raw_len) != NULL) {
        *error = "invalid id: it must be one path segment (encode '/' as %2F)";
        return 400;
    }
    return 0;
}

static int hex_value(unsigned char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

int corrd_id_decode(const char *raw, size_t raw_len, size_t max_bytes, char *out, size_t *out_len,
                    const char **error)
{
    size_t len = 0;

    for (size_t i = 0; i < raw_len; i++) {
        unsigned char byte = (unsigned char)raw[i];
        if (byte == '%') {
            int high = i + 2 < raw_len ? hex_value((unsigned char)raw[i + 1]) : -1;
            int low = i + 2 < raw_len ? hex_value((unsigned char)raw[i + 2]) : -1;
            if (high < 0 || low < 0) {
                *error = "invalid id: '%' must be followed by two hex digits";
                return 400;
            }
            byte = (unsigned char)(high << 4 | low);
            i += 2;
        }
        if (byte < 0x20 || byte == 0x7f) {
            *error = "invalid id: control bytes (0x00-0x1F, 0x7F) are not allowed";
            return 400;
        }
        if (len == max_bytes) {
            *error = "invalid id: longer than --max-id-bytes after percent-decoding";
            return 400;
        }
        out[len++] = (char)byte;
    }
    if (len == 0) {
        *error = "missing id: use /start/{id} or /ack/{id}";
        return 400;
    }
    *out_len = len;
    return 0;
}

static int parse_timeout(const char *value, size_t len, uint64_t max_ms, uint64_t *timeout_ms)
{
    uint64_t ms = 0;

    if (len == 0)
        return -1;
    for (size_t i = 0; i < len; i++) {
        if (value[i] < '0' || value[i] > '9')
            return -1;
        /* Saturate at max_ms: longer values are clamped, and this cannot overflow. */
        if (ms <= max_ms)
            ms = ms * 10 + (uint64_t)(value[i] - '0');
    }
    if (ms == 0)
        return -1;
    *timeout_ms = ms > max_ms ? max_ms : ms;
    return 0;
}

int corrd_start_query_parse(const char *query, size_t query_len, uint64_t default_ms,
                            uint64_t max_ms, uint64_t *timeout_ms, const char **error)
{
    int seen_timeout = 0;
    size_t pos = 0;

    *timeout_ms = default_ms > max_ms ? max_ms : default_ms;
    while (query != NULL && pos < query_len) {
        const char *param = query + pos;
        const char *amp = memchr(param, '&', query_len - pos);
        size_t param_len = amp != NULL ? (size_t)(amp - param) : query_len - pos;
        pos += param_len + 1;
        if (param_len == 0)
            continue;
        if (param_len < 8 || memcmp(param, "timeout=", 8) != 0) {
            *error = "invalid query: the only parameter of /start is timeout=MS";
            return 400;
        }
        if (seen_timeout) {
            *error = "invalid query: timeout is given more than once";
            return 400;
        }
        seen_timeout = 1;
        if (parse_timeout(param + 8, param_len - 8, max_ms, timeout_ms) != 0) {
            *error = "invalid timeout: expected whole milliseconds of at least 1";
            return 400;
        }
    }
    return 0;
}

int corrd_ack_query_parse(const char *query, size_t query_len, const char **error)
{
    for (size_t i = 0; query != NULL && i < query_len; i++) {
        if (query[i] != '&') {
            *error = "invalid query: /ack takes no query parameters";
            return 400;
        }
    }
    return 0;
}
