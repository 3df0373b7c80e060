/* corrd: command line, signals and process lifetime. */
#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <ck_pr.h>
#include <openssl/ssl.h>
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
    OPT_MAX_URL_BYTES,
    OPT_MAX_HEADER_BYTES,
    OPT_DRAIN_MS,
    OPT_SHUTDOWN_DELAY,
    OPT_MAX_RESETS,
    OPT_LOG_LEVEL,
    OPT_ACCESS_LOG,
    OPT_TLS_CERT,
    OPT_TLS_KEY,
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
    {"max-url-bytes", required_argument, NULL, OPT_MAX_URL_BYTES},
    {"max-header-bytes", required_argument, NULL, OPT_MAX_HEADER_BYTES},
    {"drain-ms", required_argument, NULL, OPT_DRAIN_MS},
    {"shutdown-delay-ms", required_argument, NULL, OPT_SHUTDOWN_DELAY},
    {"max-resets-per-sec", required_argument, NULL, OPT_MAX_RESETS},
    {"log-level", required_argument, NULL, OPT_LOG_LEVEL},
    {"access-log", required_argument, NULL, OPT_ACCESS_LOG},
    {"tls-cert", required_argument, NULL, OPT_TLS_CERT},
    {"tls-key", required_argument, NULL, OPT_TLS_KEY},
    {"help", no_argument, NULL, OPT_HELP},
    {"version", no_argument, NULL, OPT_VERSION},
    {NULL, 0, NULL, 0},
};

static void usage(FILE *out, unsigned default_threads)
{
    fprintf(
        out,
        "Usage: corrd [OPTION]...\n"
        "Hold /start/{id} requests until /ack/{id} answers them or their timeout passes.\n"
        "\n"
        "  --listen HOST:PORT         address to listen on; repeatable; [::1]:PORT for IPv6;\n"
        "                             port 0 picks a free port (default 127.0.0.1:8080)\n"
        "  --threads N                worker threads, one event loop each (1-1024, default %u,\n"
        "                             the number of CPUs)\n"
        "  --default-timeout-ms MS    timeout of a waiter without ?timeout= (milliseconds,\n"
        "                             1-86400000, default 10000 or --max-timeout-ms if lower)\n"
        "  --max-timeout-ms MS        larger ?timeout= values are clamped to this (milliseconds,\n"
        "                             1-86400000, default 60000)\n"
        "  --max-ack-bytes BYTES      largest ack body; larger ones get 413 (bytes,\n"
        "                             0-1073741824, default 1048576)\n"
        "  --max-id-bytes BYTES       longest id after percent-decoding (bytes, 1-65535,\n"
        "                             default 256)\n"
        "  --max-pending N            pending waiters allowed at once; more get 503\n"
        "                             (1-100000000, default 100000)\n"
        "  --max-url-bytes BYTES      longest id and query after /start/ or /ack/; longer ones\n"
        "                             get 414 (bytes, 64-262144, default 8192)\n"
        "  --max-header-bytes BYTES   largest request header block; larger ones get 431\n"
        "                             (bytes, 256-65000, default 16384)\n"
        "  --drain-ms MS              on SIGTERM or SIGINT, how long to wait for connections\n"
        "                             to finish before exiting (milliseconds, 0-600000,\n"
        "                             default 5000)\n"
        "  --shutdown-delay-ms MS     on SIGTERM or SIGINT, how long /readyz answers 503 while\n"
        "                             corrd still serves, before the drain starts (milliseconds,\n"
        "                             0-600000, default 0)\n"
        "  --max-resets-per-sec N     close an HTTP/2 connection that resets more held streams\n"
        "                             than this in one second (1-1000000, default 500)\n"
        "  --log-level LEVEL          debug, info, warn or error (default info)\n"
        "  --access-log PATH          append an access log in Apache combined format to PATH\n"
        "                             (default: none)\n"
        "  --tls-cert FILE            PEM certificate chain; with --tls-key, every listener\n"
        "                             speaks TLS with ALPN h2 and http/1.1 (default: cleartext)\n"
        "  --tls-key FILE             PEM private key for --tls-cert\n"
        "\n"
        "Every option can also be set by an environment variable named CORR_ and the option in\n"
        "upper case with '_' for '-', e.g. CORR_MAX_PENDING=5000; a flag wins over the variable.\n"
        "CORR_LISTEN takes a comma-separated list of addresses.\n"
        "  --help                     print this help and exit\n"
        "  --version                  print the version and exit\n",
        default_threads);
}

/* Parse a decimal option value in [min, max]; print an error naming the option otherwise. */
static int parse_number(const char *option, const char *value, uint64_t min, uint64_t max,
                        uint64_t *out)
{
    char *end;

    errno = 0;
    unsigned long long v = strtoull(value, &end, 10);
    if (value[0] < '0' || value[0] > '9' || *end != '\0' || errno != 0 || v < min || v > max) {
        fprintf(stderr,
                "corrd: invalid value '%s' for --%s: expected an integer from %" PRIu64
                " to %" PRIu64 "\n",
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
        fprintf(stderr,
                "corrd: invalid value '%s' for --listen: expected HOST:PORT, e.g. 127.0.0.1:8080\n",
                value);
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

static int default_timeout_given; /* --default-timeout-ms or its variable was set */

static const char *const log_levels[] = {"debug", "info", "warn", "error"};

static int parse_log_level(const char *value, int *out)
{
    for (int i = 0; i < 4; i++) {
        if (strcmp(value, log_levels[i]) == 0) {
            *out = i;
            return 0;
        }
    }
    fprintf(stderr,
            "corrd: invalid value '%s' for --log-level: expected debug, info, warn or error\n",
            value);
    return -1;
}

static int add_listen(const char *value)
{
    struct corrd_options *opt = &corrd.options;

    opt->listens = realloc(opt->listens, (opt->listen_count + 1) * sizeof(*opt->listens));
    if (parse_listen(value, &opt->listens[opt->listen_count]) != 0)
        return -1;
    opt->listen_count++;
    return 0;
}

/* Apply one option value; @from_env selects the comma-separated form of CORR_LISTEN. */
static int apply_option(int id, const char *value, int from_env)
{
    struct corrd_options *opt = &corrd.options;
    uint64_t v = 0;
    int rc = 0;

    switch (id) {
    case OPT_LISTEN: {
        if (!from_env)
            return add_listen(value);
        char *copy = strdup(value), *save = NULL;
        for (char *item = strtok_r(copy, ",", &save); item != NULL && rc == 0;
             item = strtok_r(NULL, ",", &save))
            rc = add_listen(item);
        free(copy);
        return rc;
    }
    case OPT_THREADS:
        rc = parse_number("threads", value, 1, 1024, &v);
        opt->threads = (unsigned)v;
        return rc;
    case OPT_DEFAULT_TIMEOUT:
        default_timeout_given = 1;
        return parse_number("default-timeout-ms", value, 1, 86400000, &opt->default_timeout_ms);
    case OPT_MAX_TIMEOUT:
        return parse_number("max-timeout-ms", value, 1, 86400000, &opt->max_timeout_ms);
    case OPT_MAX_ACK_BYTES:
        rc = parse_number("max-ack-bytes", value, 0, 1073741824, &v);
        opt->max_ack_bytes = v;
        return rc;
    case OPT_MAX_ID_BYTES:
        rc = parse_number("max-id-bytes", value, 1, CORR_ID_MAX_BYTES, &v);
        opt->max_id_bytes = v;
        return rc;
    case OPT_MAX_PENDING:
        rc = parse_number("max-pending", value, 1, 100000000, &v);
        opt->max_pending = v;
        return rc;
    case OPT_MAX_URL_BYTES:
        rc = parse_number("max-url-bytes", value, 64, 262144, &v);
        opt->max_url_bytes = v;
        return rc;
    case OPT_MAX_HEADER_BYTES:
        rc = parse_number("max-header-bytes", value, 256, 65000, &v);
        opt->max_header_bytes = v;
        return rc;
    case OPT_DRAIN_MS:
        return parse_number("drain-ms", value, 0, 600000, &opt->drain_ms);
    case OPT_SHUTDOWN_DELAY:
        return parse_number("shutdown-delay-ms", value, 0, 600000, &opt->shutdown_delay_ms);
    case OPT_MAX_RESETS:
        rc = parse_number("max-resets-per-sec", value, 1, 1000000, &v);
        opt->max_resets_per_sec = (unsigned)v;
        return rc;
    case OPT_LOG_LEVEL:
        return parse_log_level(value, &opt->log_level);
    case OPT_ACCESS_LOG:
        opt->access_log = value;
        return 0;
    case OPT_TLS_CERT:
        opt->tls_cert = value;
        return 0;
    case OPT_TLS_KEY:
        opt->tls_key = value;
        return 0;
    default:
        return -1;
    }
}

/* Apply the CORR_* environment variables, which flags applied later override. */
/*
 * Apply the CORR_* environment variables of the options that no flag sets (@flag_given, indexed
 * by option id - OPT_LISTEN). An empty variable counts as unset.
 */
static int apply_environment(const bool *flag_given)
{
    for (const struct option *o = long_options; o->name != NULL; o++) {
        char name[64] = "CORR_";
        if (o->has_arg != required_argument || flag_given[o->val - OPT_LISTEN])
            continue;
        for (size_t i = 0; o->name[i] != '\0' && i + 6 < sizeof(name); i++)
            name[5 + i] = o->name[i] == '-' ? '_' : (char)toupper((unsigned char)o->name[i]);
        const char *value = getenv(name);
        if (value != NULL && value[0] != '\0' && apply_option(o->val, value, 1) != 0) {
            fprintf(stderr, "corrd: (the value above came from the environment variable %s)\n",
                    name);
            return -1;
        }
    }
    return 0;
}

static int check_options(void)
{
    struct corrd_options *opt = &corrd.options;

    if ((opt->tls_cert == NULL) != (opt->tls_key == NULL)) {
        fprintf(stderr, "corrd: --tls-cert and --tls-key must be given together\n");
        return -1;
    }
    /* Without an explicit default, the default timeout is capped like any requested timeout. */
    if (!default_timeout_given && opt->default_timeout_ms > opt->max_timeout_ms)
        opt->default_timeout_ms = opt->max_timeout_ms;
    if (opt->default_timeout_ms > opt->max_timeout_ms) {
        fprintf(stderr,
                "corrd: invalid value %" PRIu64 " for --default-timeout-ms: it must not exceed "
                "--max-timeout-ms (%" PRIu64 ")\n",
                opt->default_timeout_ms, opt->max_timeout_ms);
        return -1;
    }
    for (size_t i = 0; i < opt->listen_count; i++) {
        for (size_t j = 0; j < i; j++) {
            if (strcmp(opt->listens[i].host, opt->listens[j].host) == 0 &&
                strcmp(opt->listens[i].port, opt->listens[j].port) == 0 &&
                strcmp(opt->listens[i].port, "0") != 0) {
                fprintf(stderr, "corrd: --listen %s:%s is given more than once\n",
                        opt->listens[i].host, opt->listens[i].port);
                return -1;
            }
        }
    }
    if (opt->listen_count == 0)
        return add_listen("127.0.0.1:8080");
    return 0;
}

static int parse_options(int argc, char **argv)
{
    struct corrd_options *opt = &corrd.options;
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    int c;

    opt->threads = cpus > 0 ? (unsigned)cpus : 1;
    opt->default_timeout_ms = 10000;
    opt->max_timeout_ms = 60000;
    opt->max_ack_bytes = 1048576;
    opt->max_id_bytes = 256;
    opt->max_pending = 100000;
    opt->max_url_bytes = 8192;
    opt->max_header_bytes = 16384;
    opt->drain_ms = 5000;
    opt->max_resets_per_sec = 500;
    opt->log_level = CORRD_LOG_INFO;
    unsigned default_threads = opt->threads;

    /* Flags win over variables: note which options the flags set, apply the rest from the
     * environment, then apply the flags. */
    bool flag_given[OPT_HELP - OPT_LISTEN] = {false};
    while ((c = getopt_long(argc, argv, "", long_options, NULL)) != -1) {
        if (c == OPT_HELP) {
            usage(stdout, default_threads);
            exit(0);
        }
        if (c == OPT_VERSION) {
            printf("corrd %s\n", CORRD_VERSION);
            exit(0);
        }
        if (c == '?' || c == ':') {
            fprintf(stderr, "Try 'corrd --help' for the list of options.\n");
            return -1;
        }
        flag_given[c - OPT_LISTEN] = true;
    }
    if (apply_environment(flag_given) != 0)
        return -1;
    optind = 1;
    while ((c = getopt_long(argc, argv, "", long_options, NULL)) != -1) {
        if (apply_option(c, optarg, 0) != 0)
            return -1;
    }
    if (optind < argc) {
        fprintf(stderr, "corrd: unexpected argument '%s'; try 'corrd --help'\n", argv[optind]);
        return -1;
    }
    return check_options();
}

static int setup_tls(void)
{
    const char *cert = corrd.options.tls_cert, *key = corrd.options.tls_key;

    if (cert == NULL)
        return 0;
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION);
    if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1) {
        fprintf(stderr, "corrd: cannot load the certificate chain from --tls-cert '%s'\n", cert);
        SSL_CTX_free(ctx);
        return -1;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_check_private_key(ctx) != 1) {
        fprintf(stderr, "corrd: cannot load --tls-key '%s', or it does not match --tls-cert '%s'\n",
                key, cert);
        SSL_CTX_free(ctx);
        return -1;
    }
    h2o_ssl_register_alpn_protocols(ctx, h2o_http2_alpn_protocols);
    corrd.ssl_ctx = ctx;
    return 0;
}

/* Wait for SIGINT or SIGTERM until @deadline_ms (monotonic); returns the signal number, or 0. */
static int wait_signal_until(const sigset_t *set, uint64_t deadline_ms)
{
    uint64_t now = corrd_now_ms();
    uint64_t left = deadline_ms > now ? deadline_ms - now : 0;
    struct timespec ts = {.tv_sec = (time_t)(left / 1000),
                          .tv_nsec = (long)(left % 1000) * 1000000};
    int sig = sigtimedwait(set, NULL, &ts);
    return sig > 0 ? sig : 0;
}

/*
 * Exit at once on a second stop signal. Pending waiters still get their 503 first: if the drain
 * has not started (the signal came during --shutdown-delay-ms), start it and give the workers up
 * to 200 ms to answer their waiters.
 */
static void second_signal_exit(int sig)
{
    corrd_log(CORRD_LOG_WARN,
              "msg=\"second signal; exiting without waiting for the drain\" signal=%s",
              sig == SIGINT ? "SIGINT" : "SIGTERM");
    if (corrd_server_workers_draining() < corrd.options.threads) {
        corrd_server_request_shutdown();
        uint64_t deadline = corrd_now_ms() + 200;
        while (corrd_server_workers_draining() < corrd.options.threads && corrd_now_ms() < deadline)
            usleep(1000);
        usleep(20000); /* lets the loops flush the 503s they just queued */
    }
    _exit(0);
}

int main(int argc, char **argv)
{
    sigset_t stop_signals;
    int sig;

    if (parse_options(argc, argv) != 0)
        return 2;
    if (setup_tls() != 0)
        return 2;

    /* Workers inherit the mask, so only this thread receives the stop signals, via sigtimedwait. */
    sigemptyset(&stop_signals);
    sigaddset(&stop_signals, SIGINT);
    sigaddset(&stop_signals, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &stop_signals, NULL);
    /* h2o writes with writev and no MSG_NOSIGNAL; a write to a closed peer must not kill us. */
    signal(SIGPIPE, SIG_IGN);

    struct corrd_options *opt = &corrd.options;
    corrd_log(CORRD_LOG_INFO,
              "msg=starting version=%s threads=%u default_timeout_ms=%" PRIu64
              " max_timeout_ms=%" PRIu64 " max_ack_bytes=%zu max_id_bytes=%zu max_pending=%zu"
              " max_url_bytes=%zu max_header_bytes=%zu drain_ms=%" PRIu64
              " shutdown_delay_ms=%" PRIu64
              " max_resets_per_sec=%u log_level=%s tls=%s access_log=\"%s\"",
              CORRD_VERSION, opt->threads, opt->default_timeout_ms, opt->max_timeout_ms,
              opt->max_ack_bytes, opt->max_id_bytes, opt->max_pending, opt->max_url_bytes,
              opt->max_header_bytes, opt->drain_ms, opt->shutdown_delay_ms, opt->max_resets_per_sec,
              log_levels[opt->log_level], corrd.ssl_ctx != NULL ? "on" : "off",
              opt->access_log != NULL ? opt->access_log : "");
    if (corrd_server_start() != 0)
        return 1;

    while ((sig = wait_signal_until(&stop_signals, corrd_now_ms() + 1000)) == 0)
        ;
    ck_pr_store_uint(&corrd.not_ready, 1);
    corrd_log(CORRD_LOG_INFO,
              "msg=\"shutting down\" signal=%s shutdown_delay_ms=%" PRIu64 " drain_ms=%" PRIu64,
              sig == SIGINT ? "SIGINT" : "SIGTERM", corrd.options.shutdown_delay_ms,
              corrd.options.drain_ms);
    uint64_t drain_at = corrd_now_ms() + corrd.options.shutdown_delay_ms;
    while (corrd_now_ms() < drain_at) {
        if ((sig = wait_signal_until(&stop_signals, drain_at)) != 0)
            second_signal_exit(sig);
    }
    corrd_server_request_shutdown();
    while (corrd_server_workers_exited() < corrd.options.threads) {
        if ((sig = wait_signal_until(&stop_signals, corrd_now_ms() + 20)) != 0)
            second_signal_exit(sig);
    }
    corrd_server_join();
    corrd_log(CORRD_LOG_INFO, "msg=stopped");
    return 0;
}
