/*
 * Harness for the corrd HTTP integration tests. It contains a small test runner, a corrd child
 * process listening on 127.0.0.1, and blocking and concurrent libcurl requests. Raw sockets cover
 * what libcurl cannot express, such as a client that closes mid-request or an HTTP/2 stream reset.
 */
#ifndef CORR_TESTS_HTTP_HARNESS_H
#define CORR_TESTS_HTTP_HARNESS_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include <curl/curl.h>

/* ---- Test runner ---- */

enum http_proto {
    PROTO_HTTP1 = 1,       /* HTTP/1.1 */
    PROTO_H2C = 2,         /* cleartext HTTP/2 with prior knowledge */
    PROTO_H2C_UPGRADE = 4, /* HTTP/1.1 request with Upgrade: h2c */
};

#define PROTO_BOTH (PROTO_HTTP1 | PROTO_H2C)

struct test_case {
    const char *name;
    void (*run)(enum http_proto proto);
    unsigned protos; /* bit set of enum http_proto: the case runs once per protocol */
};

/* Path of the corrd binary under test, set by run_tests from argv[1] or $CORRD. */
extern const char *corrd_path;

/*
 * Runs every case whose name contains argv[2] (all cases when argv[2] is missing), prints one
 * line per case and protocol and a closing "N passed, M failed" line. Installs an alarm() of
 * deadline_s seconds that aborts the whole process. Returns the process exit status.
 */
int run_tests(const struct test_case *cases, size_t count, unsigned deadline_s, int argc,
              char **argv);

/* Records a failure of the running case and prints it with its source location. */
void test_fail(const char *file, int line, const char *format, ...)
    __attribute__((format(printf, 3, 4)));

/* Number of failures recorded so far in the running case. */
int test_failures(void);

const char *proto_name(enum http_proto proto);

#define EXPECT(cond, ...)                                                                          \
    do {                                                                                           \
        if (!(cond))                                                                               \
            test_fail(__FILE__, __LINE__, "expected " #cond ": " __VA_ARGS__);                    \
    } while (0)

/* Like EXPECT, but returns from the calling test function when the condition is false. */
#define REQUIRE(cond, ...)                                                                         \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            test_fail(__FILE__, __LINE__, "required " #cond ": " __VA_ARGS__);                    \
            return;                                                                                \
        }                                                                                          \
    } while (0)

/* ---- corrd child process ---- */

struct corrd {
    pid_t pid;
    int port;
    int log_fd;           /* read end of the child's stdout and stderr */
    void *log_thread;     /* pthread_t * of the thread that drains log_fd */
    struct log_tail *log; /* last bytes the child wrote, printed when a case fails */
};

/*
 * Starts corrd_path on 127.0.0.1:0 with --threads 2 and the NULL-terminated extra_args (may be
 * NULL), and parses the port from its "msg=listening addr=127.0.0.1:PORT" log line. Returns false
 * and records a failure when the process does not start or logs no port within 10 s.
 */
bool corrd_start(struct corrd *server, const char *const *extra_args);

/*
 * Sends SIGTERM to the child and waits up to 10 s for it to exit. Records a failure unless it
 * exits with status 0. A child still running after the wait gets SIGKILL, which is also a failure.
 * Then frees the log, printing it first when the running case has failures. With pid 0 (already
 * reaped) only the log is handled.
 */
void corrd_stop(struct corrd *server);

/* Prints the last lines corrd wrote to its stdout and stderr, each prefixed with "corrd: ". */
void corrd_print_log(struct corrd *server);

/* ---- HTTP requests with libcurl ---- */

struct http_request {
    const char *method;       /* NULL means GET */
    const char *path;         /* path and query, sent without normalization */
    const void *body;         /* request body, or NULL for none */
    size_t body_len;
    const char *content_type; /* NULL sends no Content-Type header */
    enum http_proto proto;
    long timeout_ms;          /* total transfer limit; 0 means 20000 */
};

struct http_response {
    CURLcode result;
    char error[CURL_ERROR_SIZE];
    long status;
    long http_version; /* CURL_HTTP_VERSION_1_1 or CURL_HTTP_VERSION_2_0 */
    unsigned char *body;
    size_t body_len;
    char *content_type; /* NULL when the response had none */
    char *allow;        /* value of the Allow header, or NULL */
    double elapsed_s;
};

/* Performs one request on a fresh connection, blocking until it completes or times out. */
void http_perform(int port, const struct http_request *request, struct http_response *response);

void http_response_free(struct http_response *response);

/* Shorthand for http_perform with a GET or a POST and no Content-Type. */
void http_get(int port, enum http_proto proto, const char *path, struct http_response *response);
void http_post(int port, enum http_proto proto, const char *path, const void *body, size_t len,
               struct http_response *response);

/* The CURLINFO_HTTP_VERSION value that a request over proto must report. */
long expected_http_version(enum http_proto proto);

/* Checks that a response completed with the status over the protocol the request asked for. */
#define EXPECT_RESPONSE(resp, proto, expected_status)                                              \
    expect_response(__FILE__, __LINE__, #resp, (resp), (proto), (expected_status))
void expect_response(const char *file, int line, const char *name,
                     const struct http_response *response, enum http_proto proto,
                     long expected_status);

/* Checks that a body is one non-empty line of text/plain ending in "\n". */
#define EXPECT_ERROR_BODY(resp) expect_error_body(__FILE__, __LINE__, #resp, (resp))
void expect_error_body(const char *file, int line, const char *name,
                       const struct http_response *response);

/* ---- Requests running in the background ---- */

/* One request performed on its own thread, so the test can send other requests meanwhile. */
struct async_request {
    struct http_request request;
    struct http_response response;
    int port;
    char *owned_path; /* request.path when start_waiter built it; freed by async_join */
    void *thread;     /* pthread_t * */
};

void async_start(struct async_request *async, int port, const struct http_request *request);
void async_join(struct async_request *async);

/*
 * Starts GET /start/{id}?timeout={timeout_ms} over proto in the background and waits up to 5 s
 * until it is pending (see wait_pending). The transfer limit is timeout_ms plus 10 s. Returns
 * false, with a failure recorded, when the waiter never became pending; join it either way.
 */
bool start_waiter(struct async_request *waiter, int port, enum http_proto proto, const char *id,
                  long timeout_ms);

/*
 * Waits until a waiter for the id (as written in a URL path segment) is pending, probing with
 * GET /start/{id}?timeout=1 over HTTP/1.1: 409 means pending, 504 means not yet. Returns false
 * after deadline_ms. A probe that arrives just before the real waiter takes the id for 1 ms, so
 * call this only after the waiter's request had time to be sent.
 */
bool wait_pending(int port, const char *id, long deadline_ms);

/* ---- Many requests at once with curl_multi ---- */

struct transfer {
    struct http_request request;
    struct http_response response;
    bool running;
    bool done;
    CURL *easy;              /* owned by the session while running */
    struct transfer_buffers *buffers;
};

struct multi_session;

struct multi_session *multi_session_new(int port);

/* Starts a transfer; its response is filled in when it completes. A done transfer may be added
 * again, which discards its previous response. */
void multi_session_add(struct multi_session *session, struct transfer *transfer);

/* Drives all running transfers for up to duration_ms, returning early when none is running.
 * Returns the number still running. */
size_t multi_session_run(struct multi_session *session, long duration_ms);

/* Aborts running transfers (their result becomes CURLE_ABORTED_BY_CALLBACK) and frees the
 * session. */
void multi_session_free(struct multi_session *session);

/* ---- Raw sockets ---- */

/* Connects a TCP socket to 127.0.0.1:port, or returns -1 and records a failure. */
int raw_connect(int port);

/* Writes all bytes, or returns false. */
bool raw_send(int fd, const void *data, size_t len);

/* ---- Utilities ---- */

/* Fills buf with len bytes of a pattern that differs for each seed and covers all byte values. */
void fill_pattern(unsigned char *buf, size_t len, unsigned seed);

/* Checks that a response body equals the expected bytes, reporting the first difference. */
#define EXPECT_BODY(resp, data, len) expect_body(__FILE__, __LINE__, #resp, (resp), (data), (len))
void expect_body(const char *file, int line, const char *name,
                 const struct http_response *response, const void *data, size_t len);

double now_s(void);
void sleep_ms(long ms);

/* Returns a malloc'd string formatted like printf. */
char *format_string(const char *format, ...) __attribute__((format(printf, 1, 2)));

/* Returns the bytes as a C string with non-printable bytes escaped, for failure messages. The
 * result is a static buffer overwritten by the next call from the same thread. */
const char *printable(const void *data, size_t len);

#endif
