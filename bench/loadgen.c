/*
 * corr_loadgen: load generator for the correlation pattern of corrd and of the peers in
 * bench/peers/. The server holds a waiter's GET /start/{id} until an acker's POST /ack/{id}
 * delivers a body to it.
 *
 *   pairs  Closed-loop pairs. Each pair runs one id at a time: the waiter sends GET /start/{id},
 *          the acker sends POST /ack/{id} and repeats it while the server reports "no waiter",
 *          and the pair moves to a fresh id once the waiter has the ack's body and the ack was
 *          delivered. Reports correlations/s and the latency from the delivered ack to the
 *          waiter's answer.
 *   hold   Sends --waiters GET /start requests, waits until the server has settled, reads the
 *          server's RSS, then drains the waiters with --ackers concurrent acks.
 *
 * Each worker thread runs its own epoll loop over non-blocking sockets. HTTP/1.1 is a minimal
 * keep-alive client (one request in flight per connection, Content-Length bodies only); HTTP/2 is
 * cleartext with prior knowledge through libnghttp2. The main thread only coordinates phases
 * and takes CPU and RSS readings. Output: one "result key=value ..." line on stdout, and
 * human-readable lines starting with '#' on stderr. Only 127.0.0.0/8 addresses are accepted.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include <nghttp2/nghttp2.h>

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

#define NS_PER_SEC 1000000000ull
#define NS_PER_MS 1000000ull
#define MAX_SOURCES 256
#define MAX_SERVER_PIDS 16
#define MAX_LABELS 32
#define MAX_STATUS 600
#define MAX_BODY_BYTES (1u << 20)
#define MAX_HEADER_BYTES 16384
#define LOOP_TICK_MS 10
#define EPOLL_BATCH 512
/* Above this share of its threads' CPU time the generator, not the server, sets the pace. */
#define SATURATED_CPU_UTIL 0.9
/* File descriptors kept free for stdio, epoll and /proc reads. */
#define FD_RESERVE 32

enum mode { MODE_PAIRS, MODE_HOLD };
enum proto { PROTO_HTTP1, PROTO_H2 };
enum req_kind { REQ_START, REQ_ACK, REQ_KIND_COUNT };
enum phase { PHASE_CONNECT, PHASE_RUN, PHASE_DRAIN, PHASE_FINISH, PHASE_ABORT };
enum conn_state { CONN_CLOSED, CONN_QUEUED, CONN_CONNECTING, CONN_OPEN };

static const char *const kind_names[REQ_KIND_COUNT] = {"start", "ack"};

/* Ack statuses of one kind of server: delivered, no waiter pending, and a waiter's timeout. */
struct peer_profile {
    const char *name;
    int delivered;
    int no_waiter;
    int timeout;
};

/* nchan 1.3.6 (Debian 12's libnginx-mod-nchan, checked with curl) responds to a publish with
 * 201 Created when a subscriber received it and 202 Accepted when none was subscribed. Its
 * long-poll subscriber times out with 408. */
static const struct peer_profile peer_profiles[] = {
    {"corrd", 202, 404, 504},
    {"go", 202, 404, 504},
    {"nchan", 201, 202, 408},
};

struct options {
    enum mode mode;
    enum proto proto;
    struct sockaddr_in target;
    char authority[64];
    struct in_addr sources[MAX_SOURCES];
    size_t source_count;
    unsigned threads;
    unsigned pairs;
    double seconds;
    double warmup;
    size_t waiters;
    size_t ackers;
    unsigned streams_per_conn;
    size_t body_bytes;
    uint64_t wait_timeout_ms;
    unsigned max_ack_retries;
    uint64_t retry_delay_ns;
    uint64_t ack_delay_ns;
    uint64_t settle_ms;
    unsigned connect_batch;
    double max_seconds;
    pid_t server_pids[MAX_SERVER_PIDS];
    size_t server_pid_count;
    const char *labels[MAX_LABELS];
    size_t label_count;
    const char *latency_out;
    struct peer_profile peer;
    char id_prefix[32];
    uint64_t id_salt;
};

static struct options opt;

/* ---- small utilities ---- */

static uint64_t now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * NS_PER_SEC + (uint64_t)ts.tv_nsec;
}

static void sleep_ns(uint64_t ns)
{
    struct timespec ts = {.tv_sec = (time_t)(ns / NS_PER_SEC), .tv_nsec = (long)(ns % NS_PER_SEC)};

    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

static void *xcalloc(size_t count, size_t size)
{
    void *p = calloc(count, size);

    if (p == NULL && count != 0 && size != 0) {
        fprintf(stderr, "corr_loadgen: out of memory allocating %zu x %zu bytes\n", count, size);
        exit(1);
    }
    return p;
}

struct buf {
    char *data;
    size_t len;
    size_t cap;
};

static void buf_reserve(struct buf *b, size_t extra)
{
    if (b->len + extra <= b->cap)
        return;
    size_t cap = b->cap != 0 ? b->cap : 512;
    while (cap < b->len + extra)
        cap *= 2;
    char *data = realloc(b->data, cap);
    if (data == NULL) {
        fprintf(stderr, "corr_loadgen: out of memory growing a buffer to %zu bytes\n", cap);
        exit(1);
    }
    b->data = data;
    b->cap = cap;
}

static void buf_append(struct buf *b, const void *data, size_t len)
{
    buf_reserve(b, len);
    memcpy(b->data + b->len, data, len);
    b->len += len;
}

static void buf_free(struct buf *b)
{
    free(b->data);
    b->data = NULL;
    b->len = 0;
    b->cap = 0;
}

/* splitmix64's output function: a bijective 64-bit mixer. */
static uint64_t mix64(uint64_t x)
{
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebull;
    x ^= x >> 31;
    return x;
}

static const char body_alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/* Byte @i of the ack body for the id whose key is @key; waiters check what they get against it. */
static char body_byte(uint64_t key, size_t i)
{
    uint64_t word = mix64(key ^ ((uint64_t)(i >> 3) * 0x9e3779b97f4a7c15ull));

    return body_alphabet[(word >> ((i & 7) * 8)) & 63];
}

static void body_fill(char *out, uint64_t key, size_t offset, size_t len)
{
    for (size_t i = 0; i < len; i++)
        out[i] = body_byte(key, offset + i);
}

/* ---- latency samples ---- */

struct samples {
    uint64_t *v;
    size_t len;
    size_t cap;
};

static void samples_push(struct samples *s, uint64_t value)
{
    if (s->len == s->cap) {
        size_t cap = s->cap != 0 ? s->cap * 2 : 65536;
        uint64_t *v = realloc(s->v, cap * sizeof(*v));
        if (v == NULL) {
            fprintf(stderr, "corr_loadgen: out of memory storing %zu latency samples\n", cap);
            exit(1);
        }
        s->v = v;
        s->cap = cap;
    }
    s->v[s->len++] = value;
}

static int compare_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a;
    uint64_t y = *(const uint64_t *)b;

    return x < y ? -1 : x > y;
}

/* Nearest-rank percentile of sorted samples, in nanoseconds; 0 when there are none. */
static uint64_t samples_percentile(const struct samples *s, double percent)
{
    if (s->len == 0)
        return 0;
    double rank = percent / 100.0 * (double)s->len;
    size_t index = (size_t)rank;
    if ((double)index < rank)
        index++;
    if (index > 0)
        index--;
    if (index >= s->len)
        index = s->len - 1;
    return s->v[index];
}

/* ---- per-worker state ---- */

struct conn;
struct worker;

/* One HTTP request, reused for each id its owner handles. */
struct request {
    struct request *prev, *next; /* HTTP/2: the connection's list of requests in flight */
    struct conn *conn;
    uint64_t key;     /* identifies the id: mixes worker, owner and seq, and seeds the body */
    uint64_t seq;     /* pairs: the pair's id sequence number; hold: 0 */
    uint64_t sent_ns; /* when the last byte of the request was handed to the socket */
    uint32_t owner;   /* pair index, or held-waiter index, within the worker */
    uint32_t body_len;
    uint32_t body_sent;
    int16_t status; /* 0 until the response status arrives; -1 when the request failed */
    uint8_t kind;
    bool in_flight;
    bool sent;
    bool body_ok;
};

struct conn {
    struct worker *w;
    int fd;
    uint8_t state;
    bool dirty;
    bool closing;
    bool used; /* opened at least once, so opening it again counts as a reconnect */
    unsigned source;
    struct buf out;
    size_t out_off;
    struct buf in;
    /* HTTP/1.1 */
    struct request *h1_req;
    size_t h1_header_len; /* parsed header block length of the response being read; 0 if none */
    size_t h1_content_length;
    bool h1_close;
    int h1_status;
    /* HTTP/2 */
    nghttp2_session *h2;
    struct request *h2_inflight;
    struct conn *dirty_next;
};

struct pair {
    struct request waiter;
    struct request ack;
    uint64_t answer_ns;
    uint64_t ack_sent_ns; /* when the latest ack attempt for the current id was sent */
    unsigned attempts;
    bool active;
    bool waiter_done;
    bool ack_done;
    bool failed;
};

struct held_waiter {
    struct request start;
    uint64_t answer_ns;
    uint64_t ack_sent_ns;
    uint16_t attempts;
    bool answered;
    bool delivered;
    bool failed;
    bool resolved;
};

/* An ack to send at due_ns for pair or held waiter @index; @seq drops entries of a finished id. */
struct delayed {
    uint32_t index;
    uint64_t seq;
    uint64_t due_ns;
};

struct stats {
    uint64_t status_counts[REQ_KIND_COUNT][MAX_STATUS];
    uint64_t transport_errors[REQ_KIND_COUNT];
    uint64_t unexpected;
    uint64_t body_mismatch;
    uint64_t ack_retries;
    uint64_t retries_exhausted;
    uint64_t reconnects;
    uint64_t started;
    uint64_t answered;
    uint64_t delivered;
    uint64_t completions;
    uint64_t completions_window;
    uint64_t retries_window;
    struct samples latency;
};

struct worker {
    unsigned index;
    pthread_t thread;
    int epfd;
    struct conn *conns;
    size_t conn_count;
    size_t waiter_conns; /* conns[0, waiter_conns) carry /start; the rest carry /ack */
    size_t open_count;
    /* connections with output to flush, in the order they got it, so a pair's /start is written
     * before its ack */
    struct conn *dirty_head;
    struct conn *dirty_tail;
    struct conn **connect_queue;
    size_t connect_head;
    size_t connect_count;
    size_t connecting;
    /* pairs */
    struct pair *pairs;
    size_t pair_count;
    size_t active_pairs;
    uint32_t *ready;
    size_t ready_count;
    bool started;
    /* hold */
    struct held_waiter *held;
    size_t held_count;
    size_t held_sent;
    size_t held_resolved;
    size_t next_ack;
    struct request *ack_reqs;
    size_t acker_count;
    size_t acks_in_flight;
    uint32_t *idle_ackers;
    size_t idle_count;
    bool draining;
    /* acks due later: a FIFO, since every entry waits the same delay */
    struct delayed *delayed;
    size_t delayed_head;
    size_t delayed_count;
    size_t delayed_cap;

    struct stats st;
    uint64_t first_ack_ns;
    uint64_t last_answer_ns;
    char error[256];
    _Atomic int failed;
    _Atomic int ready_flag; /* pairs: all connections open */
    _Atomic size_t sent_published;
    _Atomic int done;
    uint8_t scratch[65536];
};

/* Coordination between the main thread and the workers. */
struct shared {
    _Atomic int phase;
    uint64_t warm_ns; /* pairs: start of the measured window */
    uint64_t end_ns;  /* pairs: end of the measured window; no new ids after it */
};

static struct shared shared;
static nghttp2_session_callbacks *h2_callbacks;

static int phase_load(void)
{
    return atomic_load_explicit(&shared.phase, memory_order_acquire);
}

static void __attribute__((format(printf, 2, 3)))
worker_fail(struct worker *w, const char *fmt, ...)
{
    va_list args;

    if (atomic_load(&w->failed))
        return;
    va_start(args, fmt);
    vsnprintf(w->error, sizeof(w->error), fmt, args);
    va_end(args);
    atomic_store(&w->failed, 1);
}

/* ---- request bookkeeping ---- */

static void pair_on_response(struct worker *w, struct request *req);
static void held_on_response(struct worker *w, struct request *req);
static void request_on_sent(struct worker *w, struct request *req);

static int format_id(const struct worker *w, const struct request *req, char *out, size_t size)
{
    return snprintf(out, size, "%s-%u-%" PRIu32 "-%" PRIu64, opt.id_prefix, w->index, req->owner,
                    req->seq);
}

static uint64_t id_key(const struct worker *w, uint32_t owner, uint64_t seq)
{
    return mix64(opt.id_salt ^ mix64(((uint64_t)w->index << 32 | owner) ^ mix64(seq + 1)));
}

static void request_reset(struct request *req)
{
    req->status = 0;
    req->body_len = 0;
    req->body_sent = 0;
    req->body_ok = true;
    req->sent = false;
    req->in_flight = true;
}

/* Compare a chunk of a /start response body with the expected ack body. */
static void request_check_body(struct request *req, const uint8_t *data, size_t len)
{
    if (req->kind == REQ_START && req->body_ok) {
        if (req->body_len + len > opt.body_bytes) {
            req->body_ok = false;
        } else {
            for (size_t i = 0; i < len; i++) {
                if ((char)data[i] != body_byte(req->key, req->body_len + i)) {
                    req->body_ok = false;
                    break;
                }
            }
        }
    }
    size_t total = req->body_len + len;
    req->body_len = total > UINT32_MAX ? UINT32_MAX : (uint32_t)total;
}

/* Record the response status of @req (or -1 for a failed request) and pass it to the mode. */
static void request_complete(struct worker *w, struct request *req, int status)
{
    req->in_flight = false;
    req->status = (int16_t)status;
    if (status < 0)
        w->st.transport_errors[req->kind]++;
    else if (status < MAX_STATUS)
        w->st.status_counts[req->kind][status]++;
    if (opt.mode == MODE_PAIRS)
        pair_on_response(w, req);
    else
        held_on_response(w, req);
}

static void request_on_sent(struct worker *w, struct request *req)
{
    req->sent = true;
    req->sent_ns = now_ns();
    if (opt.mode == MODE_PAIRS) {
        if (req->kind == REQ_ACK)
            w->pairs[req->owner].ack_sent_ns = req->sent_ns;
        return;
    }
    if (req->kind == REQ_START) {
        w->held_sent++;
    } else {
        w->held[req->owner].ack_sent_ns = req->sent_ns;
        if (w->first_ack_ns == 0)
            w->first_ack_ns = req->sent_ns;
    }
}

/* ---- connections ---- */

static void conn_mark_dirty(struct conn *c)
{
    if (c->dirty)
        return;
    c->dirty = true;
    c->dirty_next = NULL;
    if (c->w->dirty_tail != NULL)
        c->w->dirty_tail->dirty_next = c;
    else
        c->w->dirty_head = c;
    c->w->dirty_tail = c;
}

static void h2_session_create(struct conn *c);

/* Fail every request in flight on @c and release the socket; the next submit reconnects. */
static void conn_close(struct conn *c, const char *reason)
{
    struct worker *w = c->w;

    if (c->state == CONN_CLOSED)
        return;
    bool was_open = c->state == CONN_OPEN;
    if (c->state == CONN_CONNECTING)
        w->connecting--;
    if (was_open)
        w->open_count--;
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    c->state = CONN_CLOSED;
    c->closing = true;
    if (c->h1_req != NULL) {
        struct request *req = c->h1_req;
        c->h1_req = NULL;
        if (reason != NULL)
            fprintf(stderr, "# worker %u: %s request failed: %s\n", w->index, kind_names[req->kind],
                    reason);
        request_complete(w, req, -1);
    }
    while (c->h2_inflight != NULL) {
        struct request *req = c->h2_inflight;
        c->h2_inflight = req->next;
        req->prev = req->next = NULL;
        request_complete(w, req, -1);
    }
    if (c->h2 != NULL) {
        nghttp2_session_del(c->h2);
        c->h2 = NULL;
    }
    c->closing = false;
    buf_free(&c->out);
    buf_free(&c->in);
    c->out_off = 0;
    c->h1_header_len = 0;
}

static void conn_start_connect(struct conn *c)
{
    struct worker *w = c->w;
    int one = 1;

    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        worker_fail(w, "socket() failed: %s", strerror(errno));
        return;
    }
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (opt.source_count != 0) {
        /* Without IP_BIND_ADDRESS_NO_PORT, bind() would pick the port before the destination is
         * known, which exhausts ports long before the 4-tuple space does. */
        struct sockaddr_in src = {.sin_family = AF_INET, .sin_addr = opt.sources[c->source]};
        setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof(one));
        if (bind(fd, (struct sockaddr *)&src, sizeof(src)) != 0) {
            char addr[INET_ADDRSTRLEN];
            inet_ntop(AF_INET, &src.sin_addr, addr, sizeof(addr));
            worker_fail(w, "bind to source address %s failed: %s", addr, strerror(errno));
            close(fd);
            return;
        }
    }
    if (connect(fd, (struct sockaddr *)&opt.target, sizeof(opt.target)) != 0 &&
        errno != EINPROGRESS) {
        worker_fail(w, "connect to %s failed: %s", opt.authority, strerror(errno));
        close(fd);
        return;
    }
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET, .data.ptr = c};
    if (epoll_ctl(w->epfd, EPOLL_CTL_ADD, fd, &ev) != 0) {
        worker_fail(w, "epoll_ctl failed: %s", strerror(errno));
        close(fd);
        return;
    }
    c->fd = fd;
    c->state = CONN_CONNECTING;
    w->connecting++;
}

static void worker_pump_connects(struct worker *w)
{
    while (w->connect_count > 0 && w->connecting < opt.connect_batch && !atomic_load(&w->failed)) {
        struct conn *c = w->connect_queue[w->connect_head];
        w->connect_head = (w->connect_head + 1) % w->conn_count;
        w->connect_count--;
        conn_start_connect(c);
    }
}

/* Queue @c for connecting; requests can be submitted at once and are written when it opens. */
static void conn_open_async(struct conn *c)
{
    struct worker *w = c->w;

    if (c->state != CONN_CLOSED)
        return;
    if (opt.proto == PROTO_H2)
        h2_session_create(c);
    c->state = CONN_QUEUED;
    w->connect_queue[(w->connect_head + w->connect_count) % w->conn_count] = c;
    w->connect_count++;
    worker_pump_connects(w);
}

static void conn_on_connected(struct conn *c)
{
    struct worker *w = c->w;
    int err = 0;
    socklen_t len = sizeof(err);

    if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0)
        err = errno;
    if (err != 0) {
        worker_fail(w, "connect to %s failed: %s", opt.authority, strerror(err));
        conn_close(c, NULL);
        return;
    }
    /* An event left over from the connection's previous socket can arrive while this one is
     * still connecting; only a connected socket has a peer. */
    struct sockaddr_in peer;
    socklen_t peer_len = sizeof(peer);
    if (getpeername(c->fd, (struct sockaddr *)&peer, &peer_len) != 0)
        return;
    w->connecting--;
    c->state = CONN_OPEN;
    w->open_count++;
    conn_mark_dirty(c);
    worker_pump_connects(w);
}

/* Write what is buffered for @c; for HTTP/2 first serialize whatever nghttp2 has queued. */
static void conn_flush(struct conn *c)
{
    struct worker *w = c->w;

    if (c->state != CONN_OPEN)
        return;
    if (c->h2 != NULL) {
        for (;;) {
            const uint8_t *data;
            ssize_t n = nghttp2_session_mem_send(c->h2, &data);
            if (n < 0) {
                fprintf(stderr, "# worker %u: HTTP/2 send failed: %s\n", w->index,
                        nghttp2_strerror((int)n));
                conn_close(c, "HTTP/2 send failed");
                return;
            }
            if (n == 0)
                break;
            buf_append(&c->out, data, (size_t)n);
        }
    }
    while (c->out_off < c->out.len) {
        ssize_t n = write(c->fd, c->out.data + c->out_off, c->out.len - c->out_off);
        if (n > 0) {
            c->out_off += (size_t)n;
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else if (n < 0 && errno == EAGAIN) {
            return; /* EPOLLOUT (edge-triggered) calls us again */
        } else {
            conn_close(c, n < 0 ? strerror(errno) : "write returned 0");
            return;
        }
    }
    c->out.len = 0;
    c->out_off = 0;
    if (c->h1_req != NULL && !c->h1_req->sent)
        request_on_sent(w, c->h1_req);
    if (c->h2 != NULL && !nghttp2_session_want_read(c->h2) && !nghttp2_session_want_write(c->h2))
        conn_close(c, "HTTP/2 session ended (GOAWAY)");
}

/* ---- HTTP/1.1 ---- */

static void h1_submit(struct conn *c, struct request *req)
{
    char id[128];
    char head[512];
    int len;

    format_id(c->w, req, id, sizeof(id));
    if (req->kind == REQ_START)
        len = snprintf(head, sizeof(head),
                       "GET /start/%s?timeout=%" PRIu64 " HTTP/1.1\r\nHost: %s\r\n\r\n", id,
                       opt.wait_timeout_ms, opt.authority);
    else
        len = snprintf(head, sizeof(head),
                       "POST /ack/%s HTTP/1.1\r\nHost: %s\r\nContent-Length: %zu\r\n\r\n", id,
                       opt.authority, opt.body_bytes);
    buf_append(&c->out, head, (size_t)len);
    if (req->kind == REQ_ACK) {
        buf_reserve(&c->out, opt.body_bytes);
        body_fill(c->out.data + c->out.len, req->key, 0, opt.body_bytes);
        c->out.len += opt.body_bytes;
    }
    c->h1_req = req;
    conn_mark_dirty(c);
}

static bool header_is(const char *line, size_t len, const char *name)
{
    size_t name_len = strlen(name);

    return len > name_len && line[name_len] == ':' && strncasecmp(line, name, name_len) == 0;
}

static const char *header_value(const char *line, size_t len, size_t name_len, size_t *value_len)
{
    const char *v = line + name_len + 1;
    const char *end = line + len;

    while (v < end && (*v == ' ' || *v == '\t'))
        v++;
    while (end > v && (end[-1] == ' ' || end[-1] == '\t'))
        end--;
    *value_len = (size_t)(end - v);
    return v;
}

/* Parse the status line and headers in c->in[0, header_len); returns -1 on anything unsupported. */
static int h1_parse_head(struct conn *c, size_t header_len)
{
    const char *p = c->in.data;
    const char *end = p + header_len;
    bool have_length = false;

    if (header_len < 14 || memcmp(p, "HTTP/1.", 7) != 0 || p[8] != ' ')
        return -1;
    int status = 0;
    for (int i = 9; i < 12; i++) {
        if (p[i] < '0' || p[i] > '9')
            return -1;
        status = status * 10 + (p[i] - '0');
    }
    c->h1_status = status;
    c->h1_close = p[7] == '0';
    const char *line = memchr(p, '\n', header_len);
    while (line != NULL && ++line < end) {
        const char *eol = memchr(line, '\n', (size_t)(end - line));
        if (eol == NULL)
            break;
        size_t len = (size_t)(eol - line);
        if (len > 0 && line[len - 1] == '\r')
            len--;
        size_t vlen;
        if (header_is(line, len, "content-length")) {
            const char *v = header_value(line, len, 14, &vlen);
            char digits[24];
            if (vlen == 0 || vlen >= sizeof(digits))
                return -1;
            memcpy(digits, v, vlen);
            digits[vlen] = '\0';
            char *stop;
            unsigned long long n = strtoull(digits, &stop, 10);
            if (*stop != '\0' || n > MAX_BODY_BYTES * 4ull)
                return -1;
            c->h1_content_length = (size_t)n;
            have_length = true;
        } else if (header_is(line, len, "connection")) {
            const char *v = header_value(line, len, 10, &vlen);
            if (memmem(v, vlen, "close", 5) != NULL)
                c->h1_close = true;
        } else if (header_is(line, len, "transfer-encoding")) {
            return -1; /* chunked bodies are not implemented: corrd and the peers send lengths */
        }
        line = eol;
    }
    return have_length ? 0 : -1;
}

/* Consume complete responses from c->in; may close @c. */
static void h1_parse(struct conn *c)
{
    struct worker *w = c->w;

    while (c->in.len > 0 && c->state == CONN_OPEN) {
        if (c->h1_req == NULL) {
            conn_close(c, "server sent data with no request in flight");
            return;
        }
        if (c->h1_header_len == 0) {
            char *blank = memmem(c->in.data, c->in.len, "\r\n\r\n", 4);
            if (blank == NULL) {
                if (c->in.len > MAX_HEADER_BYTES)
                    conn_close(c, "response header block too large");
                return;
            }
            size_t header_len = (size_t)(blank - c->in.data) + 4;
            if (h1_parse_head(c, header_len) != 0) {
                conn_close(c, "malformed or unsupported response (need Content-Length)");
                return;
            }
            c->h1_header_len = header_len;
        }
        size_t total = c->h1_header_len + c->h1_content_length;
        if (c->in.len < total)
            return;
        struct request *req = c->h1_req;
        request_check_body(req, (const uint8_t *)c->in.data + c->h1_header_len,
                           c->h1_content_length);
        memmove(c->in.data, c->in.data + total, c->in.len - total);
        c->in.len -= total;
        c->h1_header_len = 0;
        c->h1_req = NULL;
        if (c->h1_close)
            conn_close(c, NULL);
        request_complete(w, req, c->h1_status);
    }
}

static void h1_on_readable(struct conn *c)
{
    for (;;) {
        buf_reserve(&c->in, 4096);
        ssize_t n = read(c->fd, c->in.data + c->in.len, c->in.cap - c->in.len);
        if (n > 0) {
            c->in.len += (size_t)n;
            h1_parse(c);
            if (c->state != CONN_OPEN)
                return;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN)
            return;
        conn_close(c, n == 0 ? "connection closed by the server" : strerror(errno));
        return;
    }
}

/* ---- HTTP/2 ---- */

static void h2_unlink(struct conn *c, struct request *req)
{
    if (req->prev != NULL)
        req->prev->next = req->next;
    else if (c->h2_inflight == req)
        c->h2_inflight = req->next;
    if (req->next != NULL)
        req->next->prev = req->prev;
    req->prev = req->next = NULL;
}

static int h2_on_header(nghttp2_session *session, const nghttp2_frame *frame, const uint8_t *name,
                        size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags,
                        void *user_data)
{
    if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_RESPONSE)
        return 0;
    if (namelen != 7 || memcmp(name, ":status", 7) != 0 || valuelen != 3)
        return 0;
    struct request *req = nghttp2_session_get_stream_user_data(session, frame->hd.stream_id);
    if (req != NULL)
        req->status = (int16_t)((value[0] - '0') * 100 + (value[1] - '0') * 10 + (value[2] - '0'));
    return 0;
}

static int h2_on_data_chunk(nghttp2_session *session, uint8_t flags, int32_t stream_id,
                            const uint8_t *data, size_t len, void *user_data)
{
    struct request *req = nghttp2_session_get_stream_user_data(session, stream_id);

    if (req != NULL)
        request_check_body(req, data, len);
    return 0;
}

static int h2_on_stream_close(nghttp2_session *session, int32_t stream_id, uint32_t error_code,
                              void *user_data)
{
    struct conn *c = user_data;
    struct request *req = nghttp2_session_get_stream_user_data(session, stream_id);

    if (req == NULL || c->closing)
        return 0;
    h2_unlink(c, req);
    if (error_code != NGHTTP2_NO_ERROR || req->status <= 0) {
        fprintf(stderr, "# worker %u: HTTP/2 %s stream closed without a response: %s\n",
                c->w->index, kind_names[req->kind], nghttp2_http2_strerror(error_code));
        request_complete(c->w, req, -1);
        return 0;
    }
    request_complete(c->w, req, req->status);
    return 0;
}

static int h2_on_frame_send(nghttp2_session *session, const nghttp2_frame *frame, void *user_data)
{
    struct conn *c = user_data;

    if ((frame->hd.type != NGHTTP2_HEADERS && frame->hd.type != NGHTTP2_DATA) ||
        !(frame->hd.flags & NGHTTP2_FLAG_END_STREAM))
        return 0;
    struct request *req = nghttp2_session_get_stream_user_data(session, frame->hd.stream_id);
    if (req != NULL && !req->sent)
        request_on_sent(c->w, req);
    return 0;
}

static ssize_t h2_read_body(nghttp2_session *session, int32_t stream_id, uint8_t *buf,
                            size_t length, uint32_t *data_flags, nghttp2_data_source *source,
                            void *user_data)
{
    struct request *req = source->ptr;
    size_t left = opt.body_bytes - req->body_sent;
    size_t n = left < length ? left : length;

    body_fill((char *)buf, req->key, req->body_sent, n);
    req->body_sent += (uint32_t)n;
    if (req->body_sent == opt.body_bytes)
        *data_flags |= NGHTTP2_DATA_FLAG_EOF;
    return (ssize_t)n;
}

static void h2_callbacks_init(void)
{
    nghttp2_session_callbacks_new(&h2_callbacks);
    nghttp2_session_callbacks_set_on_header_callback(h2_callbacks, h2_on_header);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(h2_callbacks, h2_on_data_chunk);
    nghttp2_session_callbacks_set_on_stream_close_callback(h2_callbacks, h2_on_stream_close);
    nghttp2_session_callbacks_set_on_frame_send_callback(h2_callbacks, h2_on_frame_send);
}

static void h2_session_create(struct conn *c)
{
    nghttp2_settings_entry settings[] = {
        {NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
        {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, 100},
    };

    if (nghttp2_session_client_new(&c->h2, h2_callbacks, c) != 0) {
        fprintf(stderr, "corr_loadgen: out of memory creating an HTTP/2 session\n");
        exit(1);
    }
    nghttp2_submit_settings(c->h2, NGHTTP2_FLAG_NONE, settings,
                            sizeof(settings) / sizeof(settings[0]));
}

#define NV(name, value, value_len)                                                                 \
    {                                                                                              \
        (uint8_t *)(name), (uint8_t *)(value), sizeof(name) - 1, (value_len), NGHTTP2_NV_FLAG_NONE \
    }

static void h2_submit(struct conn *c, struct request *req)
{
    char id[128];
    char path[256];
    char length[24];
    int path_len;

    format_id(c->w, req, id, sizeof(id));
    if (req->kind == REQ_START)
        path_len =
            snprintf(path, sizeof(path), "/start/%s?timeout=%" PRIu64, id, opt.wait_timeout_ms);
    else
        path_len = snprintf(path, sizeof(path), "/ack/%s", id);
    int length_len = snprintf(length, sizeof(length), "%zu", opt.body_bytes);
    bool post = req->kind == REQ_ACK;
    nghttp2_nv nva[] = {
        NV(":method", post ? "POST" : "GET", post ? 4 : 3),     NV(":scheme", "http", 4),
        NV(":authority", opt.authority, strlen(opt.authority)), NV(":path", path, (size_t)path_len),
        NV("content-length", length, (size_t)length_len),
    };
    nghttp2_data_provider provider = {.source.ptr = req, .read_callback = h2_read_body};
    int32_t stream_id =
        nghttp2_submit_request(c->h2, NULL, nva, post ? 5 : 4, post ? &provider : NULL, req);
    if (stream_id < 0) {
        worker_fail(c->w, "nghttp2_submit_request failed: %s", nghttp2_strerror(stream_id));
        request_complete(c->w, req, -1);
        return;
    }
    req->prev = NULL;
    req->next = c->h2_inflight;
    if (c->h2_inflight != NULL)
        c->h2_inflight->prev = req;
    c->h2_inflight = req;
    conn_mark_dirty(c);
}

static void h2_on_readable(struct conn *c)
{
    struct worker *w = c->w;

    for (;;) {
        ssize_t n = read(c->fd, w->scratch, sizeof(w->scratch));
        if (n > 0) {
            ssize_t used = nghttp2_session_mem_recv(c->h2, w->scratch, (size_t)n);
            if (used < 0) {
                fprintf(stderr, "# worker %u: HTTP/2 receive failed: %s\n", w->index,
                        nghttp2_strerror((int)used));
                conn_close(c, "HTTP/2 protocol error");
                return;
            }
            if (c->state != CONN_OPEN)
                return;
            conn_mark_dirty(c); /* SETTINGS and PING acks, WINDOW_UPDATE */
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN)
            return;
        conn_close(c, n == 0 ? "connection closed by the server" : strerror(errno));
        return;
    }
}

/* ---- transport-independent submit and event dispatch ---- */

static void conn_submit(struct conn *c, struct request *req)
{
    request_reset(req);
    req->conn = c;
    if (c->state == CONN_CLOSED) {
        if (c->used)
            c->w->st.reconnects++;
        c->used = true;
        conn_open_async(c);
    }
    if (opt.proto == PROTO_H2)
        h2_submit(c, req);
    else
        h1_submit(c, req);
}

static void conn_on_event(struct conn *c, uint32_t events)
{
    if (c->state == CONN_CONNECTING) {
        if (!(events & (EPOLLOUT | EPOLLERR | EPOLLHUP)))
            return;
        conn_on_connected(c);
        if (c->state != CONN_OPEN)
            return;
    }
    if (c->state != CONN_OPEN)
        return;
    if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) {
        if (opt.proto == PROTO_H2)
            h2_on_readable(c);
        else
            h1_on_readable(c);
    }
    if (c->state == CONN_OPEN && (events & EPOLLOUT))
        conn_mark_dirty(c);
}

static void worker_flush_dirty(struct worker *w)
{
    while (w->dirty_head != NULL) {
        struct conn *c = w->dirty_head;
        w->dirty_head = c->dirty_next;
        if (w->dirty_head == NULL)
            w->dirty_tail = NULL;
        c->dirty = false;
        conn_flush(c);
    }
}

/* ---- delayed acks ---- */

static void delayed_push(struct worker *w, uint32_t index, uint64_t seq, uint64_t due_ns)
{
    if (w->delayed_count == w->delayed_cap) {
        worker_fail(w, "internal error: delayed-ack queue full (%zu entries)", w->delayed_cap);
        return;
    }
    size_t slot = (w->delayed_head + w->delayed_count) % w->delayed_cap;
    w->delayed[slot] = (struct delayed){.index = index, .seq = seq, .due_ns = due_ns};
    w->delayed_count++;
}

static bool delayed_pop_due(struct worker *w, uint64_t now, uint32_t *index, uint64_t *seq)
{
    if (w->delayed_count == 0 || w->delayed[w->delayed_head].due_ns > now)
        return false;
    *index = w->delayed[w->delayed_head].index;
    *seq = w->delayed[w->delayed_head].seq;
    w->delayed_head = (w->delayed_head + 1) % w->delayed_cap;
    w->delayed_count--;
    return true;
}

/* ---- pairs mode ---- */

static struct conn *pair_waiter_conn(struct worker *w, size_t pair)
{
    return &w->conns[pair / opt.streams_per_conn];
}

static struct conn *pair_acker_conn(struct worker *w, size_t pair)
{
    return &w->conns[w->waiter_conns + pair / opt.streams_per_conn];
}

static void pair_send_ack(struct worker *w, struct pair *p)
{
    p->attempts++;
    conn_submit(pair_acker_conn(w, p->ack.owner), &p->ack);
}

static void pair_start(struct worker *w, uint32_t index)
{
    struct pair *p = &w->pairs[index];

    p->waiter.seq++;
    p->waiter.key = id_key(w, index, p->waiter.seq);
    p->ack.seq = p->waiter.seq;
    p->ack.key = p->waiter.key;
    p->active = true;
    p->waiter_done = false;
    p->ack_done = false;
    p->failed = false;
    p->attempts = 0;
    w->active_pairs++;
    w->st.started++;
    conn_submit(pair_waiter_conn(w, index), &p->waiter);
    if (opt.ack_delay_ns == 0)
        pair_send_ack(w, p);
    else
        delayed_push(w, index, p->waiter.seq, now_ns() + opt.ack_delay_ns);
}

static void pair_finish(struct worker *w, struct pair *p)
{
    uint64_t now = now_ns();

    p->active = false;
    w->active_pairs--;
    if (!p->failed) {
        w->st.completions++;
        if (now >= shared.warm_ns && now < shared.end_ns) {
            uint64_t latency = p->answer_ns > p->ack_sent_ns ? p->answer_ns - p->ack_sent_ns : 0;
            w->st.completions_window++;
            w->st.retries_window += p->attempts - 1;
            samples_push(&w->st.latency, latency);
        }
    }
    w->ready[w->ready_count++] = p->waiter.owner;
}

static void pair_on_waiter_response(struct worker *w, struct pair *p, struct request *req)
{
    p->waiter_done = true;
    if (req->status == 200 && req->body_ok && req->body_len == opt.body_bytes) {
        p->answer_ns = now_ns();
        w->st.answered++;
        return;
    }
    p->failed = true;
    w->st.unexpected++;
    if (req->status == 200)
        w->st.body_mismatch++;
    /* The ack may be retrying "no waiter" for an id that will never have one: stop it. */
    if (!p->ack.in_flight && !p->ack_done && p->attempts > 0)
        p->ack_done = true;
}

static void pair_on_ack_response(struct worker *w, struct pair *p, struct request *req)
{
    if (req->status == opt.peer.delivered) {
        p->ack_done = true;
        w->st.delivered++;
        return;
    }
    if (req->status == opt.peer.no_waiter && !p->waiter_done) {
        if (p->attempts > opt.max_ack_retries) {
            w->st.retries_exhausted++;
            w->st.unexpected++;
            p->ack_done = true;
            p->failed = true;
            return;
        }
        w->st.ack_retries++;
        if (opt.retry_delay_ns == 0)
            pair_send_ack(w, p);
        else
            delayed_push(w, req->owner, req->seq, now_ns() + opt.retry_delay_ns);
        return;
    }
    if (req->status != opt.peer.no_waiter)
        w->st.unexpected++;
    p->ack_done = true;
    p->failed = true;
}

static void pair_on_response(struct worker *w, struct request *req)
{
    struct pair *p = &w->pairs[req->owner];

    if (req->kind == REQ_START)
        pair_on_waiter_response(w, p, req);
    else
        pair_on_ack_response(w, p, req);
    if (p->active && p->waiter_done && p->ack_done)
        pair_finish(w, p);
}

static void pairs_tick(struct worker *w, int phase)
{
    uint64_t now = now_ns();
    uint32_t index;
    uint64_t seq;

    if (!w->started && phase == PHASE_RUN) {
        w->started = true;
        for (size_t i = 0; i < w->pair_count; i++)
            w->ready[w->ready_count++] = (uint32_t)i;
    }
    while (delayed_pop_due(w, now, &index, &seq)) {
        struct pair *p = &w->pairs[index];
        if (!p->active || p->waiter.seq != seq)
            continue;
        if (!p->waiter_done)
            pair_send_ack(w, p);
        else if (!p->ack_done) {
            p->ack_done = true;
            pair_finish(w, p);
        }
    }
    bool open_for_new = phase == PHASE_RUN && now < shared.end_ns;
    if (open_for_new) {
        while (w->ready_count > 0)
            pair_start(w, w->ready[--w->ready_count]);
    }
    if (w->started && (!open_for_new || phase == PHASE_ABORT) && w->active_pairs == 0)
        atomic_store(&w->done, 1);
}

/* ---- hold mode ---- */

static void held_resolve(struct worker *w, struct held_waiter *h)
{
    if (h->resolved)
        return;
    h->resolved = true;
    w->held_resolved++;
    if (!h->failed && h->answered && h->delivered) {
        uint64_t latency = h->answer_ns > h->ack_sent_ns ? h->answer_ns - h->ack_sent_ns : 0;
        samples_push(&w->st.latency, latency);
        w->st.completions++;
        w->st.completions_window++;
    }
}

static void held_acker_idle(struct worker *w, struct request *ack)
{
    w->acks_in_flight--;
    w->idle_ackers[w->idle_count++] = (uint32_t)(ack - w->ack_reqs);
}

static void held_on_response(struct worker *w, struct request *req)
{
    if (req->kind == REQ_START) {
        struct held_waiter *h = &w->held[req->owner];
        h->answered = true;
        if (req->status == 200 && req->body_ok && req->body_len == opt.body_bytes && w->draining) {
            h->answer_ns = now_ns();
            if (h->answer_ns > w->last_answer_ns)
                w->last_answer_ns = h->answer_ns;
            w->st.answered++;
        } else {
            h->failed = true;
            w->st.unexpected++;
            if (req->status == 200)
                w->st.body_mismatch++;
        }
        if (h->delivered || h->failed)
            held_resolve(w, h);
        return;
    }

    struct held_waiter *h = &w->held[req->owner];
    held_acker_idle(w, req);
    if (req->status == opt.peer.delivered) {
        h->delivered = true;
        w->st.delivered++;
        if (h->answered)
            held_resolve(w, h);
        return;
    }
    if (req->status == opt.peer.no_waiter && !h->answered) {
        if (h->attempts > opt.max_ack_retries) {
            w->st.retries_exhausted++;
            w->st.unexpected++;
            h->failed = true;
            held_resolve(w, h);
            return;
        }
        w->st.ack_retries++;
        delayed_push(w, req->owner, 0, now_ns() + opt.retry_delay_ns);
        return;
    }
    if (req->status != opt.peer.no_waiter)
        w->st.unexpected++;
    h->failed = true;
    held_resolve(w, h);
}

/* Hand the next id to each idle acker: due retries first, then ids never acked. */
static void held_assign_acks(struct worker *w)
{
    uint64_t now = now_ns();

    while (w->idle_count > 0) {
        uint32_t index;
        uint64_t seq;
        if (!delayed_pop_due(w, now, &index, &seq)) {
            while (w->next_ack < w->held_count && w->held[w->next_ack].resolved)
                w->next_ack++;
            if (w->next_ack == w->held_count)
                return;
            index = (uint32_t)w->next_ack++;
        }
        struct held_waiter *h = &w->held[index];
        if (h->resolved || h->answered)
            continue;
        uint32_t acker = w->idle_ackers[--w->idle_count];
        struct request *ack = &w->ack_reqs[acker];
        ack->owner = index;
        ack->seq = 0;
        ack->key = h->start.key;
        h->attempts++;
        w->acks_in_flight++;
        conn_submit(&w->conns[w->waiter_conns + acker / opt.streams_per_conn], ack);
    }
}

static void hold_begin(struct worker *w)
{
    size_t per_conn = opt.streams_per_conn;

    for (size_t i = 0; i < w->held_count; i++) {
        struct held_waiter *h = &w->held[i];
        h->start.kind = REQ_START;
        h->start.owner = (uint32_t)i;
        h->start.seq = 0;
        h->start.key = id_key(w, (uint32_t)i, 0);
        w->st.started++;
        conn_submit(&w->conns[i / per_conn], &h->start);
    }
}

static void hold_tick(struct worker *w, int phase)
{
    if (phase == PHASE_DRAIN && !w->draining) {
        w->draining = true;
        for (size_t i = 0; i < w->acker_count; i++)
            w->idle_ackers[w->idle_count++] = (uint32_t)i;
    }
    if (w->draining)
        held_assign_acks(w);
    atomic_store_explicit(&w->sent_published, w->held_sent, memory_order_release);
    if (w->draining && w->held_resolved == w->held_count && w->acks_in_flight == 0)
        atomic_store(&w->done, 1);
}

/* ---- worker thread ---- */

static int worker_poll_timeout_ms(struct worker *w)
{
    if (w->delayed_count == 0)
        return LOOP_TICK_MS;
    uint64_t now = now_ns();
    uint64_t due = w->delayed[w->delayed_head].due_ns;
    if (due <= now)
        return 0;
    uint64_t ms = (due - now + NS_PER_MS - 1) / NS_PER_MS;
    return ms < LOOP_TICK_MS ? (int)ms : LOOP_TICK_MS;
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    struct epoll_event events[EPOLL_BATCH];

    if (opt.mode == MODE_PAIRS) {
        for (size_t i = 0; i < w->conn_count; i++) {
            w->conns[i].used = true;
            conn_open_async(&w->conns[i]);
        }
    } else {
        hold_begin(w);
    }
    worker_flush_dirty(w);
    for (;;) {
        int phase = phase_load();
        if (phase == PHASE_FINISH || phase == PHASE_ABORT || atomic_load(&w->failed))
            break;
        if (opt.mode == MODE_PAIRS && atomic_load(&w->done))
            break;
        int n = epoll_wait(w->epfd, events, EPOLL_BATCH, worker_poll_timeout_ms(w));
        if (n < 0 && errno != EINTR) {
            worker_fail(w, "epoll_wait failed: %s", strerror(errno));
            break;
        }
        for (int i = 0; i < n; i++)
            conn_on_event(events[i].data.ptr, events[i].events);
        if (opt.mode == MODE_PAIRS) {
            if (!atomic_load(&w->ready_flag) && w->open_count == w->conn_count)
                atomic_store(&w->ready_flag, 1);
            pairs_tick(w, phase_load());
        } else {
            hold_tick(w, phase_load());
        }
        worker_flush_dirty(w);
    }
    return NULL;
}

/* ---- option parsing ---- */

static const char usage_text[] =
    "Usage: corr_loadgen --target HOST:PORT [OPTION]...\n"
    "Load generator for the /start/{id} and /ack/{id} correlation pattern.\n"
    "\n"
    "  --target HOST:PORT    server; HOST is an IPv4 address in 127.0.0.0/8, or\n"
    "                        localhost\n"
    "  --mode pairs|hold     closed-loop pairs (default), or hold waiters and then\n"
    "                        drain them\n"
    "  --proto http1|h2      HTTP/1.1 keep-alive (default), or cleartext HTTP/2 with\n"
    "                        prior knowledge\n"
    "  --peer corrd|go|nchan ack statuses of the server (default corrd): corrd and go\n"
    "                        send 202 delivered and 404 no waiter, nchan 201 and 202\n"
    "  --threads N           event-loop threads (default 1)\n"
    "  --source-ips LIST     bind connections round-robin to these source addresses\n"
    "                        in 127.0.0.0/8: comma-separated addresses or FIRST-LAST\n"
    "                        ranges\n"
    "  --body-bytes N        ack body size in bytes (0-%u, default 16)\n"
    "  --wait-timeout-ms MS  ?timeout= of each /start (default 10000 in pairs and\n"
    "                        300000 in hold; nchan ignores it)\n"
    "  --max-ack-retries N   give up an id after N retried 'no waiter' acks\n"
    "                        (default 1000)\n"
    "  --retry-delay-us US   delay before retrying such an ack (microseconds,\n"
    "                        default 0 in pairs and 10000 in hold)\n"
    "  --streams-per-conn N  HTTP/2 streams per connection (1-1000, default 100)\n"
    "  --connect-batch N     connections being established at once (default 256)\n"
    "  --max-seconds S       abort the run after S seconds in all (default 900)\n"
    "  --server-pid PID      server process to read RSS and CPU time from\n"
    "                        (repeatable; the values are summed, so for nginx\n"
    "                        pass the master and the worker)\n"
    "  --label KEY=VALUE     copied into the result line; repeatable\n"
    "  --latency-out FILE    write the latency percentile curve to FILE\n"
    "  --help                print this help and exit\n"
    "\n"
    "pairs mode:\n"
    "  --pairs P             concurrent pairs (default 16)\n"
    "  --seconds S           length of the measured window (seconds, default 10)\n"
    "  --warmup S            seconds of load before the window starts (default 2)\n"
    "  --ack-delay-us US     send each id's first ack this long after its /start\n"
    "                        (microseconds, default 0)\n"
    "\n"
    "hold mode:\n"
    "  --waiters N           waiters to hold (default 10000)\n"
    "  --ackers M            concurrent acks while draining: HTTP/1.1 connections,\n"
    "                        or HTTP/2 streams (default 16)\n"
    "  --settle-ms MS        wait after the last /start is sent before reading RSS\n"
    "                        (milliseconds, default 1000); with --server-pid, also\n"
    "                        until the server's CPU time and RSS stop changing (at\n"
    "                        most 10 times as long). bytes_per_waiter is the RSS\n"
    "                        growth per waiter, so start a fresh server: one that\n"
    "                        held waiters before can reuse the freed memory\n"
    "\n"
    "Output: one 'result key=value ...' line on stdout, and lines starting with '#'\n"
    "on stderr. Exit status: 0 when the run is valid, 1 when it is not, 2 on invalid\n"
    "options or setup errors.\n";

static void usage(FILE *out)
{
    fprintf(out, usage_text, MAX_BODY_BYTES);
}

static int parse_u64(const char *option, const char *value, uint64_t min, uint64_t max,
                     uint64_t *out)
{
    char *end;

    errno = 0;
    unsigned long long v = strtoull(value, &end, 10);
    if (value[0] == '\0' || value[0] == '-' || *end != '\0' || errno != 0 || v < min || v > max) {
        fprintf(stderr,
                "corr_loadgen: invalid value '%s' for --%s: expected an integer from %" PRIu64
                " to %" PRIu64 "\n",
                value, option, min, max);
        return -1;
    }
    *out = v;
    return 0;
}

static int parse_seconds(const char *option, const char *value, double min, double *out)
{
    char *end;

    errno = 0;
    double v = strtod(value, &end);
    if (value[0] == '\0' || *end != '\0' || errno != 0 || !(v >= min) || v > 86400.0) {
        fprintf(stderr,
                "corr_loadgen: invalid value '%s' for --%s: expected seconds from %g to 86400\n",
                value, option, min);
        return -1;
    }
    *out = v;
    return 0;
}

static bool is_loopback(struct in_addr addr)
{
    return (ntohl(addr.s_addr) >> 24) == 127;
}

static int parse_loopback_addr(const char *option, const char *text, struct in_addr *out)
{
    if (strcmp(text, "localhost") == 0)
        text = "127.0.0.1";
    if (inet_pton(AF_INET, text, out) != 1 || !is_loopback(*out)) {
        fprintf(stderr,
                "corr_loadgen: invalid address '%s' for --%s: only IPv4 addresses in 127.0.0.0/8 "
                "are allowed\n",
                text, option);
        return -1;
    }
    return 0;
}

static int parse_target(const char *value)
{
    char host[64];
    const char *colon = strrchr(value, ':');
    uint64_t port;

    if (colon == NULL || (size_t)(colon - value) >= sizeof(host)) {
        fprintf(stderr, "corr_loadgen: invalid value '%s' for --target: expected HOST:PORT\n",
                value);
        return -1;
    }
    memcpy(host, value, (size_t)(colon - value));
    host[colon - value] = '\0';
    if (parse_loopback_addr("target", host, &opt.target.sin_addr) != 0 ||
        parse_u64("target", colon + 1, 1, 65535, &port) != 0)
        return -1;
    opt.target.sin_family = AF_INET;
    opt.target.sin_port = htons((uint16_t)port);
    char addr[INET_ADDRSTRLEN];
    inet_ntop(AF_INET, &opt.target.sin_addr, addr, sizeof(addr));
    snprintf(opt.authority, sizeof(opt.authority), "%s:%u", addr, (unsigned)port);
    return 0;
}

static int parse_source_ips(const char *value)
{
    char *copy = strdup(value);
    char *save = NULL;
    int rc = 0;

    for (char *item = strtok_r(copy, ",", &save); item != NULL && rc == 0;
         item = strtok_r(NULL, ",", &save)) {
        struct in_addr first, last;
        char *dash = strchr(item, '-');
        if (dash != NULL)
            *dash = '\0';
        if (parse_loopback_addr("source-ips", item, &first) != 0 ||
            parse_loopback_addr("source-ips", dash != NULL ? dash + 1 : item, &last) != 0) {
            rc = -1;
            break;
        }
        for (uint32_t a = ntohl(first.s_addr); a <= ntohl(last.s_addr); a++) {
            if (opt.source_count == MAX_SOURCES) {
                fprintf(stderr, "corr_loadgen: --source-ips lists more than %d addresses\n",
                        MAX_SOURCES);
                rc = -1;
                break;
            }
            opt.sources[opt.source_count++].s_addr = htonl(a);
        }
    }
    free(copy);
    if (rc == 0 && opt.source_count == 0) {
        fprintf(stderr, "corr_loadgen: --source-ips '%s' lists no address\n", value);
        rc = -1;
    }
    return rc;
}

enum option_id {
    OPT_TARGET = 256,
    OPT_MODE,
    OPT_PROTO,
    OPT_PEER,
    OPT_THREADS,
    OPT_SOURCE_IPS,
    OPT_BODY_BYTES,
    OPT_WAIT_TIMEOUT,
    OPT_MAX_ACK_RETRIES,
    OPT_RETRY_DELAY,
    OPT_STREAMS,
    OPT_CONNECT_BATCH,
    OPT_MAX_SECONDS,
    OPT_SERVER_PID,
    OPT_LABEL,
    OPT_LATENCY_OUT,
    OPT_PAIRS,
    OPT_SECONDS,
    OPT_WARMUP,
    OPT_ACK_DELAY,
    OPT_WAITERS,
    OPT_ACKERS,
    OPT_SETTLE,
    OPT_HELP,
};

static const struct option long_options[] = {
    {"target", required_argument, NULL, OPT_TARGET},
    {"mode", required_argument, NULL, OPT_MODE},
    {"proto", required_argument, NULL, OPT_PROTO},
    {"peer", required_argument, NULL, OPT_PEER},
    {"threads", required_argument, NULL, OPT_THREADS},
    {"source-ips", required_argument, NULL, OPT_SOURCE_IPS},
    {"body-bytes", required_argument, NULL, OPT_BODY_BYTES},
    {"wait-timeout-ms", required_argument, NULL, OPT_WAIT_TIMEOUT},
    {"max-ack-retries", required_argument, NULL, OPT_MAX_ACK_RETRIES},
    {"retry-delay-us", required_argument, NULL, OPT_RETRY_DELAY},
    {"streams-per-conn", required_argument, NULL, OPT_STREAMS},
    {"connect-batch", required_argument, NULL, OPT_CONNECT_BATCH},
    {"max-seconds", required_argument, NULL, OPT_MAX_SECONDS},
    {"server-pid", required_argument, NULL, OPT_SERVER_PID},
    {"label", required_argument, NULL, OPT_LABEL},
    {"latency-out", required_argument, NULL, OPT_LATENCY_OUT},
    {"pairs", required_argument, NULL, OPT_PAIRS},
    {"seconds", required_argument, NULL, OPT_SECONDS},
    {"warmup", required_argument, NULL, OPT_WARMUP},
    {"ack-delay-us", required_argument, NULL, OPT_ACK_DELAY},
    {"waiters", required_argument, NULL, OPT_WAITERS},
    {"ackers", required_argument, NULL, OPT_ACKERS},
    {"settle-ms", required_argument, NULL, OPT_SETTLE},
    {"help", no_argument, NULL, OPT_HELP},
    {NULL, 0, NULL, 0},
};

static int parse_choice(const char *option, const char *value, const char *const *choices,
                        int count)
{
    for (int i = 0; i < count; i++) {
        if (strcmp(value, choices[i]) == 0)
            return i;
    }
    fprintf(stderr, "corr_loadgen: invalid value '%s' for --%s; try --help\n", value, option);
    return -1;
}

static int parse_label(const char *value)
{
    const char *eq = strchr(value, '=');

    if (eq == NULL || eq == value || strpbrk(value, " \t\n") != NULL) {
        fprintf(stderr,
                "corr_loadgen: invalid value '%s' for --label: expected KEY=VALUE with no "
                "spaces\n",
                value);
        return -1;
    }
    if (opt.label_count == MAX_LABELS) {
        fprintf(stderr, "corr_loadgen: more than %d --label options\n", MAX_LABELS);
        return -1;
    }
    opt.labels[opt.label_count++] = value;
    return 0;
}

/* Apply one option; returns 0, or -1 after printing why the value is invalid. */
static int apply_option(int id, const char *value, bool *retry_delay_set, bool *wait_timeout_set)
{
    static const char *const modes[] = {"pairs", "hold"};
    static const char *const protos[] = {"http1", "h2"};
    static const char *const peers[] = {"corrd", "go", "nchan"};
    uint64_t v = 0;
    int choice;

    switch (id) {
    case OPT_TARGET:
        return parse_target(value);
    case OPT_MODE:
        if ((choice = parse_choice("mode", value, modes, 2)) < 0)
            return -1;
        opt.mode = (enum mode)choice;
        return 0;
    case OPT_PROTO:
        if ((choice = parse_choice("proto", value, protos, 2)) < 0)
            return -1;
        opt.proto = (enum proto)choice;
        return 0;
    case OPT_PEER:
        if ((choice = parse_choice("peer", value, peers, 3)) < 0)
            return -1;
        opt.peer = peer_profiles[choice];
        return 0;
    case OPT_THREADS:
        if (parse_u64("threads", value, 1, 64, &v) != 0)
            return -1;
        opt.threads = (unsigned)v;
        return 0;
    case OPT_SOURCE_IPS:
        return parse_source_ips(value);
    case OPT_BODY_BYTES:
        if (parse_u64("body-bytes", value, 0, MAX_BODY_BYTES, &v) != 0)
            return -1;
        opt.body_bytes = (size_t)v;
        return 0;
    case OPT_WAIT_TIMEOUT:
        *wait_timeout_set = true;
        return parse_u64("wait-timeout-ms", value, 1, 86400000, &opt.wait_timeout_ms);
    case OPT_MAX_ACK_RETRIES:
        if (parse_u64("max-ack-retries", value, 0, 60000, &v) != 0)
            return -1;
        opt.max_ack_retries = (unsigned)v;
        return 0;
    case OPT_RETRY_DELAY:
        *retry_delay_set = true;
        if (parse_u64("retry-delay-us", value, 0, 10000000, &v) != 0)
            return -1;
        opt.retry_delay_ns = v * 1000;
        return 0;
    case OPT_STREAMS:
        if (parse_u64("streams-per-conn", value, 1, 1000, &v) != 0)
            return -1;
        opt.streams_per_conn = (unsigned)v;
        return 0;
    case OPT_CONNECT_BATCH:
        if (parse_u64("connect-batch", value, 1, 100000, &v) != 0)
            return -1;
        opt.connect_batch = (unsigned)v;
        return 0;
    case OPT_MAX_SECONDS:
        return parse_seconds("max-seconds", value, 1.0, &opt.max_seconds);
    case OPT_SERVER_PID:
        if (opt.server_pid_count == MAX_SERVER_PIDS) {
            fprintf(stderr, "corr_loadgen: more than %d --server-pid options\n", MAX_SERVER_PIDS);
            return -1;
        }
        if (parse_u64("server-pid", value, 1, INT_MAX, &v) != 0)
            return -1;
        opt.server_pids[opt.server_pid_count++] = (pid_t)v;
        return 0;
    case OPT_LABEL:
        return parse_label(value);
    case OPT_LATENCY_OUT:
        opt.latency_out = value;
        return 0;
    case OPT_PAIRS:
        if (parse_u64("pairs", value, 1, 1000000, &v) != 0)
            return -1;
        opt.pairs = (unsigned)v;
        return 0;
    case OPT_SECONDS:
        return parse_seconds("seconds", value, 0.1, &opt.seconds);
    case OPT_WARMUP:
        return parse_seconds("warmup", value, 0.0, &opt.warmup);
    case OPT_ACK_DELAY:
        if (parse_u64("ack-delay-us", value, 0, 10000000, &v) != 0)
            return -1;
        opt.ack_delay_ns = v * 1000;
        return 0;
    case OPT_WAITERS:
        if (parse_u64("waiters", value, 1, 10000000, &v) != 0)
            return -1;
        opt.waiters = (size_t)v;
        return 0;
    case OPT_ACKERS:
        if (parse_u64("ackers", value, 1, 100000, &v) != 0)
            return -1;
        opt.ackers = (size_t)v;
        return 0;
    case OPT_SETTLE:
        return parse_u64("settle-ms", value, 0, 600000, &opt.settle_ms);
    case OPT_HELP:
        usage(stdout);
        exit(0);
    default:
        fprintf(stderr, "Try 'corr_loadgen --help' for the list of options.\n");
        return -1;
    }
}

static int parse_options(int argc, char **argv)
{
    bool retry_delay_set = false;
    bool wait_timeout_set = false;
    int c;

    opt.mode = MODE_PAIRS;
    opt.proto = PROTO_HTTP1;
    opt.peer = peer_profiles[0];
    opt.threads = 1;
    opt.pairs = 16;
    opt.seconds = 10.0;
    opt.warmup = 2.0;
    opt.waiters = 10000;
    opt.ackers = 16;
    opt.streams_per_conn = 100;
    opt.body_bytes = 16;
    opt.max_ack_retries = 1000;
    opt.settle_ms = 1000;
    opt.connect_batch = 256;
    opt.max_seconds = 900.0;

    while ((c = getopt_long(argc, argv, "", long_options, NULL)) != -1) {
        if (apply_option(c, optarg, &retry_delay_set, &wait_timeout_set) != 0)
            return -1;
    }
    if (optind < argc) {
        fprintf(stderr, "corr_loadgen: unexpected argument '%s'; try --help\n", argv[optind]);
        return -1;
    }
    if (opt.authority[0] == '\0') {
        fprintf(stderr, "corr_loadgen: missing --target HOST:PORT; try --help\n");
        return -1;
    }
    if (!wait_timeout_set)
        opt.wait_timeout_ms = opt.mode == MODE_HOLD ? 300000 : 10000;
    if (!retry_delay_set)
        opt.retry_delay_ns = opt.mode == MODE_HOLD ? 10000000 : 0;
    if (opt.proto == PROTO_HTTP1)
        opt.streams_per_conn = 1;
    if (opt.mode == MODE_PAIRS && opt.pairs < opt.threads) {
        fprintf(stderr, "corr_loadgen: --pairs %u is less than --threads %u\n", opt.pairs,
                opt.threads);
        return -1;
    }
    if (opt.mode == MODE_HOLD && (opt.waiters < opt.threads || opt.ackers < opt.threads)) {
        fprintf(stderr, "corr_loadgen: --waiters and --ackers must be at least --threads (%u)\n",
                opt.threads);
        return -1;
    }

    uint32_t salt;
    if (getrandom(&salt, sizeof(salt), 0) != sizeof(salt))
        salt = (uint32_t)now_ns();
    snprintf(opt.id_prefix, sizeof(opt.id_prefix), "lg%d%08x", (int)getpid(), salt);
    opt.id_salt = mix64(salt ^ ((uint64_t)getpid() << 32));
    return 0;
}

/* ---- server readings from /proc ---- */

/* Sum of utime+stime of the server processes, in seconds; -1 when unreadable. */
static double server_cpu_seconds(void)
{
    double total = 0;

    if (opt.server_pid_count == 0)
        return -1;
    for (size_t i = 0; i < opt.server_pid_count; i++) {
        char path[64];
        char line[1024];
        snprintf(path, sizeof(path), "/proc/%d/stat", (int)opt.server_pids[i]);
        FILE *f = fopen(path, "r");
        if (f == NULL)
            return -1;
        size_t n = fread(line, 1, sizeof(line) - 1, f);
        fclose(f);
        line[n] = '\0';
        /* Fields after the command name, which may contain spaces: state is field 3, utime 14. */
        char *p = strrchr(line, ')');
        unsigned long long utime, stime;
        if (p == NULL || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu",
                                &utime, &stime) != 2)
            return -1;
        total += (double)(utime + stime) / (double)sysconf(_SC_CLK_TCK);
    }
    return total;
}

/* Sum of VmRSS of the server processes, in KiB; -1 when unreadable. */
static long long server_rss_kib(void)
{
    long long total = 0;

    if (opt.server_pid_count == 0)
        return -1;
    for (size_t i = 0; i < opt.server_pid_count; i++) {
        char path[64];
        char line[256];
        long long kib = -1;
        snprintf(path, sizeof(path), "/proc/%d/status", (int)opt.server_pids[i]);
        FILE *f = fopen(path, "r");
        if (f == NULL)
            return -1;
        while (fgets(line, sizeof(line), f) != NULL) {
            if (sscanf(line, "VmRSS: %lld kB", &kib) == 1)
                break;
        }
        fclose(f);
        if (kib < 0)
            return -1;
        total += kib;
    }
    return total;
}

static double gen_cpu_seconds(void)
{
    struct rusage ru;

    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

/* ---- setup ---- */

static size_t div_ceil(size_t a, size_t b)
{
    return (a + b - 1) / b;
}

static size_t share_of(size_t total, unsigned parts, unsigned index)
{
    return total / parts + (index < total % parts ? 1 : 0);
}

static void worker_setup(struct worker *w, unsigned index, size_t *source_cursor)
{
    size_t per_conn = opt.streams_per_conn;

    w->index = index;
    w->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (w->epfd < 0) {
        fprintf(stderr, "corr_loadgen: epoll_create1 failed: %s\n", strerror(errno));
        exit(1);
    }
    size_t slots;
    if (opt.mode == MODE_PAIRS) {
        w->pair_count = share_of(opt.pairs, opt.threads, index);
        w->waiter_conns = div_ceil(w->pair_count, per_conn);
        w->conn_count = 2 * w->waiter_conns;
        w->pairs = xcalloc(w->pair_count, sizeof(*w->pairs));
        w->ready = xcalloc(w->pair_count, sizeof(*w->ready));
        for (size_t i = 0; i < w->pair_count; i++) {
            struct pair *p = &w->pairs[i];
            p->waiter.kind = REQ_START;
            p->waiter.owner = (uint32_t)i;
            p->ack.kind = REQ_ACK;
            p->ack.owner = (uint32_t)i;
        }
        slots = w->pair_count;
    } else {
        w->held_count = share_of(opt.waiters, opt.threads, index);
        w->acker_count = share_of(opt.ackers, opt.threads, index);
        w->waiter_conns = div_ceil(w->held_count, per_conn);
        w->conn_count = w->waiter_conns + div_ceil(w->acker_count, per_conn);
        w->held = xcalloc(w->held_count, sizeof(*w->held));
        w->ack_reqs = xcalloc(w->acker_count, sizeof(*w->ack_reqs));
        w->idle_ackers = xcalloc(w->acker_count, sizeof(*w->idle_ackers));
        for (size_t i = 0; i < w->acker_count; i++)
            w->ack_reqs[i].kind = REQ_ACK;
        slots = w->held_count;
    }
    w->delayed_cap = slots;
    w->delayed = xcalloc(slots, sizeof(*w->delayed));
    w->conns = xcalloc(w->conn_count, sizeof(*w->conns));
    w->connect_queue = xcalloc(w->conn_count, sizeof(*w->connect_queue));
    for (size_t i = 0; i < w->conn_count; i++) {
        struct conn *c = &w->conns[i];
        c->w = w;
        c->fd = -1;
        c->state = CONN_CLOSED;
        c->source = opt.source_count != 0 ? (unsigned)((*source_cursor)++ % opt.source_count) : 0;
    }
}

/* Check that the connections fit under RLIMIT_NOFILE, raising the soft limit if needed. */
static int check_fd_budget(size_t conns)
{
    struct rlimit lim;

    getrlimit(RLIMIT_NOFILE, &lim);
    rlim_t need = (rlim_t)(conns + FD_RESERVE);
    if (lim.rlim_cur < need && lim.rlim_max >= need) {
        lim.rlim_cur = need;
        setrlimit(RLIMIT_NOFILE, &lim);
    }
    getrlimit(RLIMIT_NOFILE, &lim);
    if (lim.rlim_cur < need) {
        fprintf(
            stderr,
            "corr_loadgen: this run needs %zu connections (%llu file descriptors) but the limit "
            "is %llu; use --proto h2, fewer --waiters or --pairs, or split the load over "
            "several processes\n",
            conns, (unsigned long long)need, (unsigned long long)lim.rlim_cur);
        return -1;
    }
    return 0;
}

/* ---- coordination in the main thread ---- */

struct run {
    struct worker *workers;
    uint64_t start_ns;
    uint64_t deadline_ns;
    bool aborted;
    const char *abort_reason;
    /* pairs */
    double window_s;
    /* hold */
    double register_s;
    double settle_s;
    double drain_s;
    long long rss_before_kib;
    long long rss_held_kib;
    /* CPU readings over the measured interval */
    double gen_cpu_s;
    double server_cpu_s;
    double server_register_cpu_s;
    double wall_s;
};

static bool any_worker_failed(struct run *run)
{
    for (unsigned i = 0; i < opt.threads; i++) {
        if (atomic_load(&run->workers[i].failed))
            return true;
    }
    return false;
}

static void run_abort(struct run *run, const char *reason)
{
    if (!run->aborted) {
        run->aborted = true;
        run->abort_reason = reason;
        fprintf(stderr, "# aborting: %s\n", reason);
    }
    atomic_store_explicit(&shared.phase, PHASE_ABORT, memory_order_release);
}

/* Sleep in ticks until @until_ns; on a worker failure or the deadline, abort and return false. */
static bool run_sleep_until(struct run *run, uint64_t until_ns)
{
    for (;;) {
        if (any_worker_failed(run)) {
            run_abort(run, "a worker failed");
            return false;
        }
        uint64_t now = now_ns();
        if (now >= run->deadline_ns) {
            run_abort(run, "--max-seconds reached");
            return false;
        }
        if (now >= until_ns)
            return true;
        uint64_t step = until_ns - now;
        sleep_ns(step < LOOP_TICK_MS * NS_PER_MS ? step : LOOP_TICK_MS * NS_PER_MS);
    }
}

static bool all_workers(struct run *run, _Atomic int *(*field)(struct worker *))
{
    for (unsigned i = 0; i < opt.threads; i++) {
        if (!atomic_load(field(&run->workers[i])))
            return false;
    }
    return true;
}

static _Atomic int *ready_field(struct worker *w)
{
    return &w->ready_flag;
}

static _Atomic int *done_field(struct worker *w)
{
    return &w->done;
}

/* Sleep until every worker sets @field; false on abort. */
static bool run_wait_all(struct run *run, _Atomic int *(*field)(struct worker *), uint64_t limit_ns)
{
    while (!all_workers(run, field)) {
        if (now_ns() >= limit_ns) {
            run_abort(run, "timed out waiting for the workers");
            return false;
        }
        if (!run_sleep_until(run, now_ns() + NS_PER_MS))
            return false;
    }
    return true;
}

static void run_pairs(struct run *run)
{
    if (!run_wait_all(run, ready_field, run->deadline_ns))
        return;
    uint64_t t0 = now_ns();
    shared.warm_ns = t0 + (uint64_t)(opt.warmup * 1e9);
    shared.end_ns = shared.warm_ns + (uint64_t)(opt.seconds * 1e9);
    atomic_store_explicit(&shared.phase, PHASE_RUN, memory_order_release);
    fprintf(stderr, "# all connections open; warmup %.1f s, then %.1f s measured\n", opt.warmup,
            opt.seconds);

    if (!run_sleep_until(run, shared.warm_ns))
        return;
    double gen0 = gen_cpu_seconds();
    double srv0 = server_cpu_seconds();
    uint64_t w0 = now_ns();
    if (!run_sleep_until(run, shared.end_ns))
        return;
    run->gen_cpu_s = gen_cpu_seconds() - gen0;
    run->server_cpu_s = srv0 >= 0 ? server_cpu_seconds() - srv0 : -1;
    run->wall_s = (double)(now_ns() - w0) / 1e9;
    run->window_s = (double)(shared.end_ns - shared.warm_ns) / 1e9;

    /* Pairs in flight at the window's end still have to finish: a waiter whose ack was lost
     * only returns after its timeout. */
    uint64_t drain_limit = shared.end_ns + opt.wait_timeout_ms * NS_PER_MS + 5 * NS_PER_SEC;
    if (run_wait_all(run, done_field, drain_limit))
        atomic_store_explicit(&shared.phase, PHASE_FINISH, memory_order_release);
}

static size_t hold_sent_total(struct run *run)
{
    size_t total = 0;

    for (unsigned i = 0; i < opt.threads; i++)
        total += atomic_load_explicit(&run->workers[i].sent_published, memory_order_acquire);
    return total;
}

/* Wait --settle-ms, then until the server's CPU time and RSS hold still for 200 ms. */
static void hold_settle(struct run *run)
{
    uint64_t start = now_ns();
    uint64_t limit = start + 10 * opt.settle_ms * NS_PER_MS + NS_PER_SEC;

    if (!run_sleep_until(run, start + opt.settle_ms * NS_PER_MS))
        return;
    if (opt.server_pid_count == 0)
        return;
    double cpu = server_cpu_seconds();
    long long rss = server_rss_kib();
    while (now_ns() < limit) {
        if (!run_sleep_until(run, now_ns() + 200 * NS_PER_MS))
            return;
        double cpu_now = server_cpu_seconds();
        long long rss_now = server_rss_kib();
        if (cpu_now == cpu && rss_now == rss)
            return;
        cpu = cpu_now;
        rss = rss_now;
    }
    fprintf(stderr, "# server CPU time or RSS still changing after %.1f s of settling\n",
            (double)(now_ns() - start) / 1e9);
}

static void run_hold(struct run *run)
{
    uint64_t t0 = now_ns();
    double srv0 = server_cpu_seconds();

    while (hold_sent_total(run) < opt.waiters) {
        if (!run_sleep_until(run, now_ns() + NS_PER_MS))
            return;
    }
    uint64_t t1 = now_ns();
    run->register_s = (double)(t1 - t0) / 1e9;
    fprintf(stderr, "# %zu /start requests sent in %.2f s; settling\n", opt.waiters,
            run->register_s);
    hold_settle(run);
    if (run->aborted)
        return;
    uint64_t t2 = now_ns();
    run->settle_s = (double)(t2 - t1) / 1e9;
    run->rss_held_kib = server_rss_kib();

    double gen0 = gen_cpu_seconds();
    double srv1 = server_cpu_seconds();
    run->server_register_cpu_s = srv0 >= 0 && srv1 >= 0 ? srv1 - srv0 : -1;
    atomic_store_explicit(&shared.phase, PHASE_DRAIN, memory_order_release);
    if (!run_wait_all(run, done_field, run->deadline_ns))
        return;
    uint64_t t3 = now_ns();
    run->gen_cpu_s = gen_cpu_seconds() - gen0;
    run->server_cpu_s = srv1 >= 0 ? server_cpu_seconds() - srv1 : -1;
    run->wall_s = (double)(t3 - t2) / 1e9;
    atomic_store_explicit(&shared.phase, PHASE_FINISH, memory_order_release);
}

/* Seconds from the first ack sent to the last waiter answered, over all workers. */
static double hold_drain_seconds(struct run *run)
{
    uint64_t first = UINT64_MAX;
    uint64_t last = 0;

    for (unsigned i = 0; i < opt.threads; i++) {
        struct worker *w = &run->workers[i];
        if (w->first_ack_ns != 0 && w->first_ack_ns < first)
            first = w->first_ack_ns;
        if (w->last_answer_ns > last)
            last = w->last_answer_ns;
    }
    return last > first ? (double)(last - first) / 1e9 : 0;
}

/* ---- report ---- */

static void stats_merge(struct stats *into, struct stats *from)
{
    for (int k = 0; k < REQ_KIND_COUNT; k++) {
        for (int s = 0; s < MAX_STATUS; s++)
            into->status_counts[k][s] += from->status_counts[k][s];
        into->transport_errors[k] += from->transport_errors[k];
    }
    into->unexpected += from->unexpected;
    into->body_mismatch += from->body_mismatch;
    into->ack_retries += from->ack_retries;
    into->retries_exhausted += from->retries_exhausted;
    into->reconnects += from->reconnects;
    into->started += from->started;
    into->answered += from->answered;
    into->delivered += from->delivered;
    into->completions += from->completions;
    into->completions_window += from->completions_window;
    into->retries_window += from->retries_window;
    for (size_t i = 0; i < from->latency.len; i++)
        samples_push(&into->latency, from->latency.v[i]);
}

/* Format the status counts as "start-200:N,ack-202:N,ack-error:N", with no '=' or space. */
static void format_statuses(const struct stats *st, char *out, size_t size)
{
    size_t pos = 0;

    out[0] = '\0';
    for (int k = 0; k < REQ_KIND_COUNT; k++) {
        for (int s = 0; s < MAX_STATUS; s++) {
            if (st->status_counts[k][s] != 0 && pos < size)
                pos += (size_t)snprintf(out + pos, size - pos, "%s%s-%d:%" PRIu64, pos ? "," : "",
                                        kind_names[k], s, st->status_counts[k][s]);
        }
        if (st->transport_errors[k] != 0 && pos < size)
            pos += (size_t)snprintf(out + pos, size - pos, "%s%s-error:%" PRIu64, pos ? "," : "",
                                    kind_names[k], st->transport_errors[k]);
    }
    if (pos == 0)
        snprintf(out, size, "none");
}

static void write_latency_curve(const struct stats *st)
{
    static const double percents[] = {0,    10,   20,   30,    40,    50,     60, 70,
                                      75,   80,   85,   90,    95,    97,     98, 99,
                                      99.5, 99.7, 99.9, 99.95, 99.99, 99.999, 100};
    FILE *f = fopen(opt.latency_out, "w");

    if (f == NULL) {
        fprintf(stderr, "# cannot write --latency-out %s: %s\n", opt.latency_out, strerror(errno));
        return;
    }
    fprintf(f, "# percentile latency_us one_over_one_minus_p (samples=%zu)\n", st->latency.len);
    for (size_t i = 0; i < sizeof(percents) / sizeof(percents[0]); i++) {
        double p = percents[i];
        double inverse = p < 100 ? 1.0 / (1.0 - p / 100.0) : 1e6;
        fprintf(f, "%g %.3f %.1f\n", p, (double)samples_percentile(&st->latency, p) / 1e3, inverse);
    }
    fclose(f);
}

/* Print the result line; returns whether the run is valid. */
static bool report(struct run *run, struct stats *st)
{
    char statuses[2048];
    char labels[1024] = "";
    size_t pos = 0;
    bool hold = opt.mode == MODE_HOLD;

    qsort(st->latency.v, st->latency.len, sizeof(uint64_t), compare_u64);
    format_statuses(st, statuses, sizeof(statuses));
    for (size_t i = 0; i < opt.label_count && pos < sizeof(labels); i++)
        pos += (size_t)snprintf(labels + pos, sizeof(labels) - pos, " %s", opt.labels[i]);

    uint64_t unanswered = st->started - st->answered;
    bool valid = !run->aborted && st->unexpected == 0 && st->body_mismatch == 0 &&
                 unanswered == 0 && st->completions_window > 0 && st->delivered == st->answered;
    if (hold)
        valid = valid && st->answered == opt.waiters;

    double count = (double)st->completions_window;
    double rate = hold ? (run->drain_s > 0 ? count / run->drain_s : 0)
                       : (run->window_s > 0 ? count / run->window_s : 0);
    double util = run->wall_s > 0 ? run->gen_cpu_s / (run->wall_s * opt.threads) : 0;
    double server_us = run->server_cpu_s >= 0 && count > 0 ? run->server_cpu_s / count * 1e6 : -1;

    printf("result%s mode=%s proto=%s peer=%s threads=%u", labels, hold ? "hold" : "pairs",
           opt.proto == PROTO_H2 ? "h2" : "http1", opt.peer.name, opt.threads);
    if (hold) {
        double per_waiter =
            run->rss_before_kib >= 0 && run->rss_held_kib >= 0
                ? (double)(run->rss_held_kib - run->rss_before_kib) * 1024.0 / (double)opt.waiters
                : -1;
        printf(" waiters=%zu ackers=%zu register_s=%.3f settle_s=%.3f rss_before_kib=%lld "
               "rss_held_kib=%lld bytes_per_waiter=%.0f server_register_cpu_s=%.3f drain_s=%.3f "
               "acks=%" PRIu64 " acks_per_s=%.0f",
               opt.waiters, opt.ackers, run->register_s, run->settle_s, run->rss_before_kib,
               run->rss_held_kib, per_waiter, run->server_register_cpu_s, run->drain_s,
               st->completions_window, rate);
    } else {
        printf(" pairs=%u warmup_s=%.3f window_s=%.3f correlations=%" PRIu64 " corr_per_s=%.0f "
               "retries_per_corr=%.4f",
               opt.pairs, opt.warmup, run->window_s, st->completions_window, rate,
               count > 0 ? (double)st->retries_window / count : 0);
    }
    printf(" lat_p50_us=%.1f lat_p90_us=%.1f lat_p99_us=%.1f lat_p999_us=%.1f lat_max_us=%.1f "
           "lat_samples=%zu",
           samples_percentile(&st->latency, 50) / 1e3, samples_percentile(&st->latency, 90) / 1e3,
           samples_percentile(&st->latency, 99) / 1e3, samples_percentile(&st->latency, 99.9) / 1e3,
           samples_percentile(&st->latency, 100) / 1e3, st->latency.len);
    printf(" gen_cpu_s=%.3f gen_cpu_util=%.3f saturated=%d server_cpu_s=%.3f"
           " server_cpu_us_per_op=%.2f",
           run->gen_cpu_s, util, util > SATURATED_CPU_UTIL, run->server_cpu_s, server_us);
    printf(" started=%" PRIu64 " answered=%" PRIu64 " delivered=%" PRIu64 " unanswered=%" PRIu64
           " ack_retries=%" PRIu64 " retries_exhausted=%" PRIu64 " body_mismatch=%" PRIu64
           " reconnects=%" PRIu64 " unexpected=%" PRIu64 " statuses=%s valid=%d\n",
           st->started, st->answered, st->delivered, unanswered, st->ack_retries,
           st->retries_exhausted, st->body_mismatch, st->reconnects, st->unexpected, statuses,
           valid ? 1 : 0);
    fflush(stdout);

    fprintf(stderr,
            "# %s %s against %s (%s): %.0f %s/s, latency p50 %.1f us, p99 %.1f us, "
            "p99.9 %.1f us\n",
            hold ? "hold" : "pairs", opt.proto == PROTO_H2 ? "HTTP/2" : "HTTP/1.1", opt.authority,
            opt.peer.name, rate, hold ? "acks" : "correlations",
            samples_percentile(&st->latency, 50) / 1e3, samples_percentile(&st->latency, 99) / 1e3,
            samples_percentile(&st->latency, 99.9) / 1e3);
    fprintf(stderr, "# loadgen CPU %.2f s (%.0f%% of %u thread(s)); server CPU %.2f s\n",
            run->gen_cpu_s, util * 100, opt.threads, run->server_cpu_s);
    if (util > SATURATED_CPU_UTIL)
        fprintf(stderr,
                "# warning: the load generator was saturated (CPU %.0f%%); the run measures "
                "the generator, not the server\n",
                util * 100);
    if (!valid)
        fprintf(stderr,
                "# run INVALID: %s; unanswered=%" PRIu64 " unexpected=%" PRIu64
                " body_mismatch=%" PRIu64 " statuses=%s\n",
                run->aborted ? run->abort_reason : "validation failed", unanswered, st->unexpected,
                st->body_mismatch, statuses);
    if (opt.latency_out != NULL)
        write_latency_curve(st);
    return valid;
}

int main(int argc, char **argv)
{
    struct run run = {
        .rss_before_kib = -1, .rss_held_kib = -1, .server_cpu_s = -1, .server_register_cpu_s = -1};
    size_t source_cursor = 0;
    size_t total_conns = 0;

    if (parse_options(argc, argv) != 0)
        return 2;
    signal(SIGPIPE, SIG_IGN);
    h2_callbacks_init();

    run.workers = xcalloc(opt.threads, sizeof(*run.workers));
    for (unsigned i = 0; i < opt.threads; i++) {
        worker_setup(&run.workers[i], i, &source_cursor);
        total_conns += run.workers[i].conn_count;
    }
    if (check_fd_budget(total_conns) != 0)
        return 2;
    if (opt.server_pid_count != 0 && server_cpu_seconds() < 0) {
        fprintf(stderr, "corr_loadgen: cannot read /proc/PID/stat of every --server-pid\n");
        return 2;
    }
    fprintf(stderr, "# %s %s against %s (%s): %zu connections, %u thread(s), ids %s-*\n",
            opt.mode == MODE_HOLD ? "hold" : "pairs", opt.proto == PROTO_H2 ? "HTTP/2" : "HTTP/1.1",
            opt.authority, opt.peer.name, total_conns, opt.threads, opt.id_prefix);

    run.start_ns = now_ns();
    run.deadline_ns = run.start_ns + (uint64_t)(opt.max_seconds * 1e9);
    run.rss_before_kib = server_rss_kib();
    atomic_store(&shared.phase, PHASE_CONNECT);
    for (unsigned i = 0; i < opt.threads; i++) {
        int err = pthread_create(&run.workers[i].thread, NULL, worker_main, &run.workers[i]);
        if (err != 0) {
            fprintf(stderr, "corr_loadgen: pthread_create failed: %s\n", strerror(err));
            return 1;
        }
    }
    if (opt.mode == MODE_PAIRS)
        run_pairs(&run);
    else
        run_hold(&run);
    for (unsigned i = 0; i < opt.threads; i++)
        pthread_join(run.workers[i].thread, NULL);
    if (opt.mode == MODE_HOLD)
        run.drain_s = hold_drain_seconds(&run);

    struct stats total = {0};
    for (unsigned i = 0; i < opt.threads; i++) {
        struct worker *w = &run.workers[i];
        if (atomic_load(&w->failed))
            fprintf(stderr, "# worker %u failed: %s\n", i, w->error);
        stats_merge(&total, &w->st);
    }
    bool valid = report(&run, &total);
    for (unsigned i = 0; i < opt.threads; i++) {
        struct worker *w = &run.workers[i];
        for (size_t c = 0; c < w->conn_count; c++) {
            if (w->conns[c].fd >= 0)
                close(w->conns[c].fd);
        }
    }
    return valid ? 0 : 1;
}
