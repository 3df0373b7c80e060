/*
 * Unit tests for the public engine API in corr.h, run on one thread.
 *
 * Payloads are encoded pointers ((void *)(uintptr_t)n with n > 0), so a test can check which ack
 * a take returned without allocating.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "corr.h"

/* Upper bound on the payloads one test hands to payload_free; tests stay far below it. */
#define MAX_RELEASED 1024

/* Wake calls and released payloads that the callbacks record, kept per test. */
struct fixture {
    struct corr_engine *engine;
    struct corr_engine_config config;
    unsigned wakes;
    struct corr_waiter *last_wake_waiter;
    void *last_wake_waiter_data;
    void *last_wake_engine_data;
    unsigned released;
    uintptr_t released_payloads[MAX_RELEASED];
};

static void *payload(uintptr_t n)
{
    return (void *)n;
}

static uintptr_t payload_number(void *p)
{
    return (uintptr_t)p;
}

static void record_wake(struct corr_waiter *waiter, void *waiter_data, void *engine_data)
{
    struct fixture *f = engine_data;

    f->wakes++;
    f->last_wake_waiter = waiter;
    f->last_wake_waiter_data = waiter_data;
    f->last_wake_engine_data = engine_data;
}

static void record_release(void *p, void *engine_data)
{
    struct fixture *f = engine_data;

    assert_true(f->released < MAX_RELEASED);
    f->released_payloads[f->released++] = payload_number(p);
}

static void fixture_config(struct fixture *f)
{
    corr_engine_config_init(&f->config);
    f->config.wake = record_wake;
    f->config.payload_free = record_release;
    f->config.data = f;
}

/* Creates an engine with the default settings and both callbacks. */
static int setup_engine(void **state)
{
    struct fixture *f = calloc(1, sizeof(*f));

    assert_non_null(f);
    fixture_config(f);
    assert_int_equal(corr_engine_create(&f->config, &f->engine), 0);
    assert_non_null(f->engine);
    *state = f;
    return 0;
}

/* Creates no engine, so that the test can create one with its own settings. */
static int setup_config_only(void **state)
{
    struct fixture *f = calloc(1, sizeof(*f));

    assert_non_null(f);
    fixture_config(f);
    *state = f;
    return 0;
}

static int teardown_engine(void **state)
{
    struct fixture *f = *state;

    if (f->engine)
        corr_engine_destroy(f->engine);
    free(f);
    return 0;
}

static struct corr_waiter *add_waiter(struct fixture *f, const char *id, unsigned acks, void *data)
{
    struct corr_waiter *w = NULL;

    assert_int_equal(corr_waiter_add(f->engine, id, strlen(id), acks, data, &w), 0);
    assert_non_null(w);
    return w;
}

static int ack(struct fixture *f, const char *id, uintptr_t n)
{
    return corr_engine_ack(f->engine, id, strlen(id), payload(n));
}

static void close_and_destroy(struct fixture *f, struct corr_waiter *w)
{
    corr_waiter_close(f->engine, w);
    corr_waiter_destroy(f->engine, w);
}

static struct corr_stats stats_of(struct fixture *f)
{
    struct corr_stats s;

    memset(&s, 0xff, sizeof(s));
    corr_engine_stats(f->engine, &s);
    return s;
}

/* Configuration and engine life cycle. */

static void config_init_sets_defaults(void **state)
{
    struct corr_engine_config c;

    memset(&c, 0xa5, sizeof(c));
    corr_engine_config_init(&c);
    assert_int_equal(c.size, sizeof(c));
    assert_int_equal(c.shards, 64);
    assert_int_equal(c.max_pending, 0);
    assert_int_equal(c.max_id_bytes, 256);
    assert_null(c.wake);
    assert_null(c.payload_free);
    assert_null(c.data);
}

static void create_without_wake_fails(void **state)
{
    struct fixture *f = *state;

    f->config.wake = NULL;
    assert_int_equal(corr_engine_create(&f->config, &f->engine), -EINVAL);
}

static void create_with_bad_shards_fails(void **state)
{
    static const unsigned bad[] = {0, 3, 6, 100, 65535};
    struct fixture *f = *state;

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        f->config.shards = bad[i];
        assert_int_equal(corr_engine_create(&f->config, &f->engine), -EINVAL);
    }
}

static void create_with_bad_max_id_bytes_fails(void **state)
{
    struct fixture *f = *state;

    f->config.max_id_bytes = 0;
    assert_int_equal(corr_engine_create(&f->config, &f->engine), -EINVAL);
    f->config.max_id_bytes = CORR_ID_MAX_BYTES + 1;
    assert_int_equal(corr_engine_create(&f->config, &f->engine), -EINVAL);
}

static void create_with_small_size_fails(void **state)
{
    struct fixture *f = *state;

    f->config.size = 0;
    assert_int_equal(corr_engine_create(&f->config, &f->engine), -EINVAL);
    f->config.size = sizeof(size_t);
    assert_int_equal(corr_engine_create(&f->config, &f->engine), -EINVAL);
}

static void create_accepts_limit_values(void **state)
{
    static const unsigned shards[] = {1, 2, 1024};
    struct fixture *f = *state;
    struct corr_engine *e = NULL;

    for (size_t i = 0; i < sizeof(shards) / sizeof(shards[0]); i++) {
        f->config.shards = shards[i];
        assert_int_equal(corr_engine_create(&f->config, &e), 0);
        assert_non_null(e);
        corr_engine_destroy(e);
        e = NULL;
    }

    f->config.shards = 64;
    f->config.max_id_bytes = 1;
    assert_int_equal(corr_engine_create(&f->config, &e), 0);
    corr_engine_destroy(e);
    e = NULL;

    f->config.max_id_bytes = CORR_ID_MAX_BYTES;
    f->config.payload_free = NULL;
    assert_int_equal(corr_engine_create(&f->config, &e), 0);
    corr_engine_destroy(e);
}

static void engine_destroy_releases_live_payloads(void **state)
{
    struct fixture *f = *state;
    uintptr_t seen = 0;

    add_waiter(f, "open-a", 4, NULL);
    add_waiter(f, "open-b", 4, NULL);
    assert_int_equal(ack(f, "open-a", 1), CORR_ACK_DELIVERED);
    assert_int_equal(ack(f, "open-a", 2), CORR_ACK_DELIVERED);
    assert_int_equal(ack(f, "open-b", 4), CORR_ACK_DELIVERED);

    corr_engine_destroy(f->engine);
    f->engine = NULL;

    assert_int_equal(f->released, 3);
    for (unsigned i = 0; i < f->released; i++)
        seen |= f->released_payloads[i];
    assert_int_equal(seen, 1 | 2 | 4);
}

static void engine_destroy_after_waiter_destroy_releases_nothing(void **state)
{
    struct fixture *f = *state;
    struct corr_waiter *w = add_waiter(f, "done", 1, NULL);

    assert_int_equal(ack(f, "done", 1), CORR_ACK_DELIVERED);
    assert_int_equal(payload_number(corr_waiter_take(w)), 1);
    close_and_destroy(f, w);

    corr_engine_destroy(f->engine);
    f->engine = NULL;
    assert_int_equal(f->released, 0);
}

/* Adding waiters. */

static void add_duplicate_id_reports_eexist(void **state)
{
    struct fixture *f = *state;
    struct corr_waiter *w = add_waiter(f, "dup", 1, NULL);
    struct corr_waiter *second = NULL;

    assert_int_equal(corr_waiter_add(f->engine, "dup", 3, 1, NULL, &second), -EEXIST);
    assert_null(second);
    close_and_destroy(f, w);
}

static void add_beyond_max_pending_reports_enospc(void **state)
{
    struct fixture *f = *state;
    struct corr_waiter *a, *b, *c = NULL;

    f->config.max_pending = 2;
    assert_int_equal(corr_engine_create(&f->config, &f->engine), 0);
    a = add_waiter(f, "a", 1, NULL);
    b = add_waiter(f, "b", 1, NULL);
    assert_int_equal(corr_waiter_add(f->engine, "c", 1, 1, NULL, &c), -ENOSPC);
    assert_null(c);

    /* A closed waiter no longer counts against max_pending, even before destroy. */
    corr_waiter_close(f->engine, a);
    c = add_waiter(f, "c", 1, NULL);

    corr_waiter_destroy(f->engine, a);
    close_and_destroy(f, b);
    close_and_destroy(f, c);
}

static void add_checks_id_length(void **state)
{
    struct fixture *f = *state;
    size_t max = f->config.max_id_bytes;
    char *id = malloc(max + 1);
    struct corr_waiter *w = NULL;

    assert_non_null(id);
    memset(id, 'x', max + 1);
    assert_int_equal(corr_waiter_add(f->engine, id, 0, 1, NULL, &w), -EINVAL);
    assert_int_equal(corr_waiter_add(f->engine, id, max + 1, 1, NULL, &w), -EINVAL);
    assert_null(w);

    assert_int_equal(corr_waiter_add(f->engine, id, max, 1, NULL, &w), 0);
    assert_non_null(w);
    assert_int_equal(corr_engine_ack(f->engine, id, max, payload(1)), CORR_ACK_DELIVERED);
    assert_int_equal(payload_number(corr_waiter_take(w)), 1);
    close_and_destroy(f, w);
    free(id);
}

static void add_accepts_id_max_bytes(void **state)
{
    struct fixture *f = *state;
    char *id = malloc(CORR_ID_MAX_BYTES + 1);
    struct corr_waiter *w = NULL;

    assert_non_null(id);
    memset(id, 'y', CORR_ID_MAX_BYTES + 1);
    f->config.max_id_bytes = CORR_ID_MAX_BYTES;
    assert_int_equal(corr_engine_create(&f->config, &f->engine), 0);

    assert_int_equal(corr_waiter_add(f->engine, id, CORR_ID_MAX_BYTES + 1, 1, NULL, &w), -EINVAL);
    assert_int_equal(corr_waiter_add(f->engine, id, CORR_ID_MAX_BYTES, 1, NULL, &w), 0);
    assert_int_equal(corr_engine_ack(f->engine, id, CORR_ID_MAX_BYTES, payload(7)),
                     CORR_ACK_DELIVERED);
    assert_int_equal(payload_number(corr_waiter_take(w)), 7);
    close_and_destroy(f, w);
    free(id);
}

static void add_checks_acks_count(void **state)
{
    struct fixture *f = *state;
    struct corr_waiter *w = NULL;

    assert_int_equal(corr_waiter_add(f->engine, "n", 1, 0, NULL, &w), -EINVAL);
    assert_int_equal(corr_waiter_add(f->engine, "n", 1, CORR_ACKS_MAX + 1, NULL, &w), -EINVAL);
    assert_null(w);

    /* The rejected adds must not have registered the id. */
    w = add_waiter(f, "n", 1, NULL);
    close_and_destroy(f, w);
}

static void add_accepts_acks_max(void **state)
{
    struct fixture *f = *state;
    struct corr_waiter *w = add_waiter(f, "many", CORR_ACKS_MAX, NULL);

    for (uintptr_t i = 1; i <= CORR_ACKS_MAX; i++)
        assert_int_equal(ack(f, "many", i), CORR_ACK_DELIVERED);
    assert_int_equal(ack(f, "many", CORR_ACKS_MAX + 1), CORR_ACK_FULL);

    for (uintptr_t i = 1; i <= CORR_ACKS_MAX; i++)
        assert_int_equal(payload_number(corr_waiter_take(w)), i);
    assert_null(corr_waiter_take(w));
    close_and_destroy(f, w);
}

static void waiter_keeps_id_and_data(void **state)
{
    struct fixture *f = *state;
    char id[] = {'k', 0, 'e', 'y'};
    int data;
    struct corr_waiter *w = NULL;
    const void *stored;
    size_t len = 0;

    assert_int_equal(corr_waiter_add(f->engine, id, sizeof(id), 1, &data, &w), 0);

    /* The engine copies the id, so changing the caller's buffer must not affect it. */
    id[3] = 'z';
    stored = corr_waiter_id(w, &len);
    assert_int_equal(len, 4);
    assert_memory_equal(stored, "k\0ey", 4);
    assert_ptr_equal(corr_waiter_data(w), &data);

    assert_int_equal(corr_engine_ack(f->engine, "k\0ey", 4, payload(1)), CORR_ACK_DELIVERED);
    assert_int_equal(corr_engine_ack(f->engine, id, sizeof(id), payload(2)), CORR_ACK_NO_WAITER);
    close_and_destroy(f, w);
}

/* Acks and their outcomes. */

static void ack_without_waiter_reports_no_waiter(void **state)
{
    struct fixture *f = *state;

    assert_int_equal(ack(f, "nobody", 1), CORR_ACK_NO_WAITER);
    assert_int_equal(f->wakes, 0);
}

static void ack_null_payload_reports_einval(void **state)
{
    struct fixture *f = *state;
    struct corr_waiter *w = add_waiter(f, "p", 1, NULL);

    assert_int_equal(corr_engine_ack(f->engine, "p", 1, NULL), -EINVAL);
    assert_int_equal(corr_engine_ack(f->engine, "none", 4, NULL), -EINVAL);
    assert_int_equal(f->wakes, 0);

    /* The rejected ack must not use up the waiter's only ack. */
    assert_int_equal(ack(f, "p", 5), CORR_ACK_DELIVERED);
    assert_int_equal(payload_number(corr_waiter_take(w)), 5);
    close_and_destroy(f, w);
}

static void ack_checks_id_length(void **state)
{
    struct fixture *f = *state;
    size_t max = f->config.max_id_bytes;
    char *id = malloc(max + 1);

    assert_non_null(id);
    memset(id, 'x', max + 1);
    assert_int_equal(corr_engine_ack(f->engine, id, 0, payload(1)), -EINVAL);
    assert_int_equal(corr_engine_ack(f->engine, id, max + 1, payload(1)), -EINVAL);
    assert_int_equal(corr_engine_ack(f->engine, id, max, payload(1)), CORR_ACK_NO_WAITER);
    free(id);
}

static void ack_delivers_to_waiter(void **state)
{
    struct fixture *f = *state;
    struct corr_waiter *w = add_waiter(f, "d", 1, NULL);

    assert_int_equal(ack(f, "d", 9), CORR_ACK_DELIVERED);
    assert_int_equal(payload_number(corr_waiter_take(w)), 9);
    assert_null(corr_waiter_take(w));
    close_and_destroy(f, w);
    assert_int_equal(f->released, 0);
}

static void ack_beyond_acks_reports_full(void **state)
{
    struct fixture *f = *state;
    struct corr_waiter *w = add_waiter(f, "two", 2, NULL);

    assert_int_equal(ack(f, "two", 1), CORR_ACK_DELIVERED);
    assert_int_equal(ack(f, "two", 2), CORR_ACK_DELIVERED);
    assert_int_equal(ack(f, "two", 3), CORR_ACK_FULL);
    assert_int_equal(ack(f, "two", 4), CORR_ACK_FULL);

    assert_int_equal(payload_number(corr_waiter_take(w)), 1);
    assert_int_equal(payload_number(corr_waiter_take(w)), 2);
    assert_null(corr_waiter_take(w));
    close_and_destroy(f, w);
}

static void acks_limit_spans_waiter_life(void **state)
{
    struct fixture *f = *state;
    struct corr_waiter *w = add_waiter(f, "life", 3, NULL);

    /* Taking an ack frees ring space but must not give the waiter another delivery. */
    for (uintptr_t i = 1; i <= 3; i++) {
        assert_int_equal(ack(f, "life", i), CORR_ACK_DELIVERED);
        assert_int_equal(payload_number(corr_waiter_take(w)), i);
        assert_null(corr_waiter_take(w));
    }
    assert_int_equal(ack(f, "life", 4), CORR_ACK_FULL);
    assert_null(corr_waiter_take(w));
    close_and_destroy(f, w);
}

static void full_waiter_still_registered(void **state)
{
    struct fixture *f = *state;
    struct corr_waiter *w = add_waiter(f, "used", 1, NULL);
    struct corr_waiter *other = NULL;

    assert_int_equal(ack(f, "used", 1), CORR_ACK_DELIVERED);
    assert_int_equal(payload_number(corr_waiter_take(w)), 1);

    /* Until the owner closes it, a waiter that has all its acks still owns the id. */
    assert_int_equal(corr_waiter_add(f->engine, "used", 4, 1, NULL, &other), -EEXIST);
    assert_int_equal(ack(f, "used", 2), CORR_ACK_FULL);
    close_and_destroy(f, w);
}

/* Wake callback. */

static void wake_called_once_per_transition(void **state)
{
    struct fixture *f = *state;
    int data;
    struct corr_waiter *w = add_waiter(f, "w", 8, &data);

    assert_int_equal(f->wakes, 0);
    assert_int_equal(ack(f, "w", 1), CORR_ACK_DELIVERED);
    assert_int_equal(f->wakes, 1);
    assert_ptr_equal(f->last_wake_waiter, w);
    assert_ptr_equal(f->last_wake_waiter_data, &data);
    assert_ptr_equal(f->last_wake_engine_data, f);

    /* The ring is already non-empty, so further deliveries must not wake again. */
    assert_int_equal(ack(f, "w", 2), CORR_ACK_DELIVERED);
    assert_int_equal(ack(f, "w", 3), CORR_ACK_DELIVERED);
    assert_int_equal(f->wakes, 1);
    close_and_destroy(f, w);
}

static void wake_rearmed_after_empty_take(void **state)
{
    struct fixture *f = *state;
    struct corr_waiter *w = add_waiter(f, "r", 8, NULL);

    assert_int_equal(ack(f, "r", 1), CORR_ACK_DELIVERED);
    assert_int_equal(ack(f, "r", 2), CORR_ACK_DELIVERED);
    assert_int_equal(f->wakes, 1);
    assert_int_equal(payload_number(corr_waiter_take(w)), 1);
    assert_int_equal(payload_number(corr_waiter_take(w)), 2);
    assert_null(corr_waiter_take(w));

    assert_int_equal(ack(f, "r", 3), CORR_ACK_DELIVERED);
    assert_int_equal(f->wakes, 2);
    assert_int_equal(ack(f, "r", 4), CORR_ACK_DELIVERED);
    assert_int_equal(f->wakes, 2);

    assert_int_equal(payload_number(corr_waiter_take(w)), 3);
    assert_int_equal(payload_number(corr_waiter_take(w)), 4);
    assert_null(corr_waiter_take(w));
    assert_int_equal(ack(f, "r", 5), CORR_ACK_DELIVERED);
    assert_int_equal(f->wakes, 3);
    close_and_destroy(f, w);
}

static void wake_not_called_for_rejected_acks(void **state)
{
    struct fixture *f = *state;
    struct corr_waiter *w = add_waiter(f, "one", 1, NULL);

    assert_int_equal(ack(f, "one", 1), CORR_ACK_DELIVERED);
    assert_int_equal(payload_number(corr_waiter_take(w)), 1);
    assert_null(corr_waiter_take(w));
    assert_int_equal(f->wakes, 1);

    assert_int_equal(ack(f, "one", 2), CORR_ACK_FULL);
    assert_int_equal(ack(f, "other", 3), CORR_ACK_NO_WAITER);
    corr_waiter_close(f->engine, w);
    assert_int_equal(ack(f, "one", 4), CORR_ACK_NO_WAITER);
    assert_int_equal(f->wakes, 1);
    corr_waiter_destroy(f->engine, w);
}

/* Taking acks. */

static void take_on_empty_returns_null(void **state)
{
    struct fixture *f = *state;
    struct corr_waiter *w = add_waiter(f, "e", 1, NULL);

    assert_null(corr_waiter_take(w));
    assert_null(corr_waiter_take(w));
    close_and_destroy(f, w);
}

static void take_returns_fifo_order(void **state)
{
    struct fixture *f = *state;
    struct corr_waiter *w = add_waiter(f, "fifo", 16, NULL);

    for (uintptr_t i = 1; i <= 10; i++)
        assert_int_equal(ack(f, "fifo", i * 3), CORR_ACK_DELIVERED);
    for (uintptr_t i = 1; i <= 5; i++)
        assert_int_equal(payload_number(corr_waiter_take(w)), i * 3);
    for (uintptr_t i = 11; i <= 16; i++)
        assert_int_equal(ack(f, "fifo", i * 3), CORR_ACK_DELIVERED);
    for (uintptr_t i = 6; i <= 16; i++)
        assert_int_equal(payload_number(corr_waiter_take(w)), i * 3);
    assert_null(corr_waiter_take(w));
    close_and_destroy(f, w);
}

/* Closing and destroying waiters. */

static void close_makes_acks_no_waiter(void **state)
{
    struct fixture *f = *state;
    struct corr_waiter *w = add_waiter(f, "c", 4, NULL);

    corr_waiter_close(f->engine, w);
    assert_int_equal(ack(f, "c", 1), CORR_ACK_NO_WAITER);
    assert_null(corr_waiter_take(w));
    assert_int_equal(f->wakes, 0);
    corr_waiter_destroy(f->engine, w);
}

static void close_keeps_delivered_acks(void **state)
{
    struct fixture *f = *state;
    struct corr_waiter *w = add_waiter(f, "keep", 4, NULL);

    assert_int_equal(ack(f, "keep", 1), CORR_ACK_DELIVERED);
    assert_int_equal(ack(f, "keep", 2), CORR_ACK_DELIVERED);
    corr_waiter_close(f->engine, w);
    assert_int_equal(ack(f, "keep", 3), CORR_ACK_NO_WAITER);

    assert_int_equal(payload_number(corr_waiter_take(w)), 1);
    assert_int_equal(payload_number(corr_waiter_take(w)), 2);
    assert_null(corr_waiter_take(w));
    corr_waiter_destroy(f->engine, w);
    assert_int_equal(f->released, 0);
}

static void close_is_idempotent(void **state)
{
    struct fixture *f = *state;
    struct corr_waiter *w = add_waiter(f, "twice", 1, NULL);
    struct corr_waiter *again;
    struct corr_stats s;

    corr_waiter_close(f->engine, w);
    corr_waiter_close(f->engine, w);
    s = stats_of(f);
    assert_int_equal(s.pending, 0);

    /* A second close must not unregister a newer waiter that has the same id. */
    again = add_waiter(f, "twice", 1, NULL);
    corr_waiter_close(f->engine, w);
    assert_int_equal(ack(f, "twice", 1), CORR_ACK_DELIVERED);
    assert_int_equal(payload_number(corr_waiter_take(again)), 1);
    s = stats_of(f);
    assert_int_equal(s.pending, 1);

    corr_waiter_destroy(f->engine, w);
    close_and_destroy(f, again);
}

static void close_allows_readding_id(void **state)
{
    struct fixture *f = *state;
    struct corr_waiter *old = add_waiter(f, "again", 2, NULL);
    struct corr_waiter *fresh;

    assert_int_equal(ack(f, "again", 1), CORR_ACK_DELIVERED);
    corr_waiter_close(f->engine, old);

    /* The new waiter gets the later acks and the old one keeps only its own. */
    fresh = add_waiter(f, "again", 2, NULL);
    assert_int_equal(ack(f, "again", 2), CORR_ACK_DELIVERED);
    assert_int_equal(payload_number(corr_waiter_take(old)), 1);
    assert_null(corr_waiter_take(old));
    assert_int_equal(payload_number(corr_waiter_take(fresh)), 2);
    assert_null(corr_waiter_take(fresh));

    corr_waiter_destroy(f->engine, old);
    assert_int_equal(ack(f, "again", 3), CORR_ACK_DELIVERED);
    assert_int_equal(payload_number(corr_waiter_take(fresh)), 3);
    close_and_destroy(f, fresh);
}

static void destroy_releases_untaken_payloads(void **state)
{
    struct fixture *f = *state;
    struct corr_waiter *w = add_waiter(f, "left", 4, NULL);

    for (uintptr_t i = 1; i <= 4; i++)
        assert_int_equal(ack(f, "left", i), CORR_ACK_DELIVERED);
    assert_int_equal(payload_number(corr_waiter_take(w)), 1);
    close_and_destroy(f, w);

    assert_int_equal(f->released, 3);
    assert_int_equal(f->released_payloads[0], 2);
    assert_int_equal(f->released_payloads[1], 3);
    assert_int_equal(f->released_payloads[2], 4);
}

static void destroy_without_payload_free_succeeds(void **state)
{
    struct fixture *f = *state;
    struct corr_waiter *w;

    f->config.payload_free = NULL;
    assert_int_equal(corr_engine_create(&f->config, &f->engine), 0);
    w = add_waiter(f, "drop", 2, NULL);
    assert_int_equal(ack(f, "drop", 1), CORR_ACK_DELIVERED);
    assert_int_equal(ack(f, "drop", 2), CORR_ACK_DELIVERED);
    close_and_destroy(f, w);

    add_waiter(f, "live", 1, NULL);
    assert_int_equal(ack(f, "live", 3), CORR_ACK_DELIVERED);
    corr_engine_destroy(f->engine);
    f->engine = NULL;
    assert_int_equal(f->released, 0);
}

/* Statistics. */

static void stats_start_at_zero(void **state)
{
    struct fixture *f = *state;
    struct corr_stats s = stats_of(f);

    assert_int_equal(s.pending, 0);
    assert_int_equal(s.waiters_added, 0);
    assert_int_equal(s.waiters_rejected, 0);
    assert_int_equal(s.acks_delivered, 0);
    assert_int_equal(s.acks_no_waiter, 0);
    assert_int_equal(s.acks_full, 0);
    assert_int_equal(s.payloads_released, 0);
}

static void stats_count_outcomes(void **state)
{
    struct fixture *f = *state;
    struct corr_waiter *w = add_waiter(f, "s", 2, NULL);
    struct corr_stats s;

    assert_int_equal(ack(f, "s", 1), CORR_ACK_DELIVERED);
    assert_int_equal(ack(f, "s", 2), CORR_ACK_DELIVERED);
    assert_int_equal(ack(f, "s", 3), CORR_ACK_FULL);
    assert_int_equal(ack(f, "x", 4), CORR_ACK_NO_WAITER);
    assert_int_equal(ack(f, "y", 5), CORR_ACK_NO_WAITER);
    assert_int_equal(ack(f, "z", 6), CORR_ACK_NO_WAITER);
    assert_int_equal(corr_engine_ack(f->engine, "s", 1, NULL), -EINVAL);
    assert_int_equal(corr_engine_ack(f->engine, "s", 0, payload(7)), -EINVAL);

    s = stats_of(f);
    assert_int_equal(s.acks_delivered, 2);
    assert_int_equal(s.acks_full, 1);
    assert_int_equal(s.acks_no_waiter, 3);
    assert_int_equal(s.payloads_released, 0);

    assert_int_equal(payload_number(corr_waiter_take(w)), 1);
    close_and_destroy(f, w);
    s = stats_of(f);
    assert_int_equal(s.payloads_released, 1);
    assert_int_equal(f->released, 1);
}

static void stats_count_waiters(void **state)
{
    struct fixture *f = *state;
    struct corr_waiter *a, *b, *unused = NULL;
    struct corr_stats s;

    f->config.max_pending = 2;
    assert_int_equal(corr_engine_create(&f->config, &f->engine), 0);
    a = add_waiter(f, "a", 1, NULL);
    assert_int_equal(corr_waiter_add(f->engine, "a", 1, 1, NULL, &unused), -EEXIST);
    b = add_waiter(f, "b", 1, NULL);
    assert_int_equal(corr_waiter_add(f->engine, "c", 1, 1, NULL, &unused), -ENOSPC);
    assert_int_equal(corr_waiter_add(f->engine, "c", 0, 1, NULL, &unused), -EINVAL);

    s = stats_of(f);
    assert_int_equal(s.pending, 2);
    assert_int_equal(s.waiters_added, 2);
    assert_int_equal(s.waiters_rejected, 2);

    corr_waiter_close(f->engine, a);
    s = stats_of(f);
    assert_int_equal(s.pending, 1);
    corr_waiter_destroy(f->engine, a);
    close_and_destroy(f, b);

    s = stats_of(f);
    assert_int_equal(s.pending, 0);
    assert_int_equal(s.waiters_added, 2);
    assert_int_equal(s.waiters_rejected, 2);
}

/* Ids. */

static void binary_ids_with_nul_are_distinct(void **state)
{
    static const struct {
        const char *bytes;
        size_t len;
    } ids[] = {
        {"a", 1}, {"a\0", 2}, {"a\0b", 3}, {"a\0c", 3}, {"\0", 1}, {"\0\0", 2}, {"\0a", 2},
    };
    enum { id_count = sizeof(ids) / sizeof(ids[0]) };
    struct fixture *f = *state;
    struct corr_waiter *w[id_count];

    for (size_t i = 0; i < id_count; i++)
        assert_int_equal(corr_waiter_add(f->engine, ids[i].bytes, ids[i].len, 2, NULL, &w[i]), 0);
    for (size_t i = 0; i < id_count; i++)
        assert_int_equal(corr_engine_ack(f->engine, ids[i].bytes, ids[i].len, payload(i + 1)),
                         CORR_ACK_DELIVERED);
    for (size_t i = 0; i < id_count; i++) {
        assert_int_equal(payload_number(corr_waiter_take(w[i])), i + 1);
        assert_null(corr_waiter_take(w[i]));
    }
    assert_int_equal(corr_engine_ack(f->engine, "\0b", 2, payload(99)), CORR_ACK_NO_WAITER);
    for (size_t i = 0; i < id_count; i++)
        close_and_destroy(f, w[i]);
}

static void ids_differing_in_last_byte_are_distinct(void **state)
{
    enum { id_count = 256 };
    struct fixture *f = *state;
    size_t len = f->config.max_id_bytes;
    unsigned char *id = malloc(len);
    struct corr_waiter *w[id_count];

    assert_non_null(id);
    memset(id, 0x5a, len);
    for (size_t i = 0; i < id_count; i++) {
        id[len - 1] = (unsigned char)i;
        assert_int_equal(corr_waiter_add(f->engine, id, len, 1, NULL, &w[i]), 0);
    }
    for (size_t i = 0; i < id_count; i++) {
        id[len - 1] = (unsigned char)i;
        assert_int_equal(corr_engine_ack(f->engine, id, len, payload(i + 1)), CORR_ACK_DELIVERED);
    }
    for (size_t i = 0; i < id_count; i++) {
        assert_int_equal(payload_number(corr_waiter_take(w[i])), i + 1);
        close_and_destroy(f, w[i]);
    }
    free(id);
}

static void many_waiters_on_one_shard(void **state)
{
    enum { waiter_count = 1000 };
    struct fixture *f = *state;
    struct corr_waiter **w = calloc(waiter_count, sizeof(*w));
    char id[32];

    assert_non_null(w);
    f->config.shards = 1;
    assert_int_equal(corr_engine_create(&f->config, &f->engine), 0);
    for (size_t i = 0; i < waiter_count; i++) {
        snprintf(id, sizeof(id), "waiter-%zu", i);
        w[i] = add_waiter(f, id, 1, NULL);
    }
    for (size_t i = 0; i < waiter_count; i++) {
        snprintf(id, sizeof(id), "waiter-%zu", i);
        assert_int_equal(ack(f, id, i + 1), CORR_ACK_DELIVERED);
    }
    /* Close every other waiter first, so that removals leave gaps between live entries. */
    for (size_t i = 0; i < waiter_count; i += 2)
        close_and_destroy(f, w[i]);
    for (size_t i = 1; i < waiter_count; i += 2) {
        snprintf(id, sizeof(id), "waiter-%zu", i);
        assert_int_equal(payload_number(corr_waiter_take(w[i])), i + 1);
        close_and_destroy(f, w[i]);
    }
    assert_int_equal(f->released, waiter_count / 2);
    free(w);
}

/* Error text. */

static void strerror_describes_all_codes(void **state)
{
    static const int codes[] = {
        0, CORR_ACK_DELIVERED, CORR_ACK_NO_WAITER, CORR_ACK_FULL, -EINVAL, -EEXIST, -ENOSPC,
        -ENOMEM, -12345, 12345,
    };

    for (size_t i = 0; i < sizeof(codes) / sizeof(codes[0]); i++) {
        const char *text = corr_strerror(codes[i]);

        assert_non_null(text);
        assert_true(strlen(text) > 0);
    }
    assert_string_not_equal(corr_strerror(CORR_ACK_NO_WAITER), corr_strerror(CORR_ACK_FULL));
    assert_string_not_equal(corr_strerror(-EEXIST), corr_strerror(-ENOSPC));
    assert_string_not_equal(corr_strerror(-EINVAL), corr_strerror(-ENOMEM));
}

#define ENGINE_TEST(name) cmocka_unit_test_setup_teardown(name, setup_engine, teardown_engine)
#define CONFIG_TEST(name) cmocka_unit_test_setup_teardown(name, setup_config_only, teardown_engine)

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(config_init_sets_defaults),
        CONFIG_TEST(create_without_wake_fails),
        CONFIG_TEST(create_with_bad_shards_fails),
        CONFIG_TEST(create_with_bad_max_id_bytes_fails),
        CONFIG_TEST(create_with_small_size_fails),
        CONFIG_TEST(create_accepts_limit_values),
        ENGINE_TEST(engine_destroy_releases_live_payloads),
        ENGINE_TEST(engine_destroy_after_waiter_destroy_releases_nothing),
        ENGINE_TEST(add_duplicate_id_reports_eexist),
        CONFIG_TEST(add_beyond_max_pending_reports_enospc),
        ENGINE_TEST(add_checks_id_length),
        CONFIG_TEST(add_accepts_id_max_bytes),
        ENGINE_TEST(add_checks_acks_count),
        ENGINE_TEST(add_accepts_acks_max),
        ENGINE_TEST(waiter_keeps_id_and_data),
        ENGINE_TEST(ack_without_waiter_reports_no_waiter),
        ENGINE_TEST(ack_null_payload_reports_einval),
        ENGINE_TEST(ack_checks_id_length),
        ENGINE_TEST(ack_delivers_to_waiter),
        ENGINE_TEST(ack_beyond_acks_reports_full),
        ENGINE_TEST(acks_limit_spans_waiter_life),
        ENGINE_TEST(full_waiter_still_registered),
        ENGINE_TEST(wake_called_once_per_transition),
        ENGINE_TEST(wake_rearmed_after_empty_take),
        ENGINE_TEST(wake_not_called_for_rejected_acks),
        ENGINE_TEST(take_on_empty_returns_null),
        ENGINE_TEST(take_returns_fifo_order),
        ENGINE_TEST(close_makes_acks_no_waiter),
        ENGINE_TEST(close_keeps_delivered_acks),
        ENGINE_TEST(close_is_idempotent),
        ENGINE_TEST(close_allows_readding_id),
        ENGINE_TEST(destroy_releases_untaken_payloads),
        CONFIG_TEST(destroy_without_payload_free_succeeds),
        ENGINE_TEST(stats_start_at_zero),
        ENGINE_TEST(stats_count_outcomes),
        CONFIG_TEST(stats_count_waiters),
        ENGINE_TEST(binary_ids_with_nul_are_distinct),
        ENGINE_TEST(ids_differing_in_last_byte_are_distinct),
        CONFIG_TEST(many_waiters_on_one_shard),
        cmocka_unit_test(strerror_describes_all_codes),
    };
    int failed;

    corr_thread_register();
    failed = cmocka_run_group_tests_name("engine", tests, NULL, NULL);
    corr_thread_unregister();
    return failed;
}
