/*
 * corrd behind HAProxy whose server timeout is shorter than a waiter's timeout.
 *
 *   proxy timeout cuts waiter   HAProxy (Debian haproxy 2.6, config written here with
 *                               `timeout server 5s`) in front of corrd; a waiter with
 *                               timeout=20000 through it
 *
 * Observed with haproxy 2.6.12 and corrd 0.1.0: at 5 s HAProxy sends the client its own
 * "504 Gateway Time-out" (its HTML error page) and closes its connection to corrd. corrd sees
 * that close and removes the waiter (corr_waiters_finished_total{outcome="client_gone"}), so an
 * ack sent after the cut gets 404 although the client asked to wait 20 s. A proxy in front of
 * corrd therefore needs `timeout server` above --max-timeout-ms (or above the longest timeout
 * clients ask for); a waiter whose timeout is below the proxy's gets corrd's own 504, as the
 * second request here shows.
 *
 * Usage: fault_proxy [--full] [--seed N] CORRD [NAME_FILTER]; needs /usr/sbin/haproxy.
 */
#define _GNU_SOURCE
#include "fault.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define HAPROXY_PATH "/usr/sbin/haproxy"
#define PROXY_TIMEOUT_S 5.0

struct haproxy {
    pid_t pid;
    int port;
    char dir[64];
    char config[128];
    char log[128];
};

static bool haproxy_write_config(struct haproxy *proxy, int corrd_port)
{
    FILE *file = fopen(proxy->config, "w");

    if (file == NULL) {
        test_fail(__FILE__, __LINE__, "cannot create %s: %s", proxy->config, strerror(errno));
        return false;
    }
    fprintf(file,
            "global\n"
            "    maxconn 256\n"
            "\n"
            "defaults\n"
            "    mode http\n"
            "    timeout connect 1s\n"
            "    timeout client 30s\n"
            "    timeout server %.0fs\n"
            "\n"
            "frontend corr\n"
            "    bind 127.0.0.1:%d\n"
            "    default_backend corrd\n"
            "\n"
            "backend corrd\n"
            "    server corrd 127.0.0.1:%d\n",
            PROXY_TIMEOUT_S, proxy->port, corrd_port);
    fclose(file);
    return true;
}

static void haproxy_print_log(const struct haproxy *proxy)
{
    char line[512];
    FILE *file = fopen(proxy->log, "r");

    if (file == NULL)
        return;
    while (fgets(line, sizeof(line), file) != NULL)
        printf("    haproxy: %s", line);
    fclose(file);
}

/* Starts HAProxy on a free loopback port and waits until it accepts connections. */
static bool haproxy_start(struct haproxy *proxy, int corrd_port)
{
    snprintf(proxy->dir, sizeof(proxy->dir), "/tmp/corr-fault-proxy-XXXXXX");
    if (mkdtemp(proxy->dir) == NULL) {
        test_fail(__FILE__, __LINE__, "mkdtemp failed: %s", strerror(errno));
        return false;
    }
    snprintf(proxy->config, sizeof(proxy->config), "%s/haproxy.cfg", proxy->dir);
    snprintf(proxy->log, sizeof(proxy->log), "%s/haproxy.log", proxy->dir);
    /* The free port may be taken again before HAProxy binds it, so try a few times. */
    for (int attempt = 0; attempt < 3; attempt++) {
        int log_fd;

        proxy->port = pick_free_port();
        if (proxy->port <= 0 || !haproxy_write_config(proxy, corrd_port))
            return false;
        log_fd = open(proxy->log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        proxy->pid = fork();
        if (proxy->pid == 0) {
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            signal(SIGALRM, SIG_DFL);
            dup2(log_fd, STDOUT_FILENO);
            dup2(log_fd, STDERR_FILENO);
            execl(HAPROXY_PATH, HAPROXY_PATH, "-db", "-f", proxy->config, (char *)NULL);
            _exit(127);
        }
        close(log_fd);
        for (double deadline = now_s() + 5.0; now_s() < deadline;) {
            struct loop loop;
            struct h1_conn *probe;
            int status;
            bool up;

            if (waitpid(proxy->pid, &status, WNOHANG) == proxy->pid) {
                proxy->pid = 0;
                break;
            }
            /* The backend check: any response from corrd through the proxy. */
            loop_init(&loop);
            probe = h1_try_connect(&loop, proxy->port);
            if (probe != NULL) {
                h1_send(probe, "GET", "/healthz", NULL, NULL, 0);
                h1_wait(probe, 1000);
            }
            up = probe != NULL && probe->done && probe->response.status == 200;
            h1_free(probe);
            loop_dispose(&loop);
            if (up)
                return true;
            sleep_ms(50);
        }
        printf("    haproxy did not start on attempt %d\n", attempt + 1);
        haproxy_print_log(proxy);
        if (proxy->pid > 0) {
            kill(proxy->pid, SIGKILL);
            waitpid(proxy->pid, NULL, 0);
            proxy->pid = 0;
        }
    }
    test_fail(__FILE__, __LINE__, "haproxy did not start");
    return false;
}

static void haproxy_stop(struct haproxy *proxy)
{
    int status;

    if (proxy->pid > 0) {
        kill(proxy->pid, SIGTERM);
        for (double deadline = now_s() + 5.0; now_s() < deadline;) {
            if (waitpid(proxy->pid, &status, WNOHANG) == proxy->pid) {
                proxy->pid = 0;
                break;
            }
            sleep_ms(10);
        }
        if (proxy->pid > 0) {
            test_fail(__FILE__, __LINE__, "haproxy (pid %d) still runs 5 s after SIGTERM; "
                      "sending SIGKILL", (int)proxy->pid);
            kill(proxy->pid, SIGKILL);
            waitpid(proxy->pid, &status, 0);
            proxy->pid = 0;
        }
    }
    if (test_failures() > 0)
        haproxy_print_log(proxy);
    unlink(proxy->config);
    unlink(proxy->log);
    rmdir(proxy->dir);
}

static void test_proxy_timeout(enum http_proto proto)
{
    static const char *const args[] = {"--max-timeout-ms", "30000", NULL};
    struct haproxy proxy = {0};
    struct counters before;
    struct counters after;
    struct corrd server;
    struct loop loop;
    struct h1_conn *waiter;
    struct h1_conn *ack;
    long long pending;
    double elapsed;

    if (access(HAPROXY_PATH, X_OK) != 0) {
        test_fail(__FILE__, __LINE__, "%s is missing: install the Debian package haproxy",
                  HAPROXY_PATH);
        return;
    }
    if (!corrd_start(&server, args))
        return;
    if (!haproxy_start(&proxy, server.port)) {
        haproxy_stop(&proxy);
        corrd_stop(&server);
        return;
    }
    loop_init(&loop);
    counters_fetch(server.port, &before);

    /* A waiter that requests 20 s, through a proxy that waits 5 s for the server. */
    waiter = h1_request(&loop, proxy.port, "GET", "/start/behind-proxy?timeout=20000", NULL,
                        NULL, 0, 15000);
    REQUIRE(waiter != NULL, "connect to haproxy failed");
    elapsed = waiter->done_at - waiter->sent_at;
    printf("    client saw %d after %.3f s: \"%s\"\n", waiter->done ? waiter->response.status : 0,
           elapsed, printable(waiter->response.body, waiter->response.body_len));
    EXPECT(waiter->done && waiter->response.status == 504, "the client got %d through haproxy, "
           "expected HAProxy's 504", waiter->done ? waiter->response.status : 0);
    EXPECT(waiter->done && elapsed >= PROXY_TIMEOUT_S - 0.01 && elapsed < PROXY_TIMEOUT_S + 1.5,
           "the proxy's 504 came after %.3f s, expected %.0f s (timeout server)", elapsed,
           PROXY_TIMEOUT_S);
    EXPECT(waiter->response.body_len > 0 &&
           memmem(waiter->response.body, waiter->response.body_len, "Gateway Time-out", 16),
           "the 504 body is not HAProxy's error page: \"%s\"",
           printable(waiter->response.body, waiter->response.body_len));
    h1_free(waiter);

    /* At once after the cut, an ack sent straight to corrd finds no waiter. */
    ack = h1_request(&loop, server.port, "POST", "/ack/behind-proxy", NULL, "after the cut", 13,
                     5000);
    REQUIRE(ack != NULL, "connect to corrd failed");
    printf("    ack straight to corrd after the cut: %d\n", ack->done ? ack->response.status : 0);
    EXPECT(ack->done && ack->response.status == 404, "ack after the proxy's cut got %d, expected "
           "404 (corrd removed the waiter when haproxy closed the upstream connection)",
           ack->done ? ack->response.status : 0);
    h1_free(ack);
    EXPECT(wait_pending_equals(server.port, 0, 2000, &pending), "pending gauge %lld after the "
           "cut, expected 0", pending);
    if (counters_fetch(server.port, &after))
        EXPECT(after.finished_gone - before.finished_gone == 1, "corr_waiters_finished_total"
               "{outcome=\"client_gone\"} grew by %lld, expected 1",
               after.finished_gone - before.finished_gone);

    /* A waiter whose timeout is below the proxy's gets corrd's own 504. */
    waiter = h1_request(&loop, proxy.port, "GET", "/start/behind-proxy-short?timeout=1000", NULL,
                        NULL, 0, 10000);
    REQUIRE(waiter != NULL, "connect to haproxy failed");
    EXPECT(waiter->done && waiter->response.status == 504 && waiter->response.body_len > 0 &&
           memmem(waiter->response.body, waiter->response.body_len, "timed out: no ack", 17),
           "a 1 s waiter through haproxy got %d with \"%s\", expected corrd's 504",
           waiter->done ? waiter->response.status : 0,
           printable(waiter->response.body, waiter->response.body_len));
    h1_free(waiter);

    loop_dispose(&loop);
    haproxy_stop(&proxy);
    corrd_stop(&server);
}

static const struct test_case cases[] = {
    {"proxy timeout cuts waiter", test_proxy_timeout, PROTO_HTTP1},
};

int main(int argc, char **argv)
{
    return fault_main(cases, sizeof(cases) / sizeof(cases[0]), 120, 120, argc, argv);
}
