/*
 * Scale-out test: three corrd nodes behind a real HAProxy that routes by id, as in
 * deploy/haproxy.cfg.
 *
 *   scaleout CORRD_BINARY [HAPROXY_BINARY]
 *
 * 1. Starts three corrd on 127.0.0.1 (port 0, read back from their "msg=listening" log line)
 *    and HAProxy on two free loopback ports: the proxy and its statistics page.
 * 2. Runs 1000 start/ack pairs through HAProxy, 50 at a time. Every waiter must get 200 with its
 *    own ack body and every acker 202. HAProxy names the node that served each response in an
 *    X-Corr-Node header (added for this test only), and the waiter and every ack attempt for one
 *    id must name the same node.
 * 3. Starts 60 waiters through HAProxy, finds the node of each by asking every node directly,
 *    and sends SIGTERM to the node with the most pending waiters. Its waiters must get 503 from
 *    the drain soon, and it must exit with status 0. Once HAProxy's /readyz check marks it DOWN,
 *    acks for its ids must get 404 from a survivor within a second. Consistent hashing moves an
 *    id when its node fails: the stopped node's ids now hash to the survivors, which have no
 *    waiter for them. It moves only those ids, so acks for the waiters on the survivors must
 *    still reach them (202, and 200 for the waiter).
 * 4. Runs 500 more pairs through HAProxy, which must all meet on the two survivors.
 *
 * Exits 0 on success, 1 on failure, and 77 (CTest SKIP_RETURN_CODE) when HAProxy is not
 * installed. Every child is stopped by its PID; an alarm bounds the whole run.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>

#define NODE_COUNT 3
#define PAIRS_BEFORE 1000
#define PAIRS_AFTER 500
#define PAIR_CONCURRENCY 50
#define HELD_WAITERS 60
/* Waiter timeouts; corrd's --max-timeout-ms and HAProxy's timeouts sit above the longest. */
#define PAIR_TIMEOUT_MS 15000
#define HELD_TIMEOUT_MS 20000
#define MAX_TIMEOUT_MS 30000
/* An ack that gets 404 because its waiter is not registered yet is retried this often. */
#define ACK_RETRY_MS 10
#define ACK_ATTEMPTS 300
/* Acks for the stopped node's ids must get their 404 response within this. */
#define FAST_404_S 1.0
#define TEST_DEADLINE_S 240
#define HAPROXY_DEFAULT "/usr/sbin/haproxy"

struct child {
    const char *name;
    pid_t pid; /* 0 when not running */
    char log_path[320];
    int port;
};

/* One HTTP request run by the shared curl multi handle. */
struct xfer {
    CURL *easy;
    char *body;
    size_t body_len;
    size_t body_cap;
    char *post_body; /* request body; NULL sends a GET */
    long status;
    CURLcode result;
    char error[CURL_ERROR_SIZE];
    char served_by[16]; /* X-Corr-Node response header: the HAProxy server name */
    double started;
    double finished;
    bool running;
    bool done;
};

/* A start/ack pair: the waiter's GET /start/{id} and the POST /ack/{id} that completes it. */
struct pair {
    char id[64];
    char ack_body[96];
    struct xfer waiter;
    struct xfer acker;
    unsigned ack_attempts;
    double ack_retry_at;       /* when to send the ack again; 0 when none is scheduled */
    char first_ack_node[16];   /* served_by of the first ack attempt */
    bool ack_nodes_differ;     /* two ack attempts for this id reached different nodes */
    bool ack_finished;         /* the acker got a final response or ran out of attempts */
    bool counted;              /* run_pairs has checked and counted this pair */
    int node;                  /* index of the node where the waiter is pending, or -1 */
};

static struct child nodes[NODE_COUNT];
static struct child haproxy = {.name = "haproxy"};
static const char *corrd_path;
static const char *haproxy_path;
static char work_dir[200];
static int proxy_port;
static int stats_port;
static CURLM *multi;
static int failures;

/* ---- Utilities ---- */

static double now_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void sleep_ms(long ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L};

    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

static void fail(const char *format, ...) __attribute__((format(printf, 1, 2)));
static void fail(const char *format, ...)
{
    va_list args;

    failures++;
    printf("FAIL: ");
    va_start(args, format);
    vprintf(format, args);
    va_end(args);
    putchar('\n');
}

/* Returns a loopback port that was free a moment ago; HAProxy binds it right after. */
static int pick_free_port(void)
{
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(addr);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int port = -1;

    if (fd < 0)
        return -1;
    if (bind(fd, (struct sockaddr *)&addr, sizeof(addr)) == 0 &&
        getsockname(fd, (struct sockaddr *)&addr, &len) == 0)
        port = ntohs(addr.sin_port);
    close(fd);
    return port;
}

/* Prints the last @max_bytes of a child's log, each line prefixed with its name. */
static void print_log_tail(const struct child *child, long max_bytes)
{
    FILE *log = fopen(child->log_path, "r");
    char line[1024];

    if (log == NULL)
        return;
    if (fseek(log, 0, SEEK_END) == 0 && ftell(log) > max_bytes) {
        fseek(log, -max_bytes, SEEK_END);
        if (fgets(line, sizeof(line), log) == NULL) /* skip the partial first line */
            line[0] = '\0';
    } else {
        rewind(log);
    }
    while (fgets(line, sizeof(line), log) != NULL)
        printf("  %s: %s", child->name, line);
    fclose(log);
}

/* ---- Child processes ---- */

static void kill_all_children(void)
{
    for (int i = 0; i < NODE_COUNT; i++) {
        if (nodes[i].pid > 0)
            kill(nodes[i].pid, SIGKILL);
    }
    if (haproxy.pid > 0)
        kill(haproxy.pid, SIGKILL);
}

static void on_alarm(int signo)
{
    static const char message[] = "FAIL: test deadline passed; killing the children\n";

    (void)signo;
    kill_all_children();
    if (write(STDOUT_FILENO, message, sizeof(message) - 1) < 0)
        _exit(1);
    _exit(1);
}

/* Forks and runs @argv with stdout and stderr appended to child->log_path. */
static bool spawn(struct child *child, char *const argv[])
{
    int log_fd = open(child->log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);

    if (log_fd < 0) {
        fail("failed to create %s: %s", child->log_path, strerror(errno));
        return false;
    }
    pid_t pid = fork();
    if (pid < 0) {
        fail("fork failed for %s: %s", child->name, strerror(errno));
        close(log_fd);
        return false;
    }
    if (pid == 0) {
        /* The child dies with the test, whatever stops the test. */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        dup2(log_fd, STDOUT_FILENO);
        dup2(log_fd, STDERR_FILENO);
        execv(argv[0], argv);
        fprintf(stderr, "exec %s failed: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    close(log_fd);
    child->pid = pid;
    return true;
}

/*
 * Waits up to @timeout_s for the child to exit and returns its wait status, or -1 when it is
 * still running. Clears child->pid once it has been reaped.
 */
static int wait_exit(struct child *child, double timeout_s)
{
    double deadline = now_s() + timeout_s;
    int status;

    while (child->pid > 0) {
        pid_t pid = waitpid(child->pid, &status, WNOHANG);
        if (pid == child->pid) {
            child->pid = 0;
            return status;
        }
        if (pid < 0 || now_s() > deadline)
            return -1;
        sleep_ms(10);
    }
    return -1;
}

/* Sends SIGTERM, waits up to 10 s, then SIGKILL. Returns the wait status, or -1 after SIGKILL. */
static int stop_child(struct child *child)
{
    if (child->pid <= 0)
        return -1;
    kill(child->pid, SIGTERM);
    int status = wait_exit(child, 10.0);
    if (status == -1 && child->pid > 0) {
        fail("%s (pid %d) did not exit within 10 s of SIGTERM; sending SIGKILL", child->name,
             (int)child->pid);
        kill(child->pid, SIGKILL);
        wait_exit(child, 5.0);
        return -1;
    }
    return status;
}

/* Returns the port from corrd's "msg=listening addr=127.0.0.1:PORT" log line, or 0. */
static int find_listening_port(const char *log_path)
{
    FILE *log = fopen(log_path, "r");
    char line[1024];
    int port = 0;

    if (log == NULL)
        return 0;
    while (port == 0 && fgets(line, sizeof(line), log) != NULL) {
        const char *addr = strstr(line, "addr=127.0.0.1:");

        if (strstr(line, "msg=listening") != NULL && addr != NULL)
            port = atoi(addr + strlen("addr=127.0.0.1:"));
    }
    fclose(log);
    return port;
}

static bool start_node(int index)
{
    struct child *node = &nodes[index];
    char max_timeout[32];

    snprintf(max_timeout, sizeof(max_timeout), "%d", MAX_TIMEOUT_MS);
    char *argv[] = {(char *)corrd_path, "--listen", "127.0.0.1:0", "--threads", "2",
                    "--max-timeout-ms", max_timeout, "--drain-ms", "3000", NULL};

    if (!spawn(node, argv))
        return false;
    double deadline = now_s() + 10.0;
    while (now_s() < deadline) {
        node->port = find_listening_port(node->log_path);
        if (node->port > 0) {
            printf("%s: pid %d listening on 127.0.0.1:%d\n", node->name, (int)node->pid,
                   node->port);
            return true;
        }
        if (wait_exit(node, 0) != -1 || node->pid == 0)
            break;
        sleep_ms(10);
    }
    fail("%s did not log its listening port within 10 s", node->name);
    print_log_tail(node, 4096);
    return false;
}

/*
 * Writes the HAProxy configuration. It mirrors deploy/haproxy.cfg with loopback addresses and a
 * faster health check (inter 200ms fall 1), so a stopped node is marked DOWN within about 0.2 s.
 */
static bool write_haproxy_config(const char *path)
{
    FILE *cfg = fopen(path, "w");

    if (cfg == NULL) {
        fail("failed to create %s: %s", path, strerror(errno));
        return false;
    }
    fprintf(cfg,
            "global\n"
            "    maxconn 4096\n"
            "\n"
            "defaults\n"
            "    mode http\n"
            "    timeout connect 1s\n"
            "    timeout client %ds\n"
            "    timeout server %ds\n"
            "    timeout http-request 10s\n"
            "    timeout http-keep-alive 10s\n"
            "    timeout queue 5s\n"
            "    no option redispatch\n"
            "    retries 2\n"
            "\n"
            "listen stats\n"
            "    bind 127.0.0.1:%d\n"
            "    stats enable\n"
            "    stats uri /stats\n"
            "\n"
            "frontend corr\n"
            "    bind 127.0.0.1:%d\n"
            "    default_backend corrd\n"
            "\n"
            "backend corrd\n"
            "    balance hash path,field(3,/),url_dec\n"
            "    hash-type consistent\n"
            "    option httpchk\n"
            "    http-check send meth GET uri /readyz ver HTTP/1.1 hdr Host corrd\n"
            "    http-check expect status 200\n"
            "    default-server inter 200ms fall 1 rise 1\n"
            "    http-response set-header X-Corr-Node %%s\n",
            MAX_TIMEOUT_MS / 1000 + 10, MAX_TIMEOUT_MS / 1000 + 10, stats_port, proxy_port);
    for (int i = 0; i < NODE_COUNT; i++)
        fprintf(cfg, "    server %s 127.0.0.1:%d check\n", nodes[i].name, nodes[i].port);
    if (fclose(cfg) != 0) {
        fail("failed to write %s: %s", path, strerror(errno));
        return false;
    }
    return true;
}

/* ---- HTTP transfers on one curl multi handle ---- */

static size_t on_body(char *data, size_t size, size_t count, void *arg)
{
    struct xfer *x = arg;
    size_t len = size * count;

    if (x->body_len + len + 1 > x->body_cap) {
        size_t cap = x->body_cap == 0 ? 256 : x->body_cap;
        while (cap < x->body_len + len + 1)
            cap *= 2;
        char *body = realloc(x->body, cap);
        if (body == NULL)
            return 0;
        x->body = body;
        x->body_cap = cap;
    }
    memcpy(x->body + x->body_len, data, len);
    x->body_len += len;
    x->body[x->body_len] = '\0';
    return len;
}

/* Stores the X-Corr-Node response header in x->served_by. */
static size_t on_header(char *data, size_t size, size_t count, void *arg)
{
    static const char name[] = "x-corr-node:";
    struct xfer *x = arg;
    size_t len = size * count;

    if (len > strlen(name) && strncasecmp(data, name, strlen(name)) == 0) {
        const char *value = data + strlen(name);
        size_t value_len = len - strlen(name);

        while (value_len > 0 && (*value == ' ' || *value == '\t')) {
            value++;
            value_len--;
        }
        while (value_len > 0 && (value[value_len - 1] == '\r' || value[value_len - 1] == '\n'))
            value_len--;
        if (value_len >= sizeof(x->served_by))
            value_len = sizeof(x->served_by) - 1;
        memcpy(x->served_by, value, value_len);
        x->served_by[value_len] = '\0';
    }
    return len;
}

/* Starts a request to 127.0.0.1:@port; @post_body NULL sends a GET. A done xfer may be reused. */
static void xfer_start(struct xfer *x, int port, const char *path, const char *post_body,
                       long timeout_ms)
{
    char url[256];

    snprintf(url, sizeof(url), "http://127.0.0.1:%d%s", port, path);
    x->body_len = 0;
    if (x->body != NULL)
        x->body[0] = '\0';
    free(x->post_body);
    x->post_body = post_body != NULL ? strdup(post_body) : NULL;
    x->status = 0;
    x->result = CURLE_OK;
    x->error[0] = '\0';
    x->served_by[0] = '\0';
    x->done = false;
    x->running = true;
    x->started = now_s();
    x->easy = curl_easy_init();
    if (x->easy == NULL) {
        fprintf(stderr, "curl_easy_init failed\n");
        abort();
    }
    curl_easy_setopt(x->easy, CURLOPT_URL, url);
    curl_easy_setopt(x->easy, CURLOPT_NOPROXY, "*");
    curl_easy_setopt(x->easy, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(x->easy, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
    curl_easy_setopt(x->easy, CURLOPT_TIMEOUT_MS, timeout_ms);
    curl_easy_setopt(x->easy, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(x->easy, CURLOPT_WRITEDATA, x);
    curl_easy_setopt(x->easy, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(x->easy, CURLOPT_HEADERDATA, x);
    curl_easy_setopt(x->easy, CURLOPT_ERRORBUFFER, x->error);
    curl_easy_setopt(x->easy, CURLOPT_PRIVATE, x);
    if (x->post_body != NULL) {
        curl_easy_setopt(x->easy, CURLOPT_POSTFIELDS, x->post_body);
        curl_easy_setopt(x->easy, CURLOPT_POSTFIELDSIZE, (long)strlen(x->post_body));
    }
    curl_multi_add_handle(multi, x->easy);
}

static void xfer_free(struct xfer *x)
{
    if (x->running) {
        curl_multi_remove_handle(multi, x->easy);
        curl_easy_cleanup(x->easy);
        x->running = false;
    }
    free(x->body);
    free(x->post_body);
    memset(x, 0, sizeof(*x));
}

/* Describes how a transfer ended, for failure messages. */
static const char *xfer_outcome(const struct xfer *x)
{
    /* Rotating buffers, so that one message can describe two transfers. */
    static char buffers[2][512];
    static unsigned next;
    char *text = buffers[next++ % 2];

    if (!x->done)
        snprintf(text, sizeof(buffers[0]), "still running");
    else if (x->result != CURLE_OK)
        snprintf(text, sizeof(buffers[0]), "curl error %d (%s)", (int)x->result,
                 x->error[0] != '\0' ? x->error : curl_easy_strerror(x->result));
    else
        snprintf(text, sizeof(buffers[0]), "status %ld from %s, body \"%.200s\"", x->status,
                 x->served_by[0] != '\0' ? x->served_by : "no X-Corr-Node",
                 x->body != NULL ? x->body : "");
    return text;
}

/* Moves data for up to @wait_ms and marks the transfers that completed as done. */
static void multi_step(int wait_ms)
{
    struct CURLMsg *msg;
    int running;
    int left;

    curl_multi_perform(multi, &running);
    curl_multi_poll(multi, NULL, 0, wait_ms, NULL);
    curl_multi_perform(multi, &running);
    while ((msg = curl_multi_info_read(multi, &left)) != NULL) {
        struct xfer *x;

        if (msg->msg != CURLMSG_DONE)
            continue;
        curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&x);
        x->result = msg->data.result;
        curl_easy_getinfo(msg->easy_handle, CURLINFO_RESPONSE_CODE, &x->status);
        curl_multi_remove_handle(multi, msg->easy_handle);
        curl_easy_cleanup(msg->easy_handle);
        x->easy = NULL;
        x->running = false;
        x->done = true;
        x->finished = now_s();
    }
}

/* Runs one transfer to completion while the others keep moving. */
static void xfer_run(struct xfer *x, int port, const char *path, const char *post_body,
                     long timeout_ms)
{
    xfer_start(x, port, path, post_body, timeout_ms);
    while (!x->done)
        multi_step(20);
}

/* ---- HAProxy state ---- */

/*
 * Reads the status column ("UP", "DOWN", ...) of every node from HAProxy's CSV statistics.
 * Returns false when the page could not be read.
 */
static bool read_server_status(char status[NODE_COUNT][16])
{
    struct xfer x = {0};
    bool ok = false;

    for (int i = 0; i < NODE_COUNT; i++)
        snprintf(status[i], 16, "?");
    xfer_run(&x, stats_port, "/stats;csv", NULL, 2000);
    if (x.result != CURLE_OK || x.status != 200 || x.body == NULL)
        goto out;
    /* The header line is "# pxname,svname,...,status,...". */
    int status_column = -1;
    int column = 0;
    char *saveptr;
    char *line = strtok_r(x.body, "\n", &saveptr);
    if (line == NULL || strncmp(line, "# ", 2) != 0)
        goto out;
    for (char *field = line + 2; field != NULL; column++) {
        char *comma = strchr(field, ',');
        size_t len = comma != NULL ? (size_t)(comma - field) : strlen(field);
        if (len == strlen("status") && strncmp(field, "status", len) == 0)
            status_column = column;
        field = comma != NULL ? comma + 1 : NULL;
    }
    if (status_column < 0)
        goto out;
    while ((line = strtok_r(NULL, "\n", &saveptr)) != NULL) {
        char *fields[64];
        int count = 0;

        for (char *field = line; field != NULL && count < 64; count++) {
            fields[count] = field;
            field = strchr(field, ',');
            if (field != NULL)
                *field++ = '\0';
        }
        if (count <= status_column || strcmp(fields[0], "corrd") != 0)
            continue;
        for (int i = 0; i < NODE_COUNT; i++) {
            if (strcmp(fields[1], nodes[i].name) == 0)
                snprintf(status[i], 16, "%s", fields[status_column]);
        }
    }
    ok = true;
out:
    xfer_free(&x);
    return ok;
}

/* Polls HAProxy until node i is UP exactly when want_up[i]; returns false after @timeout_s. */
static bool wait_server_status(const bool want_up[NODE_COUNT], double timeout_s)
{
    double deadline = now_s() + timeout_s;
    char status[NODE_COUNT][16];

    while (now_s() < deadline) {
        bool match = read_server_status(status);

        for (int i = 0; match && i < NODE_COUNT; i++)
            match = (strcmp(status[i], "UP") == 0) == want_up[i];
        if (match)
            return true;
        multi_step(50);
    }
    fail("HAProxy did not report the expected server states within %.0f s: %s=%s %s=%s %s=%s",
         timeout_s, nodes[0].name, status[0], nodes[1].name, status[1], nodes[2].name,
         status[2]);
    return false;
}

static bool start_haproxy(void)
{
    char cfg_path[300];
    char *argv[] = {(char *)haproxy_path, "-db", "-f", cfg_path, NULL};
    bool all_up[NODE_COUNT] = {true, true, true};

    snprintf(cfg_path, sizeof(cfg_path), "%s/haproxy.cfg", work_dir);
    /* The free ports may be taken again before HAProxy binds them, so try a few times. */
    for (int attempt = 1; attempt <= 3; attempt++) {
        proxy_port = pick_free_port();
        stats_port = pick_free_port();
        if (proxy_port <= 0 || stats_port <= 0 || proxy_port == stats_port)
            continue;
        if (!write_haproxy_config(cfg_path) || !spawn(&haproxy, argv))
            return false;
        /* Wait until the statistics page responds and every node passed its health check. */
        double deadline = now_s() + 10.0;
        char status[NODE_COUNT][16];
        while (now_s() < deadline && haproxy.pid > 0) {
            if (read_server_status(status))
                break;
            wait_exit(&haproxy, 0);
            sleep_ms(20);
        }
        if (haproxy.pid > 0) {
            printf("haproxy: pid %d on 127.0.0.1:%d, statistics on 127.0.0.1:%d\n",
                   (int)haproxy.pid, proxy_port, stats_port);
            return wait_server_status(all_up, 10.0);
        }
        printf("haproxy exited at start (attempt %d); its log:\n", attempt);
        print_log_tail(&haproxy, 2048);
    }
    fail("HAProxy did not start");
    return false;
}

/* ---- Start/ack pairs ---- */

static void pair_init(struct pair *p, const char *prefix, unsigned index)
{
    memset(p, 0, sizeof(*p));
    snprintf(p->id, sizeof(p->id), "%s-%u", prefix, index);
    snprintf(p->ack_body, sizeof(p->ack_body), "ack body for %.63s", p->id);
    p->node = -1;
}

static void pair_start_waiter(struct pair *p, long timeout_ms)
{
    char path[128];

    snprintf(path, sizeof(path), "/start/%.63s?timeout=%ld", p->id, timeout_ms);
    xfer_start(&p->waiter, proxy_port, path, NULL, timeout_ms + 10000);
}

static void pair_send_ack(struct pair *p)
{
    char path[128];

    snprintf(path, sizeof(path), "/ack/%.63s", p->id);
    p->ack_attempts++;
    p->ack_retry_at = 0;
    xfer_start(&p->acker, proxy_port, path, p->ack_body, 10000);
}

/*
 * Advances a pair after a multi_step: retries an ack that got 404 while the waiter is still
 * running (the ack overtook the waiter's registration), and records when the acker is finished.
 */
static void pair_update(struct pair *p, double now)
{
    if (p->ack_finished)
        return;
    if (p->ack_retry_at != 0) {
        if (now >= p->ack_retry_at)
            pair_send_ack(p);
        return;
    }
    if (!p->acker.done)
        return;
    if (p->ack_attempts == 1)
        snprintf(p->first_ack_node, sizeof(p->first_ack_node), "%s", p->acker.served_by);
    else if (strcmp(p->first_ack_node, p->acker.served_by) != 0)
        p->ack_nodes_differ = true;
    bool early = p->acker.result == CURLE_OK && p->acker.status == 404;
    if (early && !p->waiter.done && p->ack_attempts < ACK_ATTEMPTS) {
        p->ack_retry_at = now + ACK_RETRY_MS / 1000.0;
        return;
    }
    p->ack_finished = true;
}

/* Checks that the waiter got the ack's body, the ack got 202, and one node served them all. */
static bool pair_met(const struct pair *p)
{
    return p->waiter.done && p->waiter.result == CURLE_OK && p->waiter.status == 200 &&
           p->waiter.body != NULL && strcmp(p->waiter.body, p->ack_body) == 0 &&
           p->acker.done && p->acker.result == CURLE_OK && p->acker.status == 202 &&
           p->waiter.served_by[0] != '\0' &&
           strcmp(p->waiter.served_by, p->acker.served_by) == 0 && !p->ack_nodes_differ;
}

/* Runs @count pairs through HAProxy, at most PAIR_CONCURRENCY at once; returns how many met. */
static unsigned run_pairs(const char *prefix, unsigned count)
{
    struct pair *pairs = calloc(count, sizeof(*pairs));
    unsigned next = 0;
    unsigned active = 0;
    unsigned met = 0;
    unsigned retries = 0;
    unsigned reported = 0;
    double start = now_s();
    double deadline = start + 120.0;

    if (pairs == NULL)
        abort();
    while ((next < count || active > 0) && now_s() < deadline) {
        while (next < count && active < PAIR_CONCURRENCY) {
            struct pair *p = &pairs[next];

            pair_init(p, prefix, next++);
            pair_start_waiter(p, PAIR_TIMEOUT_MS);
            /* Give the waiter a head start; an ack that still arrives first is retried. */
            p->ack_retry_at = now_s() + 0.002;
            active++;
        }
        multi_step(ACK_RETRY_MS);
        double now = now_s();
        for (unsigned i = 0; i < next; i++) {
            struct pair *p = &pairs[i];

            if (p->counted)
                continue;
            pair_update(p, now);
            if (!p->waiter.done || !p->ack_finished)
                continue;
            p->counted = true;
            active--;
            retries += p->ack_attempts > 0 ? p->ack_attempts - 1 : 0;
            if (pair_met(p)) {
                met++;
            } else if (reported++ < 10) {
                fail("pair %s did not meet: waiter %s", p->id, xfer_outcome(&p->waiter));
                printf("      acker after %u attempts: %s%s\n", p->ack_attempts,
                       xfer_outcome(&p->acker),
                       p->ack_nodes_differ ? " (ack attempts reached different nodes)" : "");
            }
        }
    }
    if (next < count || active > 0)
        fail("%s: %u pairs did not finish within 120 s", prefix, count - (next - active));
    printf("%s: %u of %u pairs met in %.2f s, %u at a time; %u acks overtook their waiter and "
           "were sent again\n", prefix, met, count, now_s() - start, PAIR_CONCURRENCY, retries);
    for (unsigned i = 0; i < next; i++) {
        xfer_free(&pairs[i].waiter);
        xfer_free(&pairs[i].acker);
    }
    free(pairs);
    return met;
}

/*
 * Finds the node where each waiter is pending by asking every node directly with
 * GET /start/{id}?timeout=1: 409 means a waiter for the id is pending there, 504 means none is
 * (the probe then held the id for 1 ms). All probes run at once, and rounds repeat until every
 * id is found on exactly one node.
 */
static bool locate_waiters(struct pair *held, unsigned count)
{
    struct xfer *probes = calloc((size_t)count * NODE_COUNT, sizeof(*probes));
    double deadline = now_s() + 10.0;
    bool ok = false;

    if (probes == NULL)
        abort();
    while (!ok && now_s() < deadline) {
        for (unsigned i = 0; i < count; i++) {
            char path[128];

            snprintf(path, sizeof(path), "/start/%.63s?timeout=1", held[i].id);
            for (int n = 0; n < NODE_COUNT; n++)
                xfer_start(&probes[i * NODE_COUNT + n], nodes[n].port, path, NULL, 5000);
        }
        for (unsigned k = 0; k < count * NODE_COUNT; k++) {
            while (!probes[k].done)
                multi_step(10);
        }
        unsigned located = 0;
        for (unsigned i = 0; i < count; i++) {
            int hits = 0;

            held[i].node = -1;
            for (int n = 0; n < NODE_COUNT; n++) {
                struct xfer *probe = &probes[i * NODE_COUNT + n];

                if (probe->result == CURLE_OK && probe->status == 409) {
                    held[i].node = n;
                    hits++;
                } else if (probe->result != CURLE_OK || probe->status != 504) {
                    fail("probe for %s on %s: expected 409 or 504, got %s", held[i].id,
                         nodes[n].name, xfer_outcome(probe));
                    goto out;
                }
            }
            if (hits > 1) {
                fail("waiter %s is pending on %d nodes", held[i].id, hits);
                goto out;
            }
            located += hits;
        }
        ok = located == count;
        if (!ok)
            multi_step(50);
    }
    if (!ok)
        fail("not every held waiter was pending on a node within 10 s");
out:
    for (unsigned k = 0; k < count * NODE_COUNT; k++)
        xfer_free(&probes[k]);
    free(probes);
    return ok;
}

/* Keeps HELD_WAITERS waiters pending, stops the node with the most and checks their outcome. */
static void test_node_stop(int *victim_out)
{
    struct pair held[HELD_WAITERS];
    unsigned per_node[NODE_COUNT] = {0};
    int victim = 0;

    *victim_out = -1;
    for (unsigned i = 0; i < HELD_WAITERS; i++) {
        pair_init(&held[i], "held", i);
        pair_start_waiter(&held[i], HELD_TIMEOUT_MS);
    }
    if (!locate_waiters(held, HELD_WAITERS))
        goto out;
    for (unsigned i = 0; i < HELD_WAITERS; i++)
        per_node[held[i].node]++;
    for (int n = 1; n < NODE_COUNT; n++) {
        if (per_node[n] > per_node[victim])
            victim = n;
    }
    printf("held waiters per node: %s=%u %s=%u %s=%u\n", nodes[0].name, per_node[0],
           nodes[1].name, per_node[1], nodes[2].name, per_node[2]);
    for (int n = 0; n < NODE_COUNT; n++) {
        if (per_node[n] == 0)
            fail("HAProxy sent none of the %d held ids to %s", HELD_WAITERS, nodes[n].name);
    }
    for (unsigned i = 0; i < HELD_WAITERS; i++) {
        if (held[i].waiter.done)
            fail("held waiter %s ended before the node stopped: %s", held[i].id,
                 xfer_outcome(&held[i].waiter));
    }

    printf("stopping %s (pid %d) with SIGTERM\n", nodes[victim].name, (int)nodes[victim].pid);
    double stopped_at = now_s();
    kill(nodes[victim].pid, SIGTERM);
    *victim_out = victim;

    bool want_up[NODE_COUNT] = {true, true, true};
    want_up[victim] = false;
    if (!wait_server_status(want_up, 5.0))
        goto out;
    printf("haproxy marked %s DOWN after %.2f s\n", nodes[victim].name, now_s() - stopped_at);

    /* The drain responds 503 to every pending waiter at once, long before their timeout. */
    double drain_deadline = now_s() + 5.0;
    for (unsigned i = 0; i < HELD_WAITERS; i++) {
        while (held[i].node == victim && !held[i].waiter.done && now_s() < drain_deadline)
            multi_step(20);
    }
    unsigned released = 0;
    for (unsigned i = 0; i < HELD_WAITERS; i++) {
        if (held[i].node != victim)
            continue;
        if (held[i].waiter.done && held[i].waiter.result == CURLE_OK &&
            held[i].waiter.status == 503)
            released++;
        else
            fail("waiter %s on the stopped node: expected 503 from the drain, got %s",
                 held[i].id, xfer_outcome(&held[i].waiter));
    }
    printf("%u waiters on %s were released with 503\n", released, nodes[victim].name);

    int status = wait_exit(&nodes[victim], 10.0);
    if (status == -1)
        fail("%s did not exit within 10 s of SIGTERM", nodes[victim].name);
    else if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        fail("%s exited with wait status 0x%x, expected exit status 0", nodes[victim].name,
             (unsigned)status);

    /*
     * Ack every held id through HAProxy, all at once. The stopped node's ids now hash to a
     * survivor, which has no waiter for them: 404 at once. The survivors' ids did not move: 202,
     * and their waiters get 200 with the ack's body.
     */
    for (unsigned i = 0; i < HELD_WAITERS; i++)
        pair_send_ack(&held[i]);
    double acks_deadline = now_s() + 10.0;
    for (unsigned i = 0; i < HELD_WAITERS; i++) {
        while ((!held[i].acker.done || (held[i].node != victim && !held[i].waiter.done)) &&
               now_s() < acks_deadline)
            multi_step(20);
    }
    unsigned fast_404 = 0;
    unsigned met = 0;
    double slowest_404 = 0;
    for (unsigned i = 0; i < HELD_WAITERS; i++) {
        struct pair *p = &held[i];

        if (p->node != victim) {
            if (pair_met(p) && strcmp(p->acker.served_by, nodes[p->node].name) == 0)
                met++;
            else
                fail("held pair %s on %s did not meet there: waiter %s, acker %s", p->id,
                     nodes[p->node].name, xfer_outcome(&p->waiter), xfer_outcome(&p->acker));
            continue;
        }
        double elapsed = p->acker.finished - p->acker.started;
        if (p->acker.done && p->acker.result == CURLE_OK && p->acker.status == 404 &&
            elapsed < FAST_404_S && p->acker.served_by[0] != '\0' &&
            strcmp(p->acker.served_by, nodes[victim].name) != 0) {
            fast_404++;
            if (elapsed > slowest_404)
                slowest_404 = elapsed;
        } else {
            fail("ack for %s, whose node stopped: expected 404 from a surviving node within "
                 "%.1f s, got %s after %.2f s", p->id, FAST_404_S, xfer_outcome(&p->acker),
                 elapsed);
        }
    }
    printf("acks after the stop: %u of %u for the stopped node got 404 (slowest %.3f s); "
           "%u of %u pairs on the survivors met\n", fast_404, per_node[victim], slowest_404, met,
           HELD_WAITERS - per_node[victim]);
out:
    for (unsigned i = 0; i < HELD_WAITERS; i++) {
        xfer_free(&held[i].waiter);
        xfer_free(&held[i].acker);
    }
}

/* Creates the directory for logs and the HAProxy configuration; removed after a passing run. */
static bool make_work_dir(void)
{
    const char *tmp = getenv("TMPDIR");

    snprintf(work_dir, sizeof(work_dir), "%s/corr-scaleout.XXXXXX",
             tmp != NULL && tmp[0] != '\0' ? tmp : "/tmp");
    if (mkdtemp(work_dir) == NULL) {
        fprintf(stderr, "mkdtemp %s failed: %s\n", work_dir, strerror(errno));
        return false;
    }
    for (int i = 0; i < NODE_COUNT; i++)
        snprintf(nodes[i].log_path, sizeof(nodes[i].log_path), "%s/%s.log", work_dir,
                 nodes[i].name);
    snprintf(haproxy.log_path, sizeof(haproxy.log_path), "%s/haproxy.log", work_dir);
    return true;
}

static void remove_work_dir(void)
{
    char path[300];

    for (int i = 0; i < NODE_COUNT; i++)
        unlink(nodes[i].log_path);
    unlink(haproxy.log_path);
    snprintf(path, sizeof(path), "%s/haproxy.cfg", work_dir);
    unlink(path);
    rmdir(work_dir);
}

static void raise_fd_limit(void)
{
    struct rlimit limit;

    if (getrlimit(RLIMIT_NOFILE, &limit) == 0 && limit.rlim_cur < limit.rlim_max) {
        limit.rlim_cur = limit.rlim_max;
        setrlimit(RLIMIT_NOFILE, &limit);
    }
}

int main(int argc, char **argv)
{
    static const char *const names[NODE_COUNT] = {"corrd1", "corrd2", "corrd3"};
    int victim = -1;

    if (argc < 2 || argc > 3) {
        fprintf(stderr, "usage: %s CORRD_BINARY [HAPROXY_BINARY]\n", argv[0]);
        return 2;
    }
    corrd_path = argv[1];
    haproxy_path = argc > 2 ? argv[2] : HAPROXY_DEFAULT;
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (access(haproxy_path, X_OK) != 0) {
        printf("SKIP: %s is not installed (apt-get install haproxy); the scale-out test needs "
               "it\n", haproxy_path);
        return 77;
    }
    if (access(corrd_path, X_OK) != 0) {
        fprintf(stderr, "corrd binary %s is not executable: %s\n", corrd_path, strerror(errno));
        return 2;
    }
    for (int i = 0; i < NODE_COUNT; i++)
        nodes[i].name = names[i];
    if (!make_work_dir())
        return 1;
    signal(SIGPIPE, SIG_IGN);
    signal(SIGALRM, on_alarm);
    alarm(TEST_DEADLINE_S);
    raise_fd_limit();
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        fprintf(stderr, "curl_global_init failed\n");
        return 1;
    }
    multi = curl_multi_init();

    bool started = true;
    for (int i = 0; started && i < NODE_COUNT; i++)
        started = start_node(i);
    if (started && start_haproxy()) {
        unsigned met = run_pairs("before", PAIRS_BEFORE);
        if (met != PAIRS_BEFORE)
            fail("%u of %u pairs did not meet with all nodes up", PAIRS_BEFORE - met,
                 PAIRS_BEFORE);
        test_node_stop(&victim);
        if (victim >= 0) {
            met = run_pairs("after", PAIRS_AFTER);
            if (met != PAIRS_AFTER)
                fail("%u of %u pairs did not meet after %s stopped", PAIRS_AFTER - met,
                     PAIRS_AFTER, nodes[victim].name);
        }
    }

    /* HAProxy first, so that it does not mark the nodes down while they stop. */
    if (haproxy.pid > 0)
        stop_child(&haproxy);
    for (int i = 0; i < NODE_COUNT; i++) {
        if (nodes[i].pid <= 0)
            continue;
        int status = stop_child(&nodes[i]);
        if (status != -1 && (!WIFEXITED(status) || WEXITSTATUS(status) != 0))
            fail("%s exited with wait status 0x%x after SIGTERM, expected exit status 0",
                 nodes[i].name, (unsigned)status);
    }
    curl_multi_cleanup(multi);
    curl_global_cleanup();

    if (failures != 0) {
        for (int i = 0; i < NODE_COUNT; i++)
            print_log_tail(&nodes[i], 2048);
        print_log_tail(&haproxy, 2048);
        printf("scaleout: %d failure(s); logs and configuration kept in %s\n", failures,
               work_dir);
        return 1;
    }
    remove_work_dir();
    printf("scaleout: passed\n");
    return 0;
}
