/*
 * corrd under concurrent requests, driven by curl_multi with one connection per request (see
 * create_easy in harness.c for the libcurl HTTP/2 reuse bug). Every loop has a deadline.
 */
#include "harness.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* At most this many per-transfer failures are printed; the rest are counted. */
#define MAX_REPORTED 5

struct waiter_set {
    size_t count;
    struct transfer *waiters;
    struct transfer *acks;
    unsigned char **payloads;
    size_t *payload_lens;
    char **paths; /* waiter paths, then ack paths */
    char **content_types;
};

static struct waiter_set *waiter_set_new(const char *prefix, size_t count, enum http_proto proto,
                                         long timeout_ms)
{
    struct waiter_set *set = calloc(1, sizeof(*set));

    set->count = count;
    set->waiters = calloc(count, sizeof(*set->waiters));
    set->acks = calloc(count, sizeof(*set->acks));
    set->payloads = calloc(count, sizeof(*set->payloads));
    set->payload_lens = calloc(count, sizeof(*set->payload_lens));
    set->paths = calloc(2 * count, sizeof(*set->paths));
    set->content_types = calloc(count, sizeof(*set->content_types));
    for (size_t i = 0; i < count; i++) {
        size_t len = 64 + i % 200;
        char label[32];
        int label_len = snprintf(label, sizeof(label), "payload %zu ", i);

        set->payloads[i] = malloc(len);
        fill_pattern(set->payloads[i], len, (unsigned)i);
        /* Start each payload with its index so a mix-up is visible in failure output. */
        memcpy(set->payloads[i], label, (size_t)label_len);
        set->payload_lens[i] = len;
        set->paths[i] = format_string("/start/%s-%zu?timeout=%ld", prefix, i, timeout_ms);
        set->paths[count + i] = format_string("/ack/%s-%zu", prefix, i);
        set->content_types[i] = format_string("application/x-waiter-%zu", i);

        set->waiters[i].request = (struct http_request){
            .method = "GET", .path = set->paths[i], .proto = proto,
            .timeout_ms = timeout_ms + 10000,
        };
        set->acks[i].request = (struct http_request){
            .method = "POST", .path = set->paths[count + i], .body = set->payloads[i],
            .body_len = len, .content_type = set->content_types[i], .proto = proto,
        };
    }
    return set;
}

static void waiter_set_free(struct waiter_set *set)
{
    for (size_t i = 0; i < set->count; i++) {
        http_response_free(&set->waiters[i].response);
        http_response_free(&set->acks[i].response);
        free(set->payloads[i]);
        free(set->paths[i]);
        free(set->paths[set->count + i]);
        free(set->content_types[i]);
    }
    free(set->waiters);
    free(set->acks);
    free(set->payloads);
    free(set->payload_lens);
    free(set->paths);
    free(set->content_types);
    free(set);
}

/*
 * Sends the acks whose index satisfies select (every ack when select is NULL) and resends any
 * that get 404, because a 404 only means that waiter is not pending yet. Stops at the deadline.
 */
static void send_acks(struct multi_session *session, struct waiter_set *set,
                      bool (*select)(size_t), double deadline)
{
    for (size_t i = 0; i < set->count; i++) {
        if (select == NULL || select(i))
            multi_session_add(session, &set->acks[i]);
    }
    for (;;) {
        bool waiting = false;

        multi_session_run(session, 50);
        for (size_t i = 0; i < set->count; i++) {
            struct transfer *ack = &set->acks[i];

            if (select != NULL && !select(i))
                continue;
            if (ack->running) {
                waiting = true;
            } else if (ack->response.status == 404 && ack->response.result == CURLE_OK &&
                       !set->waiters[i].done && now_s() < deadline) {
                multi_session_add(session, ack);
                waiting = true;
            }
        }
        if (!waiting || now_s() >= deadline)
            return;
    }
}

/* Drives the session until every waiter is done or the deadline passes. */
static void finish_waiters(struct multi_session *session, struct waiter_set *set,
                           double deadline)
{
    for (;;) {
        bool running = false;

        for (size_t i = 0; i < set->count; i++)
            running = running || set->waiters[i].running;
        if (!running || now_s() >= deadline)
            return;
        multi_session_run(session, 100);
    }
}

/* Checks that waiter i got 200 with its own payload and Content-Type. Returns false on a
 * mismatch, printing it unless *reported already reached MAX_REPORTED. */
static bool check_delivered(struct waiter_set *set, size_t i, enum http_proto proto,
                            int *reported)
{
    const struct http_response *ack = &set->acks[i].response;
    const struct http_response *waiter = &set->waiters[i].response;
    const char *problem = NULL;

    if (!set->acks[i].done || ack->result != CURLE_OK || ack->status != 202)
        problem = "ack not 202";
    else if (!set->waiters[i].done || waiter->result != CURLE_OK || waiter->status != 200)
        problem = "waiter not 200";
    else if (waiter->http_version != expected_http_version(proto))
        problem = "wrong HTTP version";
    else if (waiter->body_len != set->payload_lens[i] ||
             memcmp(waiter->body, set->payloads[i], set->payload_lens[i]) != 0)
        problem = "waiter body is not its ack's payload";
    else if (waiter->content_type == NULL ||
             strcmp(waiter->content_type, set->content_types[i]) != 0)
        problem = "waiter Content-Type is not its ack's";
    if (problem == NULL)
        return true;
    if ((*reported)++ < MAX_REPORTED)
        test_fail(__FILE__, __LINE__, "%s: %s; ack %ld (%s), waiter %ld (%s) with %zu-byte body "
                  "\"%s\" and Content-Type %s", set->waiters[i].request.path, problem,
                  ack->status, ack->error, waiter->status, waiter->error, waiter->body_len,
                  printable(waiter->body, waiter->body_len < 40 ? waiter->body_len : 40),
                  waiter->content_type != NULL ? waiter->content_type : "(none)");
    return false;
}

static void test_200_waiters_acked(enum http_proto proto)
{
    const size_t count = 200;
    struct waiter_set *set;
    struct multi_session *session;
    struct corrd server;
    double deadline;
    int reported = 0;
    size_t failures = 0;

    if (!corrd_start(&server, NULL))
        return;
    set = waiter_set_new("many", count, proto, 30000);
    session = multi_session_new(server.port);
    deadline = now_s() + 30.0;

    for (size_t i = 0; i < count; i++)
        multi_session_add(session, &set->waiters[i]);
    multi_session_run(session, 500);
    send_acks(session, set, NULL, deadline);
    finish_waiters(session, set, deadline);

    for (size_t i = 0; i < count; i++)
        failures += !check_delivered(set, i, proto, &reported);
    EXPECT(failures == 0, "%zu of %zu waiters did not get their own payload", failures, count);
    multi_session_free(session);
    waiter_set_free(set);
    corrd_stop(&server);
}

static bool is_odd(size_t i)
{
    return i % 2 == 1;
}

static void test_mixed_timeouts_and_acks(enum http_proto proto)
{
    const size_t count = 100;
    struct waiter_set *set;
    struct multi_session *session;
    struct corrd server;
    double deadline;
    int reported = 0;
    size_t failures = 0;

    if (!corrd_start(&server, NULL))
        return;
    set = waiter_set_new("mixed", count, proto, 20000);
    /* Even waiters time out after 300 ms and odd ones get acked. */
    for (size_t i = 0; i < count; i += 2) {
        free(set->paths[i]);
        set->paths[i] = format_string("/start/mixed-%zu?timeout=300", i);
        set->waiters[i].request.path = set->paths[i];
    }
    session = multi_session_new(server.port);
    deadline = now_s() + 30.0;

    for (size_t i = 0; i < count; i++)
        multi_session_add(session, &set->waiters[i]);
    multi_session_run(session, 100);
    send_acks(session, set, is_odd, deadline);
    finish_waiters(session, set, deadline);

    for (size_t i = 1; i < count; i += 2)
        failures += !check_delivered(set, i, proto, &reported);
    for (size_t i = 0; i < count; i += 2) {
        const struct http_response *waiter = &set->waiters[i].response;

        if (set->waiters[i].done && waiter->result == CURLE_OK && waiter->status == 504)
            continue;
        failures++;
        if (reported++ < MAX_REPORTED)
            test_fail(__FILE__, __LINE__, "%s: expected 504, got %ld (%s) with body \"%s\"",
                      set->waiters[i].request.path, waiter->status, waiter->error,
                      printable(waiter->body, waiter->body_len));
    }
    EXPECT(failures == 0, "%zu of %zu waiters got the wrong answer", failures, count);

    /* The timed-out ids take no ack. */
    for (size_t i = 0; i < count; i += 2)
        multi_session_add(session, &set->acks[i]);
    while (multi_session_run(session, 100) > 0 && now_s() < deadline)
        ;
    failures = 0;
    for (size_t i = 0; i < count; i += 2) {
        const struct http_response *ack = &set->acks[i].response;

        if (set->acks[i].done && ack->result == CURLE_OK && ack->status == 404)
            continue;
        failures++;
        if (reported++ < MAX_REPORTED)
            test_fail(__FILE__, __LINE__, "%s after its waiter timed out: expected 404, got %ld "
                      "(%s)", set->acks[i].request.path, ack->status, ack->error);
    }
    EXPECT(failures == 0, "%zu late acks were not 404", failures);
    multi_session_free(session);
    waiter_set_free(set);
    corrd_stop(&server);
}

static void test_waiters_race_one_id(enum http_proto proto)
{
    enum { RACERS = 20 };
    struct transfer racers[RACERS];
    struct multi_session *session;
    struct http_response ack;
    struct corrd server;
    double deadline;
    int conflicts = 0;
    int winners = 0;

    if (!corrd_start(&server, NULL))
        return;
    memset(racers, 0, sizeof(racers));
    session = multi_session_new(server.port);
    deadline = now_s() + 20.0;
    for (int i = 0; i < RACERS; i++) {
        racers[i].request = (struct http_request){
            .method = "GET", .path = "/start/race?timeout=8000", .proto = proto,
            .timeout_ms = 18000,
        };
        multi_session_add(session, &racers[i]);
    }
    /* Run until all but the one pending waiter have their 409. */
    for (;;) {
        int done = 0;

        multi_session_run(session, 50);
        for (int i = 0; i < RACERS; i++)
            done += racers[i].done;
        if (done >= RACERS - 1 || now_s() >= deadline)
            break;
    }
    http_post(server.port, proto, "/ack/race", "winner", 6, &ack);
    EXPECT_RESPONSE(&ack, proto, 202);
    http_response_free(&ack);
    while (multi_session_run(session, 100) > 0 && now_s() < deadline)
        ;

    for (int i = 0; i < RACERS; i++) {
        const struct http_response *response = &racers[i].response;

        if (response->result != CURLE_OK) {
            test_fail(__FILE__, __LINE__, "racer %d: curl error %s", i, response->error);
        } else if (response->status == 409) {
            conflicts++;
        } else if (response->status == 200) {
            winners++;
            EXPECT_BODY(response, "winner", 6);
        } else {
            test_fail(__FILE__, __LINE__, "racer %d: expected 409 or 200, got %ld", i,
                      response->status);
        }
    }
    EXPECT(winners == 1, "%d waiters got 200, expected exactly 1", winners);
    EXPECT(conflicts == RACERS - 1, "%d waiters got 409, expected %d", conflicts, RACERS - 1);
    multi_session_free(session);
    for (int i = 0; i < RACERS; i++)
        http_response_free(&racers[i].response);
    corrd_stop(&server);
}

static void test_ack_storm_one_waiter(enum http_proto proto)
{
    enum { ROUNDS = 5, ACKS = 20 };
    int total_429 = 0;
    int total_404 = 0;
    struct corrd server;

    if (!corrd_start(&server, NULL))
        return;
    for (int round = 0; round < ROUNDS; round++) {
        struct transfer acks[ACKS];
        char bodies[ACKS][16];
        char *id = format_string("storm-%d", round);
        char *path = format_string("/ack/%s", id);
        struct async_request waiter;
        struct multi_session *session;
        int delivered = -1;
        int accepted = 0;

        memset(acks, 0, sizeof(acks));
        if (!start_waiter(&waiter, server.port, proto, id, 10000)) {
            async_join(&waiter);
            http_response_free(&waiter.response);
            free(id);
            free(path);
            break;
        }
        session = multi_session_new(server.port);
        for (int i = 0; i < ACKS; i++) {
            snprintf(bodies[i], sizeof(bodies[i]), "ack %d", i);
            acks[i].request = (struct http_request){
                .method = "POST", .path = path, .body = bodies[i], .body_len = strlen(bodies[i]),
                .proto = proto,
            };
            multi_session_add(session, &acks[i]);
        }
        multi_session_run(session, 10000);
        multi_session_free(session);
        async_join(&waiter);

        for (int i = 0; i < ACKS; i++) {
            const struct http_response *response = &acks[i].response;

            if (response->result == CURLE_OK && response->status == 202) {
                accepted++;
                delivered = i;
            } else if (response->result == CURLE_OK && response->status == 429) {
                total_429++;
                EXPECT_ERROR_BODY(response);
            } else if (response->result == CURLE_OK && response->status == 404) {
                total_404++;
                EXPECT_ERROR_BODY(response);
            } else {
                test_fail(__FILE__, __LINE__, "%s ack %d: expected 202, 429 or 404, got %ld (%s)",
                          id, i, response->status, response->error);
            }
        }
        EXPECT(accepted == 1, "%s: %d of %d concurrent acks got 202, expected exactly 1", id,
               accepted, ACKS);
        EXPECT_RESPONSE(&waiter.response, proto, 200);
        if (delivered >= 0)
            EXPECT_BODY(&waiter.response, bodies[delivered], strlen(bodies[delivered]));
        http_response_free(&waiter.response);
        for (int i = 0; i < ACKS; i++)
            http_response_free(&acks[i].response);
        free(id);
        free(path);
    }
    printf("    note: rejected concurrent acks: %d got 429, %d got 404\n", total_429, total_404);
    corrd_stop(&server);
}

static const struct test_case cases[] = {
    {"200 waiters acked", test_200_waiters_acked, PROTO_BOTH},
    {"mixed timeouts and acks", test_mixed_timeouts_and_acks, PROTO_BOTH},
    {"waiters race one id", test_waiters_race_one_id, PROTO_BOTH},
    {"ack storm one waiter", test_ack_storm_one_waiter, PROTO_BOTH},
};

int main(int argc, char **argv)
{
    return run_tests(cases, sizeof(cases) / sizeof(cases[0]), 270, argc, argv);
}
