/*
 * Helpers for the corrd fault tests, built on tests/http/harness.h (runner, corrd child process,
 * libcurl requests):
 *   - the --full and --seed options and a seeded random generator,
 *   - corrd's file descriptor count and resident set size from /proc,
 *   - /metrics scraping,
 *   - an event loop over non-blocking sockets that drives many raw HTTP/1.1 connections and
 *     libnghttp2 HTTP/2 sessions from one thread, so a test controls exactly when each request,
 *     close and RST_STREAM is sent.
 * All traffic goes to 127.0.0.1.
 */
#ifndef CORR_TESTS_FAULT_FAULT_H
#define CORR_TESTS_FAULT_FAULT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <poll.h>
#include <sys/types.h>

#include <nghttp2/nghttp2.h>

#include "harness.h"

/* ---- Options, sizes and random numbers ---- */

/* True with --full: run the long versions (CTest label long) instead of the CI versions. */
extern bool fault_full;

/* Base seed of every random generator, from --seed N or the clock; printed at start. */
extern uint64_t fault_seed;

/* Returns ci_value, or full_value with --full. */
long fault_size(long ci_value, long full_value);

/*
 * Parses "[--full] [--seed N] CORRD [FILTER]", prints the seed, and calls run_tests with a
 * deadline of ci_deadline_s or full_deadline_s.
 */
int fault_main(const struct test_case *cases, size_t count, unsigned ci_deadline_s,
               unsigned full_deadline_s, int argc, char **argv);

/* splitmix64 generator: one per test, seeded from fault_seed and the test's name. */
struct rng {
    uint64_t state;
};

void rng_init(struct rng *rng, const char *test_name);
uint64_t rng_next(struct rng *rng);
/* Returns a number in [0, bound); bound must be at least 1. */
uint64_t rng_below(struct rng *rng, uint64_t bound);
/* Returns true with probability percent / 100. */
bool rng_percent(struct rng *rng, unsigned percent);

/* ---- Process figures from /proc ---- */

/* Number of open file descriptors of pid (entries of /proc/PID/fd), or -1. */
long proc_fd_count(pid_t pid);

/* VmRSS of pid in KiB from /proc/PID/status, or -1. */
long proc_rss_kib(pid_t pid);

/*
 * True when pid has libasan mapped. AddressSanitizer keeps freed memory in a quarantine (256 MB
 * by default), so RSS limits do not apply to such a process.
 */
bool proc_uses_asan(pid_t pid);

/* ---- /metrics ---- */

struct metrics {
    char *text; /* the exposition text, NUL-terminated; NULL when the scrape failed */
};

/* Scrapes GET /metrics over HTTP/1.1; records a failure and returns false when it fails. */
bool metrics_fetch(int port, struct metrics *metrics);
void metrics_free(struct metrics *metrics);

/*
 * Returns the value of one series, named exactly as in the text including its labels, for
 * example "corr_acks_total{outcome=\"delivered\"}". Returns -1 when the series is missing.
 */
long long metrics_value(const struct metrics *metrics, const char *series);

/* Sum of corr_pending_waiters over all workers, or -1 when missing. */
long long metrics_pending(const struct metrics *metrics);

/* Scrapes once and returns metrics_value, or -1. */
long long metric_now(int port, const char *series);

/*
 * Scrapes /metrics every 10 ms until the pending gauge equals expected. Returns false after
 * deadline_ms without recording a failure; the caller checks and reports the last value.
 */
bool wait_pending_equals(int port, long long expected, long deadline_ms, long long *last);

/* The counters that the fault tests compare with their own tallies, read in one scrape. */
struct counters {
    long long started;
    long long finished_ack;
    long long finished_timeout;
    long long finished_gone;
    long long finished_shutdown;
    long long rejected_conflict;
    long long rejected_limit;
    long long rejected_draining;
    long long rejected_invalid;
    long long acks_delivered;
    long long acks_no_waiter;
    long long acks_full;
    long long acks_invalid;
    long long acks_too_large;
    long long acks_lost;
    long long closed_for_resets;
    long long pending;
};

/* Reads every field of struct counters; records a failure for each missing series. */
bool counters_fetch(int port, struct counters *counters);

/* ---- Event loop ---- */

struct endpoint;

struct endpoint_ops {
    short (*events)(struct endpoint *endpoint);                  /* POLLIN and POLLOUT wanted */
    void (*ready)(struct endpoint *endpoint, short revents);
};

/* A socket driven by the loop. fd is -1 once closed; the loop skips it until it is removed. */
struct endpoint {
    int fd;
    const struct endpoint_ops *ops;
    struct loop *loop;
    size_t index; /* position in loop->endpoints */
};

struct loop {
    struct endpoint **endpoints;
    size_t count;
    size_t cap;
    struct pollfd *pollfds;
    struct endpoint **polled;
};

void loop_init(struct loop *loop);
void loop_dispose(struct loop *loop); /* the endpoints must have been removed */

/*
 * Polls every endpoint once for up to timeout_us microseconds and handles what is ready.
 * Endpoint callbacks never free endpoints, so a test may free them between calls.
 */
void loop_run(struct loop *loop, long timeout_us);

/* ---- Raw HTTP/1.1 client ---- */

struct h1_response {
    int status;
    char *head;          /* status line and header lines, NUL-terminated */
    unsigned char *body;
    size_t body_len;
    bool close;          /* the response carried Connection: close */
};

struct h1_conn {
    struct endpoint ep;
    int port;
    unsigned char *out; /* bytes queued for sending */
    size_t out_len;
    size_t out_sent;
    unsigned char *in; /* bytes received and not yet parsed */
    size_t in_len;
    size_t in_cap;
    bool busy;          /* a request is outstanding */
    bool done;          /* `response` is complete; cleared by h1_send */
    bool got_continue;  /* a 100 Continue arrived for the outstanding request */
    bool eof;           /* the peer closed, or a read or write failed */
    int error;          /* errno of the failed read or write, or 0 */
    bool write_shut;    /* shutdown(SHUT_WR) was called */
    struct h1_response response;
    double sent_at;     /* now_s() when the request was queued */
    double done_at;     /* now_s() when the response completed */
    void *data;         /* for the test */
};

/*
 * Connects to 127.0.0.1:port and adds the connection to the loop. rcvbuf > 0 sets SO_RCVBUF
 * before connecting. Records a failure and returns NULL when the connect fails.
 */
struct h1_conn *h1_connect(struct loop *loop, int port, int rcvbuf);

/* Like h1_connect without SO_RCVBUF, but a failed connect only returns NULL. */
struct h1_conn *h1_try_connect(struct loop *loop, int port);

/*
 * Queues one request. A body, when body is not NULL, goes with Content-Length; extra_headers
 * (NULL for none) are whole "Name: value\r\n" lines. Clears the previous response.
 */
void h1_send(struct h1_conn *conn, const char *method, const char *target,
             const char *extra_headers, const void *body, size_t body_len);

/* Queues raw bytes: the test builds the request itself. Marks the connection busy. */
void h1_send_raw(struct h1_conn *conn, const void *data, size_t len);

/* Queues more raw bytes of the outstanding request (a body after 100 Continue). */
void h1_send_more(struct h1_conn *conn, const void *data, size_t len);

/* Sends FIN with shutdown(SHUT_WR) and keeps reading. */
void h1_shutdown_write(struct h1_conn *conn);

/* Closes the socket, with SO_LINGER 0 (an RST) when reset is true. The endpoint stays. */
void h1_close(struct h1_conn *conn, bool reset);

/* Closes the socket if open, removes the connection from its loop and frees it. */
void h1_free(struct h1_conn *conn);

/* Copies the value of a response header (case-insensitive name) into out; false if missing. */
bool h1_header(const struct h1_response *response, const char *name, char *out, size_t size);

/* Runs the loop until conn->done or conn->eof, for up to timeout_ms; returns conn->done. */
bool h1_wait(struct h1_conn *conn, long timeout_ms);

/* One request on a fresh connection, waited for up to timeout_ms; the caller frees the conn. */
struct h1_conn *h1_request(struct loop *loop, int port, const char *method, const char *target,
                           const char *extra_headers, const void *body, size_t body_len,
                           long timeout_ms);

/* ---- HTTP/2 client over libnghttp2 ---- */

struct h2_stream {
    int32_t id;          /* -1 when submitting failed */
    struct h2_conn *conn;
    int status;          /* :status, or 0 before the response headers */
    bool retry_after;    /* the response had a Retry-After header */
    char content_type[128]; /* the response's Content-Type, or "" */
    unsigned char *body;
    size_t body_len;
    size_t body_cap;
    bool closed;         /* the stream is closed: complete, reset, or its connection is gone */
    bool complete;       /* closed after a whole response (END_STREAM) */
    bool reset_by_us;    /* h2_reset was called */
    uint32_t error_code; /* RST_STREAM or close error code; 0 for a normal close */
    double sent_at;
    double done_at;
    const unsigned char *request_body;
    size_t request_len;
    size_t request_sent;
    void *data;          /* for the test */
    struct h2_stream *prev, *next; /* the connection's streams */
};

struct h2_conn {
    struct endpoint ep;
    int port;
    nghttp2_session *session;
    unsigned char *out;  /* bytes from nghttp2 not yet written */
    size_t out_len;
    size_t out_sent;
    bool eof;            /* the peer closed, a read or write failed, or nghttp2 ended it */
    int error;
    bool goaway;         /* a GOAWAY arrived */
    bool paused;         /* read nothing from the socket (a stalled client) */
    size_t open_streams;
    size_t streams_closed_by_eof;
    struct h2_stream *streams; /* every stream not yet freed by h2_stream_free */
};

/* Connects, sends the preface and SETTINGS with 16 MiB windows; NULL and a failure on error. */
struct h2_conn *h2_connect(struct loop *loop, int port);

/*
 * Submits a request; body (NULL for none) must live until the stream is closed. content_type
 * may be NULL. The stream is allocated here and freed by h2_stream_free.
 */
struct h2_stream *h2_submit(struct h2_conn *conn, const char *method, const char *path,
                            const void *body, size_t body_len, const char *content_type);

/* Like h2_submit, with header fields (lower-case names) after the pseudo-header fields. The
 * names and values are copied by nghttp2. */
struct h2_stream *h2_submit_fields(struct h2_conn *conn, const char *method, const char *path,
                                   const nghttp2_nv *fields, size_t field_count,
                                   const void *body, size_t body_len);

/* Submits RST_STREAM(CANCEL) for an open stream and flushes it. */
void h2_reset(struct h2_stream *stream);

/* Writes what nghttp2 has queued, as far as the socket takes it. */
void h2_flush(struct h2_conn *conn);

/* Frees a stream; an open one is detached from its session first (it stays open there). */
void h2_stream_free(struct h2_stream *stream);

/* Closes the socket, removes the connection from its loop and frees the session. */
void h2_free(struct h2_conn *conn);

/* Runs the loop until the stream is closed, for up to timeout_ms; returns stream->complete. */
bool h2_wait(struct h2_stream *stream, long timeout_ms);

/* ---- One request over either protocol ---- */

/*
 * A request over HTTP/1.1 (on a connection that carries one request at a time) or over HTTP/2
 * (a stream of a connection). Exactly one of h1 and h2 is set.
 */
struct call {
    struct h1_conn *h1;
    struct h2_stream *h2;
};

/*
 * Sends a request on h1, or on h2 when h1 is NULL. A POST always sends a body (Content-Length 0
 * for an empty one); the body must live until the call is finished. content_type may be NULL.
 */
void call_send(struct call *call, struct h1_conn *h1, struct h2_conn *h2, const char *method,
               const char *path, const char *content_type, const void *body, size_t body_len);

/* True once a whole response arrived, or the stream or connection ended without one. */
bool call_finished(const struct call *call);

/* Status of the whole response, or 0 when none arrived. */
int call_status(const struct call *call);

const unsigned char *call_body(const struct call *call, size_t *len);

/* Copies the response's Content-Type into out; false when it had none. */
bool call_content_type(const struct call *call, char *out, size_t size);

/* True when the response had a Retry-After header. */
bool call_retry_after(const struct call *call);

/* Frees an HTTP/2 stream; an HTTP/1.1 connection stays with the test. */
void call_release(struct call *call);

/* ---- Start/ack pairs running beside other traffic ---- */

/*
 * Start/ack pairs over HTTP/1.1, each on two fresh connections. A pair sends its /start, then
 * its /ack every 5 ms while the ack gets 404 (the waiter is not registered yet), up to 2 s. A
 * pair passes when the ack gets 202 and the waiter 200 with exactly the ack's body.
 */
struct pair_slot;

struct pairs {
    struct loop *loop;
    int port;
    char prefix[48];
    long total;
    long launched;
    long passed;
    long failed;
    int concurrency;
    struct pair_slot *slots;
    double worst_s; /* longest time from a pair's /start to its waiter's response */
    double sum_s;
    long early_404; /* acks that got 404 because they overtook their /start, then were retried */
};

void pairs_init(struct pairs *pairs, struct loop *loop, int port, const char *prefix, long total,
                int concurrency);

/* Advances every pair after a loop_run; returns true once every pair has finished. */
bool pairs_step(struct pairs *pairs);

/* Records a failure for each unfinished pair and frees the pairs. */
void pairs_dispose(struct pairs *pairs);

/* Runs the pairs alone until they finish or timeout_ms passes; returns pairs->passed. */
long pairs_run(struct pairs *pairs, long timeout_ms);

/* ---- Misc ---- */

/* Waits up to timeout_s for the corrd child to exit; returns its wait status, or -1. */
int corrd_wait_exit(struct corrd *server, double timeout_s);

/* Returns a malloc'd body of len bytes: "tag\n" followed by pattern bytes from the generator. */
unsigned char *make_body(struct rng *rng, const char *tag, size_t len);

/* Port of a fresh listening socket that was closed again, for a child that binds it. */
int pick_free_port(void);

#endif
