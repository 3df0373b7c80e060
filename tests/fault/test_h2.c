/*
 * HTTP/2 stream resets.
 *
 *   resets during acks lose nothing   10 connections x 100 held streams; half are reset at
 *                                     random while 512-byte acks arrive for every id: each live
 *                                     stream gets its body, each 202 reached a waiter or is
 *                                     counted lost
 *   rapid reset closes connection     a client that opens and resets /start streams in a tight
 *                                     loop is disconnected (--max-resets-per-sec), while another
 *                                     client's pairs succeed; a slower resetter is not
 *
 * Usage: fault_h2 [--full] [--seed N] CORRD [NAME_FILTER]
 */
#define _GNU_SOURCE
#include "fault.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---- resets during acks lose nothing ---- */

#define RESET_CONNS 10
#define RESET_STREAMS 100 /* h2o 2.2.5 allows 100 concurrent streams per connection */
#define RESET_WAITERS (RESET_CONNS * RESET_STREAMS)
#define RESET_ACK_CONNS 16
#define RESET_BODY 512

struct reset_waiter {
    char id[48];
    struct h2_stream *stream;
    unsigned char *body; /* its ack's body */
    bool to_reset;
    int ack_status;
    bool ack_sent;
    bool ack_done;
};

/* Fisher-Yates shuffle of n ints. */
static void shuffle(struct rng *rng, int *items, int n)
{
    for (int i = n - 1; i > 0; i--) {
        int j = (int)rng_below(rng, (uint64_t)i + 1);
        int swap = items[i];

        items[i] = items[j];
        items[j] = swap;
    }
}

/* Runs one round; returns false when the round could not be set up. */
static bool reset_round(int port, long round, struct rng *rng, long *resets_out,
                        long *answered_into_reset_out)
{
    static struct reset_waiter waiters[RESET_WAITERS];
    /* Events: 0..999 ack waiter i, 1000..1999 reset waiter i - 1000 (skipped unless chosen). */
    static int events[2 * RESET_WAITERS];
    struct h2_conn *conns[RESET_CONNS] = {NULL};
    struct h1_conn *ackers[RESET_ACK_CONNS] = {NULL};
    int acker_waiter[RESET_ACK_CONNS];
    struct counters before;
    struct counters after;
    struct loop loop;
    long long pending;
    int order[RESET_WAITERS];
    long resets = 0;
    long received = 0;
    long count_202 = 0;
    long count_404 = 0;
    bool ok = true;
    int next_event = 0;
    double deadline;

    loop_init(&loop);
    counters_fetch(port, &before);
    for (int c = 0; c < RESET_CONNS; c++) {
        conns[c] = h2_connect(&loop, port);
        if (conns[c] == NULL)
            return false;
    }
    for (int a = 0; a < RESET_ACK_CONNS; a++) {
        ackers[a] = h1_connect(&loop, port, 0);
        acker_waiter[a] = -1;
        if (ackers[a] == NULL)
            return false;
    }
    for (int i = 0; i < RESET_WAITERS; i++) {
        struct reset_waiter *waiter = &waiters[i];
        char path[160];

        memset(waiter, 0, sizeof(*waiter));
        snprintf(waiter->id, sizeof(waiter->id), "h2reset-%ld-%d", round, i);
        snprintf(path, sizeof(path), "/start/%.47s?timeout=30000", waiter->id);
        waiter->body = make_body(rng, waiter->id, RESET_BODY);
        waiter->stream = h2_submit(conns[i % RESET_CONNS], "GET", path, NULL, 0, NULL);
        order[i] = i;
    }
    loop_run(&loop, 1000);
    if (!wait_pending_equals(port, RESET_WAITERS, 10000, &pending)) {
        test_fail(__FILE__, __LINE__, "round %ld: pending gauge %lld, expected %d held streams",
                  round, pending, RESET_WAITERS);
        ok = false;
    }
    /* Choose half of the streams to reset, then interleave resets and acks at random. */
    shuffle(rng, order, RESET_WAITERS);
    for (int i = 0; i < RESET_WAITERS / 2; i++)
        waiters[order[i]].to_reset = true;
    for (int i = 0; i < 2 * RESET_WAITERS; i++)
        events[i] = i;
    shuffle(rng, events, 2 * RESET_WAITERS);

    deadline = now_s() + 30.0;
    while (ok && now_s() < deadline) {
        bool all_done = next_event == 2 * RESET_WAITERS;
        int burst = 1 + (int)rng_below(rng, 8);

        for (; burst > 0 && next_event < 2 * RESET_WAITERS; burst--) {
            int event = events[next_event];

            if (event >= RESET_WAITERS) {
                struct reset_waiter *waiter = &waiters[event - RESET_WAITERS];

                if (waiter->to_reset) {
                    h2_reset(waiter->stream);
                    resets++;
                }
                next_event++;
                continue;
            }
            /* An ack needs an idle connection; retry this event on the next pass if none. */
            int free_acker = -1;

            for (int a = 0; a < RESET_ACK_CONNS && free_acker < 0; a++) {
                if (acker_waiter[a] < 0)
                    free_acker = a;
            }
            if (free_acker < 0)
                break;
            char path[96];

            snprintf(path, sizeof(path), "/ack/%s", waiters[event].id);
            h1_send(ackers[free_acker], "POST", path, NULL, waiters[event].body, RESET_BODY);
            acker_waiter[free_acker] = event;
            waiters[event].ack_sent = true;
            next_event++;
        }
        loop_run(&loop, (long)rng_below(rng, 500));
        for (int a = 0; a < RESET_ACK_CONNS; a++) {
            struct reset_waiter *waiter;

            if (acker_waiter[a] < 0)
                continue;
            waiter = &waiters[acker_waiter[a]];
            if (ackers[a]->eof && !ackers[a]->done) {
                test_fail(__FILE__, __LINE__, "round %ld: ack for %s: connection closed without "
                          "a response", round, waiter->id);
                ok = false;
                break;
            }
            if (!ackers[a]->done)
                continue;
            waiter->ack_status = ackers[a]->response.status;
            waiter->ack_done = true;
            ackers[a]->done = false;
            acker_waiter[a] = -1;
        }
        for (int i = 0; i < RESET_WAITERS && all_done; i++)
            all_done = waiters[i].ack_done && waiters[i].stream->closed;
        if (all_done)
            break;
    }

    for (int i = 0; i < RESET_WAITERS; i++) {
        struct reset_waiter *waiter = &waiters[i];
        struct h2_stream *stream = waiter->stream;

        if (waiter->ack_status == 202)
            count_202++;
        else if (waiter->ack_status == 404)
            count_404++;
        if (!ok)
            continue;
        if (!stream->reset_by_us) {
            /* A live stream: its ack found the waiter, and the stream got exactly that body. */
            EXPECT(waiter->ack_status == 202, "round %ld: ack for live stream %s got %d, "
                   "expected 202", round, waiter->id, waiter->ack_status);
            EXPECT(stream->complete && stream->status == 200, "round %ld: live stream %s ended "
                   "with status %d, error code %u, expected 200", round, waiter->id,
                   stream->status, stream->error_code);
            if (stream->complete && stream->status == 200) {
                EXPECT(stream->body_len == RESET_BODY &&
                       memcmp(stream->body, waiter->body, RESET_BODY) == 0,
                       "round %ld: live stream %s got %zu bytes that differ from its ack's %d",
                       round, waiter->id, stream->body_len, RESET_BODY);
                received++;
            }
        } else {
            EXPECT(waiter->ack_status == 202 || waiter->ack_status == 404, "round %ld: ack for "
                   "reset stream %s got %d, expected 202 or 404", round, waiter->id,
                   waiter->ack_status);
        }
    }
    if (ok && counters_fetch(port, &after)) {
        long long answered = after.finished_ack - before.finished_ack;
        long long gone = after.finished_gone - before.finished_gone;
        long long lost = after.acks_lost - before.acks_lost;

        EXPECT(after.acks_delivered - before.acks_delivered == count_202, "round %ld: "
               "corr_acks_total{outcome=\"delivered\"} grew by %lld, client counted %ld 202s",
               round, after.acks_delivered - before.acks_delivered, count_202);
        EXPECT(after.acks_no_waiter - before.acks_no_waiter == count_404, "round %ld: "
               "corr_acks_total{outcome=\"no_waiter\"} grew by %lld, client counted %ld 404s",
               round, after.acks_no_waiter - before.acks_no_waiter, count_404);
        /* Each 202 went to a live stream, was lost with a reset waiter, or was sent in a
         * response to a stream whose RST_STREAM was already on its way. */
        EXPECT(count_202 == received + lost + (answered - received), "round %ld: %ld acks got "
               "202; live streams received %ld, corr_acks_lost_total grew by %lld, corrd "
               "answered %lld waiters", round, count_202, received, lost, answered);
        EXPECT(answered - received >= 0 && answered - received <= resets, "round %ld: corrd "
               "answered %lld waiters, %ld live streams received a body and %ld were reset",
               round, answered, received, resets);
        EXPECT(answered + gone == RESET_WAITERS, "round %ld: corrd answered %lld and counted "
               "%lld gone, expected %d in total", round, answered, gone, RESET_WAITERS);
        *answered_into_reset_out += answered - received;
    }
    *resets_out += resets;
    if (!wait_pending_equals(port, 0, 5000, &pending))
        test_fail(__FILE__, __LINE__, "round %ld: pending gauge %lld at the end, expected 0",
                  round, pending);

    for (int i = 0; i < RESET_WAITERS; i++) {
        h2_stream_free(waiters[i].stream);
        free(waiters[i].body);
    }
    for (int c = 0; c < RESET_CONNS; c++)
        h2_free(conns[c]);
    for (int a = 0; a < RESET_ACK_CONNS; a++)
        h1_free(ackers[a]);
    loop_dispose(&loop);
    return ok;
}

static void test_resets_during_acks(enum http_proto proto)
{
    long rounds = fault_size(5, 50);
    struct corrd server;
    struct counters before;
    struct counters after;
    struct rng rng;
    long resets = 0;
    long answered_into_reset = 0;

    if (!corrd_start(&server, NULL))
        return;
    rng_init(&rng, "resets during acks lose nothing");
    counters_fetch(server.port, &before);
    for (long round = 0; round < rounds && test_failures() == 0; round++) {
        if (!reset_round(server.port, round, &rng, &resets, &answered_into_reset))
            break;
    }
    if (counters_fetch(server.port, &after))
        printf("    %ld rounds, %ld streams reset; corrd: %lld acks delivered, %lld lost, "
               "%ld answered into a stream being reset\n", rounds, resets,
               after.acks_delivered - before.acks_delivered, after.acks_lost - before.acks_lost,
               answered_into_reset);
    corrd_stop(&server);
}

/* ---- rapid reset closes connection ---- */

#define RAPID_MAX_STREAMS 20000
#define RAPID_MAX_S 5.0
#define RAPID_PAIRS 100
#define SLOW_RESETS 200
#define SLOW_RESET_INTERVAL_MS 4 /* 250 resets a second, half the default limit of 500 */

static void test_rapid_reset(enum http_proto proto)
{
    struct corrd server;
    struct loop loop;
    struct pairs pairs;
    struct h2_conn *attacker;
    struct h2_conn *slow;
    struct counters before;
    struct counters middle;
    struct counters after;
    long long pending;
    long streams = 0;
    double start;
    double closed_after = -1;

    if (!corrd_start(&server, NULL))
        return;
    loop_init(&loop);
    counters_fetch(server.port, &before);

    /* A client that resets 250 held streams a second stays connected. */
    slow = h2_connect(&loop, server.port);
    REQUIRE(slow != NULL, "connect failed");
    for (int i = 0; i < SLOW_RESETS && !slow->eof; i++) {
        char path[64];
        struct h2_stream *stream;

        snprintf(path, sizeof(path), "/start/slow-reset-%d?timeout=30000", i);
        stream = h2_submit(slow, "GET", path, NULL, 0, NULL);
        loop_run(&loop, SLOW_RESET_INTERVAL_MS * 1000);
        h2_reset(stream);
        h2_stream_free(stream);
    }
    loop_run(&loop, 100000);
    EXPECT(!slow->eof && !slow->goaway, "a client resetting %d streams a second was "
           "disconnected (eof %d, GOAWAY %d)", 1000 / SLOW_RESET_INTERVAL_MS, slow->eof,
           slow->goaway);
    counters_fetch(server.port, &middle);
    EXPECT(middle.closed_for_resets == before.closed_for_resets, "corr_connections_closed_for_"
           "resets_total grew by %lld for the slow resetter, expected 0",
           middle.closed_for_resets - before.closed_for_resets);
    h2_free(slow);

    /* The attacker opens and resets streams as fast as it can, beside well-behaved pairs. */
    attacker = h2_connect(&loop, server.port);
    REQUIRE(attacker != NULL, "connect failed");
    pairs_init(&pairs, &loop, server.port, "beside-rapid-reset", RAPID_PAIRS, 10);
    start = now_s();
    while (streams < RAPID_MAX_STREAMS && now_s() - start < RAPID_MAX_S && !attacker->eof) {
        char path[64];
        struct h2_stream *stream;

        snprintf(path, sizeof(path), "/start/rapid-%ld?timeout=30000", streams++);
        stream = h2_submit(attacker, "GET", path, NULL, 0, NULL);
        h2_reset(stream);
        h2_stream_free(stream);
        if (streams % 20 == 0) {
            loop_run(&loop, 0);
            pairs_step(&pairs);
        }
    }
    if (attacker->eof)
        closed_after = now_s() - start;
    pairs_run(&pairs, 20000);
    printf("    attacker: %ld streams opened and reset, connection %s after %.3f s; %ld pairs "
           "passed beside it, slowest %.3f s\n", streams, attacker->eof ? "closed" : "open",
           closed_after, pairs.passed, pairs.worst_s);
    EXPECT(attacker->eof, "the rapid-reset connection is still open after %ld streams in "
           "%.1f s", streams, now_s() - start);
    EXPECT(pairs.passed == RAPID_PAIRS, "%ld of %d pairs passed beside the rapid resets",
           pairs.passed, RAPID_PAIRS);
    pairs_dispose(&pairs);
    EXPECT(wait_pending_equals(server.port, 0, 5000, &pending), "pending gauge %lld 5 s after "
           "the attack, expected 0", pending);
    if (counters_fetch(server.port, &after)) {
        EXPECT(after.closed_for_resets - middle.closed_for_resets == 1,
               "corr_connections_closed_for_resets_total grew by %lld, expected 1",
               after.closed_for_resets - middle.closed_for_resets);
        EXPECT(after.started == after.finished_ack + after.finished_gone +
               after.finished_timeout, "corrd started %lld waiters and finished %lld",
               after.started, after.finished_ack + after.finished_gone + after.finished_timeout);
    }
    h2_free(attacker);
    loop_dispose(&loop);
    corrd_stop(&server);
}

static const struct test_case cases[] = {
    {"resets during acks lose nothing", test_resets_during_acks, PROTO_H2C},
    {"rapid reset closes connection", test_rapid_reset, PROTO_H2C},
};

int main(int argc, char **argv)
{
    return fault_main(cases, sizeof(cases) / sizeof(cases[0]), 300, 1800, argc, argv);
}
