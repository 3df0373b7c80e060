#define _GNU_SOURCE
#include "harness.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
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

const char *corrd_path;

/* ---- Test runner ---- */

static pthread_mutex_t fail_lock = PTHREAD_MUTEX_INITIALIZER;
static int case_failures;

void test_fail(const char *file, int line, const char *format, ...)
{
    va_list args;

    pthread_mutex_lock(&fail_lock);
    case_failures++;
    fprintf(stdout, "    FAIL %s:%d: ", file, line);
    va_start(args, format);
    vfprintf(stdout, format, args);
    va_end(args);
    fputc('\n', stdout);
    fflush(stdout);
    pthread_mutex_unlock(&fail_lock);
}

int test_failures(void)
{
    int failures;

    pthread_mutex_lock(&fail_lock);
    failures = case_failures;
    pthread_mutex_unlock(&fail_lock);
    return failures;
}

const char *proto_name(enum http_proto proto)
{
    switch (proto) {
    case PROTO_HTTP1:
        return "http/1.1";
    case PROTO_H2C:
        return "h2c prior knowledge";
    case PROTO_H2C_UPGRADE:
        return "h2c upgrade";
    }
    return "unknown protocol";
}

static unsigned alarm_seconds;

static void on_alarm(int signo)
{
    char message[128];
    int len;

    (void)signo;
    len = snprintf(message, sizeof(message),
                   "test process deadline of %u s passed; aborting (corrd children get SIGKILL)\n",
                   alarm_seconds);
    if (write(STDOUT_FILENO, message, (size_t)len) < 0)
        _exit(3);
    _exit(3);
}

static void raise_fd_limit(void)
{
    struct rlimit limit;

    if (getrlimit(RLIMIT_NOFILE, &limit) == 0 && limit.rlim_cur < limit.rlim_max) {
        limit.rlim_cur = limit.rlim_max;
        setrlimit(RLIMIT_NOFILE, &limit);
    }
}

int run_tests(const struct test_case *cases, size_t count, unsigned deadline_s, int argc,
              char **argv)
{
    static const enum http_proto protos[] = {PROTO_HTTP1, PROTO_H2C, PROTO_H2C_UPGRADE};
    const char *filter = argc > 2 ? argv[2] : NULL;
    int passed = 0;
    int failed = 0;

    corrd_path = argc > 1 ? argv[1] : getenv("CORRD");
    if (corrd_path == NULL || corrd_path[0] == '\0') {
        fprintf(stderr, "usage: %s CORRD_BINARY [NAME_FILTER] (or set CORRD)\n", argv[0]);
        return 2;
    }
    if (access(corrd_path, X_OK) != 0) {
        fprintf(stderr, "corrd binary %s is not executable: %s\n", corrd_path, strerror(errno));
        return 2;
    }

    setvbuf(stdout, NULL, _IOLBF, 0);
    signal(SIGPIPE, SIG_IGN);
    alarm_seconds = deadline_s;
    signal(SIGALRM, on_alarm);
    alarm(deadline_s);
    raise_fd_limit();
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        fprintf(stderr, "curl_global_init failed\n");
        return 2;
    }

    for (size_t i = 0; i < count; i++) {
        const struct test_case *test = &cases[i];

        if (filter != NULL && strstr(test->name, filter) == NULL)
            continue;
        for (size_t p = 0; p < sizeof(protos) / sizeof(protos[0]); p++) {
            double start;

            if ((test->protos & protos[p]) == 0)
                continue;
            printf("RUN  %s [%s]\n", test->name, proto_name(protos[p]));
            pthread_mutex_lock(&fail_lock);
            case_failures = 0;
            pthread_mutex_unlock(&fail_lock);
            start = now_s();
            test->run(protos[p]);
            if (test_failures() == 0) {
                passed++;
                printf("PASS %s [%s] (%.2f s)\n", test->name, proto_name(protos[p]),
                       now_s() - start);
            } else {
                failed++;
                printf("FAIL %s [%s] (%.2f s)\n", test->name, proto_name(protos[p]),
                       now_s() - start);
            }
        }
    }

    curl_global_cleanup();
    printf("%d passed, %d failed\n", passed, failed);
    if (passed + failed == 0) {
        printf("no test name contains \"%s\"\n", filter != NULL ? filter : "");
        return 1;
    }
    return failed == 0 ? 0 : 1;
}

/* ---- Utilities ---- */

double now_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

void sleep_ms(long ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L};

    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

char *format_string(const char *format, ...)
{
    va_list args;
    char *result;

    va_start(args, format);
    if (vasprintf(&result, format, args) < 0)
        abort();
    va_end(args);
    return result;
}

const char *printable(const void *data, size_t len)
{
    static __thread char buffers[4][600];
    static __thread unsigned next;
    char *out = buffers[next++ % 4];
    const unsigned char *bytes = data;
    size_t used = 0;

    if (data == NULL)
        return "(null)";
    for (size_t i = 0; i < len; i++) {
        if (used + 8 >= sizeof(buffers[0])) {
            snprintf(out + used, sizeof(buffers[0]) - used, "...");
            return out;
        }
        if (bytes[i] == '\n')
            used += (size_t)sprintf(out + used, "\\n");
        else if (bytes[i] < 0x20 || bytes[i] >= 0x7f || bytes[i] == '\\')
            used += (size_t)sprintf(out + used, "\\x%02x", bytes[i]);
        else
            out[used++] = (char)bytes[i];
    }
    out[used] = '\0';
    return out;
}

void fill_pattern(unsigned char *buf, size_t len, unsigned seed)
{
    uint32_t state = seed * 2654435761u + 1;

    for (size_t i = 0; i < len; i++) {
        /* Each 1024-byte block starts with the 256 byte values in order, then xorshift noise. */
        if (i % 1024 < 256) {
            buf[i] = (unsigned char)(i % 256);
            continue;
        }
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        buf[i] = (unsigned char)state;
    }
}

void expect_body(const char *file, int line, const char *name,
                 const struct http_response *response, const void *data, size_t len)
{
    const unsigned char *expected = data;

    if (response->result != CURLE_OK)
        return; /* expect_response already reported the failed request */
    if (response->body_len != len) {
        test_fail(file, line, "%s: expected a %zu-byte body, got %zu bytes: \"%s\"", name, len,
                  response->body_len, printable(response->body, response->body_len));
        return;
    }
    for (size_t i = 0; i < len; i++) {
        if (response->body[i] != expected[i]) {
            test_fail(file, line, "%s: body differs at byte %zu: expected 0x%02x, got 0x%02x",
                      name, i, expected[i], response->body[i]);
            return;
        }
    }
}

/* ---- corrd child process ---- */

#define LOG_TAIL_BYTES 16384

struct log_tail {
    pthread_mutex_t lock;
    pthread_cond_t changed;
    char bytes[LOG_TAIL_BYTES];
    size_t len;
    char line[4096]; /* the line being read; longer lines are cut */
    size_t line_len;
    int port;        /* 0 until the listening line arrives */
    bool eof;
};

static void log_tail_append(struct log_tail *log, const char *data, size_t len)
{
    if (len >= LOG_TAIL_BYTES) {
        data += len - LOG_TAIL_BYTES;
        len = LOG_TAIL_BYTES;
    }
    if (log->len + len > LOG_TAIL_BYTES) {
        size_t drop = log->len + len - LOG_TAIL_BYTES;

        memmove(log->bytes, log->bytes + drop, log->len - drop);
        log->len -= drop;
    }
    memcpy(log->bytes + log->len, data, len);
    log->len += len;
}

/* Returns the port of a "msg=listening addr=127.0.0.1:PORT" logfmt line, or 0. */
static int parse_listening_port(const char *line)
{
    const char *addr;
    const char *colon;
    char *end;
    long port;

    if (strstr(line, "msg=listening") == NULL && strstr(line, "msg=\"listening\"") == NULL)
        return 0;
    addr = strstr(line, "addr=");
    if (addr == NULL)
        return 0;
    addr += strlen("addr=");
    if (*addr == '"')
        addr++;
    if (strncmp(addr, "127.0.0.1:", strlen("127.0.0.1:")) != 0)
        return 0;
    colon = addr + strlen("127.0.0.1");
    port = strtol(colon + 1, &end, 10);
    if (end == colon + 1 || port <= 0 || port > 65535)
        return 0;
    return (int)port;
}

struct log_reader {
    int fd;
    struct log_tail *log;
};

static void *drain_log(void *arg)
{
    struct log_reader *reader = arg;
    struct log_tail *log = reader->log;
    char chunk[4096];

    for (;;) {
        ssize_t n = read(reader->fd, chunk, sizeof(chunk));

        if (n < 0 && errno == EINTR)
            continue;
        pthread_mutex_lock(&log->lock);
        if (n <= 0) {
            log->eof = true;
            pthread_cond_broadcast(&log->changed);
            pthread_mutex_unlock(&log->lock);
            break;
        }
        log_tail_append(log, chunk, (size_t)n);
        for (ssize_t i = 0; i < n; i++) {
            if (chunk[i] != '\n') {
                if (log->line_len + 1 < sizeof(log->line))
                    log->line[log->line_len++] = chunk[i];
                continue;
            }
            log->line[log->line_len] = '\0';
            log->line_len = 0;
            if (log->port == 0) {
                log->port = parse_listening_port(log->line);
                if (log->port != 0)
                    pthread_cond_broadcast(&log->changed);
            }
        }
        pthread_mutex_unlock(&log->lock);
    }
    free(reader);
    return NULL;
}

static char **build_argv(const char *const *extra_args)
{
    size_t extra = 0;
    bool has_threads = false;
    char **args;
    size_t n = 0;

    while (extra_args != NULL && extra_args[extra] != NULL) {
        if (strcmp(extra_args[extra], "--threads") == 0)
            has_threads = true;
        extra++;
    }
    args = calloc(extra + 6, sizeof(*args));
    args[n++] = (char *)corrd_path;
    args[n++] = "--listen";
    args[n++] = "127.0.0.1:0";
    if (!has_threads) {
        args[n++] = "--threads";
        args[n++] = "2";
    }
    for (size_t i = 0; i < extra; i++)
        args[n++] = (char *)extra_args[i];
    args[n] = NULL;
    return args;
}

bool corrd_start(struct corrd *server, const char *const *extra_args)
{
    struct log_reader *reader;
    struct timespec until;
    char **args = build_argv(extra_args);
    int pipe_fds[2];
    bool exited;
    int port;

    memset(server, 0, sizeof(*server));
    if (pipe2(pipe_fds, O_CLOEXEC) != 0) {
        test_fail(__FILE__, __LINE__, "pipe2 failed: %s", strerror(errno));
        free(args);
        return false;
    }
    server->pid = fork();
    if (server->pid < 0) {
        test_fail(__FILE__, __LINE__, "fork failed: %s", strerror(errno));
        close(pipe_fds[0]);
        close(pipe_fds[1]);
        free(args);
        return false;
    }
    if (server->pid == 0) {
        int null_fd = open("/dev/null", O_RDONLY);

        /* The test process may die from its alarm; take corrd down with it. */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        signal(SIGPIPE, SIG_DFL);
        signal(SIGALRM, SIG_DFL);
        dup2(null_fd, STDIN_FILENO);
        dup2(pipe_fds[1], STDOUT_FILENO);
        dup2(pipe_fds[1], STDERR_FILENO);
        execv(corrd_path, args);
        dprintf(STDERR_FILENO, "execv %s failed: %s\n", corrd_path, strerror(errno));
        _exit(127);
    }
    close(pipe_fds[1]);
    free(args);

    server->log_fd = pipe_fds[0];
    server->log = calloc(1, sizeof(*server->log));
    pthread_mutex_init(&server->log->lock, NULL);
    pthread_cond_init(&server->log->changed, NULL);
    reader = malloc(sizeof(*reader));
    reader->fd = server->log_fd;
    reader->log = server->log;
    server->log_thread = malloc(sizeof(pthread_t));
    pthread_create(server->log_thread, NULL, drain_log, reader);

    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += 10;
    pthread_mutex_lock(&server->log->lock);
    while (server->log->port == 0 && !server->log->eof) {
        if (pthread_cond_timedwait(&server->log->changed, &server->log->lock, &until) != 0)
            break;
    }
    port = server->log->port;
    exited = server->log->eof;
    pthread_mutex_unlock(&server->log->lock);

    if (port == 0) {
        int status;

        if (!exited)
            kill(server->pid, SIGKILL);
        waitpid(server->pid, &status, 0);
        if (!exited)
            test_fail(__FILE__, __LINE__, "corrd logged no \"msg=listening "
                      "addr=127.0.0.1:PORT\" line within 10 s; killed it");
        else if (WIFEXITED(status))
            test_fail(__FILE__, __LINE__, "corrd exited with status %d before listening",
                      WEXITSTATUS(status));
        else
            test_fail(__FILE__, __LINE__, "corrd died on signal %d before listening",
                      WTERMSIG(status));
        server->pid = 0;
        corrd_stop(server); /* joins the log thread, prints the log and frees it */
        return false;
    }
    server->port = port;
    return true;
}

void corrd_print_log(struct corrd *server)
{
    const char *line;
    const char *end;

    if (server->log == NULL)
        return;
    pthread_mutex_lock(&server->log->lock);
    printf("    --- last %zu bytes of corrd output ---\n", server->log->len);
    line = server->log->bytes;
    end = server->log->bytes + server->log->len;
    while (line < end) {
        const char *newline = memchr(line, '\n', (size_t)(end - line));
        size_t len = newline != NULL ? (size_t)(newline - line) : (size_t)(end - line);

        printf("    corrd: %.*s\n", (int)len, line);
        line += len + 1;
    }
    pthread_mutex_unlock(&server->log->lock);
}

void corrd_stop(struct corrd *server)
{
    double deadline;
    int status = 0;
    pid_t result = 0;

    if (server->pid > 0) {
        if (kill(server->pid, SIGTERM) != 0)
            test_fail(__FILE__, __LINE__, "kill(%d, SIGTERM) failed: %s", (int)server->pid,
                      strerror(errno));
        deadline = now_s() + 10.0;
        while ((result = waitpid(server->pid, &status, WNOHANG)) == 0 && now_s() < deadline)
            sleep_ms(10);
        if (result == 0) {
            test_fail(__FILE__, __LINE__, "corrd (pid %d) still running 10 s after SIGTERM; "
                      "sending SIGKILL", (int)server->pid);
            kill(server->pid, SIGKILL);
            waitpid(server->pid, &status, 0);
        } else if (result < 0) {
            test_fail(__FILE__, __LINE__, "waitpid(%d) failed: %s", (int)server->pid,
                      strerror(errno));
        } else if (WIFSIGNALED(status)) {
            test_fail(__FILE__, __LINE__, "corrd exited on signal %d after SIGTERM, "
                      "expected exit status 0", WTERMSIG(status));
        } else if (WIFEXITED(status) && WEXITSTATUS(status) != 0) {
            test_fail(__FILE__, __LINE__, "corrd exited with status %d after SIGTERM, "
                      "expected 0", WEXITSTATUS(status));
        }
        server->pid = 0;
    }
    if (server->log_thread != NULL) {
        pthread_join(*(pthread_t *)server->log_thread, NULL);
        free(server->log_thread);
        server->log_thread = NULL;
        close(server->log_fd);
    }
    if (test_failures() > 0)
        corrd_print_log(server);
    if (server->log != NULL) {
        pthread_mutex_destroy(&server->log->lock);
        pthread_cond_destroy(&server->log->changed);
        free(server->log);
        server->log = NULL;
    }
}

/* ---- HTTP requests with libcurl ---- */

#define MAX_RESPONSE_BYTES (64u << 20)

struct transfer_buffers {
    char *url;
    struct curl_slist *headers;
    unsigned char *body;
    size_t body_len;
    size_t body_cap;
    bool body_overflow;
    char *allow;
    char error[CURL_ERROR_SIZE];
};

static size_t on_body(char *data, size_t size, size_t count, void *arg)
{
    struct transfer_buffers *buffers = arg;
    size_t len = size * count;

    if (buffers->body_len + len > MAX_RESPONSE_BYTES) {
        buffers->body_overflow = true;
        return 0;
    }
    if (buffers->body_len + len > buffers->body_cap) {
        size_t cap = buffers->body_cap ? buffers->body_cap : 1024;

        while (cap < buffers->body_len + len)
            cap *= 2;
        buffers->body = realloc(buffers->body, cap);
        buffers->body_cap = cap;
    }
    memcpy(buffers->body + buffers->body_len, data, len);
    buffers->body_len += len;
    return len;
}

static size_t on_header(char *data, size_t size, size_t count, void *arg)
{
    struct transfer_buffers *buffers = arg;
    size_t len = size * count;
    size_t start;
    size_t end;

    /* A status line starts a new response (after a 101 Switching Protocols, for example). */
    if (len >= 5 && memcmp(data, "HTTP/", 5) == 0) {
        free(buffers->allow);
        buffers->allow = NULL;
        return len;
    }
    if (len < 6 || strncasecmp(data, "allow:", 6) != 0)
        return len;
    start = 6;
    end = len;
    while (start < end && (data[start] == ' ' || data[start] == '\t'))
        start++;
    while (end > start && (data[end - 1] == '\r' || data[end - 1] == '\n' ||
                           data[end - 1] == ' ' || data[end - 1] == '\t'))
        end--;
    free(buffers->allow);
    buffers->allow = strndup(data + start, end - start);
    return len;
}

static long curl_http_version_option(enum http_proto proto)
{
    switch (proto) {
    case PROTO_HTTP1:
        return CURL_HTTP_VERSION_1_1;
    case PROTO_H2C:
        return CURL_HTTP_VERSION_2_PRIOR_KNOWLEDGE;
    case PROTO_H2C_UPGRADE:
        return CURL_HTTP_VERSION_2_0;
    }
    return CURL_HTTP_VERSION_1_1;
}

long expected_http_version(enum http_proto proto)
{
    return proto == PROTO_HTTP1 ? CURL_HTTP_VERSION_1_1 : CURL_HTTP_VERSION_2_0;
}

static CURL *create_easy(int port, const struct http_request *request,
                         struct transfer_buffers *buffers)
{
    const char *method = request->method != NULL ? request->method : "GET";
    CURL *easy = curl_easy_init();

    if (easy == NULL)
        abort();
    memset(buffers, 0, sizeof(*buffers));
    buffers->url = format_string("http://127.0.0.1:%d%s", port, request->path);

    curl_easy_setopt(easy, CURLOPT_URL, buffers->url);
    curl_easy_setopt(easy, CURLOPT_PATH_AS_IS, 1L);
    curl_easy_setopt(easy, CURLOPT_PROXY, "");
    curl_easy_setopt(easy, CURLOPT_NOPROXY, "*");
    curl_easy_setopt(easy, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(easy, CURLOPT_HTTP_VERSION, curl_http_version_option(request->proto));
    /* libcurl 7.88.1 fails every stream after the first on a reused cleartext HTTP/2
     * prior-knowledge connection ("Error in the HTTP2 framing layer"), so each request gets
     * its own connection. */
    curl_easy_setopt(easy, CURLOPT_FRESH_CONNECT, 1L);
    curl_easy_setopt(easy, CURLOPT_FORBID_REUSE, 1L);
    curl_easy_setopt(easy, CURLOPT_CONNECTTIMEOUT_MS, 5000L);
    curl_easy_setopt(easy, CURLOPT_TIMEOUT_MS,
                     request->timeout_ms > 0 ? request->timeout_ms : 20000L);
    curl_easy_setopt(easy, CURLOPT_ERRORBUFFER, buffers->error);
    curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(easy, CURLOPT_WRITEDATA, buffers);
    curl_easy_setopt(easy, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(easy, CURLOPT_HEADERDATA, buffers);

    /* An empty "Name:" header makes libcurl omit its default value for that header. */
    buffers->headers = curl_slist_append(buffers->headers, "Expect:");
    if (request->content_type != NULL) {
        char *line = format_string("Content-Type: %s", request->content_type);

        buffers->headers = curl_slist_append(buffers->headers, line);
        free(line);
    } else {
        buffers->headers = curl_slist_append(buffers->headers, "Content-Type:");
    }
    curl_easy_setopt(easy, CURLOPT_HTTPHEADER, buffers->headers);

    if (strcmp(method, "GET") == 0 && request->body == NULL) {
        curl_easy_setopt(easy, CURLOPT_HTTPGET, 1L);
    } else if (strcmp(method, "HEAD") == 0) {
        curl_easy_setopt(easy, CURLOPT_NOBODY, 1L);
    } else {
        if (strcmp(method, "POST") != 0 || request->body != NULL) {
            /* POSTFIELDSIZE must come before COPYPOSTFIELDS so binary bodies are copied whole. */
            curl_easy_setopt(easy, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)request->body_len);
            curl_easy_setopt(easy, CURLOPT_COPYPOSTFIELDS,
                             request->body != NULL ? (const char *)request->body : "");
        } else {
            curl_easy_setopt(easy, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)0);
            curl_easy_setopt(easy, CURLOPT_COPYPOSTFIELDS, "");
        }
        if (strcmp(method, "POST") != 0)
            curl_easy_setopt(easy, CURLOPT_CUSTOMREQUEST, method);
    }
    return easy;
}

static void finish_easy(CURL *easy, CURLcode result, struct transfer_buffers *buffers,
                        struct http_response *response)
{
    char *content_type = NULL;

    memset(response, 0, sizeof(*response));
    response->result = result;
    memcpy(response->error, buffers->error, sizeof(response->error));
    if (result == CURLE_OK && response->error[0] == '\0')
        snprintf(response->error, sizeof(response->error), "no error");
    else if (response->error[0] == '\0')
        snprintf(response->error, sizeof(response->error), "%s", curl_easy_strerror(result));
    if (buffers->body_overflow)
        snprintf(response->error, sizeof(response->error), "response body over %u bytes",
                 MAX_RESPONSE_BYTES);
    curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &response->status);
    curl_easy_getinfo(easy, CURLINFO_HTTP_VERSION, &response->http_version);
    curl_easy_getinfo(easy, CURLINFO_CONTENT_TYPE, &content_type);
    curl_easy_getinfo(easy, CURLINFO_TOTAL_TIME, &response->elapsed_s);
    if (content_type != NULL)
        response->content_type = strdup(content_type);
    response->body = buffers->body;
    response->body_len = buffers->body_len;
    response->allow = buffers->allow;
    buffers->body = NULL;
    buffers->allow = NULL;

    curl_slist_free_all(buffers->headers);
    free(buffers->url);
    memset(buffers, 0, sizeof(*buffers));
    curl_easy_cleanup(easy);
}

void http_perform(int port, const struct http_request *request, struct http_response *response)
{
    struct transfer_buffers buffers;
    CURL *easy = create_easy(port, request, &buffers);
    CURLcode result = curl_easy_perform(easy);

    finish_easy(easy, result, &buffers, response);
}

void http_response_free(struct http_response *response)
{
    free(response->body);
    free(response->content_type);
    free(response->allow);
    memset(response, 0, sizeof(*response));
}

void http_get(int port, enum http_proto proto, const char *path, struct http_response *response)
{
    struct http_request request = {.method = "GET", .path = path, .proto = proto};

    http_perform(port, &request, response);
}

void http_post(int port, enum http_proto proto, const char *path, const void *body, size_t len,
               struct http_response *response)
{
    struct http_request request = {
        .method = "POST", .path = path, .body = body, .body_len = len, .proto = proto,
    };

    /* A NULL body would send no body at all, so pass "" to send Content-Length: 0. */
    if (request.body == NULL)
        request.body = "";
    http_perform(port, &request, response);
}

void expect_response(const char *file, int line, const char *name,
                     const struct http_response *response, enum http_proto proto,
                     long expected_status)
{
    if (response->result != CURLE_OK) {
        test_fail(file, line, "%s: expected status %ld over %s, but the request failed: "
                  "curl error %d (%s)", name, expected_status, proto_name(proto),
                  (int)response->result, response->error);
        return;
    }
    if (response->status != expected_status)
        test_fail(file, line, "%s: expected status %ld, got %ld with body \"%s\"", name,
                  expected_status, response->status,
                  printable(response->body, response->body_len));
    if (response->http_version != expected_http_version(proto))
        test_fail(file, line, "%s: expected CURLINFO_HTTP_VERSION %ld for %s, got %ld", name,
                  expected_http_version(proto), proto_name(proto), response->http_version);
}

void expect_error_body(const char *file, int line, const char *name,
                       const struct http_response *response)
{
    const unsigned char *newline;

    if (response->result != CURLE_OK)
        return; /* expect_response already reported the failed request */
    if (response->content_type == NULL ||
        strncasecmp(response->content_type, "text/plain", strlen("text/plain")) != 0)
        test_fail(file, line, "%s: expected Content-Type text/plain for status %ld, got %s", name,
                  response->status,
                  response->content_type != NULL ? response->content_type : "none");
    if (response->body_len == 0) {
        test_fail(file, line, "%s: expected a one-line error body for status %ld, got an empty "
                  "body", name, response->status);
        return;
    }
    newline = memchr(response->body, '\n', response->body_len);
    if (newline == NULL || newline != response->body + response->body_len - 1)
        test_fail(file, line, "%s: expected one line ending in \"\\n\" for status %ld, got \"%s\"",
                  name, response->status, printable(response->body, response->body_len));
    else if (response->body_len == 1)
        test_fail(file, line, "%s: expected an error message for status %ld, got only \"\\n\"",
                  name, response->status);
}

/* ---- Requests running in the background ---- */

static void *run_async(void *arg)
{
    struct async_request *async = arg;

    http_perform(async->port, &async->request, &async->response);
    return NULL;
}

void async_start(struct async_request *async, int port, const struct http_request *request)
{
    memset(async, 0, sizeof(*async));
    async->request = *request;
    async->port = port;
    async->thread = malloc(sizeof(pthread_t));
    if (pthread_create(async->thread, NULL, run_async, async) != 0)
        abort();
}

void async_join(struct async_request *async)
{
    if (async->thread == NULL)
        return;
    pthread_join(*(pthread_t *)async->thread, NULL);
    free(async->thread);
    async->thread = NULL;
    free(async->owned_path);
    async->owned_path = NULL;
    async->request.path = NULL;
}

bool start_waiter(struct async_request *waiter, int port, enum http_proto proto, const char *id,
                  long timeout_ms)
{
    char *path = format_string("/start/%s?timeout=%ld", id, timeout_ms);
    struct http_request request = {
        .method = "GET", .path = path, .proto = proto, .timeout_ms = timeout_ms + 10000,
    };

    async_start(waiter, port, &request);
    waiter->owned_path = path;
    /* Give the request time to reach corrd before the first probe (see wait_pending). */
    sleep_ms(100);
    return wait_pending(port, id, 5000);
}

bool wait_pending(int port, const char *id, long deadline_ms)
{
    char *path = format_string("/start/%s?timeout=1", id);
    double deadline = now_s() + (double)deadline_ms / 1000.0;
    bool pending = false;

    for (;;) {
        struct http_response probe;

        http_get(port, PROTO_HTTP1, path, &probe);
        if (probe.result == CURLE_OK && probe.status == 409) {
            pending = true;
        } else if (probe.result != CURLE_OK || probe.status != 504) {
            test_fail(__FILE__, __LINE__, "probe GET %s: expected 409 (pending) or 504 "
                      "(not yet), got status %ld, curl error \"%s\", body \"%s\"", path,
                      probe.status, probe.error, printable(probe.body, probe.body_len));
            http_response_free(&probe);
            break;
        }
        http_response_free(&probe);
        if (pending)
            break;
        if (now_s() >= deadline) {
            test_fail(__FILE__, __LINE__, "no waiter for id \"%s\" became pending within %ld ms",
                      id, deadline_ms);
            break;
        }
        sleep_ms(20);
    }
    free(path);
    return pending;
}

/* ---- Many requests at once with curl_multi ---- */

struct multi_session {
    CURLM *multi;
    int port;
    struct transfer **running;
    size_t running_count;
    size_t running_cap;
};

struct multi_session *multi_session_new(int port)
{
    struct multi_session *session = calloc(1, sizeof(*session));

    session->multi = curl_multi_init();
    session->port = port;
    /* One connection per transfer: see the HTTP/2 note in create_easy. */
    curl_multi_setopt(session->multi, CURLMOPT_PIPELINING, (long)CURLPIPE_NOTHING);
    return session;
}

void multi_session_add(struct multi_session *session, struct transfer *transfer)
{
    if (transfer->running)
        abort();
    if (transfer->done)
        http_response_free(&transfer->response);
    transfer->done = false;
    transfer->buffers = calloc(1, sizeof(*transfer->buffers));
    transfer->easy = create_easy(session->port, &transfer->request, transfer->buffers);
    curl_easy_setopt(transfer->easy, CURLOPT_PRIVATE, transfer);
    if (session->running_count == session->running_cap) {
        session->running_cap = session->running_cap ? session->running_cap * 2 : 64;
        session->running = realloc(session->running,
                                   session->running_cap * sizeof(*session->running));
    }
    session->running[session->running_count++] = transfer;
    transfer->running = true;
    curl_multi_add_handle(session->multi, transfer->easy);
}

static void complete_transfer(struct multi_session *session, struct transfer *transfer,
                              CURLcode result)
{
    for (size_t i = 0; i < session->running_count; i++) {
        if (session->running[i] == transfer) {
            session->running[i] = session->running[--session->running_count];
            break;
        }
    }
    curl_multi_remove_handle(session->multi, transfer->easy);
    finish_easy(transfer->easy, result, transfer->buffers, &transfer->response);
    free(transfer->buffers);
    transfer->buffers = NULL;
    transfer->easy = NULL;
    transfer->running = false;
    transfer->done = true;
}

size_t multi_session_run(struct multi_session *session, long duration_ms)
{
    double deadline = now_s() + (double)duration_ms / 1000.0;

    for (;;) {
        int still_running;
        int queued;
        CURLMsg *message;
        double remaining;
        int poll_ms;

        curl_multi_perform(session->multi, &still_running);
        while ((message = curl_multi_info_read(session->multi, &queued)) != NULL) {
            struct transfer *transfer;

            if (message->msg != CURLMSG_DONE)
                continue;
            curl_easy_getinfo(message->easy_handle, CURLINFO_PRIVATE, (char **)&transfer);
            complete_transfer(session, transfer, message->data.result);
        }
        if (session->running_count == 0)
            return 0;
        remaining = deadline - now_s();
        if (remaining <= 0)
            return session->running_count;
        poll_ms = remaining > 0.1 ? 100 : (int)(remaining * 1000) + 1;
        curl_multi_poll(session->multi, NULL, 0, poll_ms, NULL);
    }
}

void multi_session_free(struct multi_session *session)
{
    while (session->running_count > 0)
        complete_transfer(session, session->running[0], CURLE_ABORTED_BY_CALLBACK);
    curl_multi_cleanup(session->multi);
    free(session->running);
    free(session);
}

/* ---- Raw sockets ---- */

int raw_connect(int port)
{
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    struct timeval timeout = {.tv_sec = 5};
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;

    if (fd < 0) {
        test_fail(__FILE__, __LINE__, "socket failed: %s", strerror(errno));
        return -1;
    }
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&addr, sizeof(addr)) != 0) {
        test_fail(__FILE__, __LINE__, "connect to 127.0.0.1:%d failed: %s", port,
                  strerror(errno));
        close(fd);
        return -1;
    }
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof(timeout));
    return fd;
}

bool raw_send(int fd, const void *data, size_t len)
{
    const char *bytes = data;

    while (len > 0) {
        ssize_t n = send(fd, bytes, len, MSG_NOSIGNAL);

        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return false;
        bytes += n;
        len -= (size_t)n;
    }
    return true;
}
