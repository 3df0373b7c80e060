#include <inttypes.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include <ck_pr.h>
#include "corrd.h"

/* Upper bounds in microseconds; the histograms are rendered in seconds. */
static const uint64_t wait_bounds_us[CORRD_WAIT_BUCKETS] = {
    1000,    5000,    10000,    50000,    100000,   500000,
    1000000, 5000000, 10000000, 30000000, 60000000, 300000000,
};
static const uint64_t latency_bounds_us[CORRD_LATENCY_BUCKETS] = {
    50, 100, 250, 500, 1000, 2500, 5000, 10000, 25000, 50000, 100000, 1000000,
};

/* Single-writer update: only the owning worker writes, so load + store cannot lose an increment. */
static void bump(uint64_t *value, uint64_t delta)
{
    ck_pr_store_64(value, ck_pr_load_64(value) + delta);
}

void corrd_metrics_count(struct corrd_metrics *m, enum corrd_counter counter)
{
    bump(&m->counters[counter], 1);
}

void corrd_metrics_pending_add(struct corrd_metrics *m, int64_t delta)
{
    bump(&m->pending, (uint64_t)delta);
}

static void observe(struct corrd_histogram *h, const uint64_t *bounds, size_t bound_count,
                    uint64_t us)
{
    size_t i = 0;

    while (i < bound_count && us > bounds[i])
        i++;
    bump(&h->buckets[i], 1);
    bump(&h->sum_us, us);
    bump(&h->count, 1);
}

void corrd_metrics_observe_wait(struct corrd_metrics *m, uint64_t us)
{
    observe(&m->wait, wait_bounds_us, CORRD_WAIT_BUCKETS, us);
}

void corrd_metrics_observe_ack_latency(struct corrd_metrics *m, uint64_t us)
{
    observe(&m->ack_latency, latency_bounds_us, CORRD_LATENCY_BUCKETS, us);
}

struct text {
    char *buf;
    size_t len, cap;
    h2o_mem_pool_t *pool;
};

static void __attribute__((format(printf, 2, 3))) emit(struct text *t, const char *fmt, ...)
{
    va_list args;

    for (;;) {
        va_start(args, fmt);
        int n = vsnprintf(t->buf + t->len, t->cap - t->len, fmt, args);
        va_end(args);
        if (n >= 0 && (size_t)n < t->cap - t->len) {
            t->len += (size_t)n;
            return;
        }
        size_t cap = t->cap * 2 + (n > 0 ? (size_t)n : 0);
        char *bigger = h2o_mem_alloc_pool(t->pool, cap);
        memcpy(bigger, t->buf, t->len);
        t->buf = bigger;
        t->cap = cap;
    }
}

static uint64_t sum_counter(enum corrd_counter counter)
{
    uint64_t total = 0;
    for (unsigned i = 0; i < corrd.options.threads; i++)
        total += ck_pr_load_64(&corrd.workers[i].metrics.counters[counter]);
    return total;
}

struct labelled_counter {
    enum corrd_counter counter;
    const char *label;
};

static void emit_family(struct text *t, const char *name, const char *help, const char *label_name,
                        const struct labelled_counter *items, size_t count)
{
    emit(t, "# HELP %s %s\n# TYPE %s counter\n", name, help, name);
    for (size_t i = 0; i < count; i++) {
        if (label_name != NULL)
            emit(t, "%s{%s=\"%s\"} %" PRIu64 "\n", name, label_name, items[i].label,
                 sum_counter(items[i].counter));
        else
            emit(t, "%s %" PRIu64 "\n", name, sum_counter(items[i].counter));
    }
}

static void emit_histogram(struct text *t, const char *name, const char *help, size_t offset,
                           const uint64_t *bounds, size_t bound_count)
{
    uint64_t buckets[CORRD_LATENCY_BUCKETS + 1] = {0}, sum_us = 0, count = 0;

    for (unsigned w = 0; w < corrd.options.threads; w++) {
        struct corrd_histogram *h =
            (struct corrd_histogram *)((char *)&corrd.workers[w].metrics + offset);
        for (size_t i = 0; i <= bound_count; i++)
            buckets[i] += ck_pr_load_64(&h->buckets[i]);
        sum_us += ck_pr_load_64(&h->sum_us);
        count += ck_pr_load_64(&h->count);
    }
    emit(t, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
    uint64_t cumulative = 0;
    for (size_t i = 0; i < bound_count; i++) {
        cumulative += buckets[i];
        emit(t, "%s_bucket{le=\"%g\"} %" PRIu64 "\n", name, (double)bounds[i] / 1e6, cumulative);
    }
    cumulative += buckets[bound_count];
    /* +Inf is the sum of the buckets read, which a concurrent update may put ahead of count. */
    emit(t, "%s_bucket{le=\"+Inf\"} %" PRIu64 "\n%s_sum %.6f\n%s_count %" PRIu64 "\n", name,
         cumulative, name, (double)sum_us / 1e6, name, count);
}

h2o_iovec_t corrd_metrics_render(h2o_mem_pool_t *pool)
{
    struct text t = {.cap = 8192, .pool = pool};
    t.buf = h2o_mem_alloc_pool(pool, t.cap);

    static const struct labelled_counter started[] = {{CORRD_WAITERS_STARTED, NULL}};
    static const struct labelled_counter finished[] = {
        {CORRD_WAITERS_ANSWERED, "ack"},
        {CORRD_WAITERS_TIMED_OUT, "timeout"},
        {CORRD_WAITERS_CANCELLED, "client_gone"},
        {CORRD_WAITERS_SHUTDOWN, "shutdown"},
    };
    static const struct labelled_counter rejected[] = {
        {CORRD_WAITERS_REJECTED_CONFLICT, "conflict"},
        {CORRD_WAITERS_REJECTED_LIMIT, "max_pending"},
        {CORRD_WAITERS_REJECTED_DRAINING, "draining"},
        {CORRD_WAITERS_REJECTED_INVALID, "invalid"},
    };
    static const struct labelled_counter acks[] = {
        {CORRD_ACKS_DELIVERED, "delivered"},
        {CORRD_ACKS_NO_WAITER, "no_waiter"},
        {CORRD_ACKS_FULL, "ring_full"},
    };
    static const struct labelled_counter acks_rejected[] = {
        {CORRD_ACKS_REJECTED_INVALID, "invalid"},
        {CORRD_ACKS_REJECTED_TOO_LARGE, "too_large"},
    };
    static const struct labelled_counter lost[] = {{CORRD_ACKS_LOST, NULL}};
    static const struct labelled_counter other[] = {
        {CORRD_REQUESTS_NOT_FOUND, "not_found"},
        {CORRD_REQUESTS_BAD_METHOD, "method_not_allowed"},
        {CORRD_REQUESTS_URL_TOO_LONG, "url_too_long"},
        {CORRD_REQUESTS_HEADERS_TOO_LARGE, "headers_too_large"},
    };
    static const struct labelled_counter resets[] = {{CORRD_CONNECTIONS_CLOSED_RESETS, NULL}};

    emit_family(&t, "corr_waiters_started_total", "Waiters registered by /start.", NULL, started,
                1);
    emit_family(&t, "corr_waiters_finished_total", "Registered waiters that ended, by outcome.",
                "outcome", finished, 4);
    emit_family(&t, "corr_waiters_rejected_total",
                "/start requests rejected before registering, by reason.", "reason", rejected, 4);
    emit_family(&t, "corr_acks_total", "Acks handed to the engine, by outcome (202, 404, 429).",
                "outcome", acks, 3);
    emit_family(&t, "corr_acks_rejected_total",
                "/ack requests rejected before delivery, by reason.", "reason", acks_rejected, 2);
    emit_family(&t, "corr_acks_lost_total",
                "Delivered acks whose waiter's client left before the answer.", NULL, lost, 1);
    emit_family(&t, "corr_requests_rejected_total", "Requests outside the API, by reason.",
                "reason", other, 4);
    emit_family(&t, "corr_connections_closed_for_resets_total",
                "HTTP/2 connections closed for resetting too many held streams.", NULL, resets, 1);

    emit(&t, "# HELP corr_pending_waiters Waiters held now, per worker thread.\n# TYPE "
             "corr_pending_waiters gauge\n");
    for (unsigned w = 0; w < corrd.options.threads; w++)
        emit(&t, "corr_pending_waiters{worker=\"%u\"} %" PRIu64 "\n", w,
             ck_pr_load_64(&corrd.workers[w].metrics.pending));

    emit_histogram(&t, "corr_wait_seconds",
                   "Time from /start to its answer, for waiters answered by an ack or a timeout.",
                   offsetof(struct corrd_metrics, wait), wait_bounds_us, CORRD_WAIT_BUCKETS);
    emit_histogram(
        &t, "corr_ack_to_response_seconds", "Time from an ack's delivery to its waiter's response.",
        offsetof(struct corrd_metrics, ack_latency), latency_bounds_us, CORRD_LATENCY_BUCKETS);
    return h2o_iovec_init(t.buf, t.len);
}
