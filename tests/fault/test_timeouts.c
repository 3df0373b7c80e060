/*
 * Waiter timeouts.
 *
 *   one second timeout is kept       timeout=1000 gets 504 after 1.0 to 1.5 s
 *   many timeouts each kept          2,000 waiters (1,000 over HTTP/1.1, 1,000 on 10 HTTP/2
 *                                    connections) with timeouts of 100 to 3,000 ms each get 504
 *                                    no earlier than their timeout and within 1 s after it
 *   timeout values follow the rules  0, -1, abc, empty, repeated and unknown parameters get
 *                                    400; 99999999999 is clamped to --max-timeout-ms; no
 *                                    timeout uses --default-timeout-ms
 *
 * corrd's timers have millisecond resolution on the monotonic clock, and a deadline is taken
 * from the millisecond at which the waiter is registered, so a 504 may come up to 1 ms before
 * the timeout measured from the client's send. The checks allow that 1 ms.
 *
 * Usage: fault_timeouts [--full] [--seed N] CORRD [NAME_FILTER]
 */
#define _GNU_SOURCE
#include "fault.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define RESOLUTION_MS 1.0
/* A generous bound for a loaded 2-core machine: a 504 comes within this after its timeout. */
#define LATE_LIMIT_MS 1000.0

/* Sends one /start over proto and waits for its response; returns the call (caller frees). */
static void send_start(struct loop *loop, int port, enum http_proto proto, const char *path,
                       long wait_ms, struct call *call, struct h1_conn **h1, struct h2_conn **h2)
{
    double deadline = now_s() + (double)wait_ms / 1000.0;

    *h1 = NULL;
    *h2 = NULL;
    if (proto == PROTO_HTTP1)
        *h1 = h1_connect(loop, port, 0);
    else
        *h2 = h2_connect(loop, port);
    call_send(call, *h1, *h2, "GET", path, NULL, NULL, 0);
    while (!call_finished(call) && now_s() < deadline)
        loop_run(loop, 10000);
}

static double call_elapsed_s(const struct call *call)
{
    if (call->h1 != NULL)
        return call->h1->done_at - call->h1->sent_at;
    return call->h2->done_at - call->h2->sent_at;
}

static void release_start(struct call *call, struct h1_conn *h1, struct h2_conn *h2)
{
    call_release(call);
    h1_free(h1);
    h2_free(h2);
}

/* ---- one second timeout is kept ---- */

static void test_one_second_timeout(enum http_proto proto)
{
    struct corrd server;
    struct loop loop;
    struct call call;
    struct h1_conn *h1;
    struct h2_conn *h2;
    double elapsed;

    if (!corrd_start(&server, NULL))
        return;
    loop_init(&loop);
    send_start(&loop, server.port, proto, "/start/one-second?timeout=1000", 5000, &call, &h1,
               &h2);
    elapsed = call_elapsed_s(&call);
    printf("    504 after %.4f s\n", elapsed);
    EXPECT(call_status(&call) == 504, "timeout=1000 got status %d, expected 504",
           call_status(&call));
    EXPECT(elapsed >= 1.0 - RESOLUTION_MS / 1000.0, "timeout=1000 answered after %.4f s, "
           "before 1 s", elapsed);
    EXPECT(elapsed <= 1.5, "timeout=1000 answered after %.4f s, later than 1.5 s", elapsed);
    release_start(&call, h1, h2);
    loop_dispose(&loop);
    corrd_stop(&server);
}

/* ---- many timeouts each kept ---- */

#define MANY_H1 1000
#define MANY_H2_CONNS 10
#define MANY_H2_STREAMS 100
#define MANY_TOTAL (MANY_H1 + MANY_H2_CONNS * MANY_H2_STREAMS)
#define MANY_MIN_MS 100
#define MANY_MAX_MS 3000

static void test_many_timeouts(enum http_proto proto)
{
    static struct call calls[MANY_TOTAL];
    static long timeouts[MANY_TOTAL];
    struct h1_conn *h1[MANY_H1] = {NULL};
    struct h2_conn *h2[MANY_H2_CONNS] = {NULL};
    struct corrd server;
    struct counters before;
    struct counters after;
    struct loop loop;
    struct rng rng;
    double worst_late_ms = -1e9;
    double sum_late_ms = 0;
    double earliest_ms = 1e9;
    long answered = 0;
    bool all_done = false;

    if (!corrd_start(&server, NULL))
        return;
    rng_init(&rng, "many timeouts each kept");
    loop_init(&loop);
    counters_fetch(server.port, &before);
    for (int c = 0; c < MANY_H2_CONNS; c++) {
        h2[c] = h2_connect(&loop, server.port);
        REQUIRE(h2[c] != NULL, "connect failed");
    }
    for (int i = 0; i < MANY_TOTAL; i++) {
        char path[96];

        timeouts[i] = MANY_MIN_MS + (long)rng_below(&rng, MANY_MAX_MS - MANY_MIN_MS + 1);
        snprintf(path, sizeof(path), "/start/many-%d?timeout=%ld", i, timeouts[i]);
        if (i < MANY_H1) {
            h1[i] = h1_connect(&loop, server.port, 0);
            REQUIRE(h1[i] != NULL, "connect %d failed", i);
        }
        call_send(&calls[i], i < MANY_H1 ? h1[i] : NULL, h2[i % MANY_H2_CONNS], "GET", path,
                  NULL, NULL, 0);
        if (i % 100 == 99)
            loop_run(&loop, 0);
    }
    for (double deadline = now_s() + MANY_MAX_MS / 1000.0 + 10.0;
         !all_done && now_s() < deadline;) {
        loop_run(&loop, 10000);
        all_done = true;
        for (int i = 0; i < MANY_TOTAL && all_done; i++)
            all_done = call_finished(&calls[i]);
    }

    for (int i = 0; i < MANY_TOTAL; i++) {
        const char *via = i < MANY_H1 ? "http/1.1" : "h2c";
        double elapsed_ms;
        double late_ms;

        if (call_status(&calls[i]) != 504) {
            test_fail(__FILE__, __LINE__, "waiter %d (%s, timeout=%ld) got status %d, expected "
                      "504", i, via, timeouts[i], call_status(&calls[i]));
            continue;
        }
        answered++;
        elapsed_ms = call_elapsed_s(&calls[i]) * 1000.0;
        late_ms = elapsed_ms - (double)timeouts[i];
        sum_late_ms += late_ms;
        if (late_ms > worst_late_ms)
            worst_late_ms = late_ms;
        if (late_ms < earliest_ms)
            earliest_ms = late_ms;
        EXPECT(late_ms >= -RESOLUTION_MS, "waiter %d (%s, timeout=%ld) got 504 after %.2f ms, "
               "%.2f ms early", i, via, timeouts[i], elapsed_ms, -late_ms);
        EXPECT(late_ms <= LATE_LIMIT_MS, "waiter %d (%s, timeout=%ld) got 504 after %.2f ms, "
               "%.2f ms late", i, via, timeouts[i], elapsed_ms, late_ms);
    }
    printf("    %ld of %d waiters got 504; lateness min %.2f ms, mean %.2f ms, max %.2f ms\n",
           answered, MANY_TOTAL, earliest_ms, answered > 0 ? sum_late_ms / answered : 0.0,
           worst_late_ms);
    if (counters_fetch(server.port, &after)) {
        EXPECT(after.finished_timeout - before.finished_timeout == MANY_TOTAL,
               "corr_waiters_finished_total{outcome=\"timeout\"} grew by %lld, expected %d",
               after.finished_timeout - before.finished_timeout, MANY_TOTAL);
        EXPECT(after.pending == 0, "pending gauge is %lld, expected 0", after.pending);
    }
    for (int i = 0; i < MANY_TOTAL; i++)
        call_release(&calls[i]);
    for (int i = 0; i < MANY_H1; i++)
        h1_free(h1[i]);
    for (int c = 0; c < MANY_H2_CONNS; c++)
        h2_free(h2[c]);
    loop_dispose(&loop);
    corrd_stop(&server);
}

/* ---- timeout values follow the rules ---- */

#define CLAMP_MAX_MS 1500
#define DEFAULT_MS 700

static void test_timeout_values(enum http_proto proto)
{
    static const char *const args[] = {"--max-timeout-ms", "1500", "--default-timeout-ms", "700",
                                       NULL};
    static const char *const invalid[] = {
        "timeout=0", "timeout=-1", "timeout=abc", "timeout=", "timeout=10&timeout=20",
        "timeout=1.5", "timeout=+5", "timeout=%31", "wait=10", "timeout=10&x=1", "timeout",
    };
    static const struct {
        const char *query;
        double expected_s;
        const char *expected_text; /* part of the 504 body */
    } timed[] = {
        {"?timeout=99999999999", CLAMP_MAX_MS / 1000.0, "within 1500 ms"},
        {"?timeout=18446744073709551616", CLAMP_MAX_MS / 1000.0, "within 1500 ms"},
        {"?timeout=1501", CLAMP_MAX_MS / 1000.0, "within 1500 ms"},
        {"", DEFAULT_MS / 1000.0, "within 700 ms"},
        {"?timeout=0001", 0.001, "within 1 ms"},
    };
    struct corrd server;
    struct loop loop;

    if (!corrd_start(&server, args))
        return;
    loop_init(&loop);
    for (size_t i = 0; i < sizeof(invalid) / sizeof(invalid[0]); i++) {
        char path[128];
        struct call call;
        struct h1_conn *h1;
        struct h2_conn *h2;

        snprintf(path, sizeof(path), "/start/values-%zu?%s", i, invalid[i]);
        send_start(&loop, server.port, proto, path, 5000, &call, &h1, &h2);
        EXPECT(call_status(&call) == 400, "GET %s got status %d, expected 400", path,
               call_status(&call));
        EXPECT(call_elapsed_s(&call) < 1.0, "GET %s took %.3f s; a 400 comes at once", path,
               call_elapsed_s(&call));
        release_start(&call, h1, h2);
    }
    for (size_t i = 0; i < sizeof(timed) / sizeof(timed[0]); i++) {
        char path[128];
        struct call call;
        struct h1_conn *h1;
        struct h2_conn *h2;
        const unsigned char *body;
        size_t len;
        double elapsed;

        snprintf(path, sizeof(path), "/start/values-timed-%zu%s", i, timed[i].query);
        send_start(&loop, server.port, proto, path, 10000, &call, &h1, &h2);
        elapsed = call_elapsed_s(&call);
        body = call_body(&call, &len);
        printf("    GET %s: %d after %.4f s\n", path, call_status(&call), elapsed);
        EXPECT(call_status(&call) == 504, "GET %s got status %d, expected 504", path,
               call_status(&call));
        EXPECT(elapsed >= timed[i].expected_s - RESOLUTION_MS / 1000.0, "GET %s: 504 after "
               "%.4f s, expected at least %.3f s", path, elapsed, timed[i].expected_s);
        EXPECT(elapsed <= timed[i].expected_s + 1.0, "GET %s: 504 after %.4f s, expected at "
               "most %.3f s", path, elapsed, timed[i].expected_s + 1.0);
        EXPECT(body != NULL && memmem(body, len, timed[i].expected_text,
                                      strlen(timed[i].expected_text)) != NULL,
               "GET %s: 504 body \"%s\" does not contain \"%s\"", path, printable(body, len),
               timed[i].expected_text);
        release_start(&call, h1, h2);
    }
    loop_dispose(&loop);
    corrd_stop(&server);
}

static const struct test_case cases[] = {
    {"one second timeout is kept", test_one_second_timeout, PROTO_HTTP1 | PROTO_H2C},
    {"many timeouts each kept", test_many_timeouts, PROTO_HTTP1},
    {"timeout values follow the rules", test_timeout_values, PROTO_HTTP1 | PROTO_H2C},
};

int main(int argc, char **argv)
{
    return fault_main(cases, sizeof(cases) / sizeof(cases[0]), 300, 300, argc, argv);
}
