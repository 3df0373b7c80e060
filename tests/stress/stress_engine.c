/*
 * Multi-threaded stress test of the engine's outcome and delivery invariants (see corr.h).
 *
 * Owner threads claim one id slot at a time, add a waiter for it, take acks when their wake
 * callback fires, sometimes close early, and then close, drain and destroy. Acker threads ack
 * random slots with malloc'd payloads. Every ack attempt gets a record, and the payload carries
 * the record's index. The owner that takes the payload and the final pass check where it went.
 *
 * Each slot has a generation that its owner increments before every add and a closed generation
 * that the owner stores after close returns. An acker reads both before it acks and the
 * generation again after, so a payload delivered to incarnation G must satisfy
 * generation_before <= G <= generation_after and closed_before < G. A payload that reaches the
 * wrong waiter, or a waiter that was closed before the ack started, breaks one of these.
 *
 * The wake callback checks that its waiter is still open and is the slot's current incarnation.
 * The owner checks that a payload taken after an empty take was announced by a wake, and that
 * it takes at most `acks` payloads. Owners also add, ack and close a few shared churn ids
 * without claiming them, so that an add races with another owner's close of the same id.
 * At the end the tallies must match each record, the engine's counters and the payloads freed.
 *
 * Usage: stress_engine [--threads N] [--seconds S] [--ids K] [--max-acks A] [--seed X]
 */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "corr.h"

#define ID_BYTES 12
#define PAYLOAD_MAGIC 0x70a7104d5eedULL
#define STATES_PER_OWNER 256        /* waiter states rotate, so a late wake finds closed == 1 */
#define MAX_OWNER_ITERATIONS 10000000
#define MAX_WAIT_NS 200000          /* maximum time an owner keeps a waiter open, in ns */
#define MAX_REPORTED_VIOLATIONS 20
#define CHURN_IDS 2                 /* ids that owners add without claiming them first */

/* One id that owners take turns waiting on. */
struct slot {
    atomic_uint claimed;           /* 1 while an owner uses the slot */
    atomic_uint generation;        /* incremented before each add, 0 before the first */
    atomic_uint closed_generation; /* generation of the last waiter whose close returned */
    unsigned char id[ID_BYTES];
};

/* One ack attempt. The acker writes the plain fields, and owners update the atomic ones. */
struct record {
    uint32_t slot;
    uint32_t generation_before;
    uint32_t closed_before;
    uint32_t generation_after; /* written after the ack returns */
    int32_t outcome;           /* written after the ack returns */
    atomic_uint taken_generation; /* generation of the waiter that took it */
    atomic_uint takes;
    atomic_uint releases;         /* calls of payload_free with this payload */
};

struct payload {
    atomic_uint_least64_t magic; /* stored with release, so that TSan observes the hand-off */
    uint32_t record;
};

/*
 * Data of one waiter, which the wake callback receives. The fields that the callback reads are
 * atomic because the engine publishes the waiter with ck_pr fences, which TSan cannot observe.
 */
struct waiter_state {
    atomic_uint slot;
    atomic_uint generation;
    atomic_uint wakes;
    atomic_int closed; /* set after corr_waiter_close returned */
    unsigned acks;     /* owner only */
    unsigned taken;    /* owner only */
};

struct tally {
    uint64_t acks, delivered, no_waiter, full;
    uint64_t added, rejected_exist, rejected_space, taken;
    uint64_t churn_acks, churn_delivered, churn_no_waiter, churn_full;
};

struct owner {
    pthread_t thread;
    uint64_t rng;
    struct tally tally;
    struct waiter_state states[STATES_PER_OWNER];
};

struct acker {
    pthread_t thread;
    uint64_t rng;
    struct tally tally;
};

/* Waiter data and payload of churn waiters, which the wake callback only counts. */
static int churn_data;
static int churn_payload;
static atomic_uint_fast64_t churn_wakes;

static struct {
    unsigned threads, owners, ackers, ids;
    double seconds;
    uint64_t max_acks, seed;
    struct corr_engine *engine;
    struct slot *slots;
    struct record *records;
    atomic_uint_fast64_t next_record;
    atomic_bool stop;
    pthread_barrier_t start;
    atomic_uint_fast64_t payloads_allocated, payloads_freed, released;
    atomic_uint_fast64_t violations;
} run;

static void violation(const char *format, ...) __attribute__((format(printf, 1, 2)));

static void violation(const char *format, ...)
{
    uint64_t n = atomic_fetch_add(&run.violations, 1);
    va_list args;

    if (n >= MAX_REPORTED_VIOLATIONS)
        return;
    fprintf(stderr, "stress_engine: violation: ");
    va_start(args, format);
    vfprintf(stderr, format, args);
    va_end(args);
    fputc('\n', stderr);
}

static uint64_t next_random(uint64_t *state)
{
    /* xorshift64*, one state per thread, seeded from --seed. */
    uint64_t x = *state;

    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    return x * 0x2545f4914f6cdd1dULL;
}

static unsigned random_below(uint64_t *state, unsigned n)
{
    return (unsigned)(next_random(state) % n);
}

static uint64_t now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void slot_id(uint32_t index, unsigned char id[ID_BYTES])
{
    /* Binary ids with NUL bytes that differ only in their last four bytes. */
    memset(id, 0, ID_BYTES);
    id[0] = 's';
    memcpy(id + ID_BYTES - sizeof(index), &index, sizeof(index));
}

/* Checks a payload that left the engine and frees it. @ws is NULL when payload_free passed it. */
static void consume_payload(void *p, const struct waiter_state *ws)
{
    struct payload *payload = p;
    uint64_t magic = atomic_load_explicit(&payload->magic, memory_order_acquire);
    struct record *rec;

    if (magic != PAYLOAD_MAGIC) {
        violation("payload %p has magic %#" PRIx64 ": freed, foreign or not yet written", p, magic);
        return;
    }
    if (payload->record >= run.max_acks) {
        violation("payload %p names record %u of %" PRIu64, p, payload->record, run.max_acks);
        return;
    }
    rec = &run.records[payload->record];
    if (ws == NULL) {
        atomic_fetch_add(&rec->releases, 1);
        atomic_fetch_add(&run.released, 1);
    } else {
        unsigned slot = atomic_load(&ws->slot);
        unsigned generation = atomic_load(&ws->generation);

        if (rec->slot != slot)
            violation("record %u acked slot %u but the waiter of slot %u took it",
                      payload->record, rec->slot, slot);
        if (generation < rec->generation_before)
            violation("record %u: slot %u generation %u took a payload acked at generation %u",
                      payload->record, slot, generation, rec->generation_before);
        if (rec->closed_before >= generation)
            violation("record %u: slot %u generation %u got an ack that started after its close",
                      payload->record, slot, generation);
        if (atomic_fetch_add(&rec->takes, 1) != 0)
            violation("record %u taken twice", payload->record);
        atomic_store(&rec->taken_generation, generation);
    }
    atomic_store_explicit(&payload->magic, 0, memory_order_relaxed);
    free(payload);
    atomic_fetch_add(&run.payloads_freed, 1);
}

static void wake(struct corr_waiter *waiter, void *waiter_data, void *engine_data)
{
    struct waiter_state *ws = waiter_data;
    unsigned slot, generation, current;

    if (waiter_data == &churn_data) {
        atomic_fetch_add(&churn_wakes, 1);
        return;
    }
    slot = atomic_load(&ws->slot);
    generation = atomic_load(&ws->generation);

    if (engine_data != &run)
        violation("wake got engine data %p, expected %p", engine_data, (void *)&run);
    if (corr_waiter_data(waiter) != waiter_data)
        violation("wake got data %p for a waiter whose data is %p", waiter_data,
                  corr_waiter_data(waiter));
    if (atomic_load(&ws->closed))
        violation("wake for slot %u generation %u after its close returned", slot, generation);
    current = atomic_load(&run.slots[slot].generation);
    if (current != generation)
        violation("wake for slot %u generation %u while the slot is at generation %u", slot,
                  generation, current);
    atomic_fetch_add(&ws->wakes, 1);
}

static void release_payload(void *p, void *engine_data)
{
    consume_payload(p, NULL);
}

/*
 * Takes until corr_waiter_take returns NULL and stores in *armed_wakes the wake count read just
 * before that NULL take. The NULL take re-arms the wake-up, so any later delivery must raise it.
 */
static unsigned drain(struct corr_waiter *w, struct waiter_state *ws, unsigned *armed_wakes)
{
    unsigned n = 0;

    for (;;) {
        unsigned wakes = atomic_load(&ws->wakes);
        void *p = corr_waiter_take(w);

        if (p == NULL) {
            *armed_wakes = wakes;
            return n;
        }
        consume_payload(p, ws);
        ws->taken++;
        n++;
    }
}

static bool claim_slot(struct owner *o, uint32_t *index)
{
    uint32_t start = random_below(&o->rng, run.ids);

    for (uint32_t i = 0; i < run.ids; i++) {
        uint32_t k = (start + i) % run.ids;
        unsigned expected = 0;

        if (atomic_compare_exchange_strong(&run.slots[k].claimed, &expected, 1)) {
            *index = k;
            return true;
        }
    }
    return false;
}

/*
 * Keeps @w open for a random time, or until it has taken all its acks, and takes acks whenever
 * the wake count changes.
 */
static void wait_for_acks(struct owner *o, struct corr_waiter *w, struct waiter_state *ws,
                          unsigned *armed_wakes)
{
    uint64_t deadline = now_ns() + random_below(&o->rng, MAX_WAIT_NS);
    unsigned seen = 0;

    while (ws->taken < ws->acks && now_ns() < deadline &&
           !atomic_load_explicit(&run.stop, memory_order_relaxed)) {
        unsigned wakes = atomic_load(&ws->wakes);

        if (wakes != seen) {
            seen = wakes;
            drain(w, ws, armed_wakes);
        } else {
            sched_yield();
        }
    }
}

static void run_waiter(struct owner *o, uint64_t iteration)
{
    struct waiter_state *ws = &o->states[iteration % STATES_PER_OWNER];
    struct corr_waiter *w = NULL, *duplicate = NULL;
    struct slot *slot;
    uint32_t index, generation;
    unsigned armed_wakes = 0, wakes_after_close, final_taken;
    bool early_close, leave_payloads;
    int rc;

    if (!claim_slot(o, &index)) {
        sched_yield();
        return;
    }
    slot = &run.slots[index];

    generation = atomic_fetch_add(&slot->generation, 1) + 1;
    atomic_store(&ws->slot, index);
    atomic_store(&ws->generation, generation);
    atomic_store(&ws->wakes, 0);
    atomic_store(&ws->closed, 0);
    ws->acks = 1 + random_below(&o->rng, 3);
    ws->taken = 0;

    rc = corr_waiter_add(run.engine, slot->id, ID_BYTES, ws->acks, ws, &w);
    if (rc == -ENOSPC) {
        o->tally.rejected_space++;
        atomic_store(&slot->claimed, 0);
        sched_yield();
        return;
    }
    if (rc != 0) {
        violation("add for slot %u returned %d (%s)", index, rc, corr_strerror(rc));
        atomic_store(&slot->claimed, 0);
        return;
    }
    o->tally.added++;

    if (random_below(&o->rng, 8) == 0) {
        rc = corr_waiter_add(run.engine, slot->id, ID_BYTES, 1, NULL, &duplicate);
        if (rc == -EEXIST)
            o->tally.rejected_exist++;
        else if (rc == -ENOSPC)
            o->tally.rejected_space++;
        else
            violation("duplicate add for open slot %u returned %d, expected -EEXIST", index, rc);
    }

    early_close = random_below(&o->rng, 4) == 0;
    if (!early_close)
        wait_for_acks(o, w, ws, &armed_wakes);

    corr_waiter_close(run.engine, w);
    atomic_store(&ws->closed, 1);
    atomic_store(&slot->closed_generation, generation);
    wakes_after_close = atomic_load(&ws->wakes);

    leave_payloads = random_below(&o->rng, 4) == 0;
    if (!leave_payloads) {
        unsigned wakes_before_close = armed_wakes;

        final_taken = drain(w, ws, &armed_wakes);
        if (final_taken > 0 && wakes_after_close == wakes_before_close)
            violation("slot %u generation %u: %u payloads arrived after the last empty take "
                      "without a wake", index, generation, final_taken);
        if (atomic_load(&ws->wakes) > ws->taken)
            violation("slot %u generation %u: %u wakes for %u deliveries", index, generation,
                      atomic_load(&ws->wakes), ws->taken);
    }
    if (ws->taken > ws->acks)
        violation("slot %u generation %u took %u payloads but asked for %u acks", index,
                  generation, ws->taken, ws->acks);
    o->tally.taken += ws->taken;

    corr_waiter_destroy(run.engine, w);
    atomic_store(&slot->claimed, 0);
}

/*
 * Adds, acks, takes, closes and destroys a waiter for one of CHURN_IDS ids that all owners use
 * without claiming them. An add can then race with another owner's close of the same id, and the
 * late unlink of that close must not unregister the new waiter: its own ack must be delivered.
 */
static void run_churn(struct owner *o)
{
    unsigned char id[ID_BYTES] = {'c', (unsigned char)random_below(&o->rng, CHURN_IDS)};
    struct corr_waiter *w = NULL;
    void *taken;
    int rc;

    rc = corr_waiter_add(run.engine, id, ID_BYTES, 1, &churn_data, &w);
    if (rc == -EEXIST) {
        o->tally.rejected_exist++;
        return;
    }
    if (rc == -ENOSPC) {
        o->tally.rejected_space++;
        sched_yield();
        return;
    }
    if (rc != 0) {
        violation("add for churn id %u returned %d (%s)", id[1], rc, corr_strerror(rc));
        return;
    }
    o->tally.added++;

    rc = corr_engine_ack(run.engine, id, ID_BYTES, &churn_payload);
    o->tally.churn_acks++;
    if (rc == CORR_ACK_DELIVERED) {
        o->tally.churn_delivered++;
    } else {
        if (rc == CORR_ACK_NO_WAITER)
            o->tally.churn_no_waiter++;
        else if (rc == CORR_ACK_FULL)
            o->tally.churn_full++;
        violation("ack of open churn id %u returned %d (%s), expected delivered", id[1], rc,
                  corr_strerror(rc));
    }

    taken = corr_waiter_take(w);
    if (rc == CORR_ACK_DELIVERED && taken != &churn_payload)
        violation("churn id %u: take returned %p, expected the delivered payload %p", id[1],
                  taken, (void *)&churn_payload);
    corr_waiter_close(run.engine, w);
    corr_waiter_destroy(run.engine, w);
}

static void *owner_main(void *arg)
{
    struct owner *o = arg;

    corr_thread_register();
    pthread_barrier_wait(&run.start);
    for (uint64_t i = 0; i < MAX_OWNER_ITERATIONS; i++) {
        if (atomic_load_explicit(&run.stop, memory_order_relaxed))
            break;
        if (random_below(&o->rng, 4) == 0)
            run_churn(o);
        else
            run_waiter(o, i);
    }
    corr_thread_unregister();
    return NULL;
}

static void ack_once(struct acker *a, uint64_t index)
{
    struct record *rec = &run.records[index];
    uint32_t k = random_below(&a->rng, run.ids);
    struct slot *slot = &run.slots[k];
    struct payload *p = malloc(sizeof(*p));
    int rc;

    if (p == NULL) {
        violation("malloc of a payload failed");
        atomic_store(&run.stop, true);
        return;
    }
    atomic_fetch_add(&run.payloads_allocated, 1);

    rec->slot = k;
    rec->closed_before = atomic_load(&slot->closed_generation);
    rec->generation_before = atomic_load(&slot->generation);
    p->record = (uint32_t)index;
    atomic_store_explicit(&p->magic, PAYLOAD_MAGIC, memory_order_release);

    rc = corr_engine_ack(run.engine, slot->id, ID_BYTES, p);
    rec->generation_after = atomic_load(&slot->generation);
    rec->outcome = rc;
    a->tally.acks++;

    switch (rc) {
    case CORR_ACK_DELIVERED:
        a->tally.delivered++;
        return;
    case CORR_ACK_NO_WAITER:
        a->tally.no_waiter++;
        break;
    case CORR_ACK_FULL:
        a->tally.full++;
        break;
    default:
        violation("ack of slot %u returned %d (%s)", k, rc, corr_strerror(rc));
        break;
    }
    /* The acker keeps ownership of a payload that was not delivered. */
    atomic_store_explicit(&p->magic, 0, memory_order_relaxed);
    free(p);
    atomic_fetch_add(&run.payloads_freed, 1);
}

static void *acker_main(void *arg)
{
    struct acker *a = arg;

    corr_thread_register();
    pthread_barrier_wait(&run.start);
    while (!atomic_load_explicit(&run.stop, memory_order_relaxed)) {
        uint64_t index = atomic_fetch_add(&run.next_record, 1);

        if (index >= run.max_acks) {
            atomic_store(&run.stop, true);
            break;
        }
        ack_once(a, index);
        /* Yielding now and then gives owners on an oversubscribed machine time to add waiters. */
        if (random_below(&a->rng, 2) == 0)
            sched_yield();
    }
    corr_thread_unregister();
    return NULL;
}

static void tally_add(struct tally *sum, const struct tally *t)
{
    sum->acks += t->acks;
    sum->delivered += t->delivered;
    sum->no_waiter += t->no_waiter;
    sum->full += t->full;
    sum->added += t->added;
    sum->rejected_exist += t->rejected_exist;
    sum->rejected_space += t->rejected_space;
    sum->taken += t->taken;
    sum->churn_acks += t->churn_acks;
    sum->churn_delivered += t->churn_delivered;
    sum->churn_no_waiter += t->churn_no_waiter;
    sum->churn_full += t->churn_full;
}

/* Checks every ack record after all threads have stopped. */
static void check_records(uint64_t count)
{
    for (uint64_t i = 0; i < count; i++) {
        struct record *rec = &run.records[i];
        unsigned takes = atomic_load(&rec->takes);
        unsigned releases = atomic_load(&rec->releases);

        if (rec->outcome == CORR_ACK_DELIVERED) {
            if (takes + releases != 1)
                violation("delivered record %" PRIu64 " (slot %u) was taken %u times and "
                          "released %u times, expected once in all", i, rec->slot, takes,
                          releases);
            if (takes == 1 && atomic_load(&rec->taken_generation) > rec->generation_after)
                violation("record %" PRIu64 ": slot %u generation %u took a payload whose "
                          "ack returned at generation %u", i, rec->slot,
                          atomic_load(&rec->taken_generation), rec->generation_after);
        } else if (takes != 0 || releases != 0) {
            violation("record %" PRIu64 " with outcome %d was taken %u times and released %u "
                      "times", i, rec->outcome, takes, releases);
        }
    }
}

static void check_counter(const char *name, uint64_t engine_value, uint64_t expected)
{
    if (engine_value != expected)
        violation("stats.%s is %" PRIu64 ", expected %" PRIu64, name, engine_value, expected);
}

static void usage(const char *program)
{
    fprintf(stderr,
            "usage: %s [--threads N] [--seconds S] [--ids K] [--max-acks A] [--seed X]\n"
            "  --threads N   threads, at least 2; half own waiters, the rest ack (default 4)\n"
            "  --seconds S   run time in seconds (default 2)\n"
            "  --ids K       distinct ids the threads share (default 8)\n"
            "  --max-acks A  stop after A ack attempts even before S seconds (default 2097152)\n"
            "  --seed X      random seed (default: from the clock)\n",
            program);
}

static bool parse_unsigned(const char *text, uint64_t min, uint64_t max, uint64_t *out)
{
    char *end;
    unsigned long long value;

    errno = 0;
    value = strtoull(text, &end, 0);
    if (errno != 0 || end == text || *end != '\0' || value < min || value > max)
        return false;
    *out = value;
    return true;
}

static int parse_args(int argc, char **argv)
{
    uint64_t value;

    run.threads = 4;
    run.seconds = 2;
    run.ids = 8;
    run.max_acks = 1u << 21;
    run.seed = now_ns();
    for (int i = 1; i < argc; i++) {
        const char *name = argv[i];
        const char *text = i + 1 < argc ? argv[i + 1] : NULL;
        bool ok;

        if (text == NULL) {
            fprintf(stderr, "stress_engine: option %s needs a value\n", name);
            usage(argv[0]);
            return -1;
        }
        if (strcmp(name, "--threads") == 0) {
            ok = parse_unsigned(text, 2, 1024, &value);
            run.threads = (unsigned)value;
        } else if (strcmp(name, "--seconds") == 0) {
            char *end;

            run.seconds = strtod(text, &end);
            ok = end != text && *end == '\0' && run.seconds > 0 && run.seconds <= 3600;
        } else if (strcmp(name, "--ids") == 0) {
            ok = parse_unsigned(text, 1, 1u << 20, &value);
            run.ids = (unsigned)value;
        } else if (strcmp(name, "--max-acks") == 0) {
            ok = parse_unsigned(text, 1, UINT32_MAX, &run.max_acks);
        } else if (strcmp(name, "--seed") == 0) {
            ok = parse_unsigned(text, 1, UINT64_MAX, &run.seed);
        } else {
            fprintf(stderr, "stress_engine: unknown option %s\n", name);
            usage(argv[0]);
            return -1;
        }
        if (!ok) {
            fprintf(stderr, "stress_engine: invalid value %s for %s\n", text, name);
            usage(argv[0]);
            return -1;
        }
        i++;
    }
    run.owners = run.threads / 2;
    run.ackers = run.threads - run.owners;
    return 0;
}

static int create_engine(void)
{
    struct corr_engine_config config;
    int rc;

    corr_engine_config_init(&config);
    config.shards = 4;
    /*
     * With three or more owners, allow one fewer open waiter than owners, so that -ENOSPC races
     * with closes on other threads. With fewer owners the limit would serialise them.
     */
    config.max_pending = run.owners > 2 ? run.owners - 1 : 0;
    config.wake = wake;
    config.payload_free = release_payload;
    config.data = &run;
    rc = corr_engine_create(&config, &run.engine);
    if (rc != 0)
        fprintf(stderr, "stress_engine: corr_engine_create failed: %s\n", corr_strerror(rc));
    return rc;
}

static void wait_for_end(void)
{
    uint64_t end = now_ns() + (uint64_t)(run.seconds * 1e9);
    struct timespec pause = {.tv_sec = 0, .tv_nsec = 10 * 1000 * 1000};

    while (now_ns() < end && !atomic_load(&run.stop))
        nanosleep(&pause, NULL);
    atomic_store(&run.stop, true);
}

static void check_results(const struct tally *sum, const struct corr_stats *stats, uint64_t count)
{
    uint64_t released = atomic_load(&run.released);

    check_records(count);
    if (sum->acks != count)
        violation("%" PRIu64 " acks counted but %" PRIu64 " records used", sum->acks, count);
    if (sum->delivered + sum->no_waiter + sum->full != sum->acks)
        violation("delivered %" PRIu64 " + no_waiter %" PRIu64 " + full %" PRIu64
                  " != acks %" PRIu64, sum->delivered, sum->no_waiter, sum->full, sum->acks);
    if (sum->delivered != sum->taken + released)
        violation("delivered %" PRIu64 " != taken %" PRIu64 " + released %" PRIu64,
                  sum->delivered, sum->taken, released);

    if (atomic_load(&churn_wakes) != sum->churn_delivered)
        violation("%" PRIu64 " wakes for %" PRIu64 " churn waiters with one delivery each",
                  (uint64_t)atomic_load(&churn_wakes), sum->churn_delivered);

    check_counter("pending", stats->pending, 0);
    check_counter("waiters_added", stats->waiters_added, sum->added);
    check_counter("waiters_rejected", stats->waiters_rejected,
                  sum->rejected_exist + sum->rejected_space);
    check_counter("acks_delivered", stats->acks_delivered, sum->delivered + sum->churn_delivered);
    check_counter("acks_no_waiter", stats->acks_no_waiter, sum->no_waiter + sum->churn_no_waiter);
    check_counter("acks_full", stats->acks_full, sum->full + sum->churn_full);
    check_counter("payloads_released", stats->payloads_released, released);
}

int main(int argc, char **argv)
{
    struct owner *owners;
    struct acker *ackers;
    struct tally sum = {0};
    struct corr_stats stats;
    uint64_t count, allocated, freed;

    if (parse_args(argc, argv) != 0)
        return 2;
    run.slots = calloc(run.ids, sizeof(*run.slots));
    run.records = calloc(run.max_acks, sizeof(*run.records));
    owners = calloc(run.owners, sizeof(*owners));
    ackers = calloc(run.ackers, sizeof(*ackers));
    if (run.slots == NULL || run.records == NULL || owners == NULL || ackers == NULL) {
        fprintf(stderr, "stress_engine: out of memory for %" PRIu64 " ack records\n",
                run.max_acks);
        return 2;
    }
    for (uint32_t i = 0; i < run.ids; i++)
        slot_id(i, run.slots[i].id);

    corr_thread_register();
    if (create_engine() != 0)
        return 2;
    pthread_barrier_init(&run.start, NULL, run.threads + 1);
    for (unsigned i = 0; i < run.owners; i++) {
        owners[i].rng = run.seed * 2 * (i + 1) + 1;
        pthread_create(&owners[i].thread, NULL, owner_main, &owners[i]);
    }
    for (unsigned i = 0; i < run.ackers; i++) {
        ackers[i].rng = run.seed * 2 * (run.owners + i + 1) + 1;
        pthread_create(&ackers[i].thread, NULL, acker_main, &ackers[i]);
    }
    pthread_barrier_wait(&run.start);
    wait_for_end();
    for (unsigned i = 0; i < run.owners; i++) {
        pthread_join(owners[i].thread, NULL);
        tally_add(&sum, &owners[i].tally);
    }
    for (unsigned i = 0; i < run.ackers; i++) {
        pthread_join(ackers[i].thread, NULL);
        tally_add(&sum, &ackers[i].tally);
    }

    count = atomic_load(&run.next_record);
    if (count > run.max_acks)
        count = run.max_acks;
    corr_engine_stats(run.engine, &stats);
    check_results(&sum, &stats, count);

    /* Every waiter was destroyed, so destroying the engine must release nothing more. */
    corr_engine_destroy(run.engine);
    if (atomic_load(&run.released) != stats.payloads_released)
        violation("corr_engine_destroy released %" PRIu64 " payloads of destroyed waiters",
                  (uint64_t)atomic_load(&run.released) - stats.payloads_released);
    allocated = atomic_load(&run.payloads_allocated);
    freed = atomic_load(&run.payloads_freed);
    if (allocated != freed)
        violation("%" PRIu64 " payloads allocated but %" PRIu64 " freed", allocated, freed);
    corr_thread_unregister();
    pthread_barrier_destroy(&run.start);
    free(owners);
    free(ackers);
    free(run.records);
    free(run.slots);

    if (atomic_load(&run.violations) != 0) {
        fprintf(stderr,
                "stress_engine: FAILED with %" PRIu64 " violations (seed %" PRIu64 "): "
                "threads=%u acks=%" PRIu64 " delivered=%" PRIu64 " no_waiter=%" PRIu64
                " full=%" PRIu64 " taken=%" PRIu64 " released=%" PRIu64 "\n",
                (uint64_t)atomic_load(&run.violations), run.seed, run.threads, sum.acks,
                sum.delivered, sum.no_waiter, sum.full, sum.taken,
                (uint64_t)atomic_load(&run.released));
        return 1;
    }
    printf("stress_engine: threads=%u acks=%" PRIu64 " delivered=%" PRIu64 " no_waiter=%" PRIu64
           " full=%" PRIu64 " taken=%" PRIu64 " released=%" PRIu64 " waiters=%" PRIu64
           " rejected=%" PRIu64 " churn=%" PRIu64 " ok\n",
           run.threads, sum.acks, sum.delivered, sum.no_waiter, sum.full, sum.taken,
           (uint64_t)atomic_load(&run.released), sum.added,
           sum.rejected_exist + sum.rejected_space, sum.churn_delivered);
    return 0;
}
