/*
 * Graceful shutdown under load.
 *
 *   second sigterm releases every waiter
 *       1,000 held waiters (500 over HTTP/1.1, 500 on 10 HTTP/2 connections) and 100 idle
 *       keep-alive connections, then SIGTERM and a second SIGTERM 200 ms later: every waiter
 *       gets 503 with Retry-After, and corrd exits with status 0.
 *   one sigterm drains in time
 *       With --shutdown-delay-ms 300 --drain-ms 3000, /readyz returns 503 during the delay
 *       while new waiters are still registered. After the delay the waiters get 503, the
 *       listener closes and idle connections are closed, and corrd exits with status 0 within
 *       --drain-ms + 1.5 s.
 *
 * Usage: fault_shutdown [--full] [--seed N] CORRD [NAME_FILTER]
 */
#define _GNU_SOURCE
#include "fault.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

struct held_set {
    struct loop loop;
    int h1_count;
    int h2_conn_count;
    int h2_streams;
    int idle_count;
    struct h1_conn **h1;
    struct h2_conn **h2;
    struct call *calls;    /* h1_count + h2_conn_count * h2_streams waiters */
    struct h1_conn **idle; /* keep-alive connections that served one /healthz */
};

static int held_total(const struct held_set *set)
{
    return set->h1_count + set->h2_conn_count * set->h2_streams;
}

/* Opens the waiters and idle connections and waits until corrd has registered every waiter. */
static bool held_open(struct held_set *set, int port, const char *prefix)
{
    long long pending;
    int total = held_total(set);

    loop_init(&set->loop);
    set->h1 = calloc((size_t)set->h1_count, sizeof(*set->h1));
    set->h2 = calloc((size_t)set->h2_conn_count, sizeof(*set->h2));
    set->calls = calloc((size_t)total, sizeof(*set->calls));
    set->idle = calloc((size_t)set->idle_count, sizeof(*set->idle));
    for (int c = 0; c < set->h2_conn_count; c++) {
        set->h2[c] = h2_connect(&set->loop, port);
        if (set->h2[c] == NULL)
            return false;
    }
    for (int i = 0; i < total; i++) {
        char path[96];

        snprintf(path, sizeof(path), "/start/%s-%d?timeout=60000", prefix, i);
        if (i < set->h1_count) {
            set->h1[i] = h1_connect(&set->loop, port, 0);
            if (set->h1[i] == NULL)
                return false;
            call_send(&set->calls[i], set->h1[i], NULL, "GET", path, NULL, NULL, 0);
        } else {
            int stream = i - set->h1_count;

            call_send(&set->calls[i], NULL, set->h2[stream / set->h2_streams], "GET", path,
                      NULL, NULL, 0);
        }
    }
    for (int i = 0; i < set->idle_count; i++) {
        set->idle[i] = h1_connect(&set->loop, port, 0);
        if (set->idle[i] == NULL)
            return false;
        h1_send(set->idle[i], "GET", "/healthz", NULL, NULL, 0);
    }
    for (double deadline = now_s() + 10.0; now_s() < deadline;) {
        bool idle_ready = true;

        loop_run(&set->loop, 10000);
        for (int i = 0; i < set->idle_count && idle_ready; i++)
            idle_ready = set->idle[i]->done;
        if (idle_ready)
            break;
    }
    for (int i = 0; i < set->idle_count; i++) {
        if (!set->idle[i]->done || set->idle[i]->response.status != 200) {
            test_fail(__FILE__, __LINE__, "idle connection %d: GET /healthz did not get 200", i);
            return false;
        }
    }
    if (!wait_pending_equals(port, total, 10000, &pending)) {
        test_fail(__FILE__, __LINE__, "pending gauge %lld, expected %d held waiters", pending,
                  total);
        return false;
    }
    return true;
}

static bool held_all_finished(struct held_set *set)
{
    for (int i = 0; i < held_total(set); i++) {
        if (!call_finished(&set->calls[i]))
            return false;
    }
    return true;
}

static void held_close(struct held_set *set)
{
    for (int i = 0; i < held_total(set); i++)
        call_release(&set->calls[i]);
    for (int i = 0; i < set->h1_count; i++)
        h1_free(set->h1[i]);
    for (int c = 0; c < set->h2_conn_count; c++)
        h2_free(set->h2[c]);
    for (int i = 0; i < set->idle_count; i++)
        h1_free(set->idle[i]);
    free(set->h1);
    free(set->h2);
    free(set->calls);
    free(set->idle);
    loop_dispose(&set->loop);
}

/* Tallies of the waiters' outcomes after a shutdown. */
struct shutdown_tally {
    int answered_503;     /* 503 with Retry-After */
    int closed_after_503; /* ... whose connection then closed */
    int no_retry_after;   /* 503 without Retry-After */
    int other_status;
    int no_answer;        /* the connection ended without a response */
    double first_503_s;   /* seconds from SIGTERM */
    double last_503_s;
};

static void tally_waiters(struct held_set *set, double signal_at, struct shutdown_tally *tally)
{
    memset(tally, 0, sizeof(*tally));
    tally->first_503_s = 1e9;
    for (int i = 0; i < held_total(set); i++) {
        struct call *call = &set->calls[i];
        int status = call_status(call);
        double at;
        bool closed;

        if (status == 0) {
            tally->no_answer++;
            continue;
        }
        if (status != 503) {
            tally->other_status++;
            test_fail(__FILE__, __LINE__, "waiter %d got status %d at shutdown, expected 503",
                      i, status);
            continue;
        }
        if (!call_retry_after(call)) {
            tally->no_retry_after++;
            continue;
        }
        tally->answered_503++;
        at = (call->h1 != NULL ? call->h1->done_at : call->h2->done_at) - signal_at;
        if (at < tally->first_503_s)
            tally->first_503_s = at;
        if (at > tally->last_503_s)
            tally->last_503_s = at;
        closed = call->h1 != NULL ? call->h1->eof
                                  : call->h2->conn == NULL || call->h2->conn->eof ||
                                    call->h2->conn->goaway;
        if (closed)
            tally->closed_after_503++;
    }
}

/* ---- second sigterm releases every waiter ---- */

static void test_second_sigterm(enum http_proto proto)
{
    static const char *const args[] = {"--threads", "2", "--drain-ms", "5000", NULL};
    struct held_set set = {
        .h1_count = 500, .h2_conn_count = 10, .h2_streams = 50, .idle_count = 100,
    };
    struct shutdown_tally tally;
    struct corrd server;
    double signal_at;
    double exit_s = -1;
    int idle_closed = 0;
    int status;

    if (!corrd_start(&server, args))
        return;
    if (!held_open(&set, server.port, "second-sigterm")) {
        held_close(&set);
        corrd_stop(&server);
        return;
    }
    signal_at = now_s();
    EXPECT(kill(server.pid, SIGTERM) == 0, "kill(%d, SIGTERM) failed", (int)server.pid);
    while (now_s() - signal_at < 0.2)
        loop_run(&set.loop, 5000);
    EXPECT(kill(server.pid, SIGTERM) == 0, "second kill(%d, SIGTERM) failed", (int)server.pid);
    status = -1;
    for (double deadline = now_s() + 5.0; server.pid > 0 && now_s() < deadline;) {
        loop_run(&set.loop, 5000);
        status = corrd_wait_exit(&server, 0);
        if (server.pid == 0)
            exit_s = now_s() - signal_at;
    }
    for (double deadline = now_s() + 3.0; !held_all_finished(&set) && now_s() < deadline;)
        loop_run(&set.loop, 10000);
    for (double deadline = now_s() + 3.0; now_s() < deadline;) {
        idle_closed = 0;
        for (int i = 0; i < set.idle_count; i++)
            idle_closed += set.idle[i]->eof;
        if (idle_closed == set.idle_count)
            break;
        loop_run(&set.loop, 10000);
    }

    tally_waiters(&set, signal_at, &tally);
    printf("    %d waiters: %d got 503 with Retry-After (%.3f to %.3f s after SIGTERM), %d of "
           "them then saw their connection close; %d got no answer; %d of %d idle connections "
           "closed; corrd exited %.3f s after the first SIGTERM\n", held_total(&set),
           tally.answered_503, tally.first_503_s, tally.last_503_s, tally.closed_after_503,
           tally.no_answer, idle_closed, set.idle_count, exit_s);
    EXPECT(server.pid == 0, "corrd still runs 5 s after the second SIGTERM");
    EXPECT(status >= 0 && WIFEXITED(status) && WEXITSTATUS(status) == 0, "corrd exit status "
           "0x%x, expected a normal exit with status 0", (unsigned)status);
    EXPECT(exit_s >= 0 && exit_s < 1.5, "corrd exited %.3f s after the first SIGTERM; the "
           "second one at 0.2 s must end it at once", exit_s);
    EXPECT(tally.answered_503 == held_total(&set), "%d of %d waiters got 503 with Retry-After",
           tally.answered_503, held_total(&set));
    EXPECT(tally.no_answer == 0, "%d waiters got no answer before the connection closed",
           tally.no_answer);
    EXPECT(tally.no_retry_after == 0, "%d waiters got 503 without Retry-After",
           tally.no_retry_after);
    EXPECT(idle_closed == set.idle_count, "%d of %d idle connections closed after the exit",
           idle_closed, set.idle_count);
    held_close(&set);
    corrd_stop(&server); /* pid is 0: frees the log, printing it after a failure */
}

/* ---- one sigterm drains in time ---- */

#define DRAIN_MS 3000
#define DELAY_MS 300

/* Returns true when a connect to 127.0.0.1:port is refused (the listener is closed). */
static bool connect_refused(int port)
{
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    bool refused;

    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    refused = connect(fd, (struct sockaddr *)&addr, sizeof(addr)) != 0 &&
              errno == ECONNREFUSED;
    close(fd);
    return refused;
}

static void test_one_sigterm(enum http_proto proto)
{
    static const char *const args[] = {"--threads", "2", "--drain-ms", "3000",
                                       "--shutdown-delay-ms", "300", NULL};
    struct held_set set = {
        .h1_count = 100, .h2_conn_count = 2, .h2_streams = 50, .idle_count = 50,
    };
    struct shutdown_tally tally;
    struct corrd server;
    struct h1_conn *late = NULL;
    double signal_at;
    double exit_s = -1;
    double first_not_ready = -1;
    double refused_at = -1;
    int ready_after_not_ready = 0;
    int readyz_probes = 0;
    int idle_closed = 0;
    int status = -1;

    if (!corrd_start(&server, args))
        return;
    if (!held_open(&set, server.port, "one-sigterm")) {
        held_close(&set);
        corrd_stop(&server);
        return;
    }
    signal_at = now_s();
    EXPECT(kill(server.pid, SIGTERM) == 0, "kill(%d, SIGTERM) failed", (int)server.pid);

    /* During the delay /readyz returns 503, while corrd still registers new waiters. */
    while (now_s() - signal_at < (DELAY_MS - 100) / 1000.0) {
        struct h1_conn *probe = h1_request(&set.loop, server.port, "GET", "/readyz", NULL, NULL,
                                           0, 1000);

        if (probe != NULL && probe->done) {
            readyz_probes++;
            if (probe->response.status == 503 && first_not_ready < 0)
                first_not_ready = now_s() - signal_at;
            if (probe->response.status == 200 && first_not_ready >= 0)
                ready_after_not_ready++;
        }
        h1_free(probe);
        if (late == NULL && first_not_ready >= 0) {
            late = h1_connect(&set.loop, server.port, 0);
            if (late != NULL)
                h1_send(late, "GET", "/start/one-sigterm-late?timeout=60000", NULL, NULL, 0);
        }
        loop_run(&set.loop, 20000);
    }
    EXPECT(first_not_ready >= 0 && first_not_ready < 0.2, "/readyz first answered 503 %.3f s "
           "after SIGTERM (%d probes); expected within 0.2 s", first_not_ready, readyz_probes);
    EXPECT(ready_after_not_ready == 0, "/readyz answered 200 %d times after its first 503",
           ready_after_not_ready);
    EXPECT(late != NULL && !late->done, "a waiter started during the delay got %d before the "
           "drain, expected to be held", late != NULL && late->done ? late->response.status : 0);

    /* The drain: waiters get 503, the listener closes, idle connections are closed. */
    for (double deadline = signal_at + (DRAIN_MS + DELAY_MS) / 1000.0 + 3.0;
         server.pid > 0 && now_s() < deadline;) {
        loop_run(&set.loop, 5000);
        if (refused_at < 0 && now_s() - signal_at > DELAY_MS / 1000.0 &&
            connect_refused(server.port))
            refused_at = now_s() - signal_at;
        status = corrd_wait_exit(&server, 0);
        if (server.pid == 0)
            exit_s = now_s() - signal_at;
    }
    for (double deadline = now_s() + 2.0; !held_all_finished(&set) && now_s() < deadline;)
        loop_run(&set.loop, 10000);
    if (late != NULL)
        h1_wait(late, 2000);
    for (int i = 0; i < set.idle_count; i++)
        idle_closed += set.idle[i]->eof;

    tally_waiters(&set, signal_at, &tally);
    printf("    /readyz 503 from %.3f s; %d waiters got 503 with Retry-After from %.3f to %.3f s; "
           "connect refused from %.3f s; %d of %d idle connections closed; exit after %.3f s\n",
           first_not_ready, tally.answered_503, tally.first_503_s, tally.last_503_s, refused_at,
           idle_closed, set.idle_count, exit_s);
    EXPECT(tally.answered_503 == held_total(&set), "%d of %d waiters got 503 with Retry-After",
           tally.answered_503, held_total(&set));
    EXPECT(tally.no_answer == 0, "%d waiters got no answer", tally.no_answer);
    EXPECT(tally.first_503_s >= (DELAY_MS - 1) / 1000.0, "the first waiter got 503 %.3f s "
           "after SIGTERM, before --shutdown-delay-ms %d ended", tally.first_503_s, DELAY_MS);
    EXPECT(late != NULL && late->done && late->response.status == 503, "the waiter started "
           "during the delay got %d, expected 503",
           late != NULL && late->done ? late->response.status : 0);
    EXPECT(refused_at > 0, "connections to port %d were still accepted during the drain",
           server.port);
    EXPECT(idle_closed == set.idle_count, "%d of %d idle connections were closed by corrd",
           idle_closed, set.idle_count);
    EXPECT(server.pid == 0, "corrd still runs %.1f s after SIGTERM",
           (DRAIN_MS + DELAY_MS) / 1000.0 + 3.0);
    EXPECT(status >= 0 && WIFEXITED(status) && WEXITSTATUS(status) == 0, "corrd exit status "
           "0x%x, expected a normal exit with status 0", (unsigned)status);
    EXPECT(exit_s >= 0 && exit_s <= DRAIN_MS / 1000.0 + 1.5, "corrd exited %.3f s after "
           "SIGTERM, limit --drain-ms + 1.5 s = %.1f s", exit_s, DRAIN_MS / 1000.0 + 1.5);
    h1_free(late);
    held_close(&set);
    corrd_stop(&server);
}

/* Each case mixes HTTP/1.1 and HTTP/2 clients, so it runs once, listed under http/1.1. */
static const struct test_case cases[] = {
    {"second sigterm releases every waiter", test_second_sigterm, PROTO_HTTP1},
    {"one sigterm drains in time", test_one_sigterm, PROTO_HTTP1},
};

int main(int argc, char **argv)
{
    return fault_main(cases, sizeof(cases) / sizeof(cases[0]), 300, 300, argc, argv);
}
