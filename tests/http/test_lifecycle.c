/*
 * corrd waiter lifetimes: timeouts, clients that go away before the ack, and SIGTERM with
 * waiters pending. Timing checks use generous bounds because CI machines may be loaded.
 */
#define _GNU_SOURCE
#include "harness.h"

#include <arpa/inet.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define WAITER_TIMEOUT_MS 10000L

/* Checks a 504 naming the id that came between min_s and max_s after the request started. */
static void expect_timeout(const struct http_response *response, enum http_proto proto,
                           const char *id, double min_s, double max_s)
{
    EXPECT_RESPONSE(response, proto, 504);
    EXPECT_ERROR_BODY(response);
    EXPECT(response->body != NULL && memmem(response->body, response->body_len, id, strlen(id)),
           "504 body \"%s\" does not name the id %s",
           printable(response->body, response->body_len), id);
    EXPECT(response->elapsed_s >= min_s, "504 after %.3f s, expected at least %.3f s",
           response->elapsed_s, min_s);
    EXPECT(response->elapsed_s <= max_s, "504 after %.3f s, expected at most %.3f s",
           response->elapsed_s, max_s);
}

static void ack_expect(int port, enum http_proto proto, const char *id, long expected_status)
{
    char *path = format_string("/ack/%s", id);
    struct http_response response;

    http_post(port, proto, path, "late ack", 8, &response);
    EXPECT_RESPONSE(&response, proto, expected_status);
    http_response_free(&response);
    free(path);
}

/* ---- Timeouts ---- */

static void test_timeout_300ms(enum http_proto proto)
{
    struct http_response response;
    struct corrd server;

    if (!corrd_start(&server, NULL))
        return;
    http_get(server.port, proto, "/start/t300?timeout=300", &response);
    expect_timeout(&response, proto, "t300", 0.25, 3.0);
    http_response_free(&response);
    corrd_stop(&server);
}

static void test_timeout_clamped_to_max(enum http_proto proto)
{
    static const char *const args[] = {"--max-timeout-ms", "500", NULL};
    struct http_response response;
    struct corrd server;

    if (!corrd_start(&server, args))
        return;
    http_get(server.port, proto, "/start/clamped?timeout=100000", &response);
    expect_timeout(&response, proto, "clamped", 0.45, 5.0);
    http_response_free(&response);
    corrd_stop(&server);
}

/* The same clamp, also setting --default-timeout-ms, because corrd may reject a
 * --max-timeout-ms below the default timeout of 10000 ms. */
static void test_timeout_clamped_with_default(enum http_proto proto)
{
    static const char *const args[] = {
        "--max-timeout-ms", "500", "--default-timeout-ms", "300", NULL,
    };
    struct http_response response;
    struct corrd server;

    if (!corrd_start(&server, args))
        return;
    http_get(server.port, proto, "/start/clamped-2?timeout=100000", &response);
    expect_timeout(&response, proto, "clamped-2", 0.45, 5.0);
    http_response_free(&response);
    corrd_stop(&server);
}

static void test_default_timeout_flag(enum http_proto proto)
{
    static const char *const args[] = {"--default-timeout-ms", "400", NULL};
    struct http_response response;
    struct corrd server;

    if (!corrd_start(&server, args))
        return;
    http_get(server.port, proto, "/start/flag-default", &response);
    expect_timeout(&response, proto, "flag-default", 0.35, 5.0);
    http_response_free(&response);
    corrd_stop(&server);
}

static void test_default_timeout_10s(enum http_proto proto)
{
    struct http_request request = {
        .method = "GET", .path = "/start/ten-seconds", .proto = proto, .timeout_ms = 30000,
    };
    struct async_request waiter;
    struct corrd server;

    if (!corrd_start(&server, NULL))
        return;
    async_start(&waiter, server.port, &request);
    sleep_ms(3000);
    /* Still pending after 3 s, so the default is not a short one. */
    EXPECT(wait_pending(server.port, "ten-seconds", 1000), "waiter gone before 3 s");
    async_join(&waiter);
    expect_timeout(&waiter.response, proto, "ten-seconds", 9.5, 14.0);
    http_response_free(&waiter.response);
    corrd_stop(&server);
}

/* ---- Clients that go away ---- */

static void test_client_closes_http1(enum http_proto proto)
{
    struct async_request waiter;
    struct corrd server;
    char *request;
    int fd;

    if (!corrd_start(&server, NULL))
        return;
    fd = raw_connect(server.port);
    if (fd < 0) {
        corrd_stop(&server);
        return;
    }
    request = format_string("GET /start/gone-h1?timeout=10000 HTTP/1.1\r\n"
                            "Host: 127.0.0.1:%d\r\n\r\n", server.port);
    EXPECT(raw_send(fd, request, strlen(request)), "sending the raw request failed");
    free(request);
    sleep_ms(100);
    if (wait_pending(server.port, "gone-h1", 5000)) {
        close(fd);
        fd = -1;
        sleep_ms(300);
        ack_expect(server.port, PROTO_HTTP1, "gone-h1", 404);

        /* The id is free again. */
        if (start_waiter(&waiter, server.port, PROTO_HTTP1, "gone-h1", WAITER_TIMEOUT_MS))
            ack_expect(server.port, PROTO_HTTP1, "gone-h1", 202);
        async_join(&waiter);
        EXPECT_RESPONSE(&waiter.response, PROTO_HTTP1, 200);
        http_response_free(&waiter.response);
    }
    if (fd >= 0)
        close(fd);
    corrd_stop(&server);
}

/* The client gives up with CURLOPT_TIMEOUT_MS, which closes the connection (HTTP/1.1) or
 * resets the stream and closes the connection (HTTP/2, since connections are not reused). */
static void test_client_times_out(enum http_proto proto)
{
    struct http_request request = {
        .method = "GET", .path = "/start/gone-curl?timeout=10000", .proto = proto,
        .timeout_ms = 600,
    };
    struct async_request waiter;
    struct corrd server;

    if (!corrd_start(&server, NULL))
        return;
    async_start(&waiter, server.port, &request);
    sleep_ms(100);
    EXPECT(wait_pending(server.port, "gone-curl", 400), "waiter not pending before the client "
           "timeout of 600 ms");
    async_join(&waiter);
    EXPECT(waiter.response.result == CURLE_OPERATION_TIMEDOUT,
           "client waiter: expected curl timeout, got curl error %d (%s), status %ld",
           (int)waiter.response.result, waiter.response.error, waiter.response.status);
    http_response_free(&waiter.response);
    sleep_ms(300);
    ack_expect(server.port, proto, "gone-curl", 404);
    corrd_stop(&server);
}

/* A minimal HTTP/2 client, enough to open streams and reset one without closing the
 * connection, which libcurl does not offer. */

#define H2_DATA 0x0
#define H2_HEADERS 0x1
#define H2_RST_STREAM 0x3
#define H2_SETTINGS 0x4
#define H2_GOAWAY 0x7
#define H2_FLAG_ACK 0x1
#define H2_FLAG_END_STREAM 0x1
#define H2_FLAG_END_HEADERS 0x4
#define H2_CANCEL 0x8

static bool h2_send_frame(int fd, uint8_t type, uint8_t flags, uint32_t stream,
                          const void *payload, size_t len)
{
    unsigned char header[9] = {
        (unsigned char)(len >> 16), (unsigned char)(len >> 8), (unsigned char)len, type, flags,
        (unsigned char)(stream >> 24), (unsigned char)(stream >> 16), (unsigned char)(stream >> 8),
        (unsigned char)stream,
    };

    return raw_send(fd, header, sizeof(header)) && (len == 0 || raw_send(fd, payload, len));
}

static bool recv_all(int fd, void *buf, size_t len)
{
    unsigned char *bytes = buf;

    while (len > 0) {
        ssize_t n = recv(fd, bytes, len, 0);

        if (n <= 0)
            return false;
        bytes += n;
        len -= (size_t)n;
    }
    return true;
}

/* Reads one frame and cuts a payload over cap bytes to cap. Returns the kept length or -1. */
static long h2_read_frame(int fd, uint8_t *type, uint8_t *flags, uint32_t *stream,
                          unsigned char *payload, size_t cap)
{
    unsigned char header[9];
    unsigned char discard[256];
    size_t len;
    size_t kept;

    if (!recv_all(fd, header, sizeof(header)))
        return -1;
    len = ((size_t)header[0] << 16) | ((size_t)header[1] << 8) | header[2];
    *type = header[3];
    *flags = header[4];
    *stream = (((uint32_t)header[5] & 0x7f) << 24) | ((uint32_t)header[6] << 16) |
              ((uint32_t)header[7] << 8) | header[8];
    kept = len < cap ? len : cap;
    if (!recv_all(fd, payload, kept))
        return -1;
    for (size_t left = len - kept; left > 0;) {
        size_t chunk = left < sizeof(discard) ? left : sizeof(discard);

        if (!recv_all(fd, discard, chunk))
            return -1;
        left -= chunk;
    }
    return (long)kept;
}

/* Appends an HPACK "literal header field without indexing, new name" (RFC 7541 6.2.2). */
static size_t hpack_literal(unsigned char *out, const char *name, const char *value)
{
    size_t name_len = strlen(name);
    size_t value_len = strlen(value);
    size_t n = 0;

    /* Lengths under 127 fit the 7-bit prefix, which is enough for the short paths used here. */
    out[n++] = 0x00;
    out[n++] = (unsigned char)name_len;
    memcpy(out + n, name, name_len);
    n += name_len;
    out[n++] = (unsigned char)value_len;
    memcpy(out + n, value, value_len);
    n += value_len;
    return n;
}

static bool h2_send_get(int fd, int port, uint32_t stream, const char *path)
{
    unsigned char block[512];
    char authority[32];
    size_t n = 0;

    snprintf(authority, sizeof(authority), "127.0.0.1:%d", port);
    n += hpack_literal(block + n, ":method", "GET");
    n += hpack_literal(block + n, ":scheme", "http");
    n += hpack_literal(block + n, ":path", path);
    n += hpack_literal(block + n, ":authority", authority);
    return h2_send_frame(fd, H2_HEADERS, H2_FLAG_END_STREAM | H2_FLAG_END_HEADERS, stream, block,
                         n);
}

/* Sends the connection preface and acknowledges the server's SETTINGS. */
static bool h2_handshake(int fd)
{
    static const char preface[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    unsigned char payload[256];

    if (!raw_send(fd, preface, strlen(preface)) || !h2_send_frame(fd, H2_SETTINGS, 0, 0, NULL, 0))
        return false;
    for (int frames = 0; frames < 20; frames++) {
        uint8_t type;
        uint8_t flags;
        uint32_t stream;

        if (h2_read_frame(fd, &type, &flags, &stream, payload, sizeof(payload)) < 0)
            return false;
        if (type == H2_SETTINGS && (flags & H2_FLAG_ACK) == 0)
            return h2_send_frame(fd, H2_SETTINGS, H2_FLAG_ACK, 0, NULL, 0);
    }
    return false;
}

static void test_stream_reset_h2(enum http_proto proto)
{
    struct http_response ack;
    unsigned char payload[256];
    unsigned char cancel[4] = {0, 0, 0, H2_CANCEL};
    bool got_data = false;
    struct corrd server;
    int fd;

    if (!corrd_start(&server, NULL))
        return;
    fd = raw_connect(server.port);
    if (fd < 0) {
        corrd_stop(&server);
        return;
    }
    if (!h2_handshake(fd)) {
        test_fail(__FILE__, __LINE__, "HTTP/2 handshake with corrd failed");
        goto out;
    }
    EXPECT(h2_send_get(fd, server.port, 1, "/start/reset-1?timeout=10000"),
           "sending HEADERS failed");
    sleep_ms(100);
    if (!wait_pending(server.port, "reset-1", 5000))
        goto out;
    EXPECT(h2_send_frame(fd, H2_RST_STREAM, 0, 1, cancel, sizeof(cancel)),
           "sending RST_STREAM failed");
    sleep_ms(300);
    ack_expect(server.port, PROTO_HTTP1, "reset-1", 404);

    /* The connection outlives the reset stream: a second stream on it still gets its ack. */
    EXPECT(h2_send_get(fd, server.port, 3, "/start/reset-2?timeout=10000"),
           "sending HEADERS on stream 3 failed");
    sleep_ms(100);
    if (!wait_pending(server.port, "reset-2", 5000))
        goto out;
    http_post(server.port, PROTO_HTTP1, "/ack/reset-2", "still here", 10, &ack);
    EXPECT_RESPONSE(&ack, PROTO_HTTP1, 202);
    http_response_free(&ack);
    for (int frames = 0; frames < 50; frames++) {
        uint8_t type;
        uint8_t flags;
        uint32_t stream;
        long len = h2_read_frame(fd, &type, &flags, &stream, payload, sizeof(payload));

        if (len < 0) {
            test_fail(__FILE__, __LINE__, "connection closed or timed out before the response "
                      "on stream 3");
            break;
        }
        if (type == H2_GOAWAY) {
            test_fail(__FILE__, __LINE__, "corrd sent GOAWAY before answering stream 3");
            break;
        }
        EXPECT(!(stream == 1 && (type == H2_DATA || type == H2_HEADERS)),
               "corrd sent frame type %u on the reset stream 1", type);
        if (stream == 3 && type == H2_DATA) {
            EXPECT(len == 10 && memcmp(payload, "still here", 10) == 0,
                   "stream 3 DATA: expected \"still here\", got \"%s\"",
                   printable(payload, (size_t)len));
            got_data = true;
        }
        if (stream == 3 && (flags & H2_FLAG_END_STREAM) != 0 &&
            (type == H2_DATA || type == H2_HEADERS))
            break;
    }
    EXPECT(got_data, "no DATA frame on stream 3");
out:
    close(fd);
    corrd_stop(&server);
}

/* ---- Shutdown ---- */

static void test_sigterm_answers_503(enum http_proto proto)
{
    struct async_request first;
    struct async_request second;
    struct corrd server;

    if (!corrd_start(&server, NULL))
        return;
    start_waiter(&first, server.port, proto, "shutdown-1", WAITER_TIMEOUT_MS);
    start_waiter(&second, server.port, proto, "shutdown-2", WAITER_TIMEOUT_MS);
    corrd_stop(&server); /* records a failure unless corrd exits 0 */
    async_join(&first);
    async_join(&second);
    EXPECT_RESPONSE(&first.response, proto, 503);
    EXPECT_ERROR_BODY(&first.response);
    EXPECT(first.response.elapsed_s < 8.0, "503 after %.2f s; expected right after SIGTERM",
           first.response.elapsed_s);
    EXPECT_RESPONSE(&second.response, proto, 503);
    EXPECT_ERROR_BODY(&second.response);
    http_response_free(&first.response);
    http_response_free(&second.response);
}

static void test_sigterm_idle_exits_0(enum http_proto proto)
{
    struct http_response response;
    struct corrd server;

    if (!corrd_start(&server, NULL))
        return;
    /* One finished request first, so the listener and a worker have run. */
    http_get(server.port, proto, "/start/idle?timeout=50", &response);
    EXPECT_RESPONSE(&response, proto, 504);
    http_response_free(&response);
    corrd_stop(&server);
}

static const struct test_case cases[] = {
    {"timeout 300 ms", test_timeout_300ms, PROTO_BOTH},
    {"timeout clamped to max", test_timeout_clamped_to_max, PROTO_BOTH},
    {"timeout clamped with default", test_timeout_clamped_with_default, PROTO_BOTH},
    {"default timeout flag", test_default_timeout_flag, PROTO_BOTH},
    {"default timeout 10 s", test_default_timeout_10s, PROTO_BOTH},
    {"client closes http1", test_client_closes_http1, PROTO_HTTP1},
    {"client times out", test_client_times_out, PROTO_BOTH},
    {"stream reset h2", test_stream_reset_h2, PROTO_H2C},
    {"sigterm answers 503", test_sigterm_answers_503, PROTO_BOTH},
    {"sigterm idle exits 0", test_sigterm_idle_exits_0, PROTO_BOTH},
};

int main(int argc, char **argv)
{
    return run_tests(cases, sizeof(cases) / sizeof(cases[0]), 270, argc, argv);
}
