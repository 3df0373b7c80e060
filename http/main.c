/* corrd: command line, signals and process lifetime. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "corrd.h"

#define CORRD_VERSION "0.1.0"

enum option_id {
    OPT_LISTEN = 256,
    OPT_THREADS,
    OPT_DEFAULT_TIMEOUT,
    OPT_MAX_TIMEOUT,
    OPT_MAX_ACK_BYTES,
    OPT_MAX_ID_BYTES,
    OPT_MAX_PENDING,
    OPT_DRAIN_MS,
    OPT_HELP,
    OPT_VERSION,
};

static const struct option long_options[] = {
    {"listen", required_argument, NULL, OPT_LISTEN},
    {"threads", required_argument, NULL, OPT_THREADS},
    {"default-timeout-ms", required_argument, NULL, OPT_DEFAULT_TIMEOUT},
    {"max-timeout-ms", required_argument, NULL, OPT_MAX_TIMEOUT},
    {"max-ack-bytes", required_argument, NULL, OPT_MAX_ACK_BYTES},
    {"max-id-bytes", required_argument, NULL, OPT_MAX_ID_BYTES},
    {"max-pending", required_argument, NULL, OPT_MAX_PENDING},
    {"drain-ms", required_argument, NULL, OPT_DRAIN_MS},
    {"help", no_argument, NULL, OPT_HELP},
    {"version", no_argument, NULL, OPT_VERSION},
    {NULL, 0, NULL, 0},
};

static void usage(FILE *out, unsigned default_threads)
{
    fprintf(out,
            "Usage: corrd [OPTION]...\n"
            "Hold /start/{id} requests until /ack/{id} answers them or their timeout passes.\n"
            "\n"
            "  --listen HOST:PORT         address to listen on; repeatable; [::1]:PORT for IPv6;\n"
            "                             port 0 picks a free port (default 127.0.0.1:8080)\n"
            "  --threads N                worker threads, one event loop each (1-1024, default %u,\n"
            "                             the number of CPUs)\n"
            "  --default-timeout-ms MS    timeout of a waiter without ?timeout= (milliseconds,\n"
            "                             default 10000)\n"
            "  --max-timeout-ms MS        larger ?timeout= values are clamped to this (milliseconds,\n"
            "                             1-86400000, default 60000)\n"
            "  --max-ack-bytes BYTES      largest ack body; larger ones get 413 (bytes,\n"
            "                             0-1073741824, default 1048576)\n"
            "  --max-id-bytes BYTES       longest id after percent-decoding (bytes, 1-65535,\n"
            "                             default 256)\n"
            "  --max-pending N            pending waiters allowed at once; more get 503\n"
            "                             (1-100000000, default 100000)\n"
            "  --drain-ms MS              on SIGTERM or SIGINT, how long to wait for connections\n"
            "                             to finish before exiting (milliseconds, 0-600000,\n"
            "                             default 5000)\n"
            "  --help                     print this help and exit\n"
            "  --version                  print the version and exit\n",
            default_threads);
}

/* Parse a decimal option value in [min, max]; print an error naming the option otherwise. */
static int parse_number(const char *option, const char *value, uint64_t min, uint64_t max, uint64_t *out)
{
    char *end;

    errno = 0;
    unsigned long long v = strtoull(value, &end, 10);
    if (value[0] == '\0' || value[0] == '-' || *end != '\0' || errno != 0 || v < min || v > max) {
        fprintf(stderr, "corrd: invalid value '%s' for --%s: expected an integer from %" PRIu64 " to %" PRIu64 "\n",
                value, option, min, max);
        return -1;
    }
    *out = v;
    return 0;
}

static int parse_listen(const char *value, struct corrd_listen *out)
{
    const char *colon = strrchr(value, ':');
    const char *host = value;
    size_t host_len = colon != NULL ? (size_t)(colon - value) : 0;

    if (colon == NULL || colon[1] == '\0' || strlen(colon + 1) >= sizeof(out->port)) {
        fprintf(stderr, "corrd: invalid value '%s' for --listen: expected HOST:PORT, e.g. 127.0.0.1:8080\n", value);
        return -1;
    }
    if (host_len >= 2 && host[0] == '[' && host[host_len - 1] == ']') {
        host++;
        host_len -= 2;
    }
    uint64_t port;
    if (host_len >= sizeof(out->host) || parse_number("listen", colon + 1, 0, 65535, &port) != 0)
        return -1;
    memcpy(out->host, host, host_len);
    out->host[host_len] = '\0';
    snprintf(out->port, sizeof(out->port), "%" PRIu64, port);
    return 0;
}

static int parse_options(int argc, char **argv)
{
    struct corrd_options *opt = &corrd.options;
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    uint64_t v;
    int c;

    opt->threads = cpus > 0 ? (unsigned)cpus : 1;
    opt->default_timeout_ms = 10000;
    opt->max_timeout_ms = 60000;
    opt->max_ack_bytes = 1048576;
    opt->max_id_bytes = 256;
    opt->max_pending = 100000;
    opt->drain_ms = 5000;
    unsigned default_threads = opt->threads;

    while ((c = getopt_long(argc, argv, "", long_options, NULL)) != -1) {
        int rc = 0;
        switch (c) {
        case OPT_LISTEN:
            opt->listens = realloc(opt->listens, (opt->listen_count + 1) * sizeof(*opt->listens));
            rc = parse_listen(optarg, &opt->listens[opt->listen_count]);
            opt->listen_count += rc == 0;
            break;
        case OPT_THREADS:
            rc = parse_number("threads", optarg, 1, 1024, &v);
            opt->threads = (unsigned)v;
            break;
        case OPT_DEFAULT_TIMEOUT:
            rc = parse_number("default-timeout-ms", optarg, 1, 86400000, &opt->default_timeout_ms);
            break;
        case OPT_MAX_TIMEOUT:
            rc = parse_number("max-timeout-ms", optarg, 1, 86400000, &opt->max_timeout_ms);
            break;
        case OPT_MAX_ACK_BYTES:
            rc = parse_number("max-ack-bytes", optarg, 0, 1073741824, &v);
            opt->max_ack_bytes = v;
            break;
        case OPT_MAX_ID_BYTES:
            rc = parse_number("max-id-bytes", optarg, 1, CORR_ID_MAX_BYTES, &v);
            opt->max_id_bytes = v;
            break;
        case OPT_MAX_PENDING:
            rc = parse_number("max-pending", optarg, 1, 100000000, &v);
            opt->max_pending = v;
            break;
        case OPT_DRAIN_MS:
            rc = parse_number("drain-ms", optarg, 0, 600000, &opt->drain_ms);
            break;
        case OPT_HELP:
            usage(stdout, default_threads);
            exit(0);
        case OPT_VERSION:
            printf("corrd %s\n", CORRD_VERSION);
            exit(0);
        default:
            fprintf(stderr, "Try 'corrd --help' for the list of options.\n");
            return -1;
        }
        if (rc != 0)
            return -1;
    }
    if (optind < argc) {
        fprintf(stderr, "corrd: unexpected argument '%s'; try 'corrd --help'\n", argv[optind]);
        return -1;
    }
    if (opt->listen_count == 0) {
        opt->listens = calloc(1, sizeof(*opt->listens));
        parse_listen("127.0.0.1:8080", &opt->listens[0]);
        opt->listen_count = 1;
    }
    return 0;
}

/* Wait for SIGINT or SIGTERM for up to @timeout_ms; returns the signal number, or 0. */
static int wait_signal(const sigset_t *set, long timeout_ms)
{
    struct timespec ts = {.tv_sec = timeout_ms / 1000, .tv_nsec = (timeout_ms % 1000) * 1000000};
    int sig = sigtimedwait(set, NULL, &ts);
    return sig > 0 ? sig : 0;
}

int main(int argc, char **argv)
{
    sigset_t stop_signals;
    int sig;

    if (parse_options(argc, argv) != 0)
        return 2;

    /* Workers inherit the mask, so only this thread receives the stop signals, via sigtimedwait. */
    sigemptyset(&stop_signals);
    sigaddset(&stop_signals, SIGINT);
    sigaddset(&stop_signals, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &stop_signals, NULL);
    /* h2o writes with writev and no MSG_NOSIGNAL; a write to a closed peer must not kill us. */
    signal(SIGPIPE, SIG_IGN);

    corrd_log("info",
              "msg=starting version=%s threads=%u default_timeout_ms=%" PRIu64 " max_timeout_ms=%" PRIu64
              " max_ack_bytes=%zu max_id_bytes=%zu max_pending=%zu drain_ms=%" PRIu64,
              CORRD_VERSION, corrd.options.threads, corrd.options.default_timeout_ms, corrd.options.max_timeout_ms,
              corrd.options.max_ack_bytes, corrd.options.max_id_bytes, corrd.options.max_pending,
              corrd.options.drain_ms);
    if (corrd_server_start() != 0)
        return 1;

    while ((sig = wait_signal(&stop_signals, 1000)) == 0)
        ;
    corrd_log("info", "msg=\"shutting down\" signal=%s drain_ms=%" PRIu64, sig == SIGINT ? "SIGINT" : "SIGTERM",
              corrd.options.drain_ms);
    corrd_server_request_shutdown();
    while (corrd_server_workers_exited() < corrd.options.threads) {
        if (wait_signal(&stop_signals, 20) != 0) {
            corrd_log("warn", "msg=\"second signal; exiting without waiting for the drain\"");
            _exit(0);
        }
    }
    corrd_server_join();
    corrd_log("info", "msg=stopped");
    return 0;
}
