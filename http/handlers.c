/*
 * The /start and /ack handlers and the life of a held request.
 *
 * A held request (struct corrd_held) belongs to the worker thread that accepted it, and only that
 * thread touches its h2o request. An ack on any thread hands its payload to the engine, whose wake
 * callback pushes the held request onto its worker's inbox; the worker then answers it. A held
 * request ends in exactly one of four ways, each of which closes the engine waiter first, so that
 * an ack the engine reported delivered is always found in the ring by the answer:
 *   ack       200 with the ack's body (corrd_worker_drain_inbox)
 *   timeout   504, or 200 if an ack won the race with the timer (corrd_held_expire)
 *   shutdown  503 with Retry-After, or 200 if an ack won that race (corrd_held_shutdown)
 *   gone      the client closed or reset; the waiter is removed at once (corrd_held_client_gone,
 *             on_held_dispose)
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <ck_pr.h>
#include "corrd.h"

static h2o_generator_t plain_generator = {NULL, NULL};

/*
 * Write @id into @out for a message: printable ASCII as is, and quotes, backslash and other bytes
 * as \xHH, cut after 64 bytes.
 */
static void id_printable(const char *id, size_t len, char *out, size_t out_size)
{
    size_t pos = 0;

    for (size_t i = 0; i < len && pos + 8 < out_size; i++) {
        unsigned char c = (unsigned char)id[i];
        if (i == 64) {
            pos += (size_t)snprintf(out + pos, out_size - pos, "...");
            break;
        }
        if (c >= 0x20 && c < 0x7f && c != '\\' && c != '\'' && c != '"')
            out[pos++] = (char)c;
        else
            pos += (size_t)snprintf(out + pos, out_size - pos, "\\x%02x", c);
    }
    out[pos] = '\0';
}

static void add_header(h2o_req_t *req, const h2o_token_t *token, const char *value, size_t len)
{
    h2o_add_header(&req->pool, &req->res.headers, token, NULL, value, len);
}

/* Send a complete response whose body is @body; @body must live until the request is disposed. */
static void send_body(h2o_req_t *req, int status, const char *reason, const char *body, size_t len)
{
    h2o_iovec_t buf = h2o_iovec_init(body, len);

    req->res.status = status;
    req->res.reason = reason;
    req->res.content_length = len;
    add_header(req, H2O_TOKEN_CACHE_CONTROL, H2O_STRLIT("no-store"));
    h2o_start_response(req, &plain_generator);
    /* A response to HEAD carries the headers of the full response but never a body. */
    if (h2o_memis(req->input.method.base, req->input.method.len, H2O_STRLIT("HEAD")))
        h2o_send(req, NULL, 0, H2O_SEND_STATE_FINAL);
    else
        h2o_send(req, &buf, 1, H2O_SEND_STATE_FINAL);
}

/* Send a one-line text/plain response built from a printf format; a newline is appended. */
static void __attribute__((format(printf, 4, 5)))
send_text(h2o_req_t *req, int status, const char *reason, const char *fmt, ...)
{
    char line[512];
    va_list args;

    va_start(args, fmt);
    int len = vsnprintf(line, sizeof(line) - 1, fmt, args);
    va_end(args);
    if (len < 0)
        len = 0;
    if ((size_t)len > sizeof(line) - 2)
        len = (int)sizeof(line) - 2;
    line[len++] = '\n';

    if (status >= 400 && status < 499 && corrd.options.log_level <= CORRD_LOG_DEBUG) {
        static struct corrd_log_limit limit;
        char path[160];
        id_printable(req->input.path.base, req->input.path.len, path, sizeof(path));
        corrd_log_limited(&limit, CORRD_LOG_DEBUG,
                          "msg=\"request rejected\" status=%d path=\"%s\" reason=\"%.*s\"", status,
                          path, len - 1, line);
    }
    char *body = h2o_mem_alloc_pool(&req->pool, (size_t)len);
    memcpy(body, line, (size_t)len);
    add_header(req, H2O_TOKEN_CONTENT_TYPE, H2O_STRLIT("text/plain; charset=utf-8"));
    send_body(req, status, reason, body, (size_t)len);
}

static const char *reason_of(int status)
{
    switch (status) {
    case 400:
        return "Bad Request";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 409:
        return "Conflict";
    case 413:
        return "Payload Too Large";
    case 414:
        return "URI Too Long";
    case 431:
        return "Request Header Fields Too Large";
    case 429:
        return "Too Many Requests";
    case 499:
        return "Client Closed Request";
    case 503:
        return "Service Unavailable";
    case 504:
        return "Gateway Timeout";
    default:
        return "Internal Server Error";
    }
}

static void send_error(h2o_req_t *req, int status, const char *message)
{
    send_text(req, status, reason_of(status), "%s", message);
}

static void send_retry_later(h2o_req_t *req, const char *message)
{
    add_header(req, H2O_TOKEN_RETRY_AFTER, H2O_STRLIT("1"));
    send_error(req, 503, message);
}

void corrd_payload_free_cb(void *payload, void *engine_data)
{
    /* Runs from corr_waiter_destroy on the owner's thread, or from engine teardown at exit. */
    if (corrd_current_worker != NULL)
        corrd_metrics_count(&corrd_current_worker->metrics, CORRD_ACKS_LOST);
    free(payload);
}

/* Stop the timer and the close watch, and release the engine waiter, which must be closed. */
static void held_detach(struct corrd_held *held)
{
    struct corrd_worker *worker = held->worker;

    corrd_timer_unlink(&worker->timers, &held->timer);
    corrd_rdhup_unwatch(held);
    if (held->waiter != NULL) {
        corr_waiter_destroy(corrd.engine, held->waiter);
        held->waiter = NULL;
        corrd_metrics_pending_add(&worker->metrics, -1);
    }
}

static void held_answer_with_ack(struct corrd_held *held, struct corrd_ack_msg *msg)
{
    h2o_req_t *req = held->req;

    struct corrd_metrics *metrics = &held->worker->metrics;
    uint64_t now_us = corrd_now_us();

    held_detach(held);
    held->answer = msg; /* freed by on_held_dispose, after h2o has sent the body */
    corrd_metrics_count(metrics, CORRD_WAITERS_ANSWERED);
    corrd_metrics_observe_wait(metrics, now_us - held->started_at_us);
    corrd_metrics_observe_ack_latency(metrics, now_us - msg->delivered_at_us);
    if (msg->content_type_len != 0)
        add_header(req, H2O_TOKEN_CONTENT_TYPE, msg->content_type, msg->content_type_len);
    send_body(req, 200, "OK", msg->bytes, msg->len);
}

/* Close the waiter and return a payload that was delivered before the close, if any. */
static struct corrd_ack_msg *held_close_and_take(struct corrd_held *held)
{
    corr_waiter_close(corrd.engine, held->waiter);
    return corr_waiter_take(held->waiter);
}

static void held_send_id_text(struct corrd_held *held, int status, const char *fmt)
{
    size_t id_len;
    const char *id = corr_waiter_id(held->waiter, &id_len);
    char printable[300];

    id_printable(id, id_len, printable, sizeof(printable));
    h2o_req_t *req = held->req;
    held_detach(held);
    send_text(req, status, reason_of(status), fmt, printable, (unsigned long long)held->timeout_ms);
}

void corrd_held_expire(struct corrd_held *held)
{
    struct corrd_ack_msg *msg = held_close_and_take(held);

    if (msg != NULL) {
        held_answer_with_ack(held, msg);
        return;
    }
    corrd_metrics_count(&held->worker->metrics, CORRD_WAITERS_TIMED_OUT);
    corrd_metrics_observe_wait(&held->worker->metrics, corrd_now_us() - held->started_at_us);
    held_send_id_text(held, 504, "timed out: no ack for id '%s' within %llu ms");
}

void corrd_held_shutdown(struct corrd_held *held)
{
    struct corrd_ack_msg *msg = held_close_and_take(held);

    held->req->http1_is_persistent = 0;
    if (msg != NULL) {
        held_answer_with_ack(held, msg);
        return;
    }
    corrd_metrics_count(&held->worker->metrics, CORRD_WAITERS_SHUTDOWN);
    add_header(held->req, H2O_TOKEN_RETRY_AFTER, H2O_STRLIT("1"));
    held_send_id_text(held, 503,
                      "server is shutting down: waiter for id '%s' (timeout %llu ms) released");
}

void corrd_held_client_gone(struct corrd_held *held)
{
    h2o_req_t *req = held->req;

    /* A payload delivered just before the close has no reader left; destroy frees and counts it. */
    corr_waiter_close(corrd.engine, held->waiter);
    corrd_metrics_count(&held->worker->metrics, CORRD_WAITERS_CANCELLED);
    held_detach(held);
    /* h2o stopped reading this HTTP/1 connection; a response with close makes it tear it down. */
    req->http1_is_persistent = 0;
    send_error(req, 499, "client closed the connection while waiting");
}

static void on_held_dispose(void *slot)
{
    struct corrd_held *held = *(struct corrd_held **)slot;

    h2o_req_t *req = held->req;

    held->req = NULL;
    if (held->waiter != NULL) {
        /* The client went away (HTTP/2 reset, connection closed): remove the waiter now. */
        corr_waiter_close(corrd.engine, held->waiter);
        corrd_metrics_count(&held->worker->metrics, CORRD_WAITERS_CANCELLED);
        held_detach(held);
        if (req->version >= 0x200)
            corrd_conn_note_reset(req->conn);
    }
    free(held->answer);
    held->answer = NULL;
    /*
     * The waiter is closed, so no wake callback can push this request any more (engine invariant
     * I4), and `queued` is final. The load pairs with the store in corrd_wake_cb; the acquire in
     * corr_waiter_close makes that store visible.
     */
    if (ck_pr_load_uint(&held->queued))
        held->dead = true;
    else
        free(held);
}

void corrd_wake_cb(struct corr_waiter *waiter, void *waiter_data, void *engine_data)
{
    struct corrd_held *held = waiter_data;
    struct corrd_worker *worker = held->worker;
    struct corrd_held *head;

    /* Runs on the acking thread under the waiter's producer lock, so `held` is alive. */
    ck_pr_store_uint(&held->queued, 1);
    do {
        head = ck_pr_load_ptr(&worker->inbox);
        held->inbox_next = head;
        /* Publish inbox_next before the CAS makes `held` reachable from the inbox head. */
        ck_pr_fence_store_atomic();
    } while (!ck_pr_cas_ptr(&worker->inbox, head, held));

    if (corrd_current_worker == worker) {
        worker->local_wake = true; /* the ack handler drains the inbox before it returns */
        return;
    }
    /*
     * One message per batch: the push must be visible before message_pending is read, pairing
     * with the store-load fence in on_inbox_message, so a push is never left without a message.
     */
    ck_pr_fence_atomic();
    if (ck_pr_fas_uint(&worker->message_pending, 1) == 0)
        h2o_multithread_send_message(&worker->receiver, &worker->message);
}

static void held_on_wake(struct corrd_held *held)
{
    if (held->waiter == NULL)
        return; /* a timer or the shutdown responded after the push; nothing to take */
    struct corrd_ack_msg *msg = corr_waiter_take(held->waiter);
    if (msg == NULL)
        return;
    corr_waiter_close(corrd.engine, held->waiter);
    held_answer_with_ack(held, msg);
}

void corrd_worker_drain_inbox(struct corrd_worker *worker)
{
    /* Acquire, paired with the CAS in corrd_wake_cb: each popped entry's inbox_next is visible. */
    struct corrd_held *list = ck_pr_fas_ptr(&worker->inbox, NULL);
    ck_pr_fence_atomic_load();

    /* The stack is newest first, so reverse it to respond to waiters in wake-up order. */
    struct corrd_held *fifo = NULL;
    while (list != NULL) {
        struct corrd_held *next = list->inbox_next;
        list->inbox_next = fifo;
        fifo = list;
        list = next;
    }

    while (fifo != NULL) {
        struct corrd_held *held = fifo;
        fifo = held->inbox_next;
        /* Cleared before the response, so a dispose during held_on_wake frees it directly. */
        ck_pr_store_uint(&held->queued, 0);
        if (held->dead)
            free(held);
        else
            held_on_wake(held);
    }
}

static void count_invalid(const struct corrd_target *target)
{
    struct corrd_metrics *metrics = &corrd_current_worker->metrics;

    corrd_metrics_count(metrics, target->endpoint == CORRD_ENDPOINT_START
                                     ? CORRD_WAITERS_REJECTED_INVALID
                                     : CORRD_ACKS_REJECTED_INVALID);
}

static int decode_id(h2o_req_t *req, const struct corrd_target *target, char **id, size_t *id_len)
{
    const char *error;
    size_t max = corrd.options.max_id_bytes;

    *id = h2o_mem_alloc_pool(&req->pool, max);
    int status = corrd_id_decode(target->id_raw, target->id_raw_len, max, *id, id_len, &error);
    if (status != 0) {
        count_invalid(target);
        send_error(req, status, error);
    }
    return status;
}

static int handle_start(h2o_req_t *req, const struct corrd_target *target)
{
    struct corrd_worker *worker = corrd_current_worker;
    const char *error;
    uint64_t timeout_ms;
    char *id;
    size_t id_len;

    if (decode_id(req, target, &id, &id_len) != 0)
        return 0;
    int status =
        corrd_start_query_parse(target->query, target->query_len, corrd.options.default_timeout_ms,
                                corrd.options.max_timeout_ms, &timeout_ms, &error);
    if (status != 0) {
        count_invalid(target);
        send_error(req, status, error);
        return 0;
    }
    if (worker->draining) {
        corrd_metrics_count(&worker->metrics, CORRD_WAITERS_REJECTED_DRAINING);
        send_retry_later(req, "server is shutting down; retry on another node");
        return 0;
    }

    struct corrd_held *held = calloc(1, sizeof(*held));
    if (held == NULL) {
        send_retry_later(req, "out of memory; retry later");
        return 0;
    }
    held->req = req;
    held->worker = worker;
    held->watched_fd = -1;
    held->timer.index = CORRD_TIMER_UNLINKED;
    held->timeout_ms = timeout_ms;
    held->started_at_us = corrd_now_us();

    int err = corr_waiter_add(corrd.engine, id, id_len, 1, held, &held->waiter);
    if (err != 0) {
        free(held);
        char printable[300];
        id_printable(id, id_len, printable, sizeof(printable));
        if (err == -EEXIST) {
            corrd_metrics_count(&worker->metrics, CORRD_WAITERS_REJECTED_CONFLICT);
            send_text(req, 409, "Conflict", "a waiter for id '%s' is already pending", printable);
        } else if (err == -ENOSPC) {
            corrd_metrics_count(&worker->metrics, CORRD_WAITERS_REJECTED_LIMIT);
            send_retry_later(req, "too many pending waiters (--max-pending reached); retry later");
        } else {
            static struct corrd_log_limit limit;
            corrd_log_limited(&limit, CORRD_LOG_ERROR,
                              "msg=\"cannot add waiter\" id=\"%s\" error=\"%s\"", printable,
                              corr_strerror(err));
            send_text(req, 500, "Internal Server Error", "cannot add waiter: %s",
                      corr_strerror(err));
        }
        return 0;
    }

    struct corrd_held **slot = h2o_mem_alloc_shared(&req->pool, sizeof(*slot), on_held_dispose);
    *slot = held;
    if (corrd_timer_link(&worker->timers, &held->timer, corrd_now_ms() + timeout_ms) != 0)
        h2o_fatal("out of memory for the timer heap");
    if (req->version < 0x200)
        corrd_rdhup_watch(held);
    corrd_metrics_count(&worker->metrics, CORRD_WAITERS_STARTED);
    corrd_metrics_pending_add(&worker->metrics, 1);
    return 0;
}

static struct corrd_ack_msg *ack_msg_create(h2o_req_t *req)
{
    size_t body_len = req->entity.base != NULL ? req->entity.len : 0;
    h2o_iovec_t content_type = {NULL, 0};
    ssize_t header = h2o_find_header(&req->headers, H2O_TOKEN_CONTENT_TYPE, -1);

    if (header != -1)
        content_type = req->headers.entries[header].value;
    struct corrd_ack_msg *msg = malloc(sizeof(*msg) + body_len + content_type.len);
    if (msg == NULL)
        return NULL;
    msg->len = body_len;
    if (body_len != 0)
        memcpy(msg->bytes, req->entity.base, body_len);
    msg->content_type = msg->bytes + body_len;
    msg->content_type_len = content_type.len;
    if (content_type.len != 0)
        memcpy(msg->content_type, content_type.base, content_type.len);
    return msg;
}

/* Answer an ack with the engine's @result and count it. */
static void ack_respond(struct corrd_worker *worker, h2o_req_t *req, int result, const char *id,
                        size_t id_len)
{
    char printable[300];

    id_printable(id, id_len, printable, sizeof(printable));
    switch (result) {
    case CORR_ACK_DELIVERED:
        corrd_metrics_count(&worker->metrics, CORRD_ACKS_DELIVERED);
        send_text(req, 202, "Accepted", "delivered to the waiter for id '%s'", printable);
        break;
    case CORR_ACK_NO_WAITER:
        corrd_metrics_count(&worker->metrics, CORRD_ACKS_NO_WAITER);
        send_text(req, 404, "Not Found", "no waiter is pending for id '%s'; ack discarded",
                  printable);
        break;
    case CORR_ACK_FULL:
        corrd_metrics_count(&worker->metrics, CORRD_ACKS_FULL);
        send_text(req, 429, "Too Many Requests",
                  "the waiter for id '%s' already has its ack; ack dropped", printable);
        break;
    default:
        corrd_metrics_count(&worker->metrics, CORRD_ACKS_REJECTED_INVALID);
        send_text(req, 400, "Bad Request", "invalid ack: %s", corr_strerror(result));
        break;
    }
}

/*
 * Hand @msg to the engine and respond to any waiter of this worker that the ack woke. The caller
 * keeps @msg unless the result is CORR_ACK_DELIVERED.
 */
static int ack_try(struct corrd_worker *worker, const char *id, size_t id_len,
                   struct corrd_ack_msg *msg)
{
    msg->delivered_at_us = corrd_now_us();
    int result = corr_engine_ack(corrd.engine, id, id_len, msg);
    if (worker->local_wake) {
        worker->local_wake = false;
        corrd_worker_drain_inbox(worker);
    }
    return result;
}

/* Try @msg once, free it unless it was delivered, and respond to the acker. */
static void ack_try_and_respond(struct corrd_worker *worker, h2o_req_t *req, const char *id,
                                size_t id_len, struct corrd_ack_msg *msg)
{
    int result = ack_try(worker, id, id_len, msg);
    if (result != CORR_ACK_DELIVERED)
        free(msg);
    ack_respond(worker, req, result, id, id_len);
}

/*
 * An ack that found no waiter, kept until the end of the current batch of events and tried once
 * more. h2o handles the sockets of one batch newest first, so a /start and its ack that arrive
 * together on two connections are often handled ack first; the second try, microseconds later,
 * finds the waiter that the same batch registered. An ack still without a waiter then gets 404,
 * so nothing is kept beyond the batch.
 */
struct corrd_deferred_ack {
    struct corrd_deferred_ack *next;
    h2o_req_t *req;                   /* NULL once h2o disposed the request */
    struct corrd_deferred_ack **slot; /* in the request's pool; cleared before this is freed */
    struct corrd_ack_msg *msg;
    size_t id_len;
    char id[];
};

static void on_deferred_ack_dispose(void *slot)
{
    struct corrd_deferred_ack *deferred = *(struct corrd_deferred_ack **)slot;

    if (deferred != NULL)
        deferred->req = NULL; /* the client went away; the retry only frees it */
}

static void ack_defer(struct corrd_worker *worker, h2o_req_t *req, const char *id, size_t id_len,
                      struct corrd_ack_msg *msg)
{
    struct corrd_deferred_ack *deferred = malloc(sizeof(*deferred) + id_len);

    if (deferred == NULL) {
        ack_try_and_respond(worker, req, id, id_len, msg);
        return;
    }
    deferred->next = NULL;
    deferred->req = req;
    deferred->msg = msg;
    deferred->id_len = id_len;
    memcpy(deferred->id, id, id_len);
    deferred->slot =
        h2o_mem_alloc_shared(&req->pool, sizeof(*deferred->slot), on_deferred_ack_dispose);
    *deferred->slot = deferred;
    *worker->deferred_acks_tail = deferred;
    worker->deferred_acks_tail = &deferred->next;
}

size_t corrd_worker_retry_acks(struct corrd_worker *worker)
{
    struct corrd_deferred_ack *list = worker->deferred_acks;
    size_t answered = 0;

    worker->deferred_acks = NULL;
    worker->deferred_acks_tail = &worker->deferred_acks;
    while (list != NULL) {
        struct corrd_deferred_ack *deferred = list;
        list = deferred->next;
        if (deferred->req == NULL) {
            free(deferred->msg);
        } else {
            *deferred->slot = NULL;
            ack_try_and_respond(worker, deferred->req, deferred->id, deferred->id_len,
                                deferred->msg);
            answered++;
        }
        free(deferred);
    }
    return answered;
}

static int handle_ack(h2o_req_t *req, const struct corrd_target *target)
{
    struct corrd_worker *worker = corrd_current_worker;
    const char *error;
    char *id;
    size_t id_len;

    if (decode_id(req, target, &id, &id_len) != 0)
        return 0;
    int status = corrd_ack_query_parse(target->query, target->query_len, &error);
    if (status != 0) {
        count_invalid(target);
        send_error(req, status, error);
        return 0;
    }
    if (req->entity.base != NULL && req->entity.len > corrd.options.max_ack_bytes) {
        corrd_metrics_count(&worker->metrics, CORRD_ACKS_REJECTED_TOO_LARGE);
        send_text(req, 413, "Payload Too Large",
                  "ack body of %zu bytes exceeds --max-ack-bytes (%zu)", req->entity.len,
                  corrd.options.max_ack_bytes);
        return 0;
    }
    struct corrd_ack_msg *msg = ack_msg_create(req);
    if (msg == NULL) {
        send_retry_later(req, "out of memory; retry later");
        return 0;
    }

    int result = ack_try(worker, id, id_len, msg);
    if (result == CORR_ACK_NO_WAITER) {
        ack_defer(worker, req, id, id_len, msg); /* msg stays with the deferred ack */
        return 0;
    }
    if (result != CORR_ACK_DELIVERED)
        free(msg);
    ack_respond(worker, req, result, id, id_len);
    return 0;
}

static int method_allowed(const h2o_req_t *req)
{
    return h2o_memis(req->method.base, req->method.len, H2O_STRLIT("GET")) ||
           h2o_memis(req->method.base, req->method.len, H2O_STRLIT("POST"));
}

/* Serve /metrics, /healthz and /readyz; returns 0 when @req was one of them. */
static int handle_operational(h2o_req_t *req)
{
    h2o_iovec_t path = req->path_normalized;
    bool metrics = h2o_memis(path.base, path.len, H2O_STRLIT("/metrics"));
    bool healthz = h2o_memis(path.base, path.len, H2O_STRLIT("/healthz"));
    bool readyz = h2o_memis(path.base, path.len, H2O_STRLIT("/readyz"));

    if (!metrics && !healthz && !readyz)
        return -1;
    if (!h2o_memis(req->method.base, req->method.len, H2O_STRLIT("GET")) &&
        !h2o_memis(req->method.base, req->method.len, H2O_STRLIT("HEAD"))) {
        corrd_metrics_count(&corrd_current_worker->metrics, CORRD_REQUESTS_BAD_METHOD);
        add_header(req, H2O_TOKEN_ALLOW, H2O_STRLIT("GET, HEAD"));
        send_error(req, 405, "method not allowed: use GET or HEAD");
    } else if (metrics) {
        h2o_iovec_t body = corrd_metrics_render(&req->pool);
        add_header(req, H2O_TOKEN_CONTENT_TYPE,
                   H2O_STRLIT("text/plain; version=0.0.4; charset=utf-8"));
        send_body(req, 200, "OK", body.base, body.len);
    } else if (healthz) {
        send_text(req, 200, "OK", "ok");
    } else if (ck_pr_load_uint(&corrd.not_ready)) {
        send_retry_later(req, "draining: the server is shutting down");
    } else {
        send_text(req, 200, "OK", "ready");
    }
    return 0;
}

/*
 * Answer 414 or 431 for request targets and header blocks over corrd's limits. For the API the
 * limit applies to what follows /start/ or /ack/, so that both endpoints treat an id alike.
 * Beyond h2o 2.2.5's own hard limits (about 400 KiB of request head, 100 headers) h2o answers
 * 400 itself before corrd sees the request.
 */
static int check_request_size(h2o_req_t *req, size_t target_len)
{
    struct corrd_metrics *metrics = &corrd_current_worker->metrics;
    size_t header_bytes = 0;

    for (size_t i = 0; i < req->headers.size; i++)
        header_bytes += req->headers.entries[i].name->len + req->headers.entries[i].value.len + 4;
    if (header_bytes > corrd.options.max_header_bytes) {
        corrd_metrics_count(metrics, CORRD_REQUESTS_HEADERS_TOO_LARGE);
        send_text(req, 431, "Request Header Fields Too Large",
                  "request headers of %zu bytes exceed --max-header-bytes (%zu)", header_bytes,
                  corrd.options.max_header_bytes);
        return -1;
    }
    if (target_len > corrd.options.max_url_bytes) {
        corrd_metrics_count(metrics, CORRD_REQUESTS_URL_TOO_LONG);
        send_text(req, 414, "URI Too Long",
                  "request target of %zu bytes exceeds --max-url-bytes (%zu)", target_len,
                  corrd.options.max_url_bytes);
        return -1;
    }
    return 0;
}

static int on_req(h2o_handler_t *self, h2o_req_t *req)
{
    struct corrd_metrics *metrics = &corrd_current_worker->metrics;
    struct corrd_target target;
    const char *error;

    if (req->version >= 0x200) {
        struct corrd_conn *conn = corrd_conn_of(req->conn);
        if (conn != NULL)
            conn->is_http2 = true;
    }

    int status = corrd_target_parse(req->input.path.base, req->input.path.len, &target, &error);
    size_t target_len = status == 0 ? target.id_raw_len + target.query_len : req->input.path.len;
    if (check_request_size(req, target_len) != 0)
        return 0;
    if (status != 0 && handle_operational(req) == 0)
        return 0;
    if (status != 0) {
        if (status == 404)
            corrd_metrics_count(metrics, CORRD_REQUESTS_NOT_FOUND);
        else
            count_invalid(&target);
        send_error(req, status, error);
        return 0;
    }
    if (!method_allowed(req)) {
        corrd_metrics_count(metrics, CORRD_REQUESTS_BAD_METHOD);
        add_header(req, H2O_TOKEN_ALLOW, H2O_STRLIT("GET, POST"));
        send_error(req, 405, "method not allowed: use GET or POST");
        return 0;
    }
    if (target.endpoint == CORRD_ENDPOINT_START)
        return handle_start(req, &target);
    return handle_ack(req, &target);
}

int corrd_handlers_register(h2o_globalconf_t *conf, const char *access_log)
{
    h2o_hostconf_t *host =
        h2o_config_register_host(conf, h2o_iovec_init(H2O_STRLIT("default")), 65535);
    h2o_pathconf_t *path = h2o_config_register_path(host, "/", 0);
    h2o_handler_t *handler = h2o_create_handler(path, sizeof(*handler));

    handler->on_req = on_req;
    if (access_log != NULL) {
        h2o_access_log_filehandle_t *log =
            h2o_access_log_open_handle(access_log, NULL, H2O_LOGCONF_ESCAPE_APACHE);
        if (log == NULL) {
            corrd_log(CORRD_LOG_ERROR, "msg=\"cannot open --access-log\" path=\"%s\"", access_log);
            return -1;
        }
        h2o_access_log_register(path, log);
    }
    return 0;
}
