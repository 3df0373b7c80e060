/* Shared types of corrd, the HTTP front end of the corr engine. */
#ifndef corrd_h
#define corrd_h

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <h2o.h>
#include "corr.h"
#include "ids.h"
#include "metrics.h"
#include "timers.h"

#define CORRD_MODULE "corrd"

struct corrd_listen {
    char host[256];
    char port[16];
};

struct corrd_options {
    struct corrd_listen *listens;
    size_t listen_count;
    unsigned threads;
    uint64_t default_timeout_ms;
    uint64_t max_timeout_ms;
    size_t max_ack_bytes;
    size_t max_id_bytes;
    size_t max_pending;
    size_t max_url_bytes;
    size_t max_header_bytes;
    uint64_t drain_ms;
    uint64_t shutdown_delay_ms;
    unsigned max_resets_per_sec;
    int log_level;
    const char *access_log;
    const char *tls_cert;
    const char *tls_key;
};

/* A payload that an ack carries from the acker's thread to the waiter's thread. */
struct corrd_ack_msg {
    uint64_t delivered_at_us; /* monotonic time just before the engine took it */
    size_t len;
    size_t content_type_len; /* 0 when the ack had no Content-Type */
    char *content_type;      /* points into bytes[] after the body */
    char bytes[];
};

struct corrd_worker;
struct corrd_deferred_ack;

/* One held /start request. It may outlive its h2o request while it sits in a worker inbox. */
struct corrd_held {
    h2o_req_t *req;              /* NULL once h2o disposed the request */
    struct corrd_worker *worker; /* owning worker; the waiter's owner thread */
    struct corr_waiter *waiter;  /* NULL once destroyed */
    struct corrd_held *inbox_next;
    unsigned queued; /* 1 while in the worker inbox; see corrd_wake_cb */
    bool dead;       /* request gone while queued: the inbox drain frees it */
    int watched_fd;  /* HTTP/1 socket watched for EPOLLRDHUP, or -1 */
    struct corrd_timer timer;
    uint64_t timeout_ms;
    uint64_t started_at_us;
    struct corrd_ack_msg *answer; /* body being sent; freed when the request is disposed */
};

/* An accepted connection, tracked so that shutdown can close idle ones and resets are limited. */
struct corrd_conn {
    h2o_socket_t *sock;
    struct corrd_worker *worker;
    struct corrd_conn *prev, *next;
    uint64_t reset_window_ms; /* start of the current one-second window of held-stream resets */
    unsigned resets_in_window;
    bool is_http2; /* a request on it was HTTP/2, so h2o's own graceful shutdown closes it */
};

struct corrd_worker {
    unsigned index;
    pthread_t thread;
    h2o_evloop_t *loop;
    h2o_context_t ctx;
    h2o_accept_ctx_t accept_ctx;
    h2o_socket_t **listeners;
    size_t listener_count;
    int *listener_fds;

    /* Cross-thread wake-up: acking threads push held requests and send one message per batch. */
    struct corrd_held *inbox; /* Treiber stack head; ck_pr atomics only */
    unsigned message_pending; /* 1 while `message` is queued; ck_pr atomics only */
    h2o_multithread_receiver_t receiver;
    h2o_multithread_message_t message;
    bool local_wake; /* a same-thread ack pushed to the inbox; drained after the ack handler */
    struct corrd_deferred_ack *deferred_acks; /* acks to try again after this batch of events */
    struct corrd_deferred_ack **deferred_acks_tail;

    /* Detects HTTP/1 clients that close while their request is held (h2o stops reading then). */
    int rdhup_epoll_fd;
    h2o_socket_t *rdhup_sock;

    struct corrd_timer_heap timers;
    size_t connections;
    struct corrd_conn *conns; /* doubly linked list of accepted sockets */

    unsigned shutdown_requested; /* set by the main thread; ck_pr atomics only */
    bool draining;
    uint64_t drain_started_ms;
    bool exited;
    struct corrd_metrics metrics;
};

struct corrd_server {
    struct corrd_options options;
    struct corr_engine *engine;
    h2o_globalconf_t globalconf;
    struct corrd_worker *workers;
    SSL_CTX *ssl_ctx;   /* NULL unless --tls-cert and --tls-key are given */
    unsigned not_ready; /* 1 after a stop signal: /readyz answers 503; ck_pr atomics only */
};

extern struct corrd_server corrd;

/* http/handlers.c */
int corrd_handlers_register(h2o_globalconf_t *conf, const char *access_log);
void corrd_wake_cb(struct corr_waiter *waiter, void *waiter_data, void *engine_data);
void corrd_payload_free_cb(void *payload, void *engine_data);
void corrd_worker_drain_inbox(struct corrd_worker *worker);
size_t corrd_worker_retry_acks(struct corrd_worker *worker);
void corrd_held_expire(struct corrd_held *held);
void corrd_held_client_gone(struct corrd_held *held);
void corrd_held_shutdown(struct corrd_held *held);

/* http/server.c */
uint64_t corrd_now_ms(void);
uint64_t corrd_now_us(void);

enum corrd_log_level {
    CORRD_LOG_DEBUG,
    CORRD_LOG_INFO,
    CORRD_LOG_WARN,
    CORRD_LOG_ERROR,
};

/*
 * Log one logfmt line to stderr: ts=... level=... followed by @fmt, which should be key=value
 * pairs. Lines below --log-level are skipped.
 */
void corrd_log(enum corrd_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Per-call-site limit for repeated log lines: at most CORRD_LOG_BURST lines per second. */
struct corrd_log_limit {
    uint64_t window_ms;
    unsigned lines;
    unsigned suppressed;
};

#define CORRD_LOG_BURST 10
void corrd_log_limited(struct corrd_log_limit *limit, enum corrd_log_level level, const char *fmt,
                       ...) __attribute__((format(printf, 3, 4)));
void corrd_conn_note_reset(h2o_conn_t *conn);
struct corrd_conn *corrd_conn_of(h2o_conn_t *conn);
int corrd_server_start(void);
void corrd_server_request_shutdown(void);
unsigned corrd_server_workers_draining(void);
unsigned corrd_server_workers_exited(void);
void corrd_server_join(void);
void corrd_rdhup_watch(struct corrd_held *held);
void corrd_rdhup_unwatch(struct corrd_held *held);
extern __thread struct corrd_worker *corrd_current_worker;

#endif
