#define _GNU_SOURCE
#include "fault.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

bool fault_full;
uint64_t fault_seed;

/* ---- Options, sizes and random numbers ---- */

long fault_size(long ci_value, long full_value)
{
    return fault_full ? full_value : ci_value;
}

int fault_main(const struct test_case *cases, size_t count, unsigned ci_deadline_s,
               unsigned full_deadline_s, int argc, char **argv)
{
    char **rest = calloc((size_t)argc + 1, sizeof(*rest));
    bool seeded = false;
    int rest_count = 0;
    int status;

    rest[rest_count++] = argv[0];
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--full") == 0) {
            fault_full = true;
        } else if (strcmp(argv[i], "--seed") == 0 && i + 1 < argc) {
            fault_seed = strtoull(argv[++i], NULL, 0);
            seeded = true;
        } else {
            rest[rest_count++] = argv[i];
        }
    }
    if (!seeded) {
        struct timespec ts;

        clock_gettime(CLOCK_REALTIME, &ts);
        fault_seed = (uint64_t)ts.tv_sec * 1000003u ^ (uint64_t)ts.tv_nsec ^
                     ((uint64_t)getpid() << 32);
    }
    printf("seed %" PRIu64 " (repeat a run with --seed %" PRIu64 "), %s size\n", fault_seed,
           fault_seed, fault_full ? "full" : "CI");
    status = run_tests(cases, count, fault_full ? full_deadline_s : ci_deadline_s, rest_count,
                       rest);
    free(rest);
    return status;
}

static uint64_t splitmix64(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ULL);

    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

void rng_init(struct rng *rng, const char *test_name)
{
    uint64_t hash = 1469598103934665603ULL; /* FNV-1a of the name */

    for (const char *c = test_name; *c != '\0'; c++)
        hash = (hash ^ (unsigned char)*c) * 1099511628211ULL;
    rng->state = fault_seed ^ hash;
}

uint64_t rng_next(struct rng *rng)
{
    return splitmix64(&rng->state);
}

uint64_t rng_below(struct rng *rng, uint64_t bound)
{
    return rng_next(rng) % bound;
}

bool rng_percent(struct rng *rng, unsigned percent)
{
    return rng_below(rng, 100) < percent;
}

/* ---- Process figures from /proc ---- */

long proc_fd_count(pid_t pid)
{
    char path[64];
    DIR *dir;
    struct dirent *entry;
    long count = 0;

    snprintf(path, sizeof(path), "/proc/%d/fd", (int)pid);
    dir = opendir(path);
    if (dir == NULL)
        return -1;
    while ((entry = readdir(dir)) != NULL) {
        if (entry->d_name[0] != '.')
            count++;
    }
    closedir(dir);
    return count;
}

long proc_rss_kib(pid_t pid)
{
    char path[64];
    char line[256];
    FILE *status;
    long rss = -1;

    snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
    status = fopen(path, "r");
    if (status == NULL)
        return -1;
    while (fgets(line, sizeof(line), status) != NULL) {
        if (strncmp(line, "VmRSS:", 6) == 0) {
            rss = strtol(line + 6, NULL, 10);
            break;
        }
    }
    fclose(status);
    return rss;
}

bool proc_uses_asan(pid_t pid)
{
    char path[64];
    char line[512];
    FILE *maps;
    bool found = false;

    snprintf(path, sizeof(path), "/proc/%d/maps", (int)pid);
    maps = fopen(path, "r");
    if (maps == NULL)
        return false;
    while (!found && fgets(line, sizeof(line), maps) != NULL)
        found = strstr(line, "libasan") != NULL;
    fclose(maps);
    return found;
}

/* ---- /metrics ---- */

bool metrics_fetch(int port, struct metrics *metrics)
{
    struct http_response response;

    metrics->text = NULL;
    http_get(port, PROTO_HTTP1, "/metrics", &response);
    if (response.result != CURLE_OK || response.status != 200) {
        test_fail(__FILE__, __LINE__, "GET /metrics: expected 200, got status %ld, curl error "
                  "\"%s\"", response.status, response.error);
        http_response_free(&response);
        return false;
    }
    metrics->text = malloc(response.body_len + 1);
    memcpy(metrics->text, response.body, response.body_len);
    metrics->text[response.body_len] = '\0';
    http_response_free(&response);
    return true;
}

void metrics_free(struct metrics *metrics)
{
    free(metrics->text);
    metrics->text = NULL;
}

long long metrics_value(const struct metrics *metrics, const char *series)
{
    size_t len = strlen(series);
    const char *line = metrics->text;

    while (line != NULL && *line != '\0') {
        if (strncmp(line, series, len) == 0 && line[len] == ' ')
            return strtoll(line + len + 1, NULL, 10);
        line = strchr(line, '\n');
        if (line != NULL)
            line++;
    }
    return -1;
}

long long metrics_pending(const struct metrics *metrics)
{
    static const char prefix[] = "corr_pending_waiters{";
    const char *line = metrics->text;
    long long sum = 0;
    bool found = false;

    while (line != NULL && *line != '\0') {
        if (strncmp(line, prefix, sizeof(prefix) - 1) == 0) {
            const char *space = strchr(line, ' ');

            if (space != NULL) {
                sum += strtoll(space + 1, NULL, 10);
                found = true;
            }
        }
        line = strchr(line, '\n');
        if (line != NULL)
            line++;
    }
    return found ? sum : -1;
}

long long metric_now(int port, const char *series)
{
    struct metrics metrics;
    long long value;

    if (!metrics_fetch(port, &metrics))
        return -1;
    value = metrics_value(&metrics, series);
    metrics_free(&metrics);
    return value;
}

bool wait_pending_equals(int port, long long expected, long deadline_ms, long long *last)
{
    double deadline = now_s() + (double)deadline_ms / 1000.0;
    long long pending = -1;

    for (;;) {
        struct metrics metrics;

        if (metrics_fetch(port, &metrics)) {
            pending = metrics_pending(&metrics);
            metrics_free(&metrics);
        }
        if (pending == expected || now_s() >= deadline)
            break;
        sleep_ms(10);
    }
    if (last != NULL)
        *last = pending;
    return pending == expected;
}

bool counters_fetch(int port, struct counters *counters)
{
    static const struct {
        const char *series;
        size_t offset;
    } fields[] = {
        {"corr_waiters_started_total", offsetof(struct counters, started)},
        {"corr_waiters_finished_total{outcome=\"ack\"}", offsetof(struct counters, finished_ack)},
        {"corr_waiters_finished_total{outcome=\"timeout\"}",
         offsetof(struct counters, finished_timeout)},
        {"corr_waiters_finished_total{outcome=\"client_gone\"}",
         offsetof(struct counters, finished_gone)},
        {"corr_waiters_finished_total{outcome=\"shutdown\"}",
         offsetof(struct counters, finished_shutdown)},
        {"corr_waiters_rejected_total{reason=\"conflict\"}",
         offsetof(struct counters, rejected_conflict)},
        {"corr_waiters_rejected_total{reason=\"max_pending\"}",
         offsetof(struct counters, rejected_limit)},
        {"corr_waiters_rejected_total{reason=\"draining\"}",
         offsetof(struct counters, rejected_draining)},
        {"corr_waiters_rejected_total{reason=\"invalid\"}",
         offsetof(struct counters, rejected_invalid)},
        {"corr_acks_total{outcome=\"delivered\"}", offsetof(struct counters, acks_delivered)},
        {"corr_acks_total{outcome=\"no_waiter\"}", offsetof(struct counters, acks_no_waiter)},
        {"corr_acks_total{outcome=\"ring_full\"}", offsetof(struct counters, acks_full)},
        {"corr_acks_rejected_total{reason=\"invalid\"}", offsetof(struct counters, acks_invalid)},
        {"corr_acks_rejected_total{reason=\"too_large\"}",
         offsetof(struct counters, acks_too_large)},
        {"corr_acks_lost_total", offsetof(struct counters, acks_lost)},
        {"corr_connections_closed_for_resets_total",
         offsetof(struct counters, closed_for_resets)},
    };
    struct metrics metrics;
    bool complete = true;

    memset(counters, 0, sizeof(*counters));
    if (!metrics_fetch(port, &metrics))
        return false;
    for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]); i++) {
        long long value = metrics_value(&metrics, fields[i].series);

        if (value < 0) {
            test_fail(__FILE__, __LINE__, "/metrics has no series %s", fields[i].series);
            complete = false;
        }
        *(long long *)((char *)counters + fields[i].offset) = value;
    }
    counters->pending = metrics_pending(&metrics);
    if (counters->pending < 0) {
        test_fail(__FILE__, __LINE__, "/metrics has no corr_pending_waiters series");
        complete = false;
    }
    metrics_free(&metrics);
    return complete;
}

/* ---- Event loop ---- */

void loop_init(struct loop *loop)
{
    memset(loop, 0, sizeof(*loop));
}

void loop_dispose(struct loop *loop)
{
    free(loop->endpoints);
    free(loop->pollfds);
    free(loop->polled);
    memset(loop, 0, sizeof(*loop));
}

static void loop_add(struct loop *loop, struct endpoint *endpoint)
{
    if (loop->count == loop->cap) {
        loop->cap = loop->cap != 0 ? loop->cap * 2 : 64;
        loop->endpoints = realloc(loop->endpoints, loop->cap * sizeof(*loop->endpoints));
        loop->pollfds = realloc(loop->pollfds, loop->cap * sizeof(*loop->pollfds));
        loop->polled = realloc(loop->polled, loop->cap * sizeof(*loop->polled));
        if (loop->endpoints == NULL || loop->pollfds == NULL || loop->polled == NULL)
            abort();
    }
    endpoint->loop = loop;
    endpoint->index = loop->count;
    loop->endpoints[loop->count++] = endpoint;
}

static void loop_remove(struct endpoint *endpoint)
{
    struct loop *loop = endpoint->loop;
    struct endpoint *last;

    if (loop == NULL)
        return;
    last = loop->endpoints[--loop->count];
    loop->endpoints[endpoint->index] = last;
    last->index = endpoint->index;
    endpoint->loop = NULL;
}

void loop_run(struct loop *loop, long timeout_us)
{
    struct timespec timeout = {
        .tv_sec = timeout_us / 1000000, .tv_nsec = (timeout_us % 1000000) * 1000,
    };
    nfds_t count = 0;
    int ready;

    for (size_t i = 0; i < loop->count; i++) {
        struct endpoint *endpoint = loop->endpoints[i];
        short events;

        if (endpoint->fd < 0)
            continue;
        events = endpoint->ops->events(endpoint);
        if (events == 0)
            continue;
        loop->pollfds[count] = (struct pollfd){.fd = endpoint->fd, .events = events};
        loop->polled[count] = endpoint;
        count++;
    }
    ready = ppoll(loop->pollfds, count, timeout_us >= 0 ? &timeout : NULL, NULL);
    if (ready <= 0)
        return;
    for (nfds_t i = 0; i < count; i++) {
        if (loop->pollfds[i].revents != 0 && loop->polled[i]->fd >= 0)
            loop->polled[i]->ops->ready(loop->polled[i], loop->pollfds[i].revents);
    }
}

/* ---- Sockets ---- */

static int connect_loopback(int port, int rcvbuf, bool report)
{
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;

    if (fd < 0) {
        test_fail(__FILE__, __LINE__, "socket failed: %s", strerror(errno));
        return -1;
    }
    if (rcvbuf > 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&addr, sizeof(addr)) != 0) {
        if (report)
            test_fail(__FILE__, __LINE__, "connect to 127.0.0.1:%d failed: %s", port,
                      strerror(errno));
        close(fd);
        return -1;
    }
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    return fd;
}

int pick_free_port(void)
{
    struct sockaddr_in addr = {.sin_family = AF_INET};
    socklen_t len = sizeof(addr);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int port = -1;

    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd >= 0 && bind(fd, (struct sockaddr *)&addr, sizeof(addr)) == 0 &&
        getsockname(fd, (struct sockaddr *)&addr, &len) == 0)
        port = ntohs(addr.sin_port);
    if (fd >= 0)
        close(fd);
    return port;
}

static void append_bytes(unsigned char **buf, size_t *len, size_t *cap, const void *data,
                         size_t add)
{
    if (*len + add > *cap) {
        size_t new_cap = *cap != 0 ? *cap : 1024;

        while (new_cap < *len + add)
            new_cap *= 2;
        *buf = realloc(*buf, new_cap);
        if (*buf == NULL)
            abort();
        *cap = new_cap;
    }
    if (add != 0)
        memcpy(*buf + *len, data, add);
    *len += add;
}

/* ---- Raw HTTP/1.1 client ---- */

static void h1_response_clear(struct h1_response *response)
{
    free(response->head);
    free(response->body);
    memset(response, 0, sizeof(*response));
}

static bool find_header_value(const char *head, const char *name, const char **value,
                              size_t *value_len)
{
    size_t name_len = strlen(name);
    const char *line = strstr(head, "\r\n");

    while (line != NULL) {
        line += 2;
        if (strncasecmp(line, name, name_len) == 0 && line[name_len] == ':') {
            const char *start = line + name_len + 1;
            const char *end = strstr(start, "\r\n");

            while (*start == ' ' || *start == '\t')
                start++;
            if (end == NULL)
                end = start + strlen(start);
            while (end > start && (end[-1] == ' ' || end[-1] == '\t'))
                end--;
            *value = start;
            *value_len = (size_t)(end - start);
            return true;
        }
        line = strstr(line, "\r\n");
    }
    return false;
}

bool h1_header(const struct h1_response *response, const char *name, char *out, size_t size)
{
    const char *value;
    size_t len;

    if (response->head == NULL || !find_header_value(response->head, name, &value, &len))
        return false;
    if (len >= size)
        len = size - 1;
    memcpy(out, value, len);
    out[len] = '\0';
    return true;
}

/*
 * Decodes a chunked body in data[0..len). Returns the bytes consumed when the last chunk and its
 * trailer section are complete, 0 when more data is needed, and -1 when it is malformed.
 */
static long decode_chunked(const unsigned char *data, size_t len, unsigned char **body,
                           size_t *body_len)
{
    size_t pos = 0;
    size_t cap = 0;

    *body = NULL;
    *body_len = 0;
    for (;;) {
        const unsigned char *crlf = memmem(data + pos, len - pos, "\r\n", 2);
        char *end;
        unsigned long size;

        if (crlf == NULL)
            goto incomplete;
        size = strtoul((const char *)data + pos, &end, 16);
        if ((const unsigned char *)end == data + pos)
            goto malformed;
        pos = (size_t)(crlf - data) + 2;
        if (size == 0) {
            /* Trailer lines end at an empty line. */
            for (;;) {
                crlf = memmem(data + pos, len - pos, "\r\n", 2);
                if (crlf == NULL)
                    goto incomplete;
                if (crlf == data + pos)
                    return (long)(pos + 2);
                pos = (size_t)(crlf - data) + 2;
            }
        }
        if (len - pos < size + 2)
            goto incomplete;
        append_bytes(body, body_len, &cap, data + pos, size);
        pos += size + 2;
    }
incomplete:
    free(*body);
    *body = NULL;
    *body_len = 0;
    return 0;
malformed:
    free(*body);
    *body = NULL;
    *body_len = 0;
    return -1;
}

/* Parses one response from conn->in when it is complete; 1xx responses are skipped. */
static void h1_parse(struct h1_conn *conn)
{
    for (;;) {
        const unsigned char *end;
        size_t head_len;
        struct h1_response *response = &conn->response;
        const char *value;
        size_t value_len;
        size_t consumed;
        char version[16];

        if (conn->done || !conn->busy)
            return;
        end = memmem(conn->in, conn->in_len, "\r\n\r\n", 4);
        if (end == NULL)
            return;
        head_len = (size_t)(end - conn->in) + 4;
        free(response->head);
        response->head = malloc(head_len - 1);
        memcpy(response->head, conn->in, head_len - 2);
        response->head[head_len - 2] = '\0';
        response->status = 0;
        if (sscanf(response->head, "%15s %d", version, &response->status) != 2 ||
            strncmp(version, "HTTP/1.", 7) != 0) {
            conn->eof = true;
            conn->error = EPROTO;
            return;
        }
        if (response->status >= 100 && response->status < 200) {
            conn->got_continue = conn->got_continue || response->status == 100;
            memmove(conn->in, conn->in + head_len, conn->in_len - head_len);
            conn->in_len -= head_len;
            continue;
        }
        response->close = find_header_value(response->head, "connection", &value, &value_len) &&
                          value_len == 5 && strncasecmp(value, "close", 5) == 0;
        if (find_header_value(response->head, "transfer-encoding", &value, &value_len) &&
            value_len == 7 && strncasecmp(value, "chunked", 7) == 0) {
            long used = decode_chunked(conn->in + head_len, conn->in_len - head_len,
                                       &response->body, &response->body_len);

            if (used < 0) {
                conn->eof = true;
                conn->error = EPROTO;
                return;
            }
            if (used == 0)
                return;
            consumed = head_len + (size_t)used;
        } else if (find_header_value(response->head, "content-length", &value, &value_len)) {
            size_t length = strtoull(value, NULL, 10);

            if (conn->in_len - head_len < length)
                return;
            response->body = malloc(length + 1);
            memcpy(response->body, conn->in + head_len, length);
            response->body_len = length;
            consumed = head_len + length;
        } else {
            /* No length: the body runs to the end of the connection. */
            if (!conn->eof)
                return;
            response->body_len = conn->in_len - head_len;
            response->body = malloc(response->body_len + 1);
            memcpy(response->body, conn->in + head_len, response->body_len);
            consumed = conn->in_len;
        }
        memmove(conn->in, conn->in + consumed, conn->in_len - consumed);
        conn->in_len -= consumed;
        conn->done = true;
        conn->busy = false;
        conn->done_at = now_s();
        return;
    }
}

static short h1_events(struct endpoint *endpoint)
{
    struct h1_conn *conn = (struct h1_conn *)endpoint;
    short events = 0;

    if (conn->eof)
        return 0;
    if (conn->out_sent < conn->out_len)
        events |= POLLOUT;
    /* Read whenever a response is outstanding, and also when idle so that a close is seen. */
    events |= POLLIN;
    return events;
}

static void h1_flush(struct h1_conn *conn)
{
    while (conn->ep.fd >= 0 && conn->out_sent < conn->out_len) {
        ssize_t n = send(conn->ep.fd, conn->out + conn->out_sent, conn->out_len - conn->out_sent,
                         MSG_NOSIGNAL);

        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        if (n < 0) {
            conn->error = errno;
            conn->eof = true;
            return;
        }
        conn->out_sent += (size_t)n;
    }
    if (conn->out_sent == conn->out_len) {
        conn->out_sent = 0;
        conn->out_len = 0;
    }
}

static void h1_ready(struct endpoint *endpoint, short revents)
{
    struct h1_conn *conn = (struct h1_conn *)endpoint;

    if (revents & POLLOUT)
        h1_flush(conn);
    if (revents & (POLLIN | POLLHUP | POLLERR)) {
        for (int round = 0; round < 16 && !conn->eof; round++) {
            unsigned char chunk[65536];
            ssize_t n = recv(conn->ep.fd, chunk, sizeof(chunk), 0);

            if (n < 0 && errno == EINTR)
                continue;
            if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
                break;
            if (n <= 0) {
                conn->error = n < 0 ? errno : 0;
                conn->eof = true;
                break;
            }
            append_bytes(&conn->in, &conn->in_len, &conn->in_cap, chunk, (size_t)n);
            h1_parse(conn);
        }
        h1_parse(conn);
    }
}

static const struct endpoint_ops h1_ops = {.events = h1_events, .ready = h1_ready};

static struct h1_conn *h1_open(struct loop *loop, int port, int rcvbuf, bool report)
{
    int fd = connect_loopback(port, rcvbuf, report);
    struct h1_conn *conn;

    if (fd < 0)
        return NULL;
    conn = calloc(1, sizeof(*conn));
    conn->ep.fd = fd;
    conn->ep.ops = &h1_ops;
    conn->port = port;
    loop_add(loop, &conn->ep);
    return conn;
}

struct h1_conn *h1_connect(struct loop *loop, int port, int rcvbuf)
{
    return h1_open(loop, port, rcvbuf, true);
}

struct h1_conn *h1_try_connect(struct loop *loop, int port)
{
    return h1_open(loop, port, 0, false);
}

static void h1_queue(struct h1_conn *conn, const void *data, size_t len)
{
    /* out is exactly out_len bytes long, so grow it by the new bytes. */
    conn->out = realloc(conn->out, conn->out_len + len + 1);
    if (conn->out == NULL)
        abort();
    memcpy(conn->out + conn->out_len, data, len);
    conn->out_len += len;
    h1_flush(conn);
}

void h1_send_raw(struct h1_conn *conn, const void *data, size_t len)
{
    h1_response_clear(&conn->response);
    conn->done = false;
    conn->got_continue = false;
    conn->busy = true;
    conn->sent_at = now_s();
    h1_queue(conn, data, len);
}

void h1_send_more(struct h1_conn *conn, const void *data, size_t len)
{
    h1_queue(conn, data, len);
}

void h1_send(struct h1_conn *conn, const char *method, const char *target,
             const char *extra_headers, const void *body, size_t body_len)
{
    char *head;
    size_t head_len;

    if (body != NULL)
        head = format_string("%s %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n%sContent-Length: %zu\r\n"
                             "\r\n", method, target, conn->port,
                             extra_headers != NULL ? extra_headers : "", body_len);
    else
        head = format_string("%s %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n%s\r\n", method, target,
                             conn->port, extra_headers != NULL ? extra_headers : "");
    head_len = strlen(head);
    if (body != NULL && body_len != 0) {
        head = realloc(head, head_len + body_len);
        memcpy(head + head_len, body, body_len);
    }
    h1_send_raw(conn, head, head_len + (body != NULL ? body_len : 0));
    free(head);
}

void h1_shutdown_write(struct h1_conn *conn)
{
    if (conn->ep.fd >= 0 && !conn->write_shut)
        shutdown(conn->ep.fd, SHUT_WR);
    conn->write_shut = true;
}

void h1_close(struct h1_conn *conn, bool reset)
{
    if (conn->ep.fd < 0)
        return;
    if (reset) {
        struct linger linger = {.l_onoff = 1, .l_linger = 0};

        setsockopt(conn->ep.fd, SOL_SOCKET, SO_LINGER, &linger, sizeof(linger));
    }
    close(conn->ep.fd);
    conn->ep.fd = -1;
    conn->eof = true;
}

void h1_free(struct h1_conn *conn)
{
    if (conn == NULL)
        return;
    h1_close(conn, false);
    loop_remove(&conn->ep);
    h1_response_clear(&conn->response);
    free(conn->in);
    free(conn->out);
    free(conn);
}

bool h1_wait(struct h1_conn *conn, long timeout_ms)
{
    double deadline = now_s() + (double)timeout_ms / 1000.0;

    while (!conn->done && !conn->eof && now_s() < deadline)
        loop_run(conn->ep.loop, 10000);
    if (!conn->done && conn->eof)
        h1_parse(conn); /* a body that runs to the end of the connection */
    return conn->done;
}

struct h1_conn *h1_request(struct loop *loop, int port, const char *method, const char *target,
                           const char *extra_headers, const void *body, size_t body_len,
                           long timeout_ms)
{
    struct h1_conn *conn = h1_connect(loop, port, 0);

    if (conn == NULL)
        return NULL;
    h1_send(conn, method, target, extra_headers, body, body_len);
    h1_wait(conn, timeout_ms);
    return conn;
}

/* ---- HTTP/2 client over libnghttp2 ---- */

#define H2_WINDOW (16 << 20)

static void h2_mark_eof(struct h2_conn *conn, int error)
{
    if (!conn->eof && error != 0)
        conn->error = error;
    conn->eof = true;
}

static void h2_read(struct h2_conn *conn)
{
    for (int round = 0; round < 16 && !conn->eof; round++) {
        unsigned char chunk[65536];
        ssize_t n = recv(conn->ep.fd, chunk, sizeof(chunk), 0);
        ssize_t used;

        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        if (n <= 0) {
            h2_mark_eof(conn, n < 0 ? errno : 0);
            return;
        }
        used = nghttp2_session_mem_recv(conn->session, chunk, (size_t)n);
        if (used < 0) {
            h2_mark_eof(conn, EPROTO);
            return;
        }
    }
}

void h2_flush(struct h2_conn *conn)
{
    while (conn->ep.fd >= 0 && !conn->eof) {
        if (conn->out_sent == conn->out_len) {
            const uint8_t *data;
            ssize_t len = nghttp2_session_mem_send(conn->session, &data);

            conn->out_sent = 0;
            conn->out_len = 0;
            if (len < 0) {
                h2_mark_eof(conn, EPROTO);
                return;
            }
            if (len == 0)
                return;
            free(conn->out);
            conn->out = malloc((size_t)len);
            memcpy(conn->out, data, (size_t)len);
            conn->out_len = (size_t)len;
        }
        while (conn->out_sent < conn->out_len) {
            ssize_t n = send(conn->ep.fd, conn->out + conn->out_sent,
                             conn->out_len - conn->out_sent, MSG_NOSIGNAL);

            if (n < 0 && errno == EINTR)
                continue;
            if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
                return;
            if (n < 0) {
                h2_mark_eof(conn, errno);
                return;
            }
            conn->out_sent += (size_t)n;
        }
    }
}

/* Marks every stream still open closed, when the connection has ended. */
static void h2_close_streams(struct h2_conn *conn);

static short h2_events(struct endpoint *endpoint)
{
    struct h2_conn *conn = (struct h2_conn *)endpoint;
    short events = 0;

    if (conn->eof)
        return 0;
    if (!conn->paused)
        events |= POLLIN;
    if (conn->out_sent < conn->out_len || nghttp2_session_want_write(conn->session))
        events |= POLLOUT;
    return events;
}

static void h2_ready(struct endpoint *endpoint, short revents)
{
    struct h2_conn *conn = (struct h2_conn *)endpoint;

    if (!conn->paused && (revents & (POLLIN | POLLHUP | POLLERR)))
        h2_read(conn);
    h2_flush(conn);
    if (conn->eof)
        h2_close_streams(conn);
}

static const struct endpoint_ops h2_ops = {.events = h2_events, .ready = h2_ready};

static int on_header(nghttp2_session *session, const nghttp2_frame *frame, const uint8_t *name,
                     size_t name_len, const uint8_t *value, size_t value_len, uint8_t flags,
                     void *user_data)
{
    struct h2_stream *stream;

    if (frame->hd.type != NGHTTP2_HEADERS)
        return 0;
    stream = nghttp2_session_get_stream_user_data(session, frame->hd.stream_id);
    if (stream == NULL)
        return 0;
    if (name_len == 7 && memcmp(name, ":status", 7) == 0) {
        char text[8] = {0};

        memcpy(text, value, value_len < 7 ? value_len : 7);
        stream->status = atoi(text);
    } else if (name_len == 11 && memcmp(name, "retry-after", 11) == 0) {
        stream->retry_after = true;
    } else if (name_len == 12 && memcmp(name, "content-type", 12) == 0) {
        size_t len = value_len < sizeof(stream->content_type) - 1
                         ? value_len : sizeof(stream->content_type) - 1;

        memcpy(stream->content_type, value, len);
        stream->content_type[len] = '\0';
    }
    return 0;
}

static int on_data_chunk(nghttp2_session *session, uint8_t flags, int32_t stream_id,
                         const uint8_t *data, size_t len, void *user_data)
{
    struct h2_stream *stream = nghttp2_session_get_stream_user_data(session, stream_id);

    if (stream != NULL)
        append_bytes(&stream->body, &stream->body_len, &stream->body_cap, data, len);
    return 0;
}

static int on_frame_recv(nghttp2_session *session, const nghttp2_frame *frame, void *user_data)
{
    struct h2_conn *conn = user_data;
    struct h2_stream *stream;

    if (frame->hd.type == NGHTTP2_GOAWAY) {
        conn->goaway = true;
        return 0;
    }
    if ((frame->hd.type == NGHTTP2_DATA || frame->hd.type == NGHTTP2_HEADERS) &&
        (frame->hd.flags & NGHTTP2_FLAG_END_STREAM)) {
        stream = nghttp2_session_get_stream_user_data(session, frame->hd.stream_id);
        if (stream != NULL && stream->status >= 200)
            stream->complete = true;
    }
    return 0;
}

static int on_stream_close(nghttp2_session *session, int32_t stream_id, uint32_t error_code,
                           void *user_data)
{
    struct h2_conn *conn = user_data;
    struct h2_stream *stream = nghttp2_session_get_stream_user_data(session, stream_id);

    if (conn->open_streams > 0)
        conn->open_streams--;
    if (stream == NULL)
        return 0;
    stream->closed = true;
    stream->error_code = error_code;
    stream->done_at = now_s();
    if (error_code != NGHTTP2_NO_ERROR)
        stream->complete = false;
    return 0;
}

static ssize_t read_request_body(nghttp2_session *session, int32_t stream_id, uint8_t *buf,
                                 size_t length, uint32_t *data_flags,
                                 nghttp2_data_source *source, void *user_data)
{
    struct h2_stream *stream = source->ptr;
    size_t left = stream->request_len - stream->request_sent;
    size_t n = left < length ? left : length;

    if (n != 0)
        memcpy(buf, stream->request_body + stream->request_sent, n);
    stream->request_sent += n;
    if (stream->request_sent == stream->request_len)
        *data_flags |= NGHTTP2_DATA_FLAG_EOF;
    return (ssize_t)n;
}

struct h2_conn *h2_connect(struct loop *loop, int port)
{
    nghttp2_session_callbacks *callbacks;
    nghttp2_option *option;
    nghttp2_settings_entry settings[] = {
        {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, 1000},
        {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, H2_WINDOW},
    };
    int fd = connect_loopback(port, 0, true);
    struct h2_conn *conn;

    if (fd < 0)
        return NULL;
    conn = calloc(1, sizeof(*conn));
    conn->ep.fd = fd;
    conn->ep.ops = &h2_ops;
    conn->port = port;

    nghttp2_session_callbacks_new(&callbacks);
    nghttp2_session_callbacks_set_on_header_callback(callbacks, on_header);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(callbacks, on_data_chunk);
    nghttp2_session_callbacks_set_on_frame_recv_callback(callbacks, on_frame_recv);
    nghttp2_session_callbacks_set_on_stream_close_callback(callbacks, on_stream_close);
    /* The default limit of 64 KiB per header block would keep the limit tests from sending
     * their largest :path. */
    nghttp2_option_new(&option);
    nghttp2_option_set_max_send_header_block_length(option, 1 << 20);
    nghttp2_session_client_new2(&conn->session, callbacks, conn, option);
    nghttp2_option_del(option);
    nghttp2_session_callbacks_del(callbacks);

    nghttp2_submit_settings(conn->session, NGHTTP2_FLAG_NONE, settings,
                            sizeof(settings) / sizeof(settings[0]));
    nghttp2_session_set_local_window_size(conn->session, NGHTTP2_FLAG_NONE, 0, H2_WINDOW);
    loop_add(loop, &conn->ep);
    h2_flush(conn);
    return conn;
}

static nghttp2_nv make_nv(const char *name, const char *value, size_t value_len)
{
    nghttp2_nv nv = {
        .name = (uint8_t *)name, .value = (uint8_t *)value, .namelen = strlen(name),
        .valuelen = value_len, .flags = NGHTTP2_NV_FLAG_NONE,
    };

    return nv;
}

struct h2_stream *h2_submit_fields(struct h2_conn *conn, const char *method, const char *path,
                                   const nghttp2_nv *fields, size_t field_count,
                                   const void *body, size_t body_len)
{
    struct h2_stream *stream = calloc(1, sizeof(*stream));
    nghttp2_nv *headers = calloc(field_count + 4, sizeof(*headers));
    nghttp2_data_provider provider = {.source.ptr = stream, .read_callback = read_request_body};
    char authority[32];

    snprintf(authority, sizeof(authority), "127.0.0.1:%d", conn->port);
    headers[0] = make_nv(":method", method, strlen(method));
    headers[1] = make_nv(":scheme", "http", 4);
    headers[2] = make_nv(":authority", authority, strlen(authority));
    headers[3] = make_nv(":path", path, strlen(path));
    if (field_count != 0)
        memcpy(headers + 4, fields, field_count * sizeof(*fields));

    stream->conn = conn;
    stream->next = conn->streams;
    if (conn->streams != NULL)
        conn->streams->prev = stream;
    conn->streams = stream;
    stream->request_body = body;
    stream->request_len = body_len;
    stream->sent_at = now_s();
    if (conn->eof) {
        stream->id = -1;
        stream->closed = true;
        free(headers);
        return stream;
    }
    stream->id = nghttp2_submit_request(conn->session, NULL, headers, field_count + 4,
                                        body != NULL ? &provider : NULL, stream);
    free(headers);
    if (stream->id < 0) {
        stream->closed = true;
        return stream;
    }
    conn->open_streams++;
    h2_flush(conn);
    return stream;
}

struct h2_stream *h2_submit(struct h2_conn *conn, const char *method, const char *path,
                            const void *body, size_t body_len, const char *content_type)
{
    nghttp2_nv field;

    if (content_type == NULL)
        return h2_submit_fields(conn, method, path, NULL, 0, body, body_len);
    field = make_nv("content-type", content_type, strlen(content_type));
    return h2_submit_fields(conn, method, path, &field, 1, body, body_len);
}

void h2_reset(struct h2_stream *stream)
{
    if (stream->closed || stream->id < 0)
        return;
    stream->reset_by_us = true;
    nghttp2_submit_rst_stream(stream->conn->session, NGHTTP2_FLAG_NONE, stream->id,
                              NGHTTP2_CANCEL);
    h2_flush(stream->conn);
}

static void h2_close_streams(struct h2_conn *conn)
{
    for (struct h2_stream *stream = conn->streams; stream != NULL; stream = stream->next) {
        if (!stream->closed) {
            stream->closed = true;
            stream->done_at = now_s();
            conn->streams_closed_by_eof++;
        }
    }
}

void h2_stream_free(struct h2_stream *stream)
{
    struct h2_conn *conn;

    if (stream == NULL)
        return;
    conn = stream->conn;
    if (conn != NULL) {
        if (!stream->closed && stream->id > 0)
            nghttp2_session_set_stream_user_data(conn->session, stream->id, NULL);
        if (stream->prev != NULL)
            stream->prev->next = stream->next;
        else
            conn->streams = stream->next;
        if (stream->next != NULL)
            stream->next->prev = stream->prev;
    }
    free(stream->body);
    free(stream);
}

void h2_free(struct h2_conn *conn)
{
    if (conn == NULL)
        return;
    /* Streams the test has not freed outlive the connection, detached from it. */
    for (struct h2_stream *stream = conn->streams; stream != NULL; stream = stream->next) {
        stream->closed = true;
        stream->conn = NULL;
    }
    if (conn->ep.fd >= 0)
        close(conn->ep.fd);
    conn->ep.fd = -1;
    loop_remove(&conn->ep);
    nghttp2_session_del(conn->session);
    free(conn->out);
    free(conn);
}

bool h2_wait(struct h2_stream *stream, long timeout_ms)
{
    double deadline = now_s() + (double)timeout_ms / 1000.0;

    while (!stream->closed && stream->conn != NULL && now_s() < deadline)
        loop_run(stream->conn->ep.loop, 10000);
    return stream->complete;
}

/* ---- One request over either protocol ---- */

void call_send(struct call *call, struct h1_conn *h1, struct h2_conn *h2, const char *method,
               const char *path, const char *content_type, const void *body, size_t body_len)
{
    bool post = strcmp(method, "POST") == 0;

    if (post && body == NULL)
        body = "";
    call->h1 = h1;
    call->h2 = NULL;
    if (h1 != NULL) {
        char *headers = content_type != NULL ? format_string("Content-Type: %s\r\n",
                                                             content_type) : NULL;

        h1_send(h1, method, path, headers, body, body_len);
        free(headers);
        return;
    }
    call->h2 = h2_submit(h2, method, path, body, body_len, content_type);
}

bool call_finished(const struct call *call)
{
    if (call->h1 != NULL)
        return call->h1->done || call->h1->eof;
    return call->h2 == NULL || call->h2->closed;
}

int call_status(const struct call *call)
{
    if (call->h1 != NULL)
        return call->h1->done ? call->h1->response.status : 0;
    return call->h2 != NULL && call->h2->complete ? call->h2->status : 0;
}

const unsigned char *call_body(const struct call *call, size_t *len)
{
    if (call->h1 != NULL) {
        *len = call->h1->response.body_len;
        return call->h1->response.body;
    }
    *len = call->h2 != NULL ? call->h2->body_len : 0;
    return call->h2 != NULL ? call->h2->body : NULL;
}

bool call_content_type(const struct call *call, char *out, size_t size)
{
    if (call->h1 != NULL)
        return h1_header(&call->h1->response, "content-type", out, size);
    if (call->h2 == NULL || call->h2->content_type[0] == '\0')
        return false;
    snprintf(out, size, "%s", call->h2->content_type);
    return true;
}

bool call_retry_after(const struct call *call)
{
    char value[32];

    if (call->h1 != NULL)
        return h1_header(&call->h1->response, "retry-after", value, sizeof(value));
    return call->h2 != NULL && call->h2->retry_after;
}

void call_release(struct call *call)
{
    h2_stream_free(call->h2);
    call->h2 = NULL;
    call->h1 = NULL;
}

/* ---- Start/ack pairs running beside other traffic ---- */

#define PAIR_ACK_RETRY_S 0.005
#define PAIR_ACK_TRIES 400

struct pair_slot {
    bool active;
    long index;
    char id[96];
    char body[128];
    struct h1_conn *waiter;
    struct h1_conn *ack;
    double started_at;
    double next_ack_at;
    int ack_tries;
    bool acked; /* the ack got 202 */
};

void pairs_init(struct pairs *pairs, struct loop *loop, int port, const char *prefix, long total,
                int concurrency)
{
    memset(pairs, 0, sizeof(*pairs));
    pairs->loop = loop;
    pairs->port = port;
    snprintf(pairs->prefix, sizeof(pairs->prefix), "%s", prefix);
    pairs->total = total;
    pairs->concurrency = concurrency;
    pairs->slots = calloc((size_t)concurrency, sizeof(*pairs->slots));
}

static void pair_end(struct pairs *pairs, struct pair_slot *slot, bool passed)
{
    double elapsed = now_s() - slot->started_at;

    if (passed) {
        pairs->passed++;
        pairs->sum_s += elapsed;
        if (elapsed > pairs->worst_s)
            pairs->worst_s = elapsed;
    } else {
        pairs->failed++;
    }
    h1_free(slot->waiter);
    h1_free(slot->ack);
    slot->waiter = NULL;
    slot->ack = NULL;
    slot->active = false;
}

static void pair_step(struct pairs *pairs, struct pair_slot *slot)
{
    double now = now_s();

    if (!slot->acked && !slot->ack->busy && now >= slot->next_ack_at) {
        int status = slot->ack->done ? slot->ack->response.status : 0;
        char path[128];

        if (status == 202) {
            slot->acked = true;
        } else if (slot->ack_tries > 0 && status != 404) {
            test_fail(__FILE__, __LINE__, "pair %s: ack got %d, expected 202 or 404 (not yet "
                      "pending)", slot->id, status);
            pair_end(pairs, slot, false);
            return;
        } else if (slot->ack_tries >= PAIR_ACK_TRIES) {
            test_fail(__FILE__, __LINE__, "pair %s: ack still got 404 after %d tries, 5 ms "
                      "apart", slot->id, slot->ack_tries);
            pair_end(pairs, slot, false);
            return;
        } else {
            if (status == 404)
                pairs->early_404++;
            snprintf(path, sizeof(path), "/ack/%s", slot->id);
            h1_send(slot->ack, "POST", path, NULL, slot->body, strlen(slot->body));
            slot->ack_tries++;
            slot->next_ack_at = now + PAIR_ACK_RETRY_S;
        }
    }
    if (slot->ack->eof && !slot->ack->done) {
        test_fail(__FILE__, __LINE__, "pair %s: the ack connection closed without a response",
                  slot->id);
        pair_end(pairs, slot, false);
        return;
    }
    if (slot->waiter->done || slot->waiter->eof) {
        struct h1_response *response = &slot->waiter->response;
        bool ok = slot->waiter->done && response->status == 200 &&
                  response->body_len == strlen(slot->body) &&
                  memcmp(response->body, slot->body, response->body_len) == 0;

        if (!ok)
            test_fail(__FILE__, __LINE__, "pair %s: waiter expected 200 with \"%s\", got status "
                      "%d with \"%s\"", slot->id, slot->body,
                      slot->waiter->done ? response->status : 0,
                      printable(response->body, response->body_len));
        /* Its ack may still be in flight; count the pair once both have their response. */
        if (!ok || slot->acked || (slot->ack->done && slot->ack->response.status == 202))
            pair_end(pairs, slot, ok);
    }
}

bool pairs_step(struct pairs *pairs)
{
    for (int i = 0; i < pairs->concurrency; i++) {
        struct pair_slot *slot = &pairs->slots[i];
        char path[128];

        if (!slot->active && pairs->launched < pairs->total) {
            memset(slot, 0, sizeof(*slot));
            slot->index = pairs->launched++;
            snprintf(slot->id, sizeof(slot->id), "%s-%ld", pairs->prefix, slot->index);
            snprintf(slot->body, sizeof(slot->body), "pair body %s", slot->id);
            slot->waiter = h1_connect(pairs->loop, pairs->port, 0);
            slot->ack = h1_connect(pairs->loop, pairs->port, 0);
            slot->active = true;
            slot->started_at = now_s();
            if (slot->waiter == NULL || slot->ack == NULL) {
                pair_end(pairs, slot, false);
                continue;
            }
            snprintf(path, sizeof(path), "/start/%s?timeout=20000", slot->id);
            h1_send(slot->waiter, "GET", path, NULL, NULL, 0);
            slot->next_ack_at = now_s() + PAIR_ACK_RETRY_S;
        }
        if (slot->active)
            pair_step(pairs, slot);
    }
    return pairs->passed + pairs->failed == pairs->total;
}

void pairs_dispose(struct pairs *pairs)
{
    for (int i = 0; i < pairs->concurrency; i++) {
        if (pairs->slots[i].active) {
            test_fail(__FILE__, __LINE__, "pair %s did not finish", pairs->slots[i].id);
            pair_end(pairs, &pairs->slots[i], false);
        }
    }
    free(pairs->slots);
    pairs->slots = NULL;
}

long pairs_run(struct pairs *pairs, long timeout_ms)
{
    double deadline = now_s() + (double)timeout_ms / 1000.0;

    while (!pairs_step(pairs) && now_s() < deadline)
        loop_run(pairs->loop, 1000);
    return pairs->passed;
}

/* ---- Misc ---- */

int corrd_wait_exit(struct corrd *server, double timeout_s)
{
    double deadline = now_s() + timeout_s;
    int status;

    while (server->pid > 0) {
        pid_t pid = waitpid(server->pid, &status, WNOHANG);

        if (pid == server->pid) {
            server->pid = 0;
            return status;
        }
        if (pid < 0 || now_s() >= deadline)
            return -1;
        sleep_ms(5);
    }
    return -1;
}

unsigned char *make_body(struct rng *rng, const char *tag, size_t len)
{
    unsigned char *body = malloc(len + 1);
    size_t tag_len = strlen(tag);
    size_t i = 0;

    for (; i < len && i < tag_len; i++)
        body[i] = (unsigned char)tag[i];
    if (i < len)
        body[i++] = '\n';
    for (; i < len; i++)
        body[i] = (unsigned char)rng_next(rng);
    return body;
}
