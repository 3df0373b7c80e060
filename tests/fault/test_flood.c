/*
 * Floods of acks that match nothing.
 *
 *   ack flood leaves no trace   acks with 1 KiB bodies for ids that no waiter has, over 64
 *                               keep-alive connections (20,000 in CI, 200,000 with --full): all
 *                               get 404, corrd's RSS stays within a few MB of the baseline, and
 *                               start/ack pairs run meanwhile each complete within 1 s
 *
 * Usage: fault_flood [--full] [--seed N] CORRD [NAME_FILTER]
 */
#define _GNU_SOURCE
#include "fault.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FLOOD_CONNS 64
#define FLOOD_BODY 1024
#define FLOOD_WARMUP 5000
/* RSS margin over the baseline taken after the warm-up acks on the same connections. */
#define FLOOD_RSS_MARGIN_KIB (4 * 1024)
#define FLOOD_PAIRS 20
/* A generous bound for a loaded 2-core machine; measured figures are printed. */
#define FLOOD_PAIR_MAX_S 1.0

struct flood {
    struct loop loop;
    struct h1_conn *h1[FLOOD_CONNS];
    struct h2_conn *h2[FLOOD_CONNS];
    struct call calls[FLOOD_CONNS];
    bool busy[FLOOD_CONNS];
    unsigned char body[FLOOD_BODY];
    long sent;
    long answered;
    long count_404;
};

/* Sends acks until `total` more have their response, and runs pairs (unless NULL) in the same
 * loop. */
static bool flood_acks(struct flood *flood, long total, struct pairs *pairs, long timeout_ms)
{
    double deadline = now_s() + (double)timeout_ms / 1000.0;
    long target = flood->answered + total;
    long to_send = flood->sent + total;
    bool pairs_done = pairs == NULL;

    while ((flood->answered < target || !pairs_done) && now_s() < deadline) {
        for (int c = 0; c < FLOOD_CONNS; c++) {
            char path[64];

            if (flood->busy[c] && call_finished(&flood->calls[c])) {
                int status = call_status(&flood->calls[c]);

                if (status == 404)
                    flood->count_404++;
                else
                    test_fail(__FILE__, __LINE__, "flood ack %ld got status %d, expected 404",
                              flood->answered, status);
                call_release(&flood->calls[c]);
                flood->busy[c] = false;
                flood->answered++;
                if (status != 404)
                    return false;
            }
            if (!flood->busy[c] && flood->sent < to_send) {
                snprintf(path, sizeof(path), "/ack/flood-%ld", flood->sent++);
                call_send(&flood->calls[c], flood->h1[c], flood->h2[c], "POST", path, NULL,
                          flood->body, FLOOD_BODY);
                flood->busy[c] = true;
            }
        }
        loop_run(&flood->loop, 1000);
        if (!pairs_done)
            pairs_done = pairs_step(pairs);
    }
    return flood->answered == target && pairs_done;
}

static void test_ack_flood(enum http_proto proto)
{
    long total = fault_size(20000, 200000);
    struct flood *flood = calloc(1, sizeof(*flood));
    struct corrd server;
    struct counters before;
    struct counters after;
    struct pairs pairs;
    struct rng rng;
    long base_rss;
    long rss;
    double start;
    double elapsed;

    if (!corrd_start(&server, NULL)) {
        free(flood);
        return;
    }
    rng_init(&rng, "ack flood leaves no trace");
    loop_init(&flood->loop);
    for (int i = 0; i < FLOOD_BODY; i++)
        flood->body[i] = (unsigned char)rng_next(&rng);
    for (int c = 0; c < FLOOD_CONNS; c++) {
        if (proto == PROTO_HTTP1)
            flood->h1[c] = h1_connect(&flood->loop, server.port, 0);
        else
            flood->h2[c] = h2_connect(&flood->loop, server.port);
        if (flood->h1[c] == NULL && flood->h2[c] == NULL)
            goto out;
    }
    counters_fetch(server.port, &before);

    /* Warm-up on the same connections, so that the baseline has the allocator's steady state. */
    REQUIRE(flood_acks(flood, FLOOD_WARMUP, NULL, 60000), "warm-up acks did not finish");
    sleep_ms(200);
    base_rss = proc_rss_kib(server.pid);

    /* The flood, with start/ack pairs one after another through it. */
    pairs_init(&pairs, &flood->loop, server.port, "through-flood", FLOOD_PAIRS, 1);
    start = now_s();
    EXPECT(flood_acks(flood, total, &pairs, 600000), "the flood did not finish: %ld of %ld "
           "acks answered, %ld of %d pairs finished", flood->answered - FLOOD_WARMUP, total,
           pairs.passed + pairs.failed, FLOOD_PAIRS);
    elapsed = now_s() - start;
    sleep_ms(200);
    rss = proc_rss_kib(server.pid);
    printf("    %ld acks in %.2f s (%.0f a second), all 404: %s; VmRSS %ld KiB after %d warm-up "
           "acks, %ld KiB after the flood; %ld pairs, slowest %.4f s, mean %.4f s\n", total,
           elapsed, (double)total / elapsed, flood->count_404 == flood->answered ? "yes" : "no",
           base_rss, FLOOD_WARMUP, rss, pairs.passed, pairs.worst_s,
           pairs.passed > 0 ? pairs.sum_s / (double)pairs.passed : 0.0);
    EXPECT(flood->count_404 == FLOOD_WARMUP + total, "%ld of %ld acks got 404",
           flood->count_404, FLOOD_WARMUP + total);
    if (proc_uses_asan(server.pid))
        printf("    VmRSS not checked: corrd runs under AddressSanitizer\n");
    else
        EXPECT(rss <= base_rss + FLOOD_RSS_MARGIN_KIB, "corrd VmRSS %ld KiB after the flood, "
               "baseline %ld KiB + margin %d KiB", rss, base_rss, FLOOD_RSS_MARGIN_KIB);
    EXPECT(pairs.passed == FLOOD_PAIRS, "%ld of %d pairs passed during the flood",
           pairs.passed, FLOOD_PAIRS);
    EXPECT(pairs.worst_s < FLOOD_PAIR_MAX_S, "slowest pair during the flood took %.3f s, limit "
           "%.1f s", pairs.worst_s, FLOOD_PAIR_MAX_S);
    pairs_dispose(&pairs);
    if (counters_fetch(server.port, &after)) {
        EXPECT(after.acks_no_waiter - before.acks_no_waiter == flood->count_404 + pairs.early_404,
               "corr_acks_total{outcome=\"no_waiter\"} grew by %lld, clients counted %ld 404s "
               "in the flood and %ld early pair acks", after.acks_no_waiter - before.acks_no_waiter,
               flood->count_404, pairs.early_404);
        EXPECT(after.pending == 0, "pending gauge is %lld, expected 0", after.pending);
    }
out:
    for (int c = 0; c < FLOOD_CONNS; c++) {
        call_release(&flood->calls[c]);
        h1_free(flood->h1[c]);
        h2_free(flood->h2[c]);
    }
    loop_dispose(&flood->loop);
    free(flood);
    corrd_stop(&server);
}

static const struct test_case cases[] = {
    {"ack flood leaves no trace", test_ack_flood, PROTO_HTTP1 | PROTO_H2C},
};

int main(int argc, char **argv)
{
    return fault_main(cases, sizeof(cases) / sizeof(cases[0]), 300, 1200, argc, argv);
}
