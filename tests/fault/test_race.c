/*
 * Races between /start, /ack, client cancels and timeouts.
 *
 *   random race tallies match    many connections start, ack, cancel and time out waiters on a
 *                                small set of ids at random; client tallies must match each
 *                                other and corrd's /metrics counters
 *   offset race one thread       start and ack of one fresh id sent 5 ms apart or less, in
 *   offset race two threads      either order: 202 pairs with a delivery, 404 with a 504
 *   ring overflow keeps one ack  four concurrent acks for one waiter: one 202, and nothing is
 *                                left over for the next waiter of the id
 *
 * Usage: fault_race [--full] [--seed N] CORRD [NAME_FILTER]
 */
#define _GNU_SOURCE
#include "fault.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---- random race tallies match ---- */

#define RACE_IDS 32
#define RACE_ACK_CONNS 8
#define RACE_H2_WAITER_CONNS 4
#define RACE_H2_ACK_CONNS 2
#define RACE_MAX_ACK_BYTES 8192

/* One /start request. */
struct race_gen {
    int id;                /* index of the id, 0..RACE_IDS-1 */
    long timeout_ms;
    bool invalid;          /* sent with timeout=0 on purpose: must get 400 */
    struct call call;
    struct h1_conn *h1;    /* its own connection, over HTTP/1.1 */
    double start_at;
    double end_at;         /* response or cancel time; +1e9 while the outcome is unknown */
    bool cancelled;        /* half-closed, closed or reset by the client */
    bool unknown;          /* closed or reset before a response: the outcome is unseen */
    bool finished;
    int status;            /* status of the whole response, 0 for none */
    unsigned char *body;
    size_t body_len;
    char content_type[128];
};

enum race_ack_kind {
    ACK_VALID,
    ACK_INVALID_ID, /* /ack/bad%zz: must get 400 */
    ACK_TOO_LARGE,  /* one byte over --max-ack-bytes: must get 413 */
};

/* One /ack request; its index is the serial number at the start of its body. */
struct race_ack {
    int id;
    enum race_ack_kind kind;
    unsigned char *body;
    size_t len;
    const char *content_type;
    struct call call;
    struct h1_conn *conn; /* the keep-alive connection it went on, or NULL over HTTP/2 */
    double sent_at;
    double done_at;
    bool finished;
    int status;
    long received_by; /* index of the waiter that got its body, or -1 */
};

struct race {
    enum http_proto proto;
    int port;
    struct rng rng;
    struct loop loop;
    char prefix[32];
    struct race_gen *gens;
    size_t gen_count;
    size_t gen_cap;
    struct race_ack *acks;
    size_t ack_count;
    size_t ack_cap;
    int active_per_id[RACE_IDS];
    struct h1_conn *ack_conns[RACE_ACK_CONNS];
    struct h2_conn *h2_waiters[RACE_H2_WAITER_CONNS];
    struct h2_conn *h2_acks[RACE_H2_ACK_CONNS];
    long cancels_soft;
    long cancels_hard;
};

static void race_start_waiter(struct race *race, int id, bool invalid)
{
    struct race_gen *gen;
    char path[96];

    if (race->gen_count == race->gen_cap) {
        race->gen_cap = race->gen_cap != 0 ? race->gen_cap * 2 : 1024;
        race->gens = realloc(race->gens, race->gen_cap * sizeof(*race->gens));
    }
    gen = &race->gens[race->gen_count++];
    memset(gen, 0, sizeof(*gen));
    gen->id = id;
    gen->invalid = invalid;
    gen->timeout_ms = rng_percent(&race->rng, 30) ? 20 + (long)rng_below(&race->rng, 181)
                                                  : 3000;
    gen->end_at = 1e9;
    if (invalid)
        snprintf(path, sizeof(path), "/start/%s-%d?timeout=0", race->prefix, id);
    else
        snprintf(path, sizeof(path), "/start/%s-%d?timeout=%ld", race->prefix, id,
                 gen->timeout_ms);
    if (race->proto == PROTO_HTTP1) {
        gen->h1 = h1_connect(&race->loop, race->port, 0);
        if (gen->h1 == NULL) {
            race->gen_count--;
            return;
        }
    }
    gen->start_at = now_s();
    call_send(&gen->call, gen->h1,
              race->h2_waiters[rng_below(&race->rng, RACE_H2_WAITER_CONNS)], "GET", path, NULL,
              NULL, 0);
    race->active_per_id[id]++;
}

static void race_send_ack(struct race *race, int id)
{
    static const char *const content_types[] = {NULL, "application/json", "text/x-race"};
    struct h1_conn *conn = NULL;
    struct h2_conn *h2 = NULL;
    struct race_ack *ack;
    char path[96];
    char tag[48];
    int roll = (int)rng_below(&race->rng, 100);

    /* Over HTTP/2 a third of the acks go on HTTP/2 streams; the rest on idle HTTP/1.1 ones. */
    if (race->proto != PROTO_HTTP1 && rng_percent(&race->rng, 33)) {
        h2 = race->h2_acks[rng_below(&race->rng, RACE_H2_ACK_CONNS)];
    } else {
        for (int i = 0; i < RACE_ACK_CONNS && conn == NULL; i++) {
            struct h1_conn *candidate = race->ack_conns[i];

            if (candidate->eof) {
                h1_free(candidate);
                race->ack_conns[i] = h1_connect(&race->loop, race->port, 0);
                candidate = race->ack_conns[i];
            }
            if (candidate != NULL && !candidate->busy)
                conn = candidate;
        }
        if (conn == NULL)
            return;
    }
    if (race->ack_count == race->ack_cap) {
        race->ack_cap = race->ack_cap != 0 ? race->ack_cap * 2 : 1024;
        race->acks = realloc(race->acks, race->ack_cap * sizeof(*race->acks));
    }
    ack = &race->acks[race->ack_count];
    memset(ack, 0, sizeof(*ack));
    ack->id = id;
    ack->received_by = -1;
    if (roll < 3)
        ack->kind = ACK_INVALID_ID;
    else if (roll < 6)
        ack->kind = ACK_TOO_LARGE;
    else
        ack->kind = ACK_VALID;
    ack->len = ack->kind == ACK_TOO_LARGE ? RACE_MAX_ACK_BYTES + 1
                                          : 12 + rng_below(&race->rng, 2048);
    snprintf(tag, sizeof(tag), "ack %zu", race->ack_count);
    ack->body = make_body(&race->rng, tag, ack->len);
    ack->content_type = content_types[rng_below(&race->rng, 3)];
    ack->conn = conn;
    if (ack->kind == ACK_INVALID_ID)
        snprintf(path, sizeof(path), "/ack/%s-%d%%zz", race->prefix, id);
    else
        snprintf(path, sizeof(path), "/ack/%s-%d", race->prefix, id);
    ack->sent_at = now_s();
    call_send(&ack->call, conn, h2, "POST", path, ack->content_type, ack->body, ack->len);
    race->ack_count++;
}

/* Cancels an unfinished waiter: over HTTP/1.1 a half-close (the response is still read) or a
 * close, over HTTP/2 an RST_STREAM. */
static void race_cancel(struct race *race, struct race_gen *gen)
{
    gen->cancelled = true;
    if (gen->h1 != NULL && rng_percent(&race->rng, 70)) {
        h1_shutdown_write(gen->h1);
        race->cancels_soft++;
        return;
    }
    race->cancels_hard++;
    if (gen->h1 != NULL)
        h1_close(gen->h1, false);
    else
        h2_reset(gen->call.h2);
    gen->unknown = true;
    gen->finished = true;
    race->active_per_id[gen->id]--;
    call_release(&gen->call);
    h1_free(gen->h1);
    gen->h1 = NULL;
}

/* Records every waiter and ack whose response is complete. */
static void race_harvest(struct race *race)
{
    for (size_t i = 0; i < race->gen_count; i++) {
        struct race_gen *gen = &race->gens[i];
        const unsigned char *body;

        if (gen->finished || !call_finished(&gen->call))
            continue;
        gen->finished = true;
        gen->status = call_status(&gen->call);
        if (gen->status == 0) {
            gen->unknown = true; /* the connection ended without a response */
        } else {
            gen->end_at = now_s();
            body = call_body(&gen->call, &gen->body_len);
            gen->body = malloc(gen->body_len + 1);
            memcpy(gen->body, body, gen->body_len);
            if (!call_content_type(&gen->call, gen->content_type, sizeof(gen->content_type)))
                gen->content_type[0] = '\0';
        }
        race->active_per_id[gen->id]--;
        call_release(&gen->call);
        h1_free(gen->h1);
        gen->h1 = NULL;
    }
    for (size_t i = 0; i < race->ack_count; i++) {
        struct race_ack *ack = &race->acks[i];

        if (ack->finished || !call_finished(&ack->call))
            continue;
        ack->finished = true;
        ack->done_at = now_s();
        ack->status = call_status(&ack->call);
        if (ack->conn != NULL && (ack->status == 0 || ack->conn->response.close))
            h1_close(ack->conn, false); /* reconnected by race_send_ack */
        call_release(&ack->call);
    }
}

static bool race_all_finished(const struct race *race)
{
    for (size_t i = 0; i < race->gen_count; i++) {
        if (!race->gens[i].finished)
            return false;
    }
    for (size_t i = 0; i < race->ack_count; i++) {
        if (!race->acks[i].finished)
            return false;
    }
    return true;
}

/* Checks one waiter that got 200: its body is the body of one 202 ack for its id, sent while
 * it was pending, and no other waiter got it. Returns the number of bodies matched (0 or 1). */
static long race_check_delivery(struct race *race, size_t gen_index)
{
    struct race_gen *gen = &race->gens[gen_index];
    struct race_ack *ack;
    unsigned long serial;
    char *end;

    if (gen->body_len < 5 || memcmp(gen->body, "ack ", 4) != 0) {
        test_fail(__FILE__, __LINE__, "waiter %zu (id %d) got 200 with a body that no ack sent: "
                  "\"%s\"", gen_index, gen->id, printable(gen->body, gen->body_len));
        return 0;
    }
    serial = strtoul((const char *)gen->body + 4, &end, 10);
    if (serial >= race->ack_count) {
        test_fail(__FILE__, __LINE__, "waiter %zu got the body of ack %lu, but only %zu acks "
                  "were sent", gen_index, serial, race->ack_count);
        return 0;
    }
    ack = &race->acks[serial];
    EXPECT(ack->id == gen->id, "waiter %zu for id %d got the body of ack %lu for id %d",
           gen_index, gen->id, serial, ack->id);
    EXPECT(ack->status == 202, "waiter %zu got the body of ack %lu, whose acker got %d instead "
           "of 202", gen_index, serial, ack->status);
    EXPECT(gen->body_len == ack->len && memcmp(gen->body, ack->body, ack->len) == 0,
           "waiter %zu got %zu bytes that differ from the %zu bytes of ack %lu", gen_index,
           gen->body_len, ack->len, serial);
    EXPECT(ack->received_by < 0, "the body of ack %lu reached waiter %ld and waiter %zu",
           serial, ack->received_by, gen_index);
    EXPECT(ack->sent_at <= gen->end_at && gen->start_at <= ack->done_at,
           "waiter %zu (%.4f..%.4f s) got the body of ack %lu sent outside its life "
           "(%.4f..%.4f s)", gen_index, gen->start_at, gen->end_at, serial, ack->sent_at,
           ack->done_at);
    if (ack->content_type != NULL)
        EXPECT(strcmp(gen->content_type, ack->content_type) == 0, "waiter %zu got Content-Type "
               "\"%s\", ack %lu sent \"%s\"", gen_index, gen->content_type, serial,
               ack->content_type);
    ack->received_by = (long)gen_index;
    return 1;
}

/* A 202 ack whose body no waiter received must overlap a cancelled waiter of its id whose
 * outcome was 499 or unseen. Only then can corrd have lost the body, or sent it in a response
 * that the client no longer read. */
static void race_check_unreceived(struct race *race, size_t ack_index)
{
    struct race_ack *ack = &race->acks[ack_index];

    for (size_t i = 0; i < race->gen_count; i++) {
        struct race_gen *gen = &race->gens[i];

        if (gen->id == ack->id && gen->cancelled && (gen->unknown || gen->status == 499) &&
            ack->sent_at <= gen->end_at && gen->start_at <= ack->done_at)
            return;
    }
    test_fail(__FILE__, __LINE__, "ack %zu for id %d got 202 (sent %.4f s, answered %.4f s), but "
              "no waiter received its body and no cancelled waiter of the id was pending then",
              ack_index, ack->id, ack->sent_at, ack->done_at);
}

static void test_random_race(enum http_proto proto)
{
    static const char *const args[] = {"--threads", "2", "--max-ack-bytes", "8192", NULL};
    long max_ops = fault_size(15000, 150000);
    double run_s = (double)fault_size(20, 200);
    struct race race;
    struct corrd server;
    struct counters before;
    struct counters after;
    long long pending;
    long ack_status[600] = {0};
    long gen_status[600] = {0};
    long unknown = 0;
    long received = 0;
    long waiter_invalid = 0;
    double stop_at;
    long ops = 0;

    if (!corrd_start(&server, args))
        return;
    memset(&race, 0, sizeof(race));
    race.proto = proto;
    race.port = server.port;
    rng_init(&race.rng, proto == PROTO_HTTP1 ? "random race http1" : "random race h2c");
    loop_init(&race.loop);
    snprintf(race.prefix, sizeof(race.prefix), "race%u", (unsigned)(fault_seed % 100000));
    for (int i = 0; i < RACE_ACK_CONNS; i++)
        race.ack_conns[i] = h1_connect(&race.loop, server.port, 0);
    if (proto != PROTO_HTTP1) {
        for (int i = 0; i < RACE_H2_WAITER_CONNS; i++)
            race.h2_waiters[i] = h2_connect(&race.loop, server.port);
        for (int i = 0; i < RACE_H2_ACK_CONNS; i++)
            race.h2_acks[i] = h2_connect(&race.loop, server.port);
    }
    counters_fetch(server.port, &before);

    stop_at = now_s() + run_s;
    while (ops < max_ops && now_s() < stop_at && test_failures() == 0) {
        unsigned roll = (unsigned)rng_below(&race.rng, 100);
        int id = (int)rng_below(&race.rng, RACE_IDS);

        if (roll < 35) {
            /* Mostly one waiter per id at a time; sometimes a second one, which races 409. */
            if (race.active_per_id[id] == 0 || rng_percent(&race.rng, 10))
                race_start_waiter(&race, id, rng_percent(&race.rng, 2));
        } else if (roll < 75) {
            /* A fifth of the acks come in bursts of 2 or 3 for one id, which races 429. */
            int burst = rng_percent(&race.rng, 20) ? 2 + (int)rng_below(&race.rng, 2) : 1;

            for (int i = 0; i < burst; i++)
                race_send_ack(&race, id);
        } else if (roll < 85 && race.gen_count > 0) {
            size_t pick = race.gen_count - 1 - rng_below(&race.rng, race.gen_count < 64
                                                                     ? race.gen_count : 64);
            struct race_gen *gen = &race.gens[pick];

            if (!gen->finished && !gen->cancelled)
                race_cancel(&race, gen);
        }
        ops++;
        loop_run(&race.loop, (long)rng_below(&race.rng, 1500));
        race_harvest(&race);
    }

    /* Ack or cancel every waiter still pending, then wait for every response. */
    for (size_t i = 0; i < race.gen_count; i++) {
        struct race_gen *gen = &race.gens[i];

        if (gen->finished || gen->cancelled)
            continue;
        if (rng_percent(&race.rng, 50))
            race_cancel(&race, gen);
    }
    for (int id = 0; id < RACE_IDS; id++) {
        if (race.active_per_id[id] > 0)
            race_send_ack(&race, id);
        loop_run(&race.loop, 100);
        race_harvest(&race);
    }
    for (double deadline = now_s() + 15.0; !race_all_finished(&race) && now_s() < deadline;) {
        loop_run(&race.loop, 10000);
        race_harvest(&race);
    }
    EXPECT(race_all_finished(&race), "some waiters or acks had no response 15 s after the run");
    EXPECT(wait_pending_equals(server.port, 0, 5000, &pending), "pending gauge is %lld 5 s "
           "after the last response, expected 0", pending);

    /* Per-ack outcome. */
    for (size_t i = 0; i < race.ack_count; i++) {
        struct race_ack *ack = &race.acks[i];
        int status = ack->status;

        if (status >= 0 && status < 600)
            ack_status[status]++;
        if (ack->kind == ACK_INVALID_ID)
            EXPECT(status == 400, "ack %zu with an invalid id got %d, expected 400", i, status);
        else if (ack->kind == ACK_TOO_LARGE)
            EXPECT(status == 413, "ack %zu of %zu bytes got %d, expected 413", i, ack->len,
                   status);
        else
            EXPECT(status == 202 || status == 404 || status == 429, "ack %zu for id %d got %d, "
                   "expected 202, 404 or 429", i, ack->id, status);
    }
    /* Per-waiter outcome and delivered bodies. */
    for (size_t i = 0; i < race.gen_count; i++) {
        struct race_gen *gen = &race.gens[i];

        if (gen->unknown) {
            unknown++;
            EXPECT(gen->cancelled, "waiter %zu for id %d: connection ended without a response "
                   "although the client never cancelled it", i, gen->id);
            continue;
        }
        gen_status[gen->status]++;
        if (gen->invalid) {
            waiter_invalid++;
            EXPECT(gen->status == 400, "waiter %zu with timeout=0 got %d, expected 400", i,
                   gen->status);
        } else if (gen->status == 200) {
            received += race_check_delivery(&race, i);
        } else if (gen->status == 504) {
            double elapsed_ms = (gen->end_at - gen->start_at) * 1000.0;

            EXPECT(elapsed_ms >= (double)gen->timeout_ms - 1.0, "waiter %zu got 504 after "
                   "%.1f ms, before its timeout of %ld ms", i, elapsed_ms, gen->timeout_ms);
        } else if (gen->status == 499) {
            EXPECT(gen->cancelled, "waiter %zu got 499 although the client did not close", i);
        } else {
            EXPECT(gen->status == 409, "waiter %zu for id %d got %d, expected 200, 504, 409 or "
                   "499 after a half-close", i, gen->id, gen->status);
        }
    }
    for (size_t i = 0; i < race.ack_count; i++) {
        struct race_ack *ack = &race.acks[i];

        if (ack->status == 202 && ack->received_by < 0)
            race_check_unreceived(&race, i);
        if (ack->status == 429) {
            bool earlier_202 = false;

            for (size_t j = 0; j < race.ack_count && !earlier_202; j++)
                earlier_202 = j != i && race.acks[j].id == ack->id &&
                              race.acks[j].status == 202 &&
                              race.acks[j].sent_at <= ack->done_at;
            EXPECT(earlier_202, "ack %zu for id %d got 429, but no ack of that id had got 202 "
                   "before its answer", i, ack->id);
        }
    }

    printf("    %ld operations, %zu waiters (200: %ld, 504: %ld, 409: %ld, 499: %ld, 400: %ld, "
           "unseen after a cancel: %ld), %zu acks (202: %ld, 404: %ld, 429: %ld, 400: %ld, "
           "413: %ld), cancels: %ld half-close, %ld close or reset\n", ops, race.gen_count,
           gen_status[200], gen_status[504], gen_status[409], gen_status[499], gen_status[400],
           unknown, race.ack_count, ack_status[202], ack_status[404], ack_status[429],
           ack_status[400], ack_status[413], race.cancels_soft, race.cancels_hard);

    if (counters_fetch(server.port, &after)) {
        long long started = after.started - before.started;
        long long answered = after.finished_ack - before.finished_ack;
        long long timed_out = after.finished_timeout - before.finished_timeout;
        long long gone = after.finished_gone - before.finished_gone;
        long long conflict = after.rejected_conflict - before.rejected_conflict;
        long long lost = after.acks_lost - before.acks_lost;
        long long seen = gen_status[200] + gen_status[504] + gen_status[499];

        printf("    corrd: started %lld, answered %lld, timed out %lld, client gone %lld, "
               "conflict %lld, acks lost %lld\n", started, answered, timed_out, gone, conflict,
               lost);
        EXPECT(after.acks_delivered - before.acks_delivered == ack_status[202],
               "corr_acks_total{outcome=\"delivered\"} grew by %lld, client counted %ld 202s",
               after.acks_delivered - before.acks_delivered, ack_status[202]);
        EXPECT(after.acks_no_waiter - before.acks_no_waiter == ack_status[404],
               "corr_acks_total{outcome=\"no_waiter\"} grew by %lld, client counted %ld 404s",
               after.acks_no_waiter - before.acks_no_waiter, ack_status[404]);
        EXPECT(after.acks_full - before.acks_full == ack_status[429],
               "corr_acks_total{outcome=\"ring_full\"} grew by %lld, client counted %ld 429s",
               after.acks_full - before.acks_full, ack_status[429]);
        EXPECT(after.acks_invalid - before.acks_invalid == ack_status[400],
               "corr_acks_rejected_total{reason=\"invalid\"} grew by %lld, client counted %ld "
               "400s", after.acks_invalid - before.acks_invalid, ack_status[400]);
        EXPECT(after.acks_too_large - before.acks_too_large == ack_status[413],
               "corr_acks_rejected_total{reason=\"too_large\"} grew by %lld, client counted %ld "
               "413s", after.acks_too_large - before.acks_too_large, ack_status[413]);
        EXPECT(after.rejected_invalid - before.rejected_invalid == waiter_invalid,
               "corr_waiters_rejected_total{reason=\"invalid\"} grew by %lld, client sent %ld "
               "invalid starts", after.rejected_invalid - before.rejected_invalid,
               waiter_invalid);
        /* Every waiter corrd started ended in one of the seen outcomes or an unseen one. */
        EXPECT(answered >= gen_status[200], "corrd answered %lld waiters with an ack, clients "
               "received %ld", answered, gen_status[200]);
        EXPECT(timed_out >= gen_status[504], "corrd timed out %lld waiters, clients received "
               "%ld 504s", timed_out, gen_status[504]);
        EXPECT(gone >= gen_status[499], "corrd counted %lld waiters gone, clients received %ld "
               "499s", gone, gen_status[499]);
        EXPECT(conflict >= gen_status[409], "corrd rejected %lld starts with 409, clients "
               "received %ld", conflict, gen_status[409]);
        EXPECT(answered + timed_out + gone == started, "corrd finished %lld waiters "
               "(%lld + %lld + %lld) but started %lld", answered + timed_out + gone, answered,
               timed_out, gone, started);
        EXPECT(started - seen + conflict - gen_status[409] <= unknown, "corrd started %lld "
               "waiters and rejected %lld with 409; clients saw %lld outcomes and %ld 409s, so "
               "%lld unseen waiters remain, more than the %ld cancels whose outcome is unseen",
               started, conflict, seen, gen_status[409],
               started - seen + conflict - gen_status[409], unknown);
        /* A 202 body went to a waiter that received it, or to a cancelled waiter. It was lost
         * when the cancel came first, or sent in a response that the client no longer read. */
        EXPECT(ack_status[202] == received + lost + (answered - gen_status[200]),
               "%ld acks got 202, but clients received %ld bodies, corr_acks_lost_total grew by "
               "%lld and corrd answered %lld waiters whose answer no client saw",
               ack_status[202], received, lost, answered - gen_status[200]);
        EXPECT(after.pending == 0, "pending gauge is %lld at the end, expected 0",
               after.pending);
    }

    for (size_t i = 0; i < race.gen_count; i++) {
        call_release(&race.gens[i].call);
        h1_free(race.gens[i].h1);
        free(race.gens[i].body);
    }
    for (size_t i = 0; i < race.ack_count; i++) {
        call_release(&race.acks[i].call);
        free(race.acks[i].body);
    }
    free(race.gens);
    free(race.acks);
    for (int i = 0; i < RACE_ACK_CONNS; i++)
        h1_free(race.ack_conns[i]);
    for (int i = 0; i < RACE_H2_WAITER_CONNS; i++)
        h2_free(race.h2_waiters[i]);
    for (int i = 0; i < RACE_H2_ACK_CONNS; i++)
        h2_free(race.h2_acks[i]);
    loop_dispose(&race.loop);
    corrd_stop(&server);
}

/* ---- offset race one thread, offset race two threads ---- */

#define OFFSET_SLOTS 64
#define OFFSET_TIMEOUT_MS 200
#define OFFSET_MAX_US 5000

struct offset_slot {
    bool active;
    long pair;
    char id[48];
    unsigned char *body;
    size_t len;
    long offset_us;       /* ack time minus start time */
    double start_at;      /* when to send each request */
    double ack_at;
    bool start_sent;
    bool ack_sent;
    struct call waiter;
    struct call ack;
    struct h1_conn *waiter_h1; /* the slot's keep-alive connections over HTTP/1.1 */
    struct h1_conn *ack_h1;
};

static struct h1_conn *offset_conn(struct loop *loop, int port, struct h1_conn **conn)
{
    if (*conn != NULL && ((*conn)->eof || (*conn)->response.close)) {
        h1_free(*conn);
        *conn = NULL;
    }
    if (*conn == NULL)
        *conn = h1_connect(loop, port, 0);
    return *conn;
}

static void run_offset_race(enum http_proto proto, const char *threads)
{
    const char *args[] = {"--threads", threads, NULL};
    long total = fault_size(1000, 10000);
    struct offset_slot slots[OFFSET_SLOTS];
    struct corrd server;
    struct loop loop;
    struct h2_conn *h2_waiters = NULL;
    struct h2_conn *h2_acks = NULL;
    struct counters before;
    struct counters after;
    struct rng rng;
    long launched = 0;
    long completed = 0;
    long delivered = 0;
    long early = 0;
    long delivered_ack_first = 0;
    double deadline;

    if (!corrd_start(&server, args))
        return;
    rng_init(&rng, threads[0] == '1' ? "offset race one thread" : "offset race two threads");
    loop_init(&loop);
    memset(slots, 0, sizeof(slots));
    if (proto != PROTO_HTTP1) {
        h2_waiters = h2_connect(&loop, server.port);
        h2_acks = h2_connect(&loop, server.port);
    }
    counters_fetch(server.port, &before);

    deadline = now_s() + 20.0 + (double)total * 0.01;
    while (completed < total && now_s() < deadline && test_failures() < 10) {
        double now = now_s();
        double next = now + 0.005;

        for (int i = 0; i < OFFSET_SLOTS && launched < total; i++) {
            struct offset_slot *slot = &slots[i];
            double base = now + 0.0005;
            char tag[64];

            if (slot->active)
                continue;
            slot->active = true;
            slot->pair = launched++;
            snprintf(slot->id, sizeof(slot->id), "offset-%s-%ld", threads, slot->pair);
            slot->offset_us = (long)rng_below(&rng, 2 * OFFSET_MAX_US + 1) - OFFSET_MAX_US;
            slot->start_at = base + (slot->offset_us < 0 ? -slot->offset_us / 1e6 : 0);
            slot->ack_at = base + (slot->offset_us > 0 ? slot->offset_us / 1e6 : 0);
            slot->start_sent = false;
            slot->ack_sent = false;
            snprintf(tag, sizeof(tag), "pair %ld", slot->pair);
            slot->len = 8 + rng_below(&rng, 256);
            slot->body = make_body(&rng, tag, slot->len);
        }
        now = now_s();
        for (int i = 0; i < OFFSET_SLOTS; i++) {
            struct offset_slot *slot = &slots[i];

            if (!slot->active)
                continue;
            if (!slot->start_sent && slot->start_at <= now) {
                char path[96];
                struct h1_conn *conn = NULL;

                snprintf(path, sizeof(path), "/start/%s?timeout=%d", slot->id,
                         OFFSET_TIMEOUT_MS);
                if (proto == PROTO_HTTP1)
                    conn = offset_conn(&loop, server.port, &slot->waiter_h1);
                call_send(&slot->waiter, conn, h2_waiters, "GET", path, NULL, NULL, 0);
                slot->start_sent = true;
            }
            if (!slot->ack_sent && slot->ack_at <= now) {
                char path[96];
                struct h1_conn *conn = NULL;

                snprintf(path, sizeof(path), "/ack/%s", slot->id);
                if (proto == PROTO_HTTP1)
                    conn = offset_conn(&loop, server.port, &slot->ack_h1);
                call_send(&slot->ack, conn, h2_acks, "POST", path, NULL, slot->body, slot->len);
                slot->ack_sent = true;
            }
            if (!slot->start_sent && slot->start_at < next)
                next = slot->start_at;
            if (!slot->ack_sent && slot->ack_at < next)
                next = slot->ack_at;
        }
        now = now_s();
        loop_run(&loop, next > now ? (long)((next - now) * 1e6) : 0);

        for (int i = 0; i < OFFSET_SLOTS; i++) {
            struct offset_slot *slot = &slots[i];
            int ack_status;
            int waiter_status;

            if (!slot->active || !slot->start_sent || !slot->ack_sent ||
                !call_finished(&slot->waiter) || !call_finished(&slot->ack))
                continue;
            ack_status = call_status(&slot->ack);
            waiter_status = call_status(&slot->waiter);
            if (ack_status == 202 && waiter_status == 200) {
                size_t len;
                const unsigned char *body = call_body(&slot->waiter, &len);

                EXPECT(len == slot->len && memcmp(body, slot->body, len) == 0,
                       "id %s (ack %+ld us after start): ack got 202 but the waiter's body "
                       "(%zu bytes) differs from the ack's (%zu bytes)", slot->id,
                       slot->offset_us, len, slot->len);
                delivered++;
                if (slot->offset_us < 0)
                    delivered_ack_first++;
            } else if (ack_status == 404 && waiter_status == 504) {
                early++;
            } else {
                test_fail(__FILE__, __LINE__, "id %s (ack sent %+ld us after start): ack got %d "
                          "and waiter got %d; expected 202 with 200, or 404 with 504", slot->id,
                          slot->offset_us, ack_status, waiter_status);
            }
            call_release(&slot->waiter);
            call_release(&slot->ack);
            free(slot->body);
            slot->body = NULL;
            slot->active = false;
            completed++;
        }
    }
    EXPECT(completed == total, "%ld of %ld pairs completed before the deadline", completed,
           total);
    printf("    %ld pairs: %ld delivered (%ld with the ack sent first), %ld acks early (404, "
           "then 504)\n", completed, delivered, delivered_ack_first, early);
    if (counters_fetch(server.port, &after)) {
        EXPECT(after.acks_delivered - before.acks_delivered == delivered,
               "corr_acks_total{outcome=\"delivered\"} grew by %lld, client counted %ld",
               after.acks_delivered - before.acks_delivered, delivered);
        EXPECT(after.acks_no_waiter - before.acks_no_waiter == early,
               "corr_acks_total{outcome=\"no_waiter\"} grew by %lld, client counted %ld",
               after.acks_no_waiter - before.acks_no_waiter, early);
        EXPECT(after.finished_ack - before.finished_ack == delivered,
               "corr_waiters_finished_total{outcome=\"ack\"} grew by %lld, client counted %ld",
               after.finished_ack - before.finished_ack, delivered);
        EXPECT(after.finished_timeout - before.finished_timeout == early,
               "corr_waiters_finished_total{outcome=\"timeout\"} grew by %lld, client counted "
               "%ld", after.finished_timeout - before.finished_timeout, early);
        EXPECT(after.acks_lost == before.acks_lost, "corr_acks_lost_total grew by %lld",
               after.acks_lost - before.acks_lost);
        EXPECT(after.pending == 0, "pending gauge is %lld, expected 0", after.pending);
    }
    for (int i = 0; i < OFFSET_SLOTS; i++) {
        call_release(&slots[i].waiter);
        call_release(&slots[i].ack);
        free(slots[i].body);
        h1_free(slots[i].waiter_h1);
        h1_free(slots[i].ack_h1);
    }
    h2_free(h2_waiters);
    h2_free(h2_acks);
    loop_dispose(&loop);
    corrd_stop(&server);
}

static void test_offset_race_one_thread(enum http_proto proto)
{
    run_offset_race(proto, "1");
}

static void test_offset_race_two_threads(enum http_proto proto)
{
    run_offset_race(proto, "2");
}

/* ---- ring overflow keeps one ack ---- */

#define OVERFLOW_ACKS 4

/* Starts a waiter for id over proto and waits until corrd has registered it (pending gauge 1). */
static bool start_held_waiter(struct loop *loop, int port, enum http_proto proto,
                              struct h2_conn *h2, const char *id, struct call *waiter,
                              struct h1_conn **h1_out)
{
    char *path = format_string("/start/%s?timeout=10000", id);
    long long pending;

    *h1_out = proto == PROTO_HTTP1 ? h1_connect(loop, port, 0) : NULL;
    if (proto == PROTO_HTTP1 && *h1_out == NULL) {
        free(path);
        return false;
    }
    call_send(waiter, *h1_out, h2, "GET", path, NULL, NULL, 0);
    free(path);
    loop_run(loop, 1000);
    if (!wait_pending_equals(port, 1, 5000, &pending)) {
        test_fail(__FILE__, __LINE__, "waiter for id %s: expected pending gauge 1 within 5 s, "
                  "got %lld", id, pending);
        return false;
    }
    return true;
}

static void test_ring_overflow(enum http_proto proto)
{
    static const char *const args[] = {"--threads", "2", NULL};
    long rounds = fault_size(100, 1000);
    struct corrd server;
    struct loop loop;
    struct h1_conn *ackers[OVERFLOW_ACKS] = {NULL};
    struct h2_conn *h2_ackers[OVERFLOW_ACKS] = {NULL};
    struct h2_conn *h2_waiters = NULL;
    struct counters before;
    struct counters after;
    struct rng rng;
    long count_202 = 0;
    long count_404 = 0;
    long count_429 = 0;

    if (!corrd_start(&server, args))
        return;
    rng_init(&rng, "ring overflow keeps one ack");
    loop_init(&loop);
    for (int i = 0; i < OVERFLOW_ACKS; i++) {
        if (proto == PROTO_HTTP1)
            ackers[i] = h1_connect(&loop, server.port, 0);
        else
            h2_ackers[i] = h2_connect(&loop, server.port);
    }
    if (proto != PROTO_HTTP1)
        h2_waiters = h2_connect(&loop, server.port);
    counters_fetch(server.port, &before);

    for (long round = 0; round < rounds && test_failures() == 0; round++) {
        char *id = format_string("ring-%ld", round);
        char *ack_path = format_string("/ack/%s", id);
        unsigned char *bodies[OVERFLOW_ACKS];
        size_t lens[OVERFLOW_ACKS];
        struct call acks[OVERFLOW_ACKS];
        struct call waiter;
        struct h1_conn *waiter_h1 = NULL;
        int delivered = -1;
        int count = 0;
        double deadline;

        if (!start_held_waiter(&loop, server.port, proto, h2_waiters, id, &waiter, &waiter_h1)) {
            free(id);
            free(ack_path);
            break;
        }
        /* Queue all four acks before running the loop, so that they reach corrd together. */
        for (int i = 0; i < OVERFLOW_ACKS; i++) {
            char tag[64];

            snprintf(tag, sizeof(tag), "round %ld ack %d", round, i);
            lens[i] = 16 + rng_below(&rng, 512);
            bodies[i] = make_body(&rng, tag, lens[i]);
            call_send(&acks[i], ackers[i], h2_ackers[i], "POST", ack_path, NULL, bodies[i],
                      lens[i]);
        }
        deadline = now_s() + 10.0;
        for (;;) {
            bool all = call_finished(&waiter);

            for (int i = 0; i < OVERFLOW_ACKS; i++)
                all = all && call_finished(&acks[i]);
            if (all || now_s() >= deadline)
                break;
            loop_run(&loop, 10000);
        }

        for (int i = 0; i < OVERFLOW_ACKS; i++) {
            int status = call_status(&acks[i]);

            if (status == 202) {
                count++;
                delivered = i;
                count_202++;
            } else if (status == 404) {
                count_404++;
            } else if (status == 429) {
                count_429++;
            } else {
                test_fail(__FILE__, __LINE__, "round %ld: ack %d for id %s: expected 202, 404 "
                          "or 429, got %d", round, i, id, status);
            }
        }
        EXPECT(count == 1, "round %ld: %d of %d concurrent acks for one waiter got 202, "
               "expected exactly 1", round, count, OVERFLOW_ACKS);
        EXPECT(call_status(&waiter) == 200, "round %ld: waiter for id %s got status %d, "
               "expected 200", round, id, call_status(&waiter));
        if (delivered >= 0 && call_status(&waiter) == 200) {
            size_t len;
            const unsigned char *body = call_body(&waiter, &len);

            EXPECT(len == lens[delivered] && memcmp(body, bodies[delivered], len) == 0,
                   "round %ld: the waiter's body (%zu bytes, \"%s\") is not the body of the "
                   "ack that got 202 (ack %d, %zu bytes)", round, len, printable(body, len),
                   delivered, lens[delivered]);
        }
        call_release(&waiter);
        h1_free(waiter_h1);
        for (int i = 0; i < OVERFLOW_ACKS; i++) {
            call_release(&acks[i]);
            free(bodies[i]);
        }

        /* A new waiter for the same id gets its own ack, and nothing left from the race. */
        if (start_held_waiter(&loop, server.port, proto, h2_waiters, id, &waiter, &waiter_h1)) {
            char own[64];
            struct call ack;

            snprintf(own, sizeof(own), "own ack of round %ld", round);
            call_send(&ack, ackers[0], h2_ackers[0], "POST", ack_path, NULL, own, strlen(own));
            deadline = now_s() + 10.0;
            while ((!call_finished(&ack) || !call_finished(&waiter)) && now_s() < deadline)
                loop_run(&loop, 10000);
            EXPECT(call_status(&ack) == 202, "round %ld: ack for the second waiter of id %s "
                   "got %d, expected 202", round, id, call_status(&ack));
            if (call_status(&ack) == 202)
                count_202++;
            EXPECT(call_status(&waiter) == 200, "round %ld: second waiter got %d, expected 200",
                   round, call_status(&waiter));
            if (call_status(&waiter) == 200) {
                size_t len;
                const unsigned char *body = call_body(&waiter, &len);

                EXPECT(len == strlen(own) && memcmp(body, own, len) == 0,
                       "round %ld: second waiter expected its own body \"%s\", got \"%s\"",
                       round, own, printable(body, len));
            }
            call_release(&ack);
            call_release(&waiter);
            h1_free(waiter_h1);
        }
        free(id);
        free(ack_path);
    }

    printf("    %ld rounds: %ld acks got 202, %ld got 404, %ld got 429\n", rounds, count_202,
           count_404, count_429);
    if (counters_fetch(server.port, &after)) {
        EXPECT(after.acks_delivered - before.acks_delivered == count_202,
               "corr_acks_total{outcome=\"delivered\"} grew by %lld, client counted %ld 202s",
               after.acks_delivered - before.acks_delivered, count_202);
        EXPECT(after.acks_no_waiter - before.acks_no_waiter == count_404,
               "corr_acks_total{outcome=\"no_waiter\"} grew by %lld, client counted %ld 404s",
               after.acks_no_waiter - before.acks_no_waiter, count_404);
        EXPECT(after.acks_full - before.acks_full == count_429,
               "corr_acks_total{outcome=\"ring_full\"} grew by %lld, client counted %ld 429s",
               after.acks_full - before.acks_full, count_429);
        EXPECT(after.acks_lost == before.acks_lost, "corr_acks_lost_total grew by %lld, "
               "expected 0", after.acks_lost - before.acks_lost);
        EXPECT(after.pending == 0, "pending gauge is %lld after the last round, expected 0",
               after.pending);
    }
    for (int i = 0; i < OVERFLOW_ACKS; i++) {
        h1_free(ackers[i]);
        h2_free(h2_ackers[i]);
    }
    h2_free(h2_waiters);
    loop_dispose(&loop);
    corrd_stop(&server);
}

static const struct test_case cases[] = {
    {"random race tallies match", test_random_race, PROTO_HTTP1 | PROTO_H2C},
    {"offset race one thread", test_offset_race_one_thread, PROTO_HTTP1 | PROTO_H2C},
    {"offset race two threads", test_offset_race_two_threads, PROTO_HTTP1 | PROTO_H2C},
    {"ring overflow keeps one ack", test_ring_overflow, PROTO_HTTP1 | PROTO_H2C},
};

int main(int argc, char **argv)
{
    return fault_main(cases, sizeof(cases) / sizeof(cases[0]), 300, 1800, argc, argv);
}
