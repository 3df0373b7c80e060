/*
 * Engine benchmark: the corr engine against two baselines on the same workloads.
 *
 * Scenarios (--scenario):
 *   deliver  Delivered acks per second. Each thread owns --waiters waiters that accept
 *            DELIVER_ACKS acks each, and acks ids chosen uniformly among the waiters of all
 *            threads, so with N threads about (N-1)/N of its acks go to other owners. After each
 *            batch of acks a thread takes from the waiters that the wake callback put on its ready
 *            list, so rings never fill. A waiter that has accepted all its acks is closed,
 *            destroyed and added again under the same id. Only CORR_ACK_DELIVERED results count
 *            as operations. FULL results (an exhausted waiter that its owner has not replaced
 *            yet) and NO_WAITER results (one that it is replacing) are reported, not counted.
 *   cycle    Waiter lifecycles per second on fresh ids, all on one thread: add (acks = 1), ack,
 *            wake callback, take, close, destroy.
 *   miss     Acks per second of ids that no waiter has, against a table that contains --waiters
 *            open waiters per thread.
 *
 * Implementations (--impl):
 *   corr   The engine (engine/include/corr.h) with its default 64 shards.
 *   mutex  64 shards, each a pthread mutex over a chained hash table that doubles its bucket
 *          array at load factor 1. The shard mutex also guards the queues of the shard's waiters:
 *          ack and take each lock it once. Each waiter's queue is an array of `acks` slots that
 *          never wraps, because a waiter accepts at most `acks` payloads in its life.
 *   lfht   liburcu's cds_lfht (auto-resizing, lookups in RCU read-side sections) with a per-waiter
 *          ck_ring protected exactly as in the engine: a state word whose LOCKED bit serialises
 *          producers and whose CLOSED bit stops them, plus the engine's `armed` wake handshake.
 *          So corr against lfht compares the tables (sharded ck_hs against cds_lfht).
 * The baselines hash ids with the engine's SipHash-1-3 and a random key, call the wake callback
 * with the engine's argument shape, and follow the engine's contract: at most `acks` deliveries
 * per waiter, a wake-up only when the owner re-armed it by a take that found nothing, and no
 * delivery after close returns. None of the three defines _LGPL_SOURCE, so every RCU read-side
 * lock is a library call, as in the engine.
 *
 * Measurement: threads set up, meet at a barrier and start on a go flag. The main thread sleeps
 * for --warmup seconds, samples every thread's operation counter, sleeps --seconds more, samples
 * again and sets the stop flag. ops is the counter difference; ns_per_op is thread time per
 * operation, threads * measured seconds * 1e9 / ops.
 *
 * Validation, before a result is printed: every delivered payload was taken by the owner of the
 * waiter it was addressed to (counts and checksums match), every ack has exactly one outcome,
 * every waiter added was destroyed, and nothing leaked (corr: engine statistics agree with the
 * benchmark's counts and pending == 0; baselines: waiter allocations equal frees after the table
 * is destroyed). In cycle every step must succeed, and in miss every ack must return NO_WAITER.
 * A failed validation prints the reason and exits with status 1.
 *
 * Ids are ID_BYTES (16) bytes long.
 *
 * Output: one `result ...` line per run on stdout, and with --all or --rounds > 1 one
 * `median ...` line per configuration. A human-readable table goes to stderr, each line
 * starting with '#'.
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
#include <sys/random.h>
#include <time.h>

#include <ck_pr.h>
#include <ck_ring.h>
#include <urcu.h>
#include <urcu/rculfhash.h>

#include "corr.h"
#include "siphash.h"

#define ID_BYTES        16
#define DELIVER_ACKS    1023 /* acks per deliver waiter: a power of two minus one fills ck_ring */
#define DELIVER_BATCH   64   /* acks between two drains of the ready list */
#define CYCLE_BATCH     16   /* cycles between two progress updates */
#define MISS_BATCH      64   /* acks between two progress updates */
#define DEFAULT_WAITERS 512
#define MAX_WAITERS     65536
#define MAX_THREADS     64
#define MAX_ROUNDS      100
#define MAX_SECONDS     3600.0
#define STOP_POLL_NS    10000000L /* the main thread checks for failed workers this often */

_Static_assert(sizeof(uintptr_t) >= 8, "payloads encode a slot index and a sequence in 64 bits");

enum scenario {
    SCENARIO_DELIVER,
    SCENARIO_CYCLE,
    SCENARIO_MISS,
    SCENARIO_COUNT,
};

static const char *const scenario_names[SCENARIO_COUNT] = {"deliver", "cycle", "miss"};

/* Sums of all workers' tallies, the input of validation. */
struct tally_totals {
    uint64_t acks, delivered, no_waiter, full, taken, released;
    uint64_t adds, destroys, rotations, cycles, duplicate_wakes;
    uint64_t delivered_checksum, taken_checksum, released_checksum;
};

/* Callbacks handed to a table, shaped like corr_wake_cb and corr_payload_free_cb. */
struct table_callbacks {
    void (*wake)(void *waiter, void *waiter_data, void *data);
    void (*payload_free)(void *payload, void *data);
    void *data;
};

/* One implementation under test. Results of ack() are enum corr_ack_result values. */
struct impl {
    const char *name;
    void (*thread_register)(void);
    void (*thread_unregister)(void);
    void *(*create)(const struct table_callbacks *callbacks);
    int (*add)(void *table, const void *id, size_t id_len, unsigned acks, void *data, void **out);
    int (*ack)(void *table, const void *id, size_t id_len, void *payload);
    void *(*take)(void *table, void *waiter);
    void (*close)(void *table, void *waiter);
    void (*destroy_waiter)(void *table, void *waiter);
    /* Checks implementation counters before destroy, returning false with a message if wrong. */
    bool (*check)(void *table, const struct tally_totals *totals, char *message, size_t size);
    /* Destroys the table and returns false with a message when it was not empty. */
    bool (*destroy)(void *table, char *message, size_t size);
    bool counts_allocations; /* waiter allocations and frees go through the counters below */
};

/* Per-thread counts, written only by their thread and read after join. */
struct tally {
    uint64_t acks, delivered, no_waiter, full, taken;
    uint64_t adds, destroys, rotations, cycles;
    uint64_t delivered_checksum, taken_checksum; /* sums of mix64(payload) */
};

/*
 * Waiter allocations and frees of the baselines. Owner threads count in thread-local variables
 * and add them here when they finish, so the hot path has no shared counter. The lfht baseline
 * frees in liburcu's call_rcu thread, which adds to waiters_freed directly.
 */
static atomic_uint_least64_t waiters_allocated;
static atomic_uint_least64_t waiters_freed;
static _Thread_local uint64_t thread_waiters_allocated;
static _Thread_local uint64_t thread_waiters_freed;

static void allocation_counts_flush(void)
{
    /* Relaxed: pthread_join and rcu_barrier order these before the main thread's check. */
    atomic_fetch_add_explicit(&waiters_allocated, thread_waiters_allocated, memory_order_relaxed);
    atomic_fetch_add_explicit(&waiters_freed, thread_waiters_freed, memory_order_relaxed);
    thread_waiters_allocated = 0;
    thread_waiters_freed = 0;
}

static uint64_t hash_key[2]; /* SipHash key of both baselines, random per process */

/* Wake callbacks that found their slot already queued; flushed by each worker when it ends. */
static _Thread_local uint64_t thread_duplicate_wakes;

/*
 * SplitMix64 finaliser: the checksum term of a payload, so that a lost and a duplicated payload
 * do not cancel out as they could in a plain sum.
 */
static uint64_t mix64(uint64_t x)
{
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebULL;
    x ^= x >> 31;
    return x;
}

/* ------------------------------------------------------------------------------------------ */
/* Benchmark state shared by all implementations                                              */
/* ------------------------------------------------------------------------------------------ */

struct worker;

/* One waiter position. Its owner replaces the waiter in it; other threads only read `id`. */
struct slot {
    struct slot *next_ready; /* ready-list link, written by the thread that wakes the owner */
    atomic_uint queued;      /* 1 from the push onto the ready list until the owner pops it */
    struct worker *owner;
    void *waiter;            /* owner only: the open waiter, or NULL */
    uint64_t taken;          /* owner only: payloads taken from the current waiter */
    uint32_t index;          /* position in run.slots; payloads carry index + 1 */
    const unsigned char *id; /* ID_BYTES bytes, fixed for the run */
};

struct worker {
    struct run *run;
    unsigned index;
    pthread_t thread;
    /*
     * Treiber stack of slots whose waiters have acks to take. The wake callback pushes from any
     * thread and the owner takes the whole list with one exchange, so there is no ABA problem.
     */
    _Alignas(64) _Atomic(struct slot *) ready;
    _Alignas(64) atomic_uint_least64_t progress; /* operations so far; written by the owner only */
    uint64_t rng;
    uint64_t sequence; /* id and payload counter */
    struct tally tally;
    bool failed;
    char error[256];
} __attribute__((aligned(64)));

struct run {
    const struct impl *impl;
    enum scenario scenario;
    unsigned threads;
    unsigned waiters_per_thread;
    void *table;
    struct slot *slots;
    unsigned slot_count;
    unsigned char *ids; /* slot_count ids of ID_BYTES bytes */
    struct worker *workers;
    pthread_barrier_t start_barrier;
    atomic_bool go;
    atomic_bool stop;
    atomic_bool failed;
    atomic_uint_least64_t released;          /* payloads passed to payload_free */
    atomic_uint_least64_t released_checksum; /* sum of mix64 over those payloads */
    atomic_uint_least64_t duplicate_wakes;   /* sum of the workers' thread_duplicate_wakes */
};

static void worker_fail(struct worker *w, const char *format, ...)
    __attribute__((format(printf, 2, 3)));

static void worker_fail(struct worker *w, const char *format, ...)
{
    if (w->failed)
        return;
    w->failed = true;
    va_list args;
    va_start(args, format);
    vsnprintf(w->error, sizeof(w->error), format, args);
    va_end(args);
    /* Relaxed: only a signal for the main thread to stop early. The message is read after join. */
    atomic_store_explicit(&w->run->failed, true, memory_order_relaxed);
}

/*
 * Wake callback of every implementation: put the waiter's slot on its owner's ready list unless
 * it is already there. The check is needed for corr and lfht: their take stores armed = 1 when
 * the ring looks empty and may then dequeue a payload after all, returning it with the waiter
 * still armed. The next delivery then wakes a waiter whose owner is still draining it, and after
 * the owner's NULL take another delivery wakes it again, before the owner has popped the list.
 */
static void wake_owner(void *waiter, void *waiter_data, void *data)
{
    struct slot *slot = waiter_data;
    struct worker *owner = slot->owner;

    /* Acquire, paired with the release store in ready_slot_claim, which read next_ready. */
    if (atomic_exchange_explicit(&slot->queued, 1, memory_order_acquire) != 0) {
        thread_duplicate_wakes++;
        return;
    }
    struct slot *head = atomic_load_explicit(&owner->ready, memory_order_relaxed);
    /* Release, paired with the acquire exchange in ready_list_take: the owner sees next_ready. */
    do {
        slot->next_ready = head;
    } while (!atomic_compare_exchange_weak_explicit(&owner->ready, &head, slot,
                                                    memory_order_release, memory_order_relaxed));
}

static struct slot *ready_list_take(struct worker *w)
{
    /* Acquire, paired with the release CAS in wake_owner. */
    return atomic_exchange_explicit(&w->ready, NULL, memory_order_acquire);
}

/*
 * Return the slot after @slot in a popped list and let wake_owner queue @slot again. Call it
 * before taking from the slot's waiter: a take that re-arms the waiter makes the next delivery
 * call wake_owner, which must then find queued == 0. That delivery's exchange of `armed` reads
 * the owner's re-arm, which the take orders after this store with a full fence.
 */
static struct slot *ready_slot_claim(struct slot *slot)
{
    struct slot *next = slot->next_ready;

    /* Release, paired with the acquire exchange in wake_owner: next_ready was read first. */
    atomic_store_explicit(&slot->queued, 0, memory_order_release);
    return next;
}

/* Count a payload that an implementation passed to payload_free when destroying a waiter. */
static void payload_release(void *payload, void *data)
{
    struct run *run = data;

    /* Relaxed: read by the main thread after join and the table's destroy. */
    atomic_fetch_add_explicit(&run->released, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&run->released_checksum, mix64((uintptr_t)payload),
                              memory_order_relaxed);
}

/* ------------------------------------------------------------------------------------------ */
/* corr: the engine                                                                           */
/* ------------------------------------------------------------------------------------------ */

static void corr_wake(struct corr_waiter *waiter, void *waiter_data, void *engine_data)
{
    wake_owner(waiter, waiter_data, engine_data);
}

static void *corr_table_create(const struct table_callbacks *callbacks)
{
    struct corr_engine_config config;
    struct corr_engine *engine;

    corr_engine_config_init(&config);
    config.wake = corr_wake;
    config.payload_free = callbacks->payload_free;
    config.data = callbacks->data;
    int err = corr_engine_create(&config, &engine);
    if (err != 0) {
        fprintf(stderr, "corr_engine_bench: corr_engine_create failed: %s\n", corr_strerror(err));
        return NULL;
    }
    return engine;
}

static int corr_table_add(void *table, const void *id, size_t id_len, unsigned acks, void *data,
                          void **out)
{
    struct corr_waiter *waiter;
    int err = corr_waiter_add(table, id, id_len, acks, data, &waiter);

    if (err == 0)
        *out = waiter;
    return err;
}

static int corr_table_ack(void *table, const void *id, size_t id_len, void *payload)
{
    return corr_engine_ack(table, id, id_len, payload);
}

static void *corr_table_take(void *table, void *waiter)
{
    return corr_waiter_take(waiter);
}

static void corr_table_close(void *table, void *waiter)
{
    corr_waiter_close(table, waiter);
}

static void corr_table_destroy_waiter(void *table, void *waiter)
{
    corr_waiter_destroy(table, waiter);
}

static bool corr_table_check(void *table, const struct tally_totals *totals, char *message,
                             size_t size)
{
    struct corr_stats stats;

    corr_engine_stats(table, &stats);
    if (stats.pending != 0) {
        snprintf(message, size, "engine stats: pending = %" PRIu64 " after every waiter was closed",
                 stats.pending);
        return false;
    }
    if (stats.waiters_added != totals->adds || stats.acks_delivered != totals->delivered ||
        stats.acks_no_waiter != totals->no_waiter || stats.acks_full != totals->full ||
        stats.payloads_released != totals->released) {
        snprintf(message, size,
                 "engine stats disagree with the benchmark's counts: added %" PRIu64 "/%" PRIu64
                 ", delivered %" PRIu64 "/%" PRIu64 ", no_waiter %" PRIu64 "/%" PRIu64
                 ", full %" PRIu64 "/%" PRIu64 ", released %" PRIu64 "/%" PRIu64
                 " (engine/benchmark)",
                 stats.waiters_added, totals->adds, stats.acks_delivered, totals->delivered,
                 stats.acks_no_waiter, totals->no_waiter, stats.acks_full, totals->full,
                 stats.payloads_released, totals->released);
        return false;
    }
    return true;
}

static bool corr_table_destroy(void *table, char *message, size_t size)
{
    corr_engine_destroy(table);
    return true;
}

static const struct impl corr_impl = {
    .name = "corr",
    .thread_register = corr_thread_register,
    .thread_unregister = corr_thread_unregister,
    .create = corr_table_create,
    .add = corr_table_add,
    .ack = corr_table_ack,
    .take = corr_table_take,
    .close = corr_table_close,
    .destroy_waiter = corr_table_destroy_waiter,
    .check = corr_table_check,
    .destroy = corr_table_destroy,
    .counts_allocations = false,
};

/* ------------------------------------------------------------------------------------------ */
/* mutex: sharded, mutex-protected chained hash table                                         */
/* ------------------------------------------------------------------------------------------ */

#define MUTEX_SHARD_BITS      6
#define MUTEX_SHARDS          (1u << MUTEX_SHARD_BITS)
#define MUTEX_INITIAL_BUCKETS 64

struct mutex_waiter {
    struct mutex_waiter *chain; /* next waiter in the same bucket, guarded by the shard mutex */
    uint64_t hash;
    unsigned shard;
    bool linked;       /* in the table, written under the shard mutex by the owner only */
    bool armed;        /* the owner wants a wake-up, guarded by the shard mutex */
    unsigned accepted; /* payloads queued so far, guarded by the shard mutex */
    unsigned taken;    /* payloads taken so far, guarded by the shard mutex */
    unsigned acks;
    void *data;
    size_t id_len;
    unsigned char *id;
    void *queue[]; /* `acks` entries, filled in order and never reused */
};

struct mutex_shard {
    pthread_mutex_t lock;
    struct mutex_waiter **buckets;
    size_t bucket_mask;
    size_t count; /* linked waiters */
} __attribute__((aligned(64)));

struct mutex_table {
    struct table_callbacks callbacks;
    struct mutex_shard shards[MUTEX_SHARDS];
};

static void *mutex_table_create(const struct table_callbacks *callbacks)
{
    struct mutex_table *table = aligned_alloc(64, sizeof(*table));

    if (table == NULL)
        return NULL;
    memset(table, 0, sizeof(*table));
    table->callbacks = *callbacks;
    for (unsigned i = 0; i < MUTEX_SHARDS; i++) {
        struct mutex_shard *shard = &table->shards[i];
        shard->buckets = calloc(MUTEX_INITIAL_BUCKETS, sizeof(*shard->buckets));
        if (shard->buckets == NULL) {
            for (unsigned j = 0; j < i; j++)
                free(table->shards[j].buckets);
            free(table);
            return NULL;
        }
        shard->bucket_mask = MUTEX_INITIAL_BUCKETS - 1;
        pthread_mutex_init(&shard->lock, NULL);
    }
    return table;
}

static struct mutex_shard *mutex_shard_of(struct mutex_table *table, uint64_t hash)
{
    /* The top bits pick the shard and the low bits the bucket, so the two stay independent. */
    return &table->shards[hash >> (64 - MUTEX_SHARD_BITS)];
}

/* Return the link that points to the waiter for the id, or to the bucket's terminating NULL. */
static struct mutex_waiter **mutex_find(struct mutex_shard *shard, uint64_t hash, const void *id,
                                        size_t id_len)
{
    struct mutex_waiter **link = &shard->buckets[hash & shard->bucket_mask];

    while (*link != NULL) {
        struct mutex_waiter *w = *link;
        if (w->hash == hash && w->id_len == id_len && memcmp(w->id, id, id_len) == 0)
            return link;
        link = &w->chain;
    }
    return link;
}

/*
 * Double the bucket array, with the shard mutex held. When calloc fails the old array stays, and
 * the table still works at a higher load factor.
 */
static void mutex_shard_grow(struct mutex_shard *shard)
{
    size_t buckets = (shard->bucket_mask + 1) * 2;
    struct mutex_waiter **grown = calloc(buckets, sizeof(*grown));

    if (grown == NULL)
        return;
    for (size_t i = 0; i <= shard->bucket_mask; i++) {
        struct mutex_waiter *w = shard->buckets[i];
        while (w != NULL) {
            struct mutex_waiter *next = w->chain;
            struct mutex_waiter **head = &grown[w->hash & (buckets - 1)];
            w->chain = *head;
            *head = w;
            w = next;
        }
    }
    free(shard->buckets);
    shard->buckets = grown;
    shard->bucket_mask = buckets - 1;
}

static int mutex_table_add(void *table_pointer, const void *id, size_t id_len, unsigned acks,
                           void *data, void **out)
{
    struct mutex_table *table = table_pointer;
    struct mutex_waiter *w = malloc(sizeof(*w) + acks * sizeof(void *) + id_len);

    if (w == NULL)
        return -ENOMEM;
    thread_waiters_allocated++;
    memset(w, 0, sizeof(*w));
    w->id = (unsigned char *)&w->queue[acks];
    memcpy(w->id, id, id_len);
    w->id_len = id_len;
    w->hash = corr__siphash13(hash_key, id, id_len);
    w->armed = true;
    w->acks = acks;
    w->data = data;

    struct mutex_shard *shard = mutex_shard_of(table, w->hash);
    w->shard = (unsigned)(shard - table->shards);
    pthread_mutex_lock(&shard->lock);
    struct mutex_waiter **link = mutex_find(shard, w->hash, id, id_len);
    if (*link != NULL) {
        pthread_mutex_unlock(&shard->lock);
        free(w);
        thread_waiters_freed++;
        return -EEXIST;
    }
    *link = w;
    w->linked = true;
    if (++shard->count > shard->bucket_mask + 1)
        mutex_shard_grow(shard);
    pthread_mutex_unlock(&shard->lock);
    *out = w;
    return 0;
}

static int mutex_table_ack(void *table_pointer, const void *id, size_t id_len, void *payload)
{
    struct mutex_table *table = table_pointer;
    uint64_t hash = corr__siphash13(hash_key, id, id_len);
    struct mutex_shard *shard = mutex_shard_of(table, hash);
    int result;

    pthread_mutex_lock(&shard->lock);
    struct mutex_waiter *w = *mutex_find(shard, hash, id, id_len);
    if (w == NULL) {
        result = CORR_ACK_NO_WAITER;
    } else if (w->accepted >= w->acks) {
        result = CORR_ACK_FULL;
    } else {
        w->queue[w->accepted++] = payload;
        if (w->armed) {
            w->armed = false;
            table->callbacks.wake(w, w->data, table->callbacks.data);
        }
        result = CORR_ACK_DELIVERED;
    }
    pthread_mutex_unlock(&shard->lock);
    return result;
}

static void *mutex_table_take(void *table_pointer, void *waiter)
{
    struct mutex_table *table = table_pointer;
    struct mutex_waiter *w = waiter;
    struct mutex_shard *shard = &table->shards[w->shard];
    void *payload = NULL;

    pthread_mutex_lock(&shard->lock);
    if (w->taken < w->accepted)
        payload = w->queue[w->taken++];
    else
        w->armed = true;
    pthread_mutex_unlock(&shard->lock);
    return payload;
}

static void mutex_table_close(void *table_pointer, void *waiter)
{
    struct mutex_table *table = table_pointer;
    struct mutex_waiter *w = waiter;
    struct mutex_shard *shard = &table->shards[w->shard];

    if (!w->linked)
        return;
    pthread_mutex_lock(&shard->lock);
    struct mutex_waiter **link = &shard->buckets[w->hash & shard->bucket_mask];
    while (*link != w)
        link = &(*link)->chain;
    *link = w->chain;
    shard->count--;
    w->linked = false;
    pthread_mutex_unlock(&shard->lock);
}

static void mutex_table_destroy_waiter(void *table_pointer, void *waiter)
{
    struct mutex_table *table = table_pointer;
    struct mutex_waiter *w = waiter;

    /* After close no producer can reach the waiter, so its queue needs no lock. */
    mutex_table_close(table, w);
    for (unsigned i = w->taken; i < w->accepted; i++)
        table->callbacks.payload_free(w->queue[i], table->callbacks.data);
    free(w);
    thread_waiters_freed++;
}

static bool mutex_table_check(void *table_pointer, const struct tally_totals *totals, char *message,
                              size_t size)
{
    struct mutex_table *table = table_pointer;
    size_t open = 0;

    for (unsigned i = 0; i < MUTEX_SHARDS; i++)
        open += table->shards[i].count;
    if (open != 0) {
        snprintf(message, size, "mutex table: %zu waiters still linked after every close", open);
        return false;
    }
    return true;
}

static bool mutex_table_destroy(void *table_pointer, char *message, size_t size)
{
    struct mutex_table *table = table_pointer;
    size_t left = 0;

    for (unsigned i = 0; i < MUTEX_SHARDS; i++) {
        struct mutex_shard *shard = &table->shards[i];
        for (size_t b = 0; b <= shard->bucket_mask; b++) {
            while (shard->buckets[b] != NULL) {
                struct mutex_waiter *w = shard->buckets[b];
                shard->buckets[b] = w->chain;
                free(w);
                thread_waiters_freed++;
                left++;
            }
        }
        free(shard->buckets);
        pthread_mutex_destroy(&shard->lock);
    }
    free(table);
    if (left != 0) {
        snprintf(message, size, "mutex table: destroy found %zu waiters", left);
        return false;
    }
    return true;
}

static void no_thread_registration(void)
{
}

static const struct impl mutex_impl = {
    .name = "mutex",
    .thread_register = no_thread_registration,
    .thread_unregister = no_thread_registration,
    .create = mutex_table_create,
    .add = mutex_table_add,
    .ack = mutex_table_ack,
    .take = mutex_table_take,
    .close = mutex_table_close,
    .destroy_waiter = mutex_table_destroy_waiter,
    .check = mutex_table_check,
    .destroy = mutex_table_destroy,
    .counts_allocations = true,
};

/* ------------------------------------------------------------------------------------------ */
/* lfht: liburcu cds_lfht with the engine's per-waiter ring protocol                          */
/* ------------------------------------------------------------------------------------------ */

#define LFHT_INITIAL_BUCKETS 64
#define LFHT_LOCKED          1u
#define LFHT_CLOSED          2u

struct lfht_key {
    size_t len;
    const void *bytes;
};

struct lfht_waiter {
    struct cds_lfht_node node;
    struct rcu_head rcu;
    unsigned long hash;
    unsigned int state;    /* LFHT_LOCKED | LFHT_CLOSED, changed only with ck_pr atomics */
    unsigned int armed;    /* 1 while the owner wants a wake-up, ck_pr atomics only */
    unsigned int accepted; /* deliveries so far, accessed only under LFHT_LOCKED */
    unsigned int acks;
    bool unlinked; /* owner only */
    void *data;
    size_t id_len;
    ck_ring_t ring;
    ck_ring_buffer_t *slots;
    unsigned char id[];
};

struct lfht_table {
    struct table_callbacks callbacks;
    struct cds_lfht *ht;
};

static int lfht_match(struct cds_lfht_node *node, const void *key_pointer)
{
    const struct lfht_waiter *w = caa_container_of(node, struct lfht_waiter, node);
    const struct lfht_key *key = key_pointer;

    /* cds_lfht_lookup compares the hashes before it calls this. */
    return w->id_len == key->len && memcmp(w->id, key->bytes, key->len) == 0;
}

static void *lfht_table_create(const struct table_callbacks *callbacks)
{
    struct lfht_table *table = calloc(1, sizeof(*table));

    if (table == NULL)
        return NULL;
    table->callbacks = *callbacks;
    table->ht = cds_lfht_new(LFHT_INITIAL_BUCKETS, LFHT_INITIAL_BUCKETS, 0,
                             CDS_LFHT_AUTO_RESIZE | CDS_LFHT_ACCOUNTING, NULL);
    if (table->ht == NULL) {
        free(table);
        return NULL;
    }
    return table;
}

static unsigned lfht_ring_slots_for(unsigned acks)
{
    /* ck_ring needs a power of two and keeps one slot free, as in the engine. */
    unsigned slots = 2;
    while (slots < acks + 1)
        slots <<= 1;
    return slots;
}

static int lfht_table_add(void *table_pointer, const void *id, size_t id_len, unsigned acks,
                          void *data, void **out)
{
    struct lfht_table *table = table_pointer;
    unsigned slots = lfht_ring_slots_for(acks);
    size_t slots_offset = (sizeof(struct lfht_waiter) + id_len + 7) & ~(size_t)7;
    struct lfht_waiter *w = malloc(slots_offset + slots * sizeof(ck_ring_buffer_t));

    if (w == NULL)
        return -ENOMEM;
    thread_waiters_allocated++;
    memset(w, 0, sizeof(*w));
    memcpy(w->id, id, id_len);
    w->id_len = id_len;
    w->hash = (unsigned long)corr__siphash13(hash_key, id, id_len);
    w->armed = 1;
    w->acks = acks;
    w->data = data;
    w->slots = (ck_ring_buffer_t *)((char *)w + slots_offset);
    ck_ring_init(&w->ring, slots);
    cds_lfht_node_init(&w->node);

    struct lfht_key key = {.len = id_len, .bytes = w->id};
    /* add_unique issues a full barrier before its commit (rculfhash.h), publishing the waiter. */
    rcu_read_lock();
    struct cds_lfht_node *found =
        cds_lfht_add_unique(table->ht, w->hash, lfht_match, &key, &w->node);
    rcu_read_unlock();
    if (found != &w->node) {
        free(w); /* liburcu: a node that add_unique rejected needs no grace period */
        thread_waiters_freed++;
        return -EEXIST;
    }
    *out = w;
    return 0;
}

/* Take the producer lock, or return false without it once the waiter is closed. */
static bool lfht_producer_lock(struct lfht_waiter *w)
{
    for (unsigned spins = 0;; spins++) {
        unsigned state = ck_pr_load_uint(&w->state);
        if (state & LFHT_CLOSED)
            return false;
        if ((state & LFHT_LOCKED) == 0 && ck_pr_cas_uint(&w->state, state, state | LFHT_LOCKED)) {
            /* Acquire, paired with the release in lfht_producer_unlock. */
            ck_pr_fence_lock();
            return true;
        }
        if (spins < 64)
            ck_pr_stall();
        else
            sched_yield();
    }
}

static void lfht_producer_unlock(struct lfht_waiter *w)
{
    /* Release, paired with lfht_producer_lock and with the acquire in lfht_table_close. */
    ck_pr_fence_unlock();
    ck_pr_and_uint(&w->state, ~LFHT_LOCKED);
}

static int lfht_deliver_locked(struct lfht_table *table, struct lfht_waiter *w, void *payload)
{
    if (w->accepted >= w->acks)
        return CORR_ACK_FULL;
    if (!ck_ring_enqueue_spsc(&w->ring, w->slots, payload))
        return CORR_ACK_FULL;
    w->accepted++;
    /*
     * Orders the enqueue before the exchange of `armed`. Pairs with the store-load fence in
     * lfht_table_take, so either the owner's second dequeue finds this payload or this exchange
     * reads armed == 1.
     */
    ck_pr_fence_store_atomic();
    if (ck_pr_fas_uint(&w->armed, 0) == 1)
        table->callbacks.wake(w, w->data, table->callbacks.data);
    return CORR_ACK_DELIVERED;
}

static int lfht_table_ack(void *table_pointer, const void *id, size_t id_len, void *payload)
{
    struct lfht_table *table = table_pointer;
    unsigned long hash = (unsigned long)corr__siphash13(hash_key, id, id_len);
    struct lfht_key key = {.len = id_len, .bytes = id};
    struct cds_lfht_iter iter;
    int result = CORR_ACK_NO_WAITER;

    /* The waiter found here is freed only by call_rcu, so it stays valid until the unlock. */
    rcu_read_lock();
    cds_lfht_lookup(table->ht, hash, lfht_match, &key, &iter);
    struct cds_lfht_node *node = cds_lfht_iter_get_node(&iter);
    if (node != NULL) {
        struct lfht_waiter *w = caa_container_of(node, struct lfht_waiter, node);
        if (lfht_producer_lock(w)) {
            result = lfht_deliver_locked(table, w, payload);
            lfht_producer_unlock(w);
        }
    }
    rcu_read_unlock();
    return result;
}

static void *lfht_table_take(void *table_pointer, void *waiter)
{
    struct lfht_waiter *w = waiter;
    void *payload;

    if (ck_ring_dequeue_spsc(&w->ring, w->slots, &payload))
        return payload;
    ck_pr_store_uint(&w->armed, 1);
    /* Pairs with the fence before the exchange in lfht_deliver_locked. */
    ck_pr_fence_store_load();
    if (ck_ring_dequeue_spsc(&w->ring, w->slots, &payload))
        return payload;
    return NULL;
}

static void lfht_table_close(void *table_pointer, void *waiter)
{
    struct lfht_table *table = table_pointer;
    struct lfht_waiter *w = waiter;

    if (w->unlinked)
        return;
    w->unlinked = true;
    ck_pr_or_uint(&w->state, LFHT_CLOSED);
    for (unsigned spins = 0; ck_pr_load_uint(&w->state) & LFHT_LOCKED; spins++) {
        if (spins < 64)
            ck_pr_stall();
        else
            sched_yield();
    }
    /* Acquire, paired with lfht_producer_unlock, so the owner's drain finds every enqueue. */
    ck_pr_fence_acquire();

    rcu_read_lock();
    int err = cds_lfht_del(table->ht, &w->node);
    rcu_read_unlock();
    if (err != 0) {
        /* Only the owner deletes its node, so this means the table or the benchmark is broken. */
        fprintf(stderr, "corr_engine_bench: cds_lfht_del failed with %d\n", err);
        abort();
    }
}

static void lfht_waiter_free(struct rcu_head *head)
{
    free(caa_container_of(head, struct lfht_waiter, rcu));
    /* Relaxed: only the call_rcu thread writes it, and rcu_barrier orders it before the check. */
    atomic_fetch_add_explicit(&waiters_freed, 1, memory_order_relaxed);
}

static void lfht_table_destroy_waiter(void *table_pointer, void *waiter)
{
    struct lfht_table *table = table_pointer;
    struct lfht_waiter *w = waiter;
    void *payload;

    lfht_table_close(table, w);
    while (ck_ring_dequeue_spsc(&w->ring, w->slots, &payload))
        table->callbacks.payload_free(payload, table->callbacks.data);
    /* Acks that found the node before cds_lfht_del may still be reading it. */
    call_rcu(&w->rcu, lfht_waiter_free);
}

static bool lfht_table_check(void *table_pointer, const struct tally_totals *totals, char *message,
                             size_t size)
{
    struct lfht_table *table = table_pointer;
    long split_before, split_after;
    unsigned long nodes;

    rcu_read_lock();
    cds_lfht_count_nodes(table->ht, &split_before, &nodes, &split_after);
    rcu_read_unlock();
    if (nodes != 0) {
        snprintf(message, size, "lfht: %lu waiters still in the table after every close", nodes);
        return false;
    }
    return true;
}

static bool lfht_table_destroy(void *table_pointer, char *message, size_t size)
{
    struct lfht_table *table = table_pointer;
    int err = cds_lfht_destroy(table->ht, NULL);

    free(table);
    /* Run the waiter frees that call_rcu deferred, so the allocation check can count them. */
    rcu_barrier();
    if (err != 0) {
        snprintf(message, size, "lfht: cds_lfht_destroy failed with %d (table not empty?)", err);
        return false;
    }
    return true;
}

static const struct impl lfht_impl = {
    .name = "lfht",
    .thread_register = rcu_register_thread,
    .thread_unregister = rcu_unregister_thread,
    .create = lfht_table_create,
    .add = lfht_table_add,
    .ack = lfht_table_ack,
    .take = lfht_table_take,
    .close = lfht_table_close,
    .destroy_waiter = lfht_table_destroy_waiter,
    .check = lfht_table_check,
    .destroy = lfht_table_destroy,
    .counts_allocations = true,
};

#define IMPL_COUNT 3
static const struct impl *const impls[IMPL_COUNT] = {&corr_impl, &mutex_impl, &lfht_impl};

/* ------------------------------------------------------------------------------------------ */
/* Scenarios                                                                                  */
/* ------------------------------------------------------------------------------------------ */

/* Write an id: a one-byte kind ('w' waiter, 'c' cycle, 'm' miss), the thread, a counter. */
static void id_format(unsigned char *id, char kind, uint32_t thread, uint64_t counter)
{
    memset(id, 0, ID_BYTES);
    id[0] = (unsigned char)kind;
    memcpy(id + 4, &thread, sizeof(thread));
    memcpy(id + 8, &counter, sizeof(counter));
}

static uint64_t rng_next(uint64_t *state)
{
    /* xorshift64*: cheap and good enough to spread acks over the slots. */
    uint64_t x = *state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    return x * 0x2545f4914f6cdd1dULL;
}

static void *payload_encode(uint32_t slot_index, uint64_t sequence)
{
    return (void *)(uintptr_t)(((uint64_t)(slot_index + 1) << 32) | (uint32_t)sequence);
}

static bool stop_requested(struct run *run)
{
    /* Acquire, paired with the release store in run_measure. */
    return atomic_load_explicit(&run->stop, memory_order_acquire);
}

static void progress_publish(struct worker *w, uint64_t operations)
{
    /* Relaxed: a counter sampled by the main thread; nothing else is published with it. */
    atomic_store_explicit(&w->progress, operations, memory_order_relaxed);
}

static bool slot_add(struct worker *w, struct slot *slot, unsigned acks)
{
    struct run *run = w->run;
    int err = run->impl->add(run->table, slot->id, ID_BYTES, acks, slot, &slot->waiter);

    if (err != 0) {
        slot->waiter = NULL;
        worker_fail(w, "%s: add for slot %u failed: %s", run->impl->name, slot->index,
                    corr_strerror(err));
        return false;
    }
    slot->taken = 0;
    w->tally.adds++;
    return true;
}

/* Take every payload queued for the slot's waiter and check that it was addressed to it. */
static bool slot_take_all(struct worker *w, struct slot *slot)
{
    struct run *run = w->run;
    void *payload;

    while ((payload = run->impl->take(run->table, slot->waiter)) != NULL) {
        uint64_t value = (uintptr_t)payload;
        if ((value >> 32) != (uint64_t)slot->index + 1) {
            worker_fail(w, "%s: the waiter of slot %u returned a payload for slot %" PRIu64,
                        run->impl->name, slot->index, (value >> 32) - 1);
            return false;
        }
        slot->taken++;
        w->tally.taken++;
        w->tally.taken_checksum += mix64(value);
    }
    return true;
}

static bool slot_close(struct worker *w, struct slot *slot)
{
    struct run *run = w->run;

    if (slot->waiter == NULL)
        return true;
    run->impl->close(run->table, slot->waiter);
    bool ok = slot_take_all(w, slot); /* acks delivered while close ran are in the queue now */
    run->impl->destroy_waiter(run->table, slot->waiter);
    slot->waiter = NULL;
    w->tally.destroys++;
    return ok;
}

static void tally_ack_result(struct worker *w, int result, void *payload)
{
    w->tally.acks++;
    switch (result) {
    case CORR_ACK_DELIVERED:
        w->tally.delivered++;
        w->tally.delivered_checksum += mix64((uintptr_t)payload);
        break;
    case CORR_ACK_NO_WAITER:
        w->tally.no_waiter++;
        break;
    case CORR_ACK_FULL:
        w->tally.full++;
        break;
    default:
        worker_fail(w, "%s: ack returned %d (%s)", w->run->impl->name, result,
                    corr_strerror(result));
        break;
    }
}

/* Take from every waiter on the ready list; replace waiters that accepted all their acks. */
static bool deliver_drain(struct worker *w)
{
    struct slot *slot = ready_list_take(w);

    while (slot != NULL) {
        struct slot *next = ready_slot_claim(slot);
        if (!slot_take_all(w, slot))
            return false;
        if (slot->taken > DELIVER_ACKS) {
            worker_fail(w, "%s: slot %u took %" PRIu64 " payloads from a waiter with acks = %d",
                        w->run->impl->name, slot->index, slot->taken, DELIVER_ACKS);
            return false;
        }
        if (slot->taken == DELIVER_ACKS) {
            if (!slot_close(w, slot) || !slot_add(w, slot, DELIVER_ACKS))
                return false;
            w->tally.rotations++;
        }
        slot = next;
    }
    return true;
}

static void deliver_loop(struct worker *w)
{
    struct run *run = w->run;

    while (!stop_requested(run) && !w->failed) {
        for (unsigned i = 0; i < DELIVER_BATCH; i++) {
            uint32_t target = (uint32_t)(rng_next(&w->rng) % run->slot_count);
            void *payload = payload_encode(target, w->sequence++);
            int result = run->impl->ack(run->table, run->slots[target].id, ID_BYTES, payload);
            tally_ack_result(w, result, payload);
        }
        if (!deliver_drain(w))
            return;
        progress_publish(w, w->tally.delivered);
    }
}

static void cycle_loop(struct worker *w)
{
    struct run *run = w->run;
    const struct impl *impl = run->impl;
    struct slot *slot = &run->slots[w->index];
    unsigned char id[ID_BYTES];

    while (!stop_requested(run)) {
        for (unsigned i = 0; i < CYCLE_BATCH; i++) {
            uint64_t sequence = w->sequence++;
            id_format(id, 'c', w->index, sequence);
            int err = impl->add(run->table, id, ID_BYTES, 1, slot, &slot->waiter);
            if (err != 0) {
                worker_fail(w, "%s: add of a fresh id failed: %s", impl->name, corr_strerror(err));
                return;
            }
            w->tally.adds++;

            void *payload = payload_encode(slot->index, sequence);
            int result = impl->ack(run->table, id, ID_BYTES, payload);
            tally_ack_result(w, result, payload);
            if (result != CORR_ACK_DELIVERED) {
                worker_fail(w, "%s: ack of a fresh waiter returned %s", impl->name,
                            corr_strerror(result));
                return;
            }
            struct slot *woken = ready_list_take(w);
            if (woken != slot || ready_slot_claim(slot) != NULL) {
                worker_fail(w,
                            "%s: the first ack of a waiter did not call the wake callback "
                            "exactly once",
                            impl->name);
                return;
            }
            void *taken = impl->take(run->table, slot->waiter);
            if (taken != payload) {
                worker_fail(w, "%s: take returned %p, expected the delivered payload %p",
                            impl->name, taken, payload);
                return;
            }
            w->tally.taken++;
            w->tally.taken_checksum += mix64((uintptr_t)taken);

            impl->close(run->table, slot->waiter);
            impl->destroy_waiter(run->table, slot->waiter);
            slot->waiter = NULL;
            w->tally.destroys++;
            w->tally.cycles++;
        }
        progress_publish(w, w->tally.cycles);
    }
}

static void miss_loop(struct worker *w)
{
    struct run *run = w->run;
    unsigned char id[ID_BYTES];
    void *payload = payload_encode(w->index, 0); /* never delivered */

    while (!stop_requested(run) && !w->failed) {
        for (unsigned i = 0; i < MISS_BATCH; i++) {
            id_format(id, 'm', w->index, w->sequence++);
            int result = run->impl->ack(run->table, id, ID_BYTES, payload);
            tally_ack_result(w, result, payload);
            if (result != CORR_ACK_NO_WAITER) {
                worker_fail(w, "%s: ack of an absent id returned %s", run->impl->name,
                            corr_strerror(result));
                return;
            }
        }
        progress_publish(w, w->tally.acks);
    }
}

static struct slot *worker_slots(struct worker *w, unsigned *count)
{
    struct run *run = w->run;

    if (run->scenario == SCENARIO_CYCLE) {
        *count = 0; /* cycle adds and destroys its waiter within each operation */
        return NULL;
    }
    *count = run->waiters_per_thread;
    return &run->slots[(size_t)w->index * run->waiters_per_thread];
}

/*
 * Pin worker @index to the index-th CPU the process may run on (taskset), so that two workers
 * never share a CPU while another sits idle: without it, runs with 2 threads on 2 CPUs came out
 * either fast or about 2.5 times slower, depending on where the scheduler put the threads.
 */
static void pin_to_own_cpu(unsigned index)
{
    cpu_set_t allowed, mine;
    unsigned seen = 0, count;

    if (sched_getaffinity(0, sizeof(allowed), &allowed) != 0)
        return;
    count = (unsigned)CPU_COUNT(&allowed);
    for (int cpu = 0; cpu < CPU_SETSIZE && count > 0; cpu++) {
        if (!CPU_ISSET(cpu, &allowed) || seen++ != index % count)
            continue;
        CPU_ZERO(&mine);
        CPU_SET(cpu, &mine);
        pthread_setaffinity_np(pthread_self(), sizeof(mine), &mine);
        return;
    }
}

static void *worker_main(void *argument)
{
    struct worker *w = argument;
    struct run *run = w->run;
    unsigned owned;
    struct slot *slots = worker_slots(w, &owned);

    pin_to_own_cpu(w->index);
    run->impl->thread_register();
    for (unsigned i = 0; i < owned && !w->failed; i++)
        slot_add(w, &slots[i], DELIVER_ACKS);

    pthread_barrier_wait(&run->start_barrier);
    /* Acquire, paired with the release store in run_measure. */
    while (!atomic_load_explicit(&run->go, memory_order_acquire))
        sched_yield();

    if (!w->failed) {
        switch (run->scenario) {
        case SCENARIO_DELIVER:
            deliver_loop(w);
            break;
        case SCENARIO_CYCLE:
            cycle_loop(w);
            break;
        case SCENARIO_MISS:
            miss_loop(w);
            break;
        default:
            break;
        }
    }

    /*
     * Close every owned waiter and take its payloads. Acks from threads that are still running
     * either landed before the close (and are taken here) or return NO_WAITER.
     */
    for (unsigned i = 0; i < owned; i++)
        slot_close(w, &slots[i]);
    ready_list_take(w); /* entries left on the list refer to waiters that are gone */
    run->impl->thread_unregister();
    allocation_counts_flush();
    /* Relaxed: read by the main thread after join. */
    atomic_fetch_add_explicit(&run->duplicate_wakes, thread_duplicate_wakes, memory_order_relaxed);
    thread_duplicate_wakes = 0;
    return NULL;
}

/* ------------------------------------------------------------------------------------------ */
/* Runs, validation and output                                                                */
/* ------------------------------------------------------------------------------------------ */

struct result {
    enum scenario scenario;
    unsigned impl;
    unsigned threads;
    unsigned round;
    double seconds;
    uint64_t ops;
    double ops_per_sec;
    double ns_per_op;
    struct tally_totals totals;
};

struct options {
    bool all;
    enum scenario scenario;
    unsigned impl;
    unsigned threads; /* 0 with --all: both 1 and 2 */
    double seconds;
    double warmup;
    unsigned rounds;
    unsigned waiters;
};

static double now_seconds(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Sleep for @seconds, returning early when a worker has failed. */
static void sleep_unless_failed(struct run *run, double seconds)
{
    double deadline = now_seconds() + seconds;

    for (;;) {
        /* Relaxed: a hint to stop early; the failure itself is read after join. */
        if (atomic_load_explicit(&run->failed, memory_order_relaxed))
            return;
        double left = deadline - now_seconds();
        if (left <= 0)
            return;
        long step = left * 1e9 < STOP_POLL_NS ? (long)(left * 1e9) : STOP_POLL_NS;
        struct timespec ts = {.tv_sec = 0, .tv_nsec = step};
        nanosleep(&ts, NULL);
    }
}

static uint64_t progress_sum(struct run *run)
{
    uint64_t sum = 0;

    for (unsigned i = 0; i < run->threads; i++)
        sum += atomic_load_explicit(&run->workers[i].progress, memory_order_relaxed);
    return sum;
}

/* Start the workers, measure the window after the warmup, stop and join them. */
static void run_measure(struct run *run, const struct options *options, struct result *result)
{
    pthread_barrier_wait(&run->start_barrier);
    /* Release, paired with the acquire loads in worker_main and stop_requested. */
    atomic_store_explicit(&run->go, true, memory_order_release);

    if (options->warmup > 0)
        sleep_unless_failed(run, options->warmup);
    uint64_t ops_before = progress_sum(run);
    double start = now_seconds();
    sleep_unless_failed(run, options->seconds);
    double end = now_seconds();
    uint64_t ops_after = progress_sum(run);
    atomic_store_explicit(&run->stop, true, memory_order_release);

    for (unsigned i = 0; i < run->threads; i++)
        pthread_join(run->workers[i].thread, NULL);

    result->seconds = end - start;
    result->ops = ops_after - ops_before;
    result->ops_per_sec = result->seconds > 0 ? (double)result->ops / result->seconds : 0;
    result->ns_per_op =
        result->ops > 0 ? result->seconds * 1e9 * run->threads / (double)result->ops : 0;
}

static void totals_sum(struct run *run, struct tally_totals *totals)
{
    memset(totals, 0, sizeof(*totals));
    for (unsigned i = 0; i < run->threads; i++) {
        const struct tally *t = &run->workers[i].tally;
        totals->acks += t->acks;
        totals->delivered += t->delivered;
        totals->no_waiter += t->no_waiter;
        totals->full += t->full;
        totals->taken += t->taken;
        totals->adds += t->adds;
        totals->destroys += t->destroys;
        totals->rotations += t->rotations;
        totals->cycles += t->cycles;
        totals->delivered_checksum += t->delivered_checksum;
        totals->taken_checksum += t->taken_checksum;
    }
    totals->released = atomic_load_explicit(&run->released, memory_order_relaxed);
    totals->released_checksum = atomic_load_explicit(&run->released_checksum, memory_order_relaxed);
    totals->duplicate_wakes = atomic_load_explicit(&run->duplicate_wakes, memory_order_relaxed);
}

/* Check the counts that every scenario must satisfy; the scenario checks follow. */
static bool totals_validate(const struct run *run, const struct tally_totals *t,
                            const struct result *result, char *message, size_t size)
{
    if (t->delivered + t->no_waiter + t->full != t->acks) {
        snprintf(message, size,
                 "acks %" PRIu64 " != delivered %" PRIu64 " + no_waiter %" PRIu64
                 " + full %" PRIu64,
                 t->acks, t->delivered, t->no_waiter, t->full);
        return false;
    }
    if (t->taken + t->released != t->delivered) {
        snprintf(message, size, "delivered %" PRIu64 " != taken %" PRIu64 " + released %" PRIu64,
                 t->delivered, t->taken, t->released);
        return false;
    }
    if (t->taken_checksum + t->released_checksum != t->delivered_checksum) {
        snprintf(message, size, "the taken payloads are not the delivered ones (checksum)");
        return false;
    }
    if (t->adds != t->destroys) {
        snprintf(message, size, "%" PRIu64 " waiters added but %" PRIu64 " destroyed", t->adds,
                 t->destroys);
        return false;
    }
    if (result->ops == 0) {
        snprintf(message, size, "no operation completed in the measured %.3f s", result->seconds);
        return false;
    }

    switch (run->scenario) {
    case SCENARIO_DELIVER:
        if (t->released != 0) {
            snprintf(message, size,
                     "%" PRIu64 " payloads reached payload_free although the "
                     "owner drained every waiter before destroying it",
                     t->released);
            return false;
        }
        break;
    case SCENARIO_CYCLE:
        if (t->cycles != t->adds || t->delivered != t->cycles || t->taken != t->cycles ||
            t->acks != t->cycles) {
            snprintf(message, size,
                     "cycles %" PRIu64 ", adds %" PRIu64 ", acks %" PRIu64 ", delivered %" PRIu64
                     ", taken %" PRIu64 " should all be equal",
                     t->cycles, t->adds, t->acks, t->delivered, t->taken);
            return false;
        }
        break;
    case SCENARIO_MISS:
        if (t->no_waiter != t->acks || t->taken != 0) {
            snprintf(message, size,
                     "%" PRIu64 " of %" PRIu64 " acks of absent ids returned "
                     "NO_WAITER and %" PRIu64 " payloads were taken",
                     t->no_waiter, t->acks, t->taken);
            return false;
        }
        break;
    default:
        break;
    }
    return true;
}

static void run_free(struct run *run)
{
    pthread_barrier_destroy(&run->start_barrier);
    free(run->workers);
    free(run->slots);
    free(run->ids);
}

static bool run_setup(struct run *run, enum scenario scenario, const struct impl *impl,
                      unsigned threads, unsigned waiters)
{
    memset(run, 0, sizeof(*run));
    run->impl = impl;
    run->scenario = scenario;
    run->threads = threads;
    run->waiters_per_thread = waiters;
    run->slot_count = scenario == SCENARIO_CYCLE ? threads : threads * waiters;
    run->slots = calloc(run->slot_count, sizeof(*run->slots));
    run->ids = calloc(run->slot_count, ID_BYTES);
    run->workers = aligned_alloc(64, sizeof(*run->workers) * threads);
    if (run->slots == NULL || run->ids == NULL || run->workers == NULL) {
        free(run->slots);
        free(run->ids);
        free(run->workers);
        fprintf(stderr, "corr_engine_bench: out of memory for %u slots\n", run->slot_count);
        return false;
    }
    memset(run->workers, 0, sizeof(*run->workers) * threads);
    pthread_barrier_init(&run->start_barrier, NULL, threads + 1);

    unsigned per_owner = scenario == SCENARIO_CYCLE ? 1 : waiters;
    for (unsigned i = 0; i < run->slot_count; i++) {
        struct slot *slot = &run->slots[i];
        unsigned char *id = run->ids + (size_t)i * ID_BYTES;
        id_format(id, 'w', i / per_owner, i);
        slot->id = id;
        slot->index = i;
        slot->owner = &run->workers[i / per_owner];
    }
    for (unsigned i = 0; i < threads; i++) {
        struct worker *w = &run->workers[i];
        w->run = run;
        w->index = i;
        w->rng = mix64(0x9e3779b97f4a7c15ULL * (i + 1)) | 1; /* xorshift needs a nonzero state */
    }
    return true;
}

/* Run one measurement; print its result line, or a message and return false. */
static bool run_once(enum scenario scenario, unsigned impl_index, unsigned threads, unsigned round,
                     const struct options *options, struct result *result)
{
    const struct impl *impl = impls[impl_index];
    struct run run;
    char message[512] = "";

    memset(result, 0, sizeof(*result));
    result->scenario = scenario;
    result->impl = impl_index;
    result->threads = threads;
    result->round = round;
    if (!run_setup(&run, scenario, impl, threads, options->waiters))
        return false;

    struct table_callbacks callbacks = {
        .wake = wake_owner,
        .payload_free = payload_release,
        .data = &run,
    };
    run.table = impl->create(&callbacks);
    if (run.table == NULL) {
        fprintf(stderr, "corr_engine_bench: %s: creating the table failed\n", impl->name);
        run_free(&run);
        return false;
    }
    uint64_t allocated_before = atomic_load(&waiters_allocated);
    uint64_t freed_before = atomic_load(&waiters_freed);

    unsigned started = 0;
    for (; started < threads; started++) {
        struct worker *w = &run.workers[started];
        if (pthread_create(&w->thread, NULL, worker_main, w) != 0)
            break;
    }
    if (started < threads) {
        /* The barrier counts threads + 1 parties, so the started workers would never pass it. */
        fprintf(stderr, "corr_engine_bench: could not start thread %u of %u\n", started + 1,
                threads);
        exit(1);
    }
    run_measure(&run, options, result);

    bool valid = true;
    for (unsigned i = 0; i < threads && valid; i++) {
        if (run.workers[i].failed) {
            snprintf(message, sizeof(message), "thread %u: %s", i, run.workers[i].error);
            valid = false;
        }
    }
    /* The workers have joined, so only the table destroy below may still call payload_free. */
    totals_sum(&run, &result->totals);
    if (valid)
        valid = impl->check(run.table, &result->totals, message, sizeof(message));
    uint64_t released_before_destroy = result->totals.released;
    char destroy_message[256] = "";
    if (!impl->destroy(run.table, destroy_message, sizeof(destroy_message)) && valid) {
        snprintf(message, sizeof(message), "%s", destroy_message);
        valid = false;
    }
    allocation_counts_flush(); /* waiters that the main thread freed in destroy */
    totals_sum(&run, &result->totals);
    if (valid && result->totals.released != released_before_destroy) {
        snprintf(message, sizeof(message),
                 "table destroy released %" PRIu64 " payloads of "
                 "waiters that were never destroyed",
                 result->totals.released - released_before_destroy);
        valid = false;
    }
    if (valid && impl->counts_allocations) {
        uint64_t allocated = atomic_load(&waiters_allocated) - allocated_before;
        uint64_t freed = atomic_load(&waiters_freed) - freed_before;
        if (allocated != freed) {
            snprintf(message, sizeof(message),
                     "%" PRIu64 " waiters allocated but %" PRIu64 " freed", allocated, freed);
            valid = false;
        }
    }
    if (valid)
        valid = totals_validate(&run, &result->totals, result, message, sizeof(message));
    run_free(&run);

    if (!valid) {
        fprintf(stderr,
                "corr_engine_bench: validation failed for scenario=%s impl=%s threads=%u "
                "round=%u: %s\n",
                scenario_names[scenario], impl->name, threads, round, message);
        return false;
    }
    return true;
}

static void result_print(const struct result *r)
{
    const struct tally_totals *t = &r->totals;

    printf("result scenario=%s impl=%s threads=%u round=%u seconds=%.2f ops=%" PRIu64
           " ops_per_sec=%.0f ns_per_op=%.1f validated=1\n",
           scenario_names[r->scenario], impls[r->impl]->name, r->threads, r->round, r->seconds,
           r->ops, r->ops_per_sec, r->ns_per_op);
    fflush(stdout);
    fprintf(stderr,
            "# %-8s %-6s %7u %5u %14.0f %9.1f   acks=%" PRIu64 " delivered=%" PRIu64
            " full=%" PRIu64 " no_waiter=%" PRIu64 " rotations=%" PRIu64 " duplicate_wakes=%" PRIu64
            "\n",
            scenario_names[r->scenario], impls[r->impl]->name, r->threads, r->round, r->ops_per_sec,
            r->ns_per_op, t->acks, t->delivered, t->full, t->no_waiter, t->rotations,
            t->duplicate_wakes);
}

static int compare_doubles(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Print the median ops_per_sec of every configuration that has results. */
static void medians_print(const struct result *results, size_t count, unsigned rounds)
{
    double values[MAX_ROUNDS];

    fprintf(stderr, "# medians over %u rounds\n", rounds);
    fprintf(stderr, "# %-8s %-6s %7s %14s %9s %9s\n", "scenario", "impl", "threads", "ops/s",
            "ns/op", "vs corr");
    for (unsigned s = 0; s < SCENARIO_COUNT; s++) {
        for (unsigned threads = 1; threads <= MAX_THREADS; threads++) {
            double corr_median = 0;
            for (unsigned i = 0; i < IMPL_COUNT; i++) {
                size_t n = 0;
                for (size_t k = 0; k < count && n < MAX_ROUNDS; k++) {
                    const struct result *r = &results[k];
                    if (r->scenario == s && r->impl == i && r->threads == threads)
                        values[n++] = r->ops_per_sec;
                }
                if (n == 0)
                    continue;
                qsort(values, n, sizeof(values[0]), compare_doubles);
                double median = n % 2 ? values[n / 2] : (values[n / 2 - 1] + values[n / 2]) / 2;
                double ns_per_op = median > 0 ? 1e9 * threads / median : 0;
                if (i == 0)
                    corr_median = median;
                printf("median scenario=%s impl=%s threads=%u rounds=%zu ops_per_sec=%.0f "
                       "ns_per_op=%.1f\n",
                       scenario_names[s], impls[i]->name, threads, n, median, ns_per_op);
                char versus_corr[32] = "-";
                if (corr_median > 0)
                    snprintf(versus_corr, sizeof(versus_corr), "%.2f", median / corr_median);
                fprintf(stderr, "# %-8s %-6s %7u %14.0f %9.1f %9s\n", scenario_names[s],
                        impls[i]->name, threads, median, ns_per_op, versus_corr);
            }
        }
    }
    fflush(stdout);
}

static void usage_print(FILE *out)
{
    fprintf(out,
            "Usage: corr_engine_bench [--scenario NAME] [--impl NAME] [--threads N]\n"
            "                         [--seconds S] [--warmup S] [--rounds R] [--waiters W]\n"
            "       corr_engine_bench --all [--threads N] [--seconds S] [--warmup S] "
            "[--rounds R]\n"
            "\n"
            "  --scenario NAME  deliver, cycle or miss (default deliver)\n"
            "  --impl NAME      corr, mutex or lfht (default corr)\n"
            "  --threads N      worker threads, 1..%d (default 1); with --all, run only this\n"
            "                   thread count instead of both 1 and 2\n"
            "  --seconds S      measured time per run in seconds (default 3)\n"
            "  --warmup S       unmeasured time before it in seconds (default 1)\n"
            "  --rounds R       repetitions of each configuration, 1..%d (default 1, or 3 with\n"
            "                   --all); medians are printed when R > 1 or with --all\n"
            "  --waiters W      waiters per thread in deliver and miss, 1..%d (default %d)\n"
            "  --all            every scenario x implementation x threads in {1, 2}, with the\n"
            "                   implementations interleaved within each round\n"
            "\n"
            "stdout: `result scenario= impl= threads= round= seconds= ops= ops_per_sec= "
            "ns_per_op= validated=1`\n"
            "and `median ...` lines; ns_per_op = threads * seconds * 1e9 / ops. stderr: a table "
            "of '#' lines.\n"
            "Exit status 1 when a run fails validation, 2 for invalid options.\n",
            MAX_THREADS, MAX_ROUNDS, MAX_WAITERS, DEFAULT_WAITERS);
}

static bool parse_unsigned(const char *text, unsigned min, unsigned max, unsigned *out)
{
    char *end;

    errno = 0;
    unsigned long value = strtoul(text, &end, 10);
    if (errno != 0 || end == text || *end != '\0' || text[0] == '-' || value < min || value > max)
        return false;
    *out = (unsigned)value;
    return true;
}

static bool parse_seconds(const char *text, double min, double *out)
{
    char *end;

    errno = 0;
    double value = strtod(text, &end);
    if (errno != 0 || end == text || *end != '\0' || !(value >= min) || value > MAX_SECONDS)
        return false;
    *out = value;
    return true;
}

static void option_invalid(const char *option, const char *value, const char *expected)
{
    fprintf(stderr, "corr_engine_bench: invalid value '%s' for %s: expected %s\n", value, option,
            expected);
    exit(2);
}

static void options_parse(int argc, char **argv, struct options *options)
{
    bool rounds_given = false;

    *options = (struct options){
        .scenario = SCENARIO_DELIVER,
        .impl = 0,
        .threads = 0,
        .seconds = 3,
        .warmup = 1,
        .rounds = 1,
        .waiters = DEFAULT_WAITERS,
    };
    for (int i = 1; i < argc; i++) {
        const char *option = argv[i];
        if (strcmp(option, "--help") == 0 || strcmp(option, "-h") == 0) {
            usage_print(stdout);
            exit(0);
        }
        if (strcmp(option, "--all") == 0) {
            options->all = true;
            continue;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "corr_engine_bench: missing value for %s (see --help)\n", option);
            exit(2);
        }
        const char *value = argv[++i];
        if (strcmp(option, "--scenario") == 0) {
            unsigned s = 0;
            while (s < SCENARIO_COUNT && strcmp(value, scenario_names[s]) != 0)
                s++;
            if (s == SCENARIO_COUNT)
                option_invalid(option, value, "deliver, cycle or miss");
            options->scenario = (enum scenario)s;
        } else if (strcmp(option, "--impl") == 0) {
            unsigned k = 0;
            while (k < IMPL_COUNT && strcmp(value, impls[k]->name) != 0)
                k++;
            if (k == IMPL_COUNT)
                option_invalid(option, value, "corr, mutex or lfht");
            options->impl = k;
        } else if (strcmp(option, "--threads") == 0) {
            if (!parse_unsigned(value, 1, MAX_THREADS, &options->threads))
                option_invalid(option, value, "an integer from 1 to 64");
        } else if (strcmp(option, "--seconds") == 0) {
            if (!parse_seconds(value, 0.001, &options->seconds))
                option_invalid(option, value, "seconds from 0.001 to 3600");
        } else if (strcmp(option, "--warmup") == 0) {
            if (!parse_seconds(value, 0, &options->warmup))
                option_invalid(option, value, "seconds from 0 to 3600");
        } else if (strcmp(option, "--rounds") == 0) {
            if (!parse_unsigned(value, 1, MAX_ROUNDS, &options->rounds))
                option_invalid(option, value, "an integer from 1 to 100");
            rounds_given = true;
        } else if (strcmp(option, "--waiters") == 0) {
            if (!parse_unsigned(value, 1, MAX_WAITERS, &options->waiters))
                option_invalid(option, value, "an integer from 1 to 65536");
        } else {
            fprintf(stderr, "corr_engine_bench: unknown option %s (see --help)\n", option);
            exit(2);
        }
    }
    if (options->all && !rounds_given)
        options->rounds = 3;
}

int main(int argc, char **argv)
{
    struct options options;

    options_parse(argc, argv, &options);
    if (getrandom(hash_key, sizeof(hash_key), 0) != sizeof(hash_key)) {
        perror("corr_engine_bench: getrandom");
        return 1;
    }
    /* The main thread creates and destroys tables, which corr and lfht require of RCU readers. */
    rcu_register_thread();

    unsigned thread_counts[2] = {1, 2};
    unsigned thread_count_n = 2;
    if (!options.all || options.threads != 0) {
        thread_counts[0] = options.threads != 0 ? options.threads : 1;
        thread_count_n = 1;
    }
    unsigned scenario_first = options.all ? 0 : options.scenario;
    unsigned scenario_end = options.all ? SCENARIO_COUNT : options.scenario + 1;
    unsigned impl_n = options.all ? IMPL_COUNT : 1;

    size_t capacity = (size_t)options.rounds * SCENARIO_COUNT * IMPL_COUNT * 2;
    struct result *results = calloc(capacity, sizeof(*results));
    size_t count = 0;
    if (results == NULL) {
        fprintf(stderr, "corr_engine_bench: out of memory\n");
        return 1;
    }

    fprintf(stderr, "# %-8s %-6s %7s %5s %14s %9s   counts over warmup and measurement\n",
            "scenario", "impl", "threads", "round", "ops/s", "ns/op");
    int status = 0;
    for (unsigned round = 1; round <= options.rounds && status == 0; round++) {
        for (unsigned s = scenario_first; s < scenario_end && status == 0; s++) {
            for (unsigned t = 0; t < thread_count_n && status == 0; t++) {
                for (unsigned k = 0; k < impl_n && status == 0; k++) {
                    /* Rotate the order each round so that no implementation always runs first. */
                    unsigned impl = options.all ? (k + round - 1) % IMPL_COUNT : options.impl;
                    struct result *r = &results[count];
                    if (!run_once((enum scenario)s, impl, thread_counts[t], round, &options, r)) {
                        status = 1;
                        break;
                    }
                    result_print(r);
                    count++;
                }
            }
        }
    }
    if (status == 0 && (options.all || options.rounds > 1))
        medians_print(results, count, options.rounds);

    free(results);
    rcu_unregister_thread();
    return status;
}
