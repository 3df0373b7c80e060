/*
 * The correlation engine: a sharded table of open waiters, each with its own bounded ring.
 *
 * Design
 * ------
 * Table. Open waiters live in Concurrency Kit hash sets (ck_hs, SPMC mode), one per shard. The
 * shard is chosen by the top bits of a keyed SipHash of the id, so a client cannot aim ids at one
 * shard or one probe chain. ck_hs allows one writer at a time, so each shard serialises its writers
 * (add, unlink, gc) with a mutex, while lookups take no lock: they run inside a liburcu read-side
 * section (memb flavour). Memory that readers may still see is reclaimed with call_rcu after a
 * grace period: unlinked waiters, and the old maps that ck_hs hands to its free hook with
 * defer=true when it grows or collects tombstones.
 *
 * Ring. Each waiter owns a ck_ring used single-producer/single-consumer. The consumer is the
 * owning thread. Producers are the acking threads, and several may ack one id at once, so they
 * are serialised by a producer lock, the waiter's `lock` word. A separate `closed` flag makes
 * closing and producing mutually exclusive through a store-then-load handshake on each side:
 *
 *   producer (corr_engine_ack)                  owner (corr_waiter_close)
 *   CAS lock 0 -> 1 (a full barrier)            store closed = 1, full fence
 *   if closed: release the lock, NO_WAITER      spin while lock == 1
 *   check accepted < acks, enqueue, wake        (acquire) drain the ring
 *   store lock = 0 (release)
 *
 * Either the producer sees closed == 1 after taking the lock, or the owner sees lock == 1 and
 * waits for the producer to finish; both cannot miss each other. Releasing the lock is a plain
 * release store, so an uncontended ack costs one atomic read-modify-write (the lock CAS) and
 * one full fence (the wake-up handshake below).
 *
 * Invariants:
 *   I1 (one outcome) every ack takes exactly one branch of corr_engine_ack and returns its result.
 *   I2 (delivery) a producer returns CORR_ACK_DELIVERED only after enqueueing while it held the
 *      lock and saw closed == 0. Close sets closed and then waits for the lock to be free, so
 *      every such enqueue happens before close returns and the owner's drain sees it. A producer
 *      that sees closed == 1 returns CORR_ACK_NO_WAITER and enqueues nothing.
 *   I3 (bound) `accepted` counts deliveries over the waiter's life and is only touched under the
 *      lock, so a waiter never accepts more than `acks`; the ring holds acks + 1 slots, so an
 *      enqueue under that bound cannot fail.
 *   I4 (wake) the wake callback runs under the lock, so it never runs after close returned, and
 *      the embedder may free whatever the callback touches once close has returned.
 *   I5 (memory) a waiter is freed by call_rcu only after it is unlinked from the table, so a
 *      reader that found it in a read-side section can still lock and inspect it safely.
 *
 * Wake-ups. `armed` is 1 while the owner has seen an empty ring and wants to be woken. A producer
 * that enqueued reads it after a full fence and, if it is 1, stores 0 and calls the wake callback.
 * The owner stores 1 and then looks at the ring again (corr_waiter_take). This is a
 * store-then-load handshake with a full fence on each side, so either the owner sees the new item
 * or the producer sees armed == 1 and wakes it: a wake-up is never lost, and a burst of acks costs
 * one wake-up. Only producers, serialised by the lock, write 0, and the owner only ever writes 1,
 * so the producer's load and store need no read-modify-write.
 *
 * Progress: lookups are lock-free (ck_hs retries on its generation counter; RCU read sections are
 * wait-free in the memb flavour). Acks for the same id are blocking with respect to each other
 * because of the producer lock, whose critical section is a bounded enqueue and the callback.
 */
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <sched.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include <urcu.h>
#include <ck_hs.h>
#include <ck_pr.h>
#include <ck_ring.h>

#include "corr.h"
#include "siphash.h"

#define DEFAULT_SHARDS       64
#define DEFAULT_MAX_ID_BYTES 256
#define MAX_SHARDS           4096
#define GC_EVERY_UNLINKS     65536 /* tombstone collection period per shard, in unlinks */

/*
 * ThreadSanitizer cannot see the ordering that ck_pr inline assembly and libck.so provide. These
 * annotations restate it at each acquire and release below; they compile to nothing elsewhere.
 */
#if defined(__SANITIZE_THREAD__)
void __tsan_acquire(void *addr);
void __tsan_release(void *addr);
#define tsan_acquire(addr) __tsan_acquire(addr)
#define tsan_release(addr) __tsan_release(addr)
#else
#define tsan_acquire(addr) ((void)0)
#define tsan_release(addr) ((void)0)
#endif

/*
 * Stands for "a grace period has passed" under TSan: each read-side section releases it as it
 * ends, and each call_rcu callback acquires it before freeing, which is the ordering that
 * liburcu's grace period provides through membarrier.
 */
static char rcu_grace_period_sync __attribute__((unused));

/*
 * Key layout shared by stored waiters and stack lookup keys: ck_hs passes both kinds of object
 * to the hash and compare callbacks, so each must start with this struct.
 */
struct corr_key {
    unsigned long hash;
    size_t len;
    const unsigned char *bytes;
};

/*
 * A waiter, laid out by who writes what. The first part is written only before the waiter is
 * published, so lookups from every thread can share its cache lines. The producer state that
 * each delivery writes is kept at least a cache line away from it and from the ring, whose
 * consumer index the owner writes (ck_ring pads its own indexes apart). Padding instead of
 * alignment keeps plain malloc usable, which is faster than aligned_alloc on glibc.
 */
#define CACHE_LINE 64

struct corr_waiter {
    struct corr_key key;
    unsigned int acks; /* deliveries allowed */
    unsigned int shard;
    void *data;
    ck_ring_buffer_t *slots;
    bool replaced; /* under the shard's writer lock: a newer waiter took its table slot */
    bool unlinked; /* owner-only: corr_waiter_close has run */
    struct rcu_head rcu;

    char pad_before_producer[CACHE_LINE];
    unsigned int lock;     /* producer lock: 1 during a delivery; ck_pr only */
    unsigned int closed;   /* 1 once the owner closed the waiter; ck_pr only */
    unsigned int armed;    /* 1 when the owner waits for a wake-up; see the design notes */
    unsigned int accepted; /* deliveries so far; read and written only under the lock */
    char pad_before_ring[CACHE_LINE];

    ck_ring_t ring;
    unsigned char id[];
};

/*
 * Full store-load fence. On x86-64 a locked add to the stack orders like mfence for ordinary
 * memory but costs a fraction of it, which is why Linux's smp_mb() uses the same instruction.
 * It is the fence on the ack hot path and in corr_waiter_take, where mfence took about half the
 * time of an ack in bench/engine_bench. Other architectures use ck_pr's fence.
 */
static inline void fence_store_load(void)
{
#if defined(__x86_64__)
    __asm__ __volatile__("lock; addl $0, -4(%%rsp)" ::: "memory", "cc");
#else
    fence_store_load();
#endif
}

/*
 * Statistics, striped so that threads do not bounce one cache line: each thread adds to the
 * stripe picked by its thread number, and corr_engine_stats sums all stripes.
 */
#define COUNTER_STRIPES 64

struct counters {
    uint64_t added, rejected, delivered, no_waiter, full, released;
} __attribute__((aligned(64)));

struct shard {
    pthread_mutex_t writer_lock; /* serialises every ck_hs mutation of this shard */
    ck_hs_t set;
    unsigned long unlinks; /* under writer_lock */
} __attribute__((aligned(64)));

struct corr_engine {
    struct corr_engine_config config;
    uint64_t hash_key[2];
    unsigned shard_shift;
    uint64_t pending; /* open waiters; ck_pr atomics only */
    struct shard *shards;
    struct counters stripes[COUNTER_STRIPES];
};

/*
 * ck_hs allocator. Each block carries a hidden rcu_head so that a map freed with defer=true can be
 * reclaimed after a grace period: readers inside ck_hs_get may still be walking it.
 */
struct deferred_block {
    struct rcu_head rcu;
} __attribute__((aligned(16)));

static void *block_malloc(size_t size)
{
    struct deferred_block *block = malloc(sizeof(*block) + size);
    return block == NULL ? NULL : block + 1;
}

static void *block_realloc(void *p, size_t old_size, size_t new_size, bool defer)
{
    /* ck_hs 0.7.1 never calls realloc; support it without deferral for completeness. */
    struct deferred_block *block =
        realloc((struct deferred_block *)p - 1, sizeof(*block) + new_size);
    return block == NULL ? NULL : block + 1;
}

static void block_free_now(struct rcu_head *head)
{
    tsan_acquire(&rcu_grace_period_sync);
    free(caa_container_of(head, struct deferred_block, rcu));
}

static void block_free(void *p, size_t size, bool defer)
{
    struct deferred_block *block = (struct deferred_block *)p - 1;

    if (p == NULL)
        return;
    if (defer) {
        tsan_release(&rcu_grace_period_sync);  /* hands this thread's history to the callback */
        call_rcu(&block->rcu, block_free_now); /* a reader may still walk this map */
    } else
        free(block);
}

static struct ck_malloc block_allocator = {
    .malloc = block_malloc,
    .realloc = block_realloc,
    .free = block_free,
};

static unsigned long key_hash_cb(const void *object, unsigned long seed)
{
    return ((const struct corr_key *)object)->hash;
}

static bool key_equal_cb(const void *a, const void *b)
{
    const struct corr_key *x = a, *y = b;

    /* ck_hs_get reaches the stored waiter through libck's ck_pr loads, which TSan cannot see. */
    tsan_acquire((void *)a);
    tsan_acquire((void *)b);
    return x->len == y->len && memcmp(x->bytes, y->bytes, x->len) == 0;
}

static unsigned next_thread_number; /* ck_pr atomics only */
static __thread unsigned thread_number = UINT_MAX;

/* Return the calling thread's stripe of @engine's counters. */
static struct counters *counters_of(struct corr_engine *engine)
{
    if (thread_number == UINT_MAX)
        thread_number = ck_pr_faa_uint(&next_thread_number, 1) % COUNTER_STRIPES;
    return &engine->stripes[thread_number];
}

static void counter_add(uint64_t *counter)
{
    /* Statistics only: no ordering with anything else is needed, and a stripe is rarely shared. */
    ck_pr_inc_64(counter);
}

static unsigned shard_of(const struct corr_engine *engine, unsigned long hash)
{
    return engine->shard_shift >= 64 ? 0 : (unsigned)((uint64_t)hash >> engine->shard_shift);
}

static void key_init(const struct corr_engine *engine, struct corr_key *key, const void *id,
                     size_t len)
{
    key->hash = (unsigned long)corr__siphash13(engine->hash_key, id, len);
    key->len = len;
    key->bytes = id;
}

static bool id_length_valid(const struct corr_engine *engine, size_t len)
{
    return len >= 1 && len <= engine->config.max_id_bytes;
}

void corr_engine_config_init(struct corr_engine_config *config)
{
    memset(config, 0, sizeof(*config));
    config->size = sizeof(*config);
    config->shards = DEFAULT_SHARDS;
    config->max_id_bytes = DEFAULT_MAX_ID_BYTES;
}

static int config_check(const struct corr_engine_config *config)
{
    if (config == NULL || config->size < sizeof(struct corr_engine_config))
        return -EINVAL;
    if (config->wake == NULL)
        return -EINVAL;
    if (config->shards == 0 || config->shards > MAX_SHARDS ||
        (config->shards & (config->shards - 1)) != 0)
        return -EINVAL;
    if (config->max_id_bytes == 0 || config->max_id_bytes > CORR_ID_MAX_BYTES)
        return -EINVAL;
    return 0;
}

int corr_engine_create(const struct corr_engine_config *config, struct corr_engine **out)
{
    int err = config_check(config);
    if (err != 0)
        return err;

    /* aligned_alloc wants a size that is a multiple of 64, which the aligned members ensure. */
    struct corr_engine *engine = aligned_alloc(64, sizeof(*engine));
    if (engine == NULL)
        return -ENOMEM;
    memset(engine, 0, sizeof(*engine));
    engine->config = *config;
    engine->config.size = sizeof(engine->config);
    if (getrandom(engine->hash_key, sizeof(engine->hash_key), 0) != sizeof(engine->hash_key)) {
        free(engine);
        return -errno;
    }

    unsigned bits = 0;
    while ((1u << bits) < config->shards)
        bits++;
    engine->shard_shift = 64 - bits;

    engine->shards = aligned_alloc(64, sizeof(struct shard) * config->shards);
    if (engine->shards == NULL) {
        free(engine);
        return -ENOMEM;
    }
    memset(engine->shards, 0, sizeof(struct shard) * config->shards);
    for (unsigned i = 0; i < config->shards; i++) {
        struct shard *shard = &engine->shards[i];
        pthread_mutex_init(&shard->writer_lock, NULL);
        if (!ck_hs_init(&shard->set, CK_HS_MODE_SPMC | CK_HS_MODE_OBJECT | CK_HS_MODE_DELETE,
                        key_hash_cb, key_equal_cb, &block_allocator, 64, 0)) {
            for (unsigned j = 0; j < i; j++)
                ck_hs_destroy(&engine->shards[j].set);
            free(engine->shards);
            free(engine);
            return -ENOMEM;
        }
    }
    *out = engine;
    return 0;
}

static void thread_batch_flush(void);

void corr_thread_register(void)
{
    rcu_register_thread();
}

void corr_thread_unregister(void)
{
    thread_batch_flush();
    rcu_unregister_thread();
}

static unsigned ring_slots_for(unsigned acks)
{
    /* ck_ring needs a power of two and keeps one slot free, so acks + 1 slots always suffice. */
    unsigned slots = 2;
    while (slots < acks + 1)
        slots <<= 1;
    return slots;
}

static struct corr_waiter *waiter_alloc(const struct corr_engine *engine, const void *id,
                                        size_t len, unsigned acks, void *data)
{
    unsigned slots = ring_slots_for(acks);
    size_t id_offset = sizeof(struct corr_waiter);
    size_t slots_offset = (id_offset + len + 7) & ~(size_t)7;
    size_t size = slots_offset + slots * sizeof(ck_ring_buffer_t);
    struct corr_waiter *w = malloc(size);

    if (w == NULL)
        return NULL;
    memset(w, 0, sizeof(*w));
    memcpy(w->id, id, len);
    key_init(engine, &w->key, w->id, len);
    w->armed = 1;
    w->acks = acks;
    w->shard = shard_of(engine, w->key.hash);
    w->data = data;
    w->slots = (ck_ring_buffer_t *)((char *)w + slots_offset);
    ck_ring_init(&w->ring, slots);
    return w;
}

static bool pending_reserve(struct corr_engine *engine)
{
    /* Relaxed counting is enough: the limit is a capacity bound, not a synchronisation point. */
    uint64_t before = ck_pr_faa_64(&engine->pending, 1);
    if (engine->config.max_pending != 0 && before >= engine->config.max_pending) {
        ck_pr_dec_64(&engine->pending);
        return false;
    }
    return true;
}

/*
 * Insert @w, replacing a waiter of the same id whose owner has closed it but not yet unlinked it.
 * The pending slot is reserved after the duplicate check, so a duplicate reports -EEXIST even at
 * the limit and never holds a slot that a valid add could have used.
 */
static int shard_insert(struct corr_engine *engine, struct shard *shard, struct corr_waiter *w)
{
    int err = 0;

    pthread_mutex_lock(&shard->writer_lock);
    struct corr_waiter *existing = ck_hs_get(&shard->set, w->key.hash, &w->key);
    if (existing != NULL && ck_pr_load_uint(&existing->closed) == 0) {
        err = -EEXIST;
    } else if (!pending_reserve(engine)) {
        err = -ENOSPC;
    } else if (existing != NULL) {
        void *previous;
        if (ck_hs_set(&shard->set, w->key.hash, w, &previous))
            existing->replaced = true; /* its owner's shard_unlink must leave the slot alone */
        else
            err = -ENOMEM;
    } else if (!ck_hs_put(&shard->set, w->key.hash, w)) {
        err = -ENOMEM;
    }
    if (err == -ENOMEM)
        ck_pr_dec_64(&engine->pending);
    pthread_mutex_unlock(&shard->writer_lock);
    return err;
}

int corr_waiter_add(struct corr_engine *engine, const void *id, size_t id_len, unsigned acks,
                    void *data, struct corr_waiter **out)
{
    if (id == NULL || !id_length_valid(engine, id_len) || acks < 1 || acks > CORR_ACKS_MAX)
        return -EINVAL;

    struct corr_waiter *w = waiter_alloc(engine, id, id_len, acks, data);
    if (w == NULL)
        return -ENOMEM;
    struct shard *shard = &engine->shards[w->shard];

    /*
     * ck_hs_put publishes the waiter to lock-free readers; ck_hs issues a store fence before the
     * slot store, so a reader that finds the pointer sees the initialised waiter and ring.
     */
    tsan_release(w); /* paired with tsan_acquire(w) in corr_engine_ack, after ck_hs_get */
    int err = shard_insert(engine, shard, w);
    if (err != 0) {
        free(w);
        if (err != -ENOMEM)
            counter_add(&counters_of(engine)->rejected);
        return err;
    }
    counter_add(&counters_of(engine)->added);
    *out = w;
    return 0;
}

static void spin_pause(unsigned spins)
{
    if (spins < 64)
        ck_pr_stall();
    else
        sched_yield(); /* the holder may be preempted; with few cores spinning only delays it */
}

static void producer_unlock(struct corr_waiter *w)
{
    /*
     * Release, paired with producer_lock and with the acquire in corr_waiter_close: the enqueue
     * and the `accepted` update become visible before the lock reads as free.
     */
    tsan_release(&w->lock);
    ck_pr_fence_unlock();
    ck_pr_store_uint(&w->lock, 0);
}

/* Take the producer lock; returns false, without the lock, once the waiter is closed. */
static bool producer_lock(struct corr_waiter *w)
{
    for (unsigned spins = 0;; spins++) {
        if (ck_pr_load_uint(&w->closed))
            return false;
        if (ck_pr_load_uint(&w->lock) == 0 && ck_pr_cas_uint(&w->lock, 0, 1)) {
            /*
             * The CAS must be ordered before the load of `closed` (store-load, paired with the
             * fence in corr_waiter_close), and it acquires what the previous holder released.
             */
            ck_pr_fence_atomic_load();
            ck_pr_fence_lock();
            tsan_acquire(&w->lock);
            if (ck_pr_load_uint(&w->closed) == 0)
                return true;
            producer_unlock(w);
            return false;
        }
        spin_pause(spins);
    }
}

/* Called under the producer lock after a successful enqueue. */
static void wake_if_armed(struct corr_engine *engine, struct corr_waiter *w)
{
    /*
     * Store-load handshake with corr_waiter_take: the enqueue (a store to the ring's producer
     * index) must be ordered before the load of `armed`, or both sides could miss each other.
     */
    fence_store_load();
    /* The CAS claims the arm against corr_waiter_take, which may take it back (see there). */
    if (ck_pr_load_uint(&w->armed) == 1 && ck_pr_cas_uint(&w->armed, 1, 0))
        engine->config.wake(w, w->data, engine->config.data);
}

static int deliver_locked(struct corr_engine *engine, struct corr_waiter *w, void *payload)
{
    if (w->accepted >= w->acks)
        return CORR_ACK_FULL;
    /* I3: accepted < acks < ring capacity, so the enqueue cannot fail. */
    if (!ck_ring_enqueue_spsc(&w->ring, w->slots, payload))
        return CORR_ACK_FULL;
    w->accepted++;
    wake_if_armed(engine, w);
    return CORR_ACK_DELIVERED;
}

int corr_engine_ack(struct corr_engine *engine, const void *id, size_t id_len, void *payload)
{
    if (id == NULL || payload == NULL || !id_length_valid(engine, id_len))
        return -EINVAL;

    struct corr_key key;
    key_init(engine, &key, id, id_len);
    struct shard *shard = &engine->shards[shard_of(engine, key.hash)];
    int result = CORR_ACK_NO_WAITER;

    /* I5: a waiter found here stays allocated until rcu_read_unlock, even if unlinked now. */
    rcu_read_lock();
    struct corr_waiter *w = ck_hs_get(&shard->set, key.hash, &key);
    if (w != NULL)
        tsan_acquire(w);
    if (w != NULL && producer_lock(w)) {
        result = deliver_locked(engine, w, payload);
        producer_unlock(w);
    }
    rcu_read_unlock();
    tsan_release(&rcu_grace_period_sync);

    struct counters *counters = counters_of(engine);
    if (result == CORR_ACK_DELIVERED)
        counter_add(&counters->delivered);
    else if (result == CORR_ACK_FULL)
        counter_add(&counters->full);
    else
        counter_add(&counters->no_waiter);
    return result;
}

void *corr_waiter_take(struct corr_waiter *w)
{
    void *payload;

    if (ck_ring_dequeue_spsc(&w->ring, w->slots, &payload))
        return payload;

    /*
     * Re-arm, then look again. The full fence pairs with the one in wake_if_armed: either this
     * look sees a concurrent enqueue, or that producer sees armed == 1 and wakes the owner.
     */
    ck_pr_store_uint(&w->armed, 1);
    fence_store_load();
    if (ck_ring_size(&w->ring) == 0)
        return NULL;
    /*
     * An ack arrived meanwhile. Take the arm back, so that no wake-up is issued for an ack the
     * owner is about to receive. If a producer has claimed the arm already, its wake-up is
     * coming, so return NULL and let the owner take the ack when woken. Either way, a wake-up
     * never follows another without a NULL return in between.
     */
    if (!ck_pr_cas_uint(&w->armed, 1, 0))
        return NULL;
    return ck_ring_dequeue_spsc(&w->ring, w->slots, &payload) ? payload : NULL;
}

static void shard_unlink(struct shard *shard, struct corr_waiter *w)
{
    pthread_mutex_lock(&shard->writer_lock);
    /* A newer waiter for the same id may already have taken this one's slot (shard_insert). */
    if (!w->replaced)
        ck_hs_remove(&shard->set, w->key.hash, &w->key);
    if (++shard->unlinks % GC_EVERY_UNLINKS == 0)
        ck_hs_gc(&shard->set, 0, 0); /* keeps probe bounds short under id churn */
    pthread_mutex_unlock(&shard->writer_lock);
}

void corr_waiter_close(struct corr_engine *engine, struct corr_waiter *w)
{
    if (w->unlinked)
        return;
    w->unlinked = true;

    /*
     * I2: once `closed` is visible no producer keeps the lock, so wait out the one inside, if
     * any. The fence orders the store before the load of `lock` (paired with producer_lock).
     */
    ck_pr_store_uint(&w->closed, 1);
    fence_store_load();
    for (unsigned spins = 0; ck_pr_load_uint(&w->lock) != 0; spins++)
        spin_pause(spins);
    /* Acquire, paired with producer_unlock: the drain that follows sees every enqueued payload. */
    ck_pr_fence_acquire();
    tsan_acquire(&w->lock);

    shard_unlink(&engine->shards[w->shard], w);
    ck_pr_dec_64(&engine->pending);
}

/*
 * Reclamation in batches: each thread collects the waiters it destroys and hands them to call_rcu
 * FREE_BATCH at a time. One call_rcu per waiter made call_rcu and its worker thread about a third
 * of the cost of a waiter's life (bench/engine_bench, scenario cycle). The memory is not tied to
 * an engine, so a batch may outlive the engine whose waiters it holds. A batch is flushed when
 * full, by corr_thread_unregister, and by corr_engine_destroy for the calling thread.
 */
#define FREE_BATCH 64

struct free_batch {
    struct rcu_head rcu;
    unsigned count;
    void *blocks[FREE_BATCH];
};

static __thread struct free_batch *thread_batch;

static void waiter_free_now(struct rcu_head *head)
{
    tsan_acquire(&rcu_grace_period_sync);
    free(caa_container_of(head, struct corr_waiter, rcu));
}

static void batch_free_now(struct rcu_head *head)
{
    struct free_batch *batch = caa_container_of(head, struct free_batch, rcu);

    tsan_acquire(&rcu_grace_period_sync);
    for (unsigned i = 0; i < batch->count; i++)
        free(batch->blocks[i]);
    free(batch);
}

static void thread_batch_flush(void)
{
    struct free_batch *batch = thread_batch;

    if (batch == NULL)
        return;
    thread_batch = NULL;
    tsan_release(&rcu_grace_period_sync); /* hands this thread's history to the callback */
    call_rcu(&batch->rcu, batch_free_now);
}

/* Free @w after a grace period (invariant I5). */
static void waiter_free_deferred(struct corr_waiter *w)
{
    if (thread_batch == NULL) {
        thread_batch = malloc(sizeof(*thread_batch));
        if (thread_batch == NULL) {
            tsan_release(&rcu_grace_period_sync);
            call_rcu(&w->rcu, waiter_free_now); /* no memory for a batch: one call per waiter */
            return;
        }
        thread_batch->count = 0;
    }
    thread_batch->blocks[thread_batch->count++] = w;
    if (thread_batch->count == FREE_BATCH)
        thread_batch_flush();
}

static void waiter_release_payloads(struct corr_engine *engine, struct corr_waiter *w)
{
    void *payload;

    while (ck_ring_dequeue_spsc(&w->ring, w->slots, &payload)) {
        counter_add(&counters_of(engine)->released);
        if (engine->config.payload_free != NULL)
            engine->config.payload_free(payload, engine->config.data);
    }
}

void corr_waiter_destroy(struct corr_engine *engine, struct corr_waiter *w)
{
    corr_waiter_close(engine, w);
    waiter_release_payloads(engine, w);
    /* I5: acks that looked the waiter up before the unlink may still be reading it. */
    waiter_free_deferred(w);
}

void *corr_waiter_data(const struct corr_waiter *w)
{
    return w->data;
}

const void *corr_waiter_id(const struct corr_waiter *w, size_t *len)
{
    *len = w->key.len;
    return w->id;
}

void corr_engine_destroy(struct corr_engine *engine)
{
    if (engine == NULL)
        return;

    /* The caller guarantees that no other thread uses the engine, so waiters can go at once. */
    for (unsigned i = 0; i < engine->config.shards; i++) {
        struct shard *shard = &engine->shards[i];
        ck_hs_iterator_t it = CK_HS_ITERATOR_INITIALIZER;
        void *object;
        while (ck_hs_next(&shard->set, &it, &object)) {
            struct corr_waiter *w = object;
            waiter_release_payloads(engine, w);
            free(w);
        }
    }
    /* Run every deferred map and waiter reclamation before the maps themselves go. */
    thread_batch_flush();
    rcu_barrier();
    for (unsigned i = 0; i < engine->config.shards; i++) {
        ck_hs_destroy(&engine->shards[i].set);
        pthread_mutex_destroy(&engine->shards[i].writer_lock);
    }
    free(engine->shards);
    free(engine);
}

void corr_engine_stats(const struct corr_engine *engine, struct corr_stats *out)
{
    memset(out, 0, sizeof(*out));
    out->pending = ck_pr_load_64(&engine->pending);
    for (unsigned i = 0; i < COUNTER_STRIPES; i++) {
        const struct counters *c = &engine->stripes[i];
        out->waiters_added += ck_pr_load_64(&c->added);
        out->waiters_rejected += ck_pr_load_64(&c->rejected);
        out->acks_delivered += ck_pr_load_64(&c->delivered);
        out->acks_no_waiter += ck_pr_load_64(&c->no_waiter);
        out->acks_full += ck_pr_load_64(&c->full);
        out->payloads_released += ck_pr_load_64(&c->released);
    }
}

const char *corr_strerror(int code)
{
    switch (code) {
    case CORR_ACK_DELIVERED: /* also 0, the success of every other call */
        return "success (for an ack: delivered)";
    case CORR_ACK_NO_WAITER:
        return "no waiter is pending for this id";
    case CORR_ACK_FULL:
        return "the waiter's ring is full; ack dropped";
    case -EINVAL:
        return "invalid argument";
    case -EEXIST:
        return "a waiter for this id is already pending";
    case -ENOSPC:
        return "too many pending waiters";
    case -ENOMEM:
        return "out of memory";
    default:
        return code < 0 ? strerror(-code) : "unknown result";
    }
}
