/*
 * corrd worker threads: one h2o event loop per thread. Each worker has its own SO_REUSEPORT
 * listeners, its own deadline heap for held requests, and an inbox for wake-ups from acking
 * threads. It also keeps an epoll set that watches held HTTP/1 sockets for a client close,
 * because h2o stops reading an HTTP/1 connection while a request is in flight and so would not
 * notice the close by itself.
 */
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <ck_pr.h>
#include "corrd.h"

#define ACCEPT_BATCH     64
#define LISTEN_BACKLOG   4096
#define MAX_LOOP_WAIT_MS 1000

struct corrd_server corrd;
__thread struct corrd_worker *corrd_current_worker;

static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;
static unsigned workers_ready;    /* ck_pr atomics only */
static unsigned workers_exited;   /* ck_pr atomics only */
static unsigned workers_draining; /* workers that responded to their waiters; ck_pr atomics only */

uint64_t corrd_now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static const char *const level_names[] = {"debug", "info", "warn", "error"};

static void log_line(enum corrd_log_level level, const char *suffix, const char *fmt, va_list args)
{
    struct timespec ts;
    struct tm tm;
    char stamp[64];

    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    strftime(stamp, sizeof(stamp), "%Y-%m-%dT%H:%M:%S", &tm);
    fprintf(stderr, "ts=%s.%03ldZ level=%s ", stamp, ts.tv_nsec / 1000000, level_names[level]);
    vfprintf(stderr, fmt, args);
    fprintf(stderr, "%s\n", suffix);
    fflush(stderr);
}

uint64_t corrd_now_us(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000;
}

void corrd_log(enum corrd_log_level level, const char *fmt, ...)
{
    va_list args;

    if ((int)level < corrd.options.log_level)
        return;
    pthread_mutex_lock(&log_lock);
    va_start(args, fmt);
    log_line(level, "", fmt, args);
    va_end(args);
    pthread_mutex_unlock(&log_lock);
}

void corrd_log_limited(struct corrd_log_limit *limit, enum corrd_log_level level, const char *fmt,
                       ...)
{
    uint64_t now = corrd_now_ms();
    char suffix[64] = "";
    va_list args;

    if ((int)level < corrd.options.log_level)
        return;
    pthread_mutex_lock(&log_lock);
    if (now - limit->window_ms >= 1000) {
        if (limit->suppressed != 0)
            snprintf(suffix, sizeof(suffix), " suppressed_before=%u", limit->suppressed);
        limit->window_ms = now;
        limit->lines = 0;
        limit->suppressed = 0;
    }
    if (limit->lines < CORRD_LOG_BURST) {
        limit->lines++;
        va_start(args, fmt);
        log_line(level, suffix, fmt, args);
        va_end(args);
    } else {
        limit->suppressed++;
    }
    pthread_mutex_unlock(&log_lock);
}

/* ---- close watch for held HTTP/1 requests ---- */

void corrd_rdhup_watch(struct corrd_held *held)
{
    h2o_conn_t *conn = held->req->conn;
    h2o_socket_t *sock =
        conn->callbacks->get_socket != NULL ? conn->callbacks->get_socket(conn) : NULL;

    if (sock == NULL)
        return;
    int fd = h2o_socket_get_fd(sock);
    struct epoll_event event = {.events = EPOLLRDHUP | EPOLLET, .data.ptr = held};
    int epfd = held->worker->rdhup_epoll_fd;
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &event) != 0 &&
        (errno != EEXIST || epoll_ctl(epfd, EPOLL_CTL_MOD, fd, &event) != 0)) {
        static struct corrd_log_limit watch_limit;
        corrd_log_limited(&watch_limit, CORRD_LOG_WARN,
                          "msg=\"cannot watch held request for client close\" fd=%d error=\"%s\"",
                          fd, strerror(errno));
        return;
    }
    held->watched_fd = fd;
}

void corrd_rdhup_unwatch(struct corrd_held *held)
{
    if (held->watched_fd < 0)
        return;
    /* h2o disposes an HTTP/1 request before it closes the socket, so the fd is still ours here. */
    epoll_ctl(held->worker->rdhup_epoll_fd, EPOLL_CTL_DEL, held->watched_fd, NULL);
    held->watched_fd = -1;
}

static void on_rdhup(h2o_socket_t *sock, const char *err)
{
    struct corrd_worker *worker = sock->data;
    struct epoll_event events[64];
    int count;

    while ((count = epoll_wait(worker->rdhup_epoll_fd, events, 64, 0)) > 0) {
        for (int i = 0; i < count; i++) {
            struct corrd_held *held = events[i].data.ptr;
            /* A response disposes only its own HTTP/1 request, so later entries stay valid. */
            if (held->req != NULL && held->waiter != NULL && held->watched_fd >= 0)
                corrd_held_client_gone(held);
        }
        if (count < 64)
            break;
    }
}

/* ---- connections ---- */

static void on_conn_close(void *data)
{
    struct corrd_conn *conn = data;
    struct corrd_worker *worker = conn->worker;

    if (conn->prev != NULL)
        conn->prev->next = conn->next;
    else
        worker->conns = conn->next;
    if (conn->next != NULL)
        conn->next->prev = conn->prev;
    worker->connections--;
    free(conn);
}

static void on_accept(h2o_socket_t *listener, const char *err)
{
    struct corrd_worker *worker = listener->data;

    if (err != NULL)
        return;
    for (int i = 0; i < ACCEPT_BATCH; i++) {
        h2o_socket_t *sock = h2o_evloop_socket_accept(listener);
        if (sock == NULL)
            break;
        struct corrd_conn *conn = malloc(sizeof(*conn));
        if (conn == NULL) {
            h2o_socket_close(sock);
            continue;
        }
        *conn = (struct corrd_conn){.sock = sock, .worker = worker, .next = worker->conns};
        if (worker->conns != NULL)
            worker->conns->prev = conn;
        worker->conns = conn;
        worker->connections++;
        sock->on_close.cb = on_conn_close;
        sock->on_close.data = conn;
        h2o_accept(&worker->accept_ctx, sock);
    }
}

/* Return corrd's record of the connection that @h2o_conn runs on, or NULL if it has none. */
struct corrd_conn *corrd_conn_of(h2o_conn_t *h2o_conn)
{
    h2o_socket_t *sock =
        h2o_conn->callbacks->get_socket != NULL ? h2o_conn->callbacks->get_socket(h2o_conn) : NULL;

    return sock != NULL && sock->on_close.cb == on_conn_close ? sock->on_close.data : NULL;
}

/* Close an HTTP/2 connection whose client resets held streams faster than --max-resets-per-sec. */
void corrd_conn_note_reset(h2o_conn_t *h2o_conn)
{
    struct corrd_conn *conn = corrd_conn_of(h2o_conn);
    static struct corrd_log_limit limit;

    if (conn == NULL)
        return;
    h2o_socket_t *sock = conn->sock;
    uint64_t now = corrd_now_ms();
    if (now - conn->reset_window_ms >= 1000) {
        conn->reset_window_ms = now;
        conn->resets_in_window = 0;
    }
    if (++conn->resets_in_window != corrd.options.max_resets_per_sec + 1)
        return;
    /*
     * h2o 2.2.5 has no limit on stream resets ("rapid reset"). Shutting the socket down makes h2o
     * see a read error and tear the connection down through its own path.
     */
    corrd_metrics_count(&conn->worker->metrics, CORRD_CONNECTIONS_CLOSED_RESETS);
    corrd_log_limited(&limit, CORRD_LOG_WARN,
                      "msg=\"closing connection: too many stream resets\" worker=%u fd=%d "
                      "max_resets_per_sec=%u",
                      conn->worker->index, h2o_socket_get_fd(sock),
                      corrd.options.max_resets_per_sec);
    shutdown(h2o_socket_get_fd(sock), SHUT_RDWR);
}

/* ---- listeners ---- */

/*
 * Bind a listening socket for @listen_addr on @port. With @exclusive, the socket gets no
 * SO_REUSEPORT and is closed again: it only checks that no other process (another corrd, which
 * would otherwise share the port and split every id's requests) listens there already.
 */
static int listen_one(const struct corrd_listen *listen_addr, const char *port, bool exclusive,
                      char *bound, size_t bound_size)
{
    struct addrinfo hints = {
        .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE};
    struct addrinfo *res;
    int rc =
        getaddrinfo(listen_addr->host[0] != '\0' ? listen_addr->host : NULL, port, &hints, &res);

    if (rc != 0) {
        corrd_log(CORRD_LOG_ERROR,
                  "msg=\"cannot resolve the host of --listen\" host=\"%s\" error=\"%s\"",
                  listen_addr->host, gai_strerror(rc));
        return -1;
    }
    int fd = socket(res->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int on = 1;
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on)) != 0 ||
        (!exclusive && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &on, sizeof(on)) != 0) ||
        bind(fd, res->ai_addr, res->ai_addrlen) != 0 || listen(fd, LISTEN_BACKLOG) != 0) {
        corrd_log(CORRD_LOG_ERROR,
                  "msg=\"cannot listen on --listen address\" host=\"%s\" port=%s error=\"%s\"%s",
                  listen_addr->host, port, strerror(errno),
                  errno == EADDRINUSE ? " hint=\"another process, maybe another corrd, uses it\""
                                      : "");
        if (fd >= 0)
            close(fd);
        freeaddrinfo(res);
        return -1;
    }
    freeaddrinfo(res);
    if (exclusive) {
        close(fd);
        return 0;
    }

    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);
    char host[NI_MAXHOST], serv[NI_MAXSERV];
    getsockname(fd, (struct sockaddr *)&ss, &len);
    getnameinfo((struct sockaddr *)&ss, len, host, sizeof(host), serv, sizeof(serv),
                NI_NUMERICHOST | NI_NUMERICSERV);
    snprintf(bound, bound_size, ss.ss_family == AF_INET6 ? "[%s]:%s" : "%s:%s", host, serv);
    return fd;
}

/* Open one SO_REUSEPORT socket per worker and address; port 0 becomes the first one's port. */
static int open_listeners(void)
{
    struct corrd_options *opt = &corrd.options;

    for (unsigned w = 0; w < opt->threads; w++) {
        corrd.workers[w].listener_fds = calloc(opt->listen_count, sizeof(int));
        corrd.workers[w].listener_count = opt->listen_count;
    }
    for (size_t l = 0; l < opt->listen_count; l++) {
        char port[16], bound[300];
        snprintf(port, sizeof(port), "%s", opt->listens[l].port);
        if (strcmp(port, "0") != 0 && listen_one(&opt->listens[l], port, true, NULL, 0) != 0)
            return -1;
        for (unsigned w = 0; w < opt->threads; w++) {
            int fd = listen_one(&opt->listens[l], port, false, bound, sizeof(bound));
            if (fd < 0)
                return -1;
            corrd.workers[w].listener_fds[l] = fd;
            if (w == 0)
                snprintf(port, sizeof(port), "%s", strrchr(bound, ':') + 1);
        }
        corrd_log(CORRD_LOG_INFO, "msg=listening addr=%s threads=%u protocols=\"%s\"", bound,
                  opt->threads, corrd.ssl_ctx != NULL ? "h2,http/1.1 over TLS" : "http/1.1,h2c");
    }
    return 0;
}

/* ---- inbox and shutdown messages ---- */

static void on_inbox_message(h2o_multithread_receiver_t *receiver, h2o_linklist_t *messages)
{
    struct corrd_worker *worker = H2O_STRUCT_FROM_MEMBER(struct corrd_worker, receiver, receiver);

    while (!h2o_linklist_is_empty(messages))
        h2o_linklist_unlink(messages->next);
    /*
     * Release the message before clearing the flag (a sender re-links it only after seeing 0),
     * then a store-load fence paired with corrd_wake_cb: either this drain sees a push, or its
     * producer sees message_pending == 0 and sends the message again.
     */
    ck_pr_fence_release();
    ck_pr_store_uint(&worker->message_pending, 0);
    ck_pr_fence_store_load();
    corrd_worker_drain_inbox(worker);
}

static void worker_send_message(struct corrd_worker *worker)
{
    ck_pr_fence_atomic();
    if (ck_pr_fas_uint(&worker->message_pending, 1) == 0)
        h2o_multithread_send_message(&worker->receiver, &worker->message);
}

void corrd_server_request_shutdown(void)
{
    for (unsigned i = 0; i < corrd.options.threads; i++) {
        ck_pr_store_uint(&corrd.workers[i].shutdown_requested, 1);
        worker_send_message(&corrd.workers[i]);
    }
}

unsigned corrd_server_workers_draining(void)
{
    return ck_pr_load_uint(&workers_draining);
}

unsigned corrd_server_workers_exited(void)
{
    return ck_pr_load_uint(&workers_exited);
}

/* ---- the loop ---- */

/* Respond to every held request whose deadline has passed; returns how many got a response. */
static size_t expire_timers(struct corrd_worker *worker)
{
    uint64_t now = corrd_now_ms();
    struct corrd_timer *timer;
    size_t expired = 0;

    while ((timer = corrd_timer_first(&worker->timers)) != NULL && timer->deadline_ms <= now) {
        struct corrd_held *held = H2O_STRUCT_FROM_MEMBER(struct corrd_held, timer, timer);
        corrd_held_expire(held); /* unlinks the timer */
        expired++;
    }
    return expired;
}

static int32_t loop_wait_ms(struct corrd_worker *worker)
{
    struct corrd_timer *timer = corrd_timer_first(&worker->timers);

    if (worker->draining)
        return 10;
    if (timer == NULL)
        return MAX_LOOP_WAIT_MS;
    uint64_t now = corrd_now_ms();
    if (timer->deadline_ms <= now)
        return 0;
    uint64_t wait = timer->deadline_ms - now;
    return wait > MAX_LOOP_WAIT_MS ? MAX_LOOP_WAIT_MS : (int32_t)wait;
}

static void begin_drain(struct corrd_worker *worker)
{
    struct corrd_timer *timer;
    size_t released = 0;

    worker->draining = true;
    worker->drain_started_ms = corrd_now_ms();
    for (size_t i = 0; i < worker->listener_count; i++) {
        h2o_socket_read_stop(worker->listeners[i]);
        h2o_socket_close(worker->listeners[i]);
    }
    worker->listener_count = 0;
    h2o_context_request_shutdown(&worker->ctx);
    while ((timer = corrd_timer_first(&worker->timers)) != NULL) {
        corrd_held_shutdown(H2O_STRUCT_FROM_MEMBER(struct corrd_held, timer, timer));
        released++;
    }
    ck_pr_inc_uint(&workers_draining);
    corrd_log(CORRD_LOG_INFO, "msg=\"draining\" worker=%u waiters_released=%zu connections=%zu",
              worker->index, released, worker->connections);
}

static bool drain_finished(struct corrd_worker *worker)
{
    uint64_t elapsed = corrd_now_ms() - worker->drain_started_ms;
    uint64_t drain_ms = corrd.options.drain_ms;

    if (worker->connections == 0 &&
        !h2o_timeout_is_linked(&worker->ctx.http2._graceful_shutdown_timeout) &&
        ck_pr_load_uint(&worker->message_pending) == 0 && ck_pr_load_ptr(&worker->inbox) == NULL)
        return true;
    /*
     * h2o 2.2.5 cannot close idle HTTP/1 keep-alive connections. Shutting down the read side
     * makes h2o see end-of-stream and close them; a response being written still finishes. A
     * connection with request bytes buffered is in the middle of a request and is left alone,
     * and HTTP/2 connections are closed by h2o's own graceful shutdown.
     */
    for (struct corrd_conn *conn = worker->conns; conn != NULL; conn = conn->next) {
        if (!conn->is_http2 && conn->sock->input->size == 0)
            shutdown(h2o_socket_get_fd(conn->sock), SHUT_RD);
    }
    if (elapsed >= drain_ms) {
        if (worker->connections == 0)
            return true; /* only h2o's HTTP/2 graceful-shutdown timer was left */
        corrd_log(
            CORRD_LOG_WARN,
            "msg=\"drain time over; exiting with connections open\" worker=%u connections=%zu",
            worker->index, worker->connections);
        return true;
    }
    return false;
}

static void worker_setup(struct corrd_worker *worker)
{
    worker->loop = h2o_evloop_create();
    h2o_context_init(&worker->ctx, worker->loop, &corrd.globalconf);
    worker->accept_ctx.ctx = &worker->ctx;
    worker->accept_ctx.hosts = corrd.globalconf.hosts;
    worker->accept_ctx.ssl_ctx = corrd.ssl_ctx;
    corrd_timer_heap_init(&worker->timers);
    worker->deferred_acks_tail = &worker->deferred_acks;

    worker->listeners = calloc(worker->listener_count, sizeof(*worker->listeners));
    for (size_t i = 0; i < worker->listener_count; i++) {
        worker->listeners[i] = h2o_evloop_socket_create(worker->loop, worker->listener_fds[i],
                                                        H2O_SOCKET_FLAG_DONT_READ);
        worker->listeners[i]->data = worker;
        h2o_socket_read_start(worker->listeners[i], on_accept);
    }
    h2o_multithread_register_receiver(worker->ctx.queue, &worker->receiver, on_inbox_message);

    worker->rdhup_epoll_fd = epoll_create1(EPOLL_CLOEXEC);
    if (worker->rdhup_epoll_fd < 0)
        h2o_fatal("epoll_create1 failed");
    worker->rdhup_sock =
        h2o_evloop_socket_create(worker->loop, worker->rdhup_epoll_fd, H2O_SOCKET_FLAG_DONT_READ);
    worker->rdhup_sock->data = worker;
    h2o_socket_read_start(worker->rdhup_sock, on_rdhup);
}

static void *worker_main(void *arg)
{
    struct corrd_worker *worker = arg;

    corrd_current_worker = worker;
    corr_thread_register();
    worker_setup(worker);
    ck_pr_inc_uint(&workers_ready); /* the receiver is registered: messages may be sent now */

    bool answered_outside_loop = false;
    while (!worker->exited) {
        /*
         * A response sent from outside h2o's callbacks (timers, drain) leaves its socket on h2o's
         * pending list, which only the next h2o_evloop_run processes: run it without waiting, or
         * the next request on that keep-alive connection would stall until an unrelated event.
         */
        int32_t wait_ms = answered_outside_loop ? 0 : loop_wait_ms(worker);
        h2o_evloop_run(worker->loop, wait_ms); /* -1 on EINTR is harmless here */
        answered_outside_loop = corrd_worker_retry_acks(worker) != 0;
        answered_outside_loop |= expire_timers(worker) != 0;
        if (!worker->draining && ck_pr_load_uint(&worker->shutdown_requested)) {
            begin_drain(worker);
            answered_outside_loop = true;
        }
        if (worker->draining && drain_finished(worker))
            worker->exited = true;
    }

    /*
     * NOTE: the h2o context and loop are left to process exit, as h2o 2.2.5 cannot dispose a
     * context with connections still open and never frees its per-thread recycle allocators.
     */
    corrd_timer_heap_dispose(&worker->timers);
    corr_thread_unregister();
    ck_pr_inc_uint(&workers_exited);
    return NULL;
}

int corrd_server_start(void)
{
    struct corr_engine_config config;

    corr_engine_config_init(&config);
    config.max_pending = corrd.options.max_pending;
    config.max_id_bytes = corrd.options.max_id_bytes;
    config.wake = corrd_wake_cb;
    config.payload_free = corrd_payload_free_cb;
    int err = corr_engine_create(&config, &corrd.engine);
    if (err != 0) {
        corrd_log(CORRD_LOG_ERROR, "msg=\"cannot create engine\" error=\"%s\"", corr_strerror(err));
        return -1;
    }

    h2o_config_init(&corrd.globalconf);
    /* One byte over the limit reaches the handler, which answers 413 with corrd's own message. */
    corrd.globalconf.max_request_entity_size = corrd.options.max_ack_bytes + 1;
    if (corrd_handlers_register(&corrd.globalconf, corrd.options.access_log) != 0)
        return -1;

    corrd.workers = calloc(corrd.options.threads, sizeof(*corrd.workers));
    if (open_listeners() != 0)
        return -1;
    for (unsigned i = 0; i < corrd.options.threads; i++) {
        corrd.workers[i].index = i;
        h2o_multithread_create_thread(&corrd.workers[i].thread, NULL, worker_main,
                                      &corrd.workers[i]);
    }
    while (ck_pr_load_uint(&workers_ready) < corrd.options.threads)
        usleep(1000);
    return 0;
}

void corrd_server_join(void)
{
    for (unsigned i = 0; i < corrd.options.threads; i++)
        pthread_join(corrd.workers[i].thread, NULL);
    corr_thread_register();
    corr_engine_destroy(corrd.engine);
    corr_thread_unregister();
}
