/*
 * blocking-wait: embed the corr engine in a plain pthread program, without HTTP.
 *
 * Waiter threads register one id at a time and block on a condition variable until the ack
 * arrives or a timeout passes. The engine's wake callback signals that condition variable.
 * Producer threads ack the ids after a random delay, so some acks arrive in time, some race with
 * the timeout and some come too late. Every id is "job-N"; waiter thread t owns the jobs with
 * N % waiters == t and producer p acks the jobs with N % producers == p.
 *
 * On a timeout the waiter closes its engine waiter and then takes from the ring once more:
 * corr_waiter_close() guarantees that every ack that returned CORR_ACK_DELIVERED is in the ring
 * by then. The program exits 0 only if every delivered ack reached its waiter exactly once.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <corr.h>

struct options {
    unsigned jobs;
    unsigned waiters;
    unsigned producers;
    unsigned timeout_ms;
    unsigned skip_every; /* every skip_every-th job gets no ack, so its waiter times out */
    unsigned close_delay_us;
};

enum job_state {
    JOB_WAITING = 0, /* its waiter thread has not reached it yet */
    JOB_OPEN,        /* corr_waiter_add succeeded; the waiter may already be closed again */
    JOB_FAILED,      /* corr_waiter_add failed, so the producer skips the job */
};

/* Per-job record, written by one waiter thread and one producer thread. */
struct job {
    atomic_int state;       /* enum job_state */
    uint64_t opened_ns;     /* CLOCK_MONOTONIC time of corr_waiter_add; set before JOB_OPEN */
    atomic_bool delivered;  /* corr_engine_ack returned CORR_ACK_DELIVERED */
    atomic_uint received;   /* payloads the waiter took for this job */
};

/* The payload of one ack; the engine passes the pointer through untouched. */
struct ack_payload {
    unsigned job;
    unsigned producer;
};

/*
 * Wake-up state of one waiter thread, passed to corr_waiter_add as the waiter's data. The
 * engine calls the wake callback while it holds the waiter's producer lock, so the callback only
 * sets a flag under this mutex, which the waiter thread never holds across an engine call.
 */
struct wake_slot {
    pthread_mutex_t lock;
    pthread_cond_t cond; /* uses CLOCK_MONOTONIC, so timeouts ignore wall clock changes */
    bool woken;
};

struct waiter_counts {
    unsigned in_time;      /* ack taken before the timeout */
    unsigned after_close;  /* ack delivered while the timeout was being handled */
    unsigned timed_out;    /* no ack at all */
    unsigned errors;
};

struct producer_counts {
    unsigned delivered;
    unsigned no_waiter; /* the ack came after the waiter closed */
    unsigned full;      /* duplicate acks rejected because the waiter accepts only one */
    unsigned skipped;
    unsigned errors;
};

struct thread_arg {
    unsigned index;
    pthread_t thread;
    union {
        struct waiter_counts waiter;
        struct producer_counts producer;
    } counts;
};

static struct options options = {
    .jobs = 2000,
    .waiters = 4,
    .producers = 3,
    .timeout_ms = 5,
    .skip_every = 10,
    .close_delay_us = 100,
};
static struct corr_engine *engine;
static struct job *jobs;
static atomic_uint payloads_released;

static void format_id(unsigned job, char *buf, size_t size)
{
    snprintf(buf, size, "job-%u", job);
}

static void wake_waiter(struct corr_waiter *waiter, void *waiter_data, void *engine_data)
{
    struct wake_slot *slot = waiter_data;

    (void)waiter;
    (void)engine_data;
    pthread_mutex_lock(&slot->lock);
    slot->woken = true;
    pthread_cond_signal(&slot->cond);
    pthread_mutex_unlock(&slot->lock);
}

/* Called by corr_waiter_destroy for a payload that no waiter took; a correct drain leaves none. */
static void release_payload(void *payload, void *engine_data)
{
    (void)engine_data;
    atomic_fetch_add(&payloads_released, 1);
    free(payload);
}

static void deadline_after_ms(struct timespec *deadline, unsigned ms)
{
    clock_gettime(CLOCK_MONOTONIC, deadline);
    deadline->tv_sec += ms / 1000;
    deadline->tv_nsec += (long)(ms % 1000) * 1000000L;
    if (deadline->tv_nsec >= 1000000000L) {
        deadline->tv_sec++;
        deadline->tv_nsec -= 1000000000L;
    }
}

static uint64_t monotonic_ns(void)
{
    struct timespec now;

    clock_gettime(CLOCK_MONOTONIC, &now);
    return (uint64_t)now.tv_sec * 1000000000u + (uint64_t)now.tv_nsec;
}

static void sleep_us(unsigned us)
{
    struct timespec ts = {.tv_sec = us / 1000000, .tv_nsec = (long)(us % 1000000) * 1000L};

    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

/* Sleeps until CLOCK_MONOTONIC reaches @when_ns; returns at once when it already has. */
static void sleep_until_ns(uint64_t when_ns)
{
    struct timespec ts = {.tv_sec = (time_t)(when_ns / 1000000000u),
                          .tv_nsec = (long)(when_ns % 1000000000u)};

    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
        ;
}

/* Checks one taken payload against the job it was taken for, then frees it. */
static void accept_payload(struct waiter_counts *counts, unsigned job, struct ack_payload *payload)
{
    if (payload->job != job) {
        fprintf(stderr, "blocking-wait: waiter for job %u received the ack for job %u\n", job,
                payload->job);
        counts->errors++;
    }
    atomic_fetch_add(&jobs[job].received, 1);
    free(payload);
}

/*
 * Blocks until @waiter has a payload or @deadline passes. Returns the payload, or NULL on
 * timeout. corr_waiter_take() re-arms the wake-up whenever it returns NULL, so a wake-up that
 * arrives between a take and the wait below sets slot->woken and the wait returns at once.
 */
static struct ack_payload *wait_for_ack(struct wake_slot *slot, struct corr_waiter *waiter,
                                        const struct timespec *deadline)
{
    struct ack_payload *payload = corr_waiter_take(waiter);

    while (payload == NULL) {
        int rc = 0;

        pthread_mutex_lock(&slot->lock);
        while (!slot->woken && rc != ETIMEDOUT)
            rc = pthread_cond_timedwait(&slot->cond, &slot->lock, deadline);
        bool woken = slot->woken;
        slot->woken = false;
        pthread_mutex_unlock(&slot->lock);
        if (!woken)
            return NULL;
        payload = corr_waiter_take(waiter);
    }
    return payload;
}

/* Handles one job: registers its id, waits for the ack, then closes and drains the waiter. */
static void wait_one(struct wake_slot *slot, struct waiter_counts *counts, unsigned job)
{
    struct corr_waiter *waiter;
    struct timespec deadline;
    char id[32];

    format_id(job, id, sizeof(id));
    /* The previous waiter is closed, so no wake-up for it can arrive any more. */
    pthread_mutex_lock(&slot->lock);
    slot->woken = false;
    pthread_mutex_unlock(&slot->lock);
    jobs[job].opened_ns = monotonic_ns();
    int rc = corr_waiter_add(engine, id, strlen(id), 1, slot, &waiter);
    if (rc != 0) {
        fprintf(stderr, "blocking-wait: corr_waiter_add failed for %s: %s\n", id,
                corr_strerror(rc));
        counts->errors++;
        atomic_store(&jobs[job].state, JOB_FAILED);
        return;
    }
    atomic_store(&jobs[job].state, JOB_OPEN);

    deadline_after_ms(&deadline, options.timeout_ms);
    struct ack_payload *payload = wait_for_ack(slot, waiter, &deadline);
    /*
     * Until corr_waiter_close() returns, acks are still delivered. The optional delay stands for
     * a thread that is busy or preempted at this point, which widens that window.
     */
    if (payload == NULL && options.close_delay_us != 0)
        sleep_us(options.close_delay_us);
    corr_waiter_close(engine, waiter);
    if (payload != NULL) {
        counts->in_time++;
    } else {
        /* An ack delivered after the timed wait gave up and before the close is in the ring. */
        payload = corr_waiter_take(waiter);
        if (payload != NULL)
            counts->after_close++;
        else
            counts->timed_out++;
    }
    if (payload != NULL)
        accept_payload(counts, job, payload);

    /* The waiter accepts one ack, so a second payload would break the engine's bound. */
    struct ack_payload *extra = corr_waiter_take(waiter);
    if (extra != NULL) {
        fprintf(stderr, "blocking-wait: waiter for %s has a second ack in its ring\n", id);
        counts->errors++;
        accept_payload(counts, job, extra);
    }
    corr_waiter_destroy(engine, waiter);
}

static void *run_waiter(void *arg)
{
    struct thread_arg *self = arg;
    struct wake_slot slot = {.woken = false};
    pthread_condattr_t attr;

    pthread_mutex_init(&slot.lock, NULL);
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&slot.cond, &attr);
    pthread_condattr_destroy(&attr);

    corr_thread_register();
    for (unsigned job = self->index; job < options.jobs; job += options.waiters)
        wait_one(&slot, &self->counts.waiter, job);
    corr_thread_unregister();

    pthread_cond_destroy(&slot.cond);
    pthread_mutex_destroy(&slot.lock);
    return NULL;
}

/* Returns the result of acking @job once with a fresh payload from @producer. */
static int send_ack(unsigned job, unsigned producer)
{
    struct ack_payload *payload = malloc(sizeof(*payload));
    char id[32];

    if (payload == NULL)
        return -ENOMEM;
    payload->job = job;
    payload->producer = producer;
    format_id(job, id, sizeof(id));
    int rc = corr_engine_ack(engine, id, strlen(id), payload);
    if (rc != CORR_ACK_DELIVERED)
        free(payload); /* only a delivered ack passes ownership to the waiter */
    return rc;
}

/* Records the result of one ack; @duplicate marks the second ack sent for a job. */
static void count_ack(struct producer_counts *counts, unsigned job, int rc, bool duplicate)
{
    switch (rc) {
    case CORR_ACK_DELIVERED:
        if (duplicate) {
            fprintf(stderr, "blocking-wait: duplicate ack for job %u was delivered\n", job);
            counts->errors++;
        }
        counts->delivered++;
        atomic_store(&jobs[job].delivered, true);
        break;
    case CORR_ACK_NO_WAITER:
        counts->no_waiter++;
        break;
    case CORR_ACK_FULL:
        counts->full++;
        break;
    default:
        fprintf(stderr, "blocking-wait: corr_engine_ack failed for job %u: %s\n", job,
                corr_strerror(rc));
        counts->errors++;
    }
}

/*
 * Returns how long after its waiter opened a job is acked. Half the acks come at a random time
 * up to 1.5 timeouts, so most arrive in time and some late. The other half aim within 100 us of
 * the timeout, where the ack races with the waiter's timed wait and close.
 */
static uint64_t pick_delay_ns(unsigned *seed)
{
    uint64_t timeout_ns = options.timeout_ms * 1000000ull;

    if (rand_r(seed) % 2 == 0)
        return (uint64_t)rand_r(seed) % (timeout_ns * 3 / 2 + 1);
    return timeout_ns - 100000 + (uint64_t)rand_r(seed) % 200001;
}

static void *run_producer(void *arg)
{
    struct thread_arg *self = arg;
    struct producer_counts *counts = &self->counts.producer;
    unsigned seed = 0x9e3779b9u * (self->index + 1);

    corr_thread_register();
    for (unsigned job = self->index; job < options.jobs; job += options.producers) {
        if (options.skip_every != 0 && job % options.skip_every == 0) {
            counts->skipped++;
            continue;
        }
        /*
         * Wait for the waiter to register. Each waiter thread leaves every job within one
         * timeout, in increasing order, so this wait is bounded too.
         */
        int state;
        while ((state = atomic_load(&jobs[job].state)) == JOB_WAITING)
            sleep_us(50);
        if (state == JOB_FAILED)
            continue;
        sleep_until_ns(jobs[job].opened_ns + pick_delay_ns(&seed));
        int rc = send_ack(job, self->index);
        count_ack(counts, job, rc, false);
        /* A second ack for every 7th job must get CORR_ACK_FULL or CORR_ACK_NO_WAITER. */
        if (rc == CORR_ACK_DELIVERED && job % 7 == 0)
            count_ack(counts, job, send_ack(job, self->index), true);
    }
    corr_thread_unregister();
    return NULL;
}

static int parse_unsigned(const char *name, const char *value, unsigned min, unsigned max,
                          unsigned *out)
{
    char *end;

    errno = 0;
    unsigned long v = strtoul(value, &end, 10);
    if (value[0] == '\0' || value[0] == '-' || *end != '\0' || errno != 0 || v < min || v > max) {
        fprintf(stderr, "blocking-wait: invalid value '%s' for --%s: expected an integer from %u "
                "to %u\n", value, name, min, max);
        return -1;
    }
    *out = (unsigned)v;
    return 0;
}

static int parse_options(int argc, char **argv)
{
    static const struct option long_options[] = {
        {"jobs", required_argument, NULL, 'j'},
        {"waiters", required_argument, NULL, 'w'},
        {"producers", required_argument, NULL, 'p'},
        {"timeout-ms", required_argument, NULL, 't'},
        {"skip-every", required_argument, NULL, 's'},
        {"close-delay-us", required_argument, NULL, 'c'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int c;

    while ((c = getopt_long(argc, argv, "", long_options, NULL)) != -1) {
        int rc;

        switch (c) {
        case 'j':
            rc = parse_unsigned("jobs", optarg, 1, 10000000, &options.jobs);
            break;
        case 'w':
            rc = parse_unsigned("waiters", optarg, 1, 256, &options.waiters);
            break;
        case 'p':
            rc = parse_unsigned("producers", optarg, 1, 256, &options.producers);
            break;
        case 't':
            rc = parse_unsigned("timeout-ms", optarg, 1, 60000, &options.timeout_ms);
            break;
        case 's':
            rc = parse_unsigned("skip-every", optarg, 0, 10000000, &options.skip_every);
            break;
        case 'c':
            rc = parse_unsigned("close-delay-us", optarg, 0, 1000000, &options.close_delay_us);
            break;
        case 'h':
            printf("Usage: blocking-wait [OPTION]...\n"
                   "Run waiter and producer threads on one corr engine and check that every\n"
                   "delivered ack reaches its waiter.\n"
                   "\n"
                   "  --jobs N          ids to wait for (default 2000)\n"
                   "  --waiters N       waiter threads (default 4)\n"
                   "  --producers N     producer threads (default 3)\n"
                   "  --timeout-ms MS   how long a waiter blocks (milliseconds, default 5)\n"
                   "  --skip-every N    send no ack for every Nth job; 0 acks all (default 10)\n"
                   "  --close-delay-us US  after a timeout, sleep this long before closing the\n"
                   "                    waiter, so more acks race with the close (microseconds,\n"
                   "                    default 100)\n");
            exit(0);
        default:
            return -1;
        }
        if (rc != 0)
            return -1;
    }
    if (optind != argc) {
        fprintf(stderr, "blocking-wait: unexpected argument '%s'; see --help\n", argv[optind]);
        return -1;
    }
    return 0;
}

static int start_threads(struct thread_arg *args, unsigned count, void *(*run)(void *))
{
    for (unsigned i = 0; i < count; i++) {
        args[i].index = i;
        int rc = pthread_create(&args[i].thread, NULL, run, &args[i]);
        if (rc != 0) {
            fprintf(stderr, "blocking-wait: pthread_create failed: %s\n", strerror(rc));
            return -1;
        }
    }
    return 0;
}

/* Compares what the producers delivered with what the waiters received; returns the failures. */
static unsigned check_jobs(void)
{
    unsigned failures = 0;

    for (unsigned job = 0; job < options.jobs; job++) {
        bool delivered = atomic_load(&jobs[job].delivered);
        unsigned received = atomic_load(&jobs[job].received);

        if (received != (delivered ? 1u : 0u)) {
            if (failures < 10)
                fprintf(stderr, "blocking-wait: job %u: ack %s, %u received\n", job,
                        delivered ? "delivered" : "not delivered", received);
            failures++;
        }
    }
    return failures;
}

int main(int argc, char **argv)
{
    struct corr_engine_config config;

    if (parse_options(argc, argv) != 0)
        return 2;

    jobs = calloc(options.jobs, sizeof(*jobs));
    struct thread_arg *waiters = calloc(options.waiters, sizeof(*waiters));
    struct thread_arg *producers = calloc(options.producers, sizeof(*producers));
    if (jobs == NULL || waiters == NULL || producers == NULL) {
        fprintf(stderr, "blocking-wait: out of memory\n");
        return 1;
    }

    corr_thread_register();
    corr_engine_config_init(&config);
    config.wake = wake_waiter;
    config.payload_free = release_payload;
    int rc = corr_engine_create(&config, &engine);
    if (rc != 0) {
        fprintf(stderr, "blocking-wait: corr_engine_create failed: %s\n", corr_strerror(rc));
        return 1;
    }

    printf("blocking-wait: %u jobs, %u waiter threads, %u producer threads, %u ms timeout\n",
           options.jobs, options.waiters, options.producers, options.timeout_ms);
    /* A failed pthread_create leaves started threads running, so exit without joining them. */
    if (start_threads(waiters, options.waiters, run_waiter) != 0 ||
        start_threads(producers, options.producers, run_producer) != 0)
        return 1;
    for (unsigned i = 0; i < options.waiters; i++)
        pthread_join(waiters[i].thread, NULL);
    for (unsigned i = 0; i < options.producers; i++)
        pthread_join(producers[i].thread, NULL);

    struct waiter_counts received = {0};
    for (unsigned i = 0; i < options.waiters; i++) {
        received.in_time += waiters[i].counts.waiter.in_time;
        received.after_close += waiters[i].counts.waiter.after_close;
        received.timed_out += waiters[i].counts.waiter.timed_out;
        received.errors += waiters[i].counts.waiter.errors;
    }
    struct producer_counts sent = {0};
    for (unsigned i = 0; i < options.producers; i++) {
        sent.delivered += producers[i].counts.producer.delivered;
        sent.no_waiter += producers[i].counts.producer.no_waiter;
        sent.full += producers[i].counts.producer.full;
        sent.skipped += producers[i].counts.producer.skipped;
        sent.errors += producers[i].counts.producer.errors;
    }

    struct corr_stats stats;
    corr_engine_stats(engine, &stats);
    unsigned mismatches = check_jobs();

    printf("producers: %u delivered, %u after the waiter closed (no waiter), %u duplicates "
           "rejected (full), %u jobs left without an ack\n",
           sent.delivered, sent.no_waiter, sent.full, sent.skipped);
    printf("waiters:   %u acks before the timeout, %u acks found by the drain after a timeout, "
           "%u timed out without an ack\n",
           received.in_time, received.after_close, received.timed_out);
    printf("engine:    %" PRIu64 " delivered, %" PRIu64 " no waiter, %" PRIu64 " full, %" PRIu64
           " pending, %" PRIu64 " payloads released untaken\n",
           stats.acks_delivered, stats.acks_no_waiter, stats.acks_full, stats.pending,
           stats.payloads_released);

    corr_engine_destroy(engine);
    corr_thread_unregister();

    bool ok = mismatches == 0 && received.errors == 0 && sent.errors == 0 &&
              received.in_time + received.after_close == sent.delivered &&
              stats.acks_delivered == sent.delivered && stats.pending == 0 &&
              atomic_load(&payloads_released) == 0;
    printf("blocking-wait: %s\n", ok ? "every delivered ack was received"
                                     : "FAILED: some delivered acks were lost or misrouted");
    free(jobs);
    free(waiters);
    free(producers);
    return ok ? 0 : 1;
}
