/*
 * corrd's counters and histograms, kept per worker and summed when /metrics is scraped.
 *
 * Each worker's metrics are written only by that worker's thread, so an update is a plain load
 * and a ck_pr store (no read-modify-write), and a scrape on another thread reads each value with
 * ck_pr_load_64: a scrape sees every value whole, though not all at one instant.
 */
#ifndef corrd_metrics_h
#define corrd_metrics_h

#include <stdint.h>
#include <h2o.h>

enum corrd_counter {
    CORRD_WAITERS_STARTED,
    CORRD_WAITERS_ANSWERED, /* responded to with an ack's body */
    CORRD_WAITERS_TIMED_OUT,
    CORRD_WAITERS_CANCELLED, /* the client closed or reset before the response */
    CORRD_WAITERS_SHUTDOWN,  /* given 503 by a shutdown */
    CORRD_WAITERS_REJECTED_CONFLICT,
    CORRD_WAITERS_REJECTED_LIMIT,
    CORRD_WAITERS_REJECTED_DRAINING,
    CORRD_WAITERS_REJECTED_INVALID,
    CORRD_ACKS_DELIVERED,
    CORRD_ACKS_NO_WAITER,
    CORRD_ACKS_FULL,
    CORRD_ACKS_REJECTED_INVALID,
    CORRD_ACKS_REJECTED_TOO_LARGE,
    CORRD_ACKS_LOST,          /* delivered, but the waiter's client left before the answer */
    CORRD_REQUESTS_NOT_FOUND, /* paths outside the API */
    CORRD_REQUESTS_BAD_METHOD,
    CORRD_REQUESTS_URL_TOO_LONG,
    CORRD_REQUESTS_HEADERS_TOO_LARGE,
    CORRD_CONNECTIONS_CLOSED_RESETS, /* HTTP/2 connections closed for too many stream resets */
    CORRD_COUNTER_COUNT,
};

#define CORRD_WAIT_BUCKETS    12
#define CORRD_LATENCY_BUCKETS 12

struct corrd_histogram {
    uint64_t buckets[CORRD_LATENCY_BUCKETS + 1]; /* the last one counts values above every bound */
    uint64_t sum_us;
    uint64_t count;
};

struct corrd_metrics {
    uint64_t counters[CORRD_COUNTER_COUNT];
    uint64_t pending;                   /* waiters held by this worker now */
    struct corrd_histogram wait;        /* /start arrival to answer, for every answered waiter */
    struct corrd_histogram ack_latency; /* ack handed to the engine to waiter's response sent */
};

void corrd_metrics_count(struct corrd_metrics *m, enum corrd_counter counter);
void corrd_metrics_pending_add(struct corrd_metrics *m, int64_t delta);
void corrd_metrics_observe_wait(struct corrd_metrics *m, uint64_t us);
void corrd_metrics_observe_ack_latency(struct corrd_metrics *m, uint64_t us);

/* Render every worker's metrics in the Prometheus text format (version 0.0.4) into @pool. */
h2o_iovec_t corrd_metrics_render(h2o_mem_pool_t *pool);

#endif
