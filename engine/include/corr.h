/*
 * corr: the embeddable correlation engine.
 *
 * A waiter registers an id and waits; any thread may ack that id, optionally with a payload, and
 * the ack goes into the waiter's own bounded ring. The engine wakes the waiter's owning thread
 * through a callback that the embedder supplies, and that thread takes the acks from the ring.
 * The engine has no HTTP dependency, starts no threads and never logs.
 *
 * Outcome of an ack
 * -----------------
 * corr_engine_ack() returns exactly one of:
 *   CORR_ACK_DELIVERED  the payload is in the ring of the waiter registered for the id;
 *   CORR_ACK_NO_WAITER  no open waiter is registered for the id;
 *   CORR_ACK_FULL       the waiter has already accepted as many acks as it asked for.
 * Invalid arguments return -EINVAL instead, and the ack is not attempted.
 *
 * Delivery invariant: an ack that returned CORR_ACK_DELIVERED is in the waiter's ring when
 * corr_waiter_close() returns, so the owner sees it with corr_waiter_take(), even when the ack
 * raced with the close. An ack that starts after corr_waiter_close() has begun returns
 * CORR_ACK_NO_WAITER. A waiter accepts at most `acks` deliveries over its whole life, however
 * many it has taken, so a delivered ack is never left behind after the owner answered.
 *
 * Threads
 * -------
 * Every thread that calls into the engine must first call corr_thread_register() (the engine
 * uses liburcu's memb flavour for its read-side sections) and corr_thread_unregister() before
 * it exits. Each waiter has one owning thread, the one that added it; only that thread calls
 * corr_waiter_take(), corr_waiter_close() and corr_waiter_destroy() for it.
 *
 *   call                      thread                       blocks
 *   corr_engine_create        any registered               no (allocates)
 *   corr_engine_destroy       any registered, alone        waits for RCU callbacks
 *   corr_waiter_add           any registered (the owner)   takes one shard mutex briefly
 *   corr_engine_ack           any registered               no; spins only while another
 *                                                          ack for the same id holds the
 *                                                          waiter's producer lock
 *   corr_waiter_take          owner                        no
 *   corr_waiter_close         owner                        takes one shard mutex; spins
 *                                                          while an ack for it is in flight
 *   corr_waiter_destroy       owner, after close           no (reclaims after a grace period)
 *   corr_engine_stats         any                          no
 *
 * Errors are negative errno values; corr_strerror() turns any return value into text.
 */
#ifndef corr_h
#define corr_h

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/*
 * CORR_API marks the public functions. libcorr.so is built with -fvisibility=hidden, so only
 * these are exported from it. Define CORR_API before including this header to override it.
 */
#ifndef CORR_API
#if defined(__GNUC__) && __GNUC__ >= 4
#define CORR_API __attribute__((visibility("default")))
#else
#define CORR_API
#endif
#endif

/** Maximum id length in bytes that any engine accepts. */
#define CORR_ID_MAX_BYTES 65535

/** Maximum number of acks one waiter may ask for. */
#define CORR_ACKS_MAX 4095

struct corr_engine;
struct corr_waiter;

/** Outcome of corr_engine_ack(). */
enum corr_ack_result {
    CORR_ACK_DELIVERED = 0,
    CORR_ACK_NO_WAITER = 1,
    CORR_ACK_FULL = 2,
};

/**
 * Wake-up callback, called by the thread that delivered an ack when the waiter's ring goes from
 * "nothing to take" to "something to take". It runs while the waiter's producer lock is held,
 * so it must be short, must not block and must not call into the engine for the same waiter.
 * The waiter is alive for the whole call: corr_waiter_close() waits for it to return.
 * @waiter: the waiter that has acks to take.
 * @waiter_data: the data given to corr_waiter_add().
 * @engine_data: corr_engine_config.data.
 */
typedef void (*corr_wake_cb)(struct corr_waiter *waiter, void *waiter_data, void *engine_data);

/**
 * Payload release callback, called by corr_waiter_destroy() for each delivered payload that the
 * owner never took, so that no payload leaks.
 */
typedef void (*corr_payload_free_cb)(void *payload, void *engine_data);

/**
 * Engine configuration. Initialise it with corr_engine_config_init(), then set fields. The first
 * field is the struct's own size, so later versions can add fields without breaking callers.
 */
struct corr_engine_config {
    size_t size;                       /* sizeof(struct corr_engine_config) */
    unsigned shards;                   /* hash-table shards, a power of two (default 64) */
    size_t max_pending;                /* open waiters allowed at once; 0 means no limit */
    size_t max_id_bytes;               /* maximum id length, 1..CORR_ID_MAX_BYTES (default 256) */
    corr_wake_cb wake;                 /* required */
    corr_payload_free_cb payload_free; /* optional: NULL leaves untaken payloads to the caller */
    void *data;                        /* passed to both callbacks */
};

/** Engine-wide counters; each is a running total except `pending`. */
struct corr_stats {
    uint64_t pending;           /* waiters added and not yet closed */
    uint64_t waiters_added;     /* corr_waiter_add() calls that succeeded */
    uint64_t waiters_rejected;  /* corr_waiter_add() calls that failed with -EEXIST or -ENOSPC */
    uint64_t acks_delivered;    /* CORR_ACK_DELIVERED results */
    uint64_t acks_no_waiter;    /* CORR_ACK_NO_WAITER results */
    uint64_t acks_full;         /* CORR_ACK_FULL results (dropped acks) */
    uint64_t payloads_released; /* untaken payloads passed to payload_free by destroy */
};

/** Fill @config with the defaults listed in struct corr_engine_config; wake stays NULL. */
CORR_API void corr_engine_config_init(struct corr_engine_config *config);

/**
 * corr_engine_create - allocate an engine.
 * @config: settings; copied, so the caller keeps ownership.
 * @out: receives the engine on success.
 *
 * Returns 0, -EINVAL for a bad setting (no wake callback, shards not a power of two,
 * max_id_bytes out of range, size too small) or -ENOMEM.
 */
CORR_API int corr_engine_create(const struct corr_engine_config *config, struct corr_engine **out);

/**
 * corr_engine_destroy - free an engine and every waiter still in it.
 *
 * No other thread may use the engine during or after the call. Waiters still registered are
 * destroyed as by corr_waiter_destroy(), so their untaken payloads go to payload_free. Waits
 * (rcu_barrier) until every deferred reclamation has run. The caller must be registered and
 * outside any read-side section.
 */
CORR_API void corr_engine_destroy(struct corr_engine *engine);

/** Register the calling thread with the engine's RCU flavour; call before any other call. */
CORR_API void corr_thread_register(void);

/**
 * Unregister the calling thread; call before it exits, after its last engine call. It also hands
 * the thread's batch of destroyed waiters to RCU reclamation, so skipping it leaks them.
 */
CORR_API void corr_thread_unregister(void);

/**
 * corr_waiter_add - register a waiter for @id on the calling thread.
 * @id, @id_len: the id bytes (any bytes), 1..max_id_bytes long; copied.
 * @acks: how many acks the waiter accepts, 1..CORR_ACKS_MAX; later acks get CORR_ACK_FULL.
 * @data: opaque pointer handed to the wake callback; the engine never dereferences it.
 * @out: receives the waiter on success; the calling thread becomes its owner.
 *
 * Returns 0, -EINVAL (bad id length or acks), -EEXIST (an open waiter already has this id),
 * -ENOSPC (max_pending open waiters already) or -ENOMEM.
 */
CORR_API int corr_waiter_add(struct corr_engine *engine, const void *id, size_t id_len,
                             unsigned acks, void *data, struct corr_waiter **out);

/**
 * corr_engine_ack - deliver @payload to the waiter registered for @id.
 * @payload: opaque pointer; NULL is not allowed (corr_waiter_take() uses NULL for "empty").
 *
 * Returns one enum corr_ack_result, or -EINVAL for a bad id length or a NULL payload. Ownership
 * of @payload passes to the waiter only with CORR_ACK_DELIVERED; otherwise the caller keeps it.
 * May call the wake callback before returning.
 */
CORR_API int corr_engine_ack(struct corr_engine *engine, const void *id, size_t id_len,
                             void *payload);

/**
 * corr_waiter_take - take the oldest delivered payload, or NULL when there is none.
 *
 * Owner thread only. The caller owns the returned payload. A NULL return re-arms the wake-up:
 * the next delivery calls the wake callback again. Conversely, once the wake callback has run for
 * a waiter, it does not run again for that waiter until this call has returned NULL, so an
 * embedder may queue the waiter on each wake-up without checking whether it is already queued.
 * Works before and after corr_waiter_close().
 */
CORR_API void *corr_waiter_take(struct corr_waiter *waiter);

/**
 * corr_waiter_close - stop accepting acks and unregister the id.
 *
 * Owner thread only; idempotent. When it returns, every ack that returned CORR_ACK_DELIVERED
 * for this waiter has its payload in the ring, no further ack can be delivered to it, the wake
 * callback will not be called for it again, and a new waiter may be added for the same id.
 */
CORR_API void corr_waiter_close(struct corr_engine *engine, struct corr_waiter *waiter);

/**
 * corr_waiter_destroy - release a closed waiter.
 *
 * Owner thread only, after corr_waiter_close(). Payloads still in the ring go to payload_free.
 * The memory is reclaimed after an RCU grace period, because concurrent acks may still be
 * reading it; the caller must not use @waiter afterwards.
 */
CORR_API void corr_waiter_destroy(struct corr_engine *engine, struct corr_waiter *waiter);

/** Return the data pointer given to corr_waiter_add(). */
CORR_API void *corr_waiter_data(const struct corr_waiter *waiter);

/** Return the id bytes of @waiter and store their length in @len. */
CORR_API const void *corr_waiter_id(const struct corr_waiter *waiter, size_t *len);

/** Copy a snapshot of the engine's counters into @out; the fields are read independently. */
CORR_API void corr_engine_stats(const struct corr_engine *engine, struct corr_stats *out);

/** Return a static description of an error code or an enum corr_ack_result value. */
CORR_API const char *corr_strerror(int code);

#ifdef __cplusplus
}
#endif

#endif
