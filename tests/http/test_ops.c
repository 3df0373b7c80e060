/*
 * corrd's operational surface: /metrics counters checked against the responses clients saw,
 * /healthz and /readyz through a delayed shutdown, TLS, CORR_* environment variables, option
 * validation, and the logfmt and access logs. Each case starts its own corrd with stdout and
 * stderr redirected to files in a temporary directory, so that whole logs, the environment and
 * exit statuses can be checked.
 */
#define _GNU_SOURCE
#include "harness.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <math.h>
#include <netinet/in.h>
#include <pthread.h>
#include <regex.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

#define HOLD_TIMEOUT_MS 20000L /* ?timeout= of waiters that a case acks itself */
#define MAX_LISTENERS 4

/* ---- Temporary directories ---- */

static bool make_temp_dir(char *dir, size_t size)
{
    const char *tmp = getenv("TMPDIR");

    snprintf(dir, size, "%s/corr-ops-XXXXXX", tmp != NULL && tmp[0] != '\0' ? tmp : "/tmp");
    if (mkdtemp(dir) == NULL) {
        test_fail(__FILE__, __LINE__, "mkdtemp %s failed: %s", dir, strerror(errno));
        return false;
    }
    return true;
}

static int remove_entry(const char *path, const struct stat *st, int type, struct FTW *ftw)
{
    (void)st;
    (void)type;
    (void)ftw;
    if (remove(path) != 0)
        printf("    note: cannot remove %s: %s\n", path, strerror(errno));
    return 0;
}

static void remove_temp_dir(const char *dir)
{
    nftw(dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* Returns the whole file as a NUL-terminated malloc'd string, or NULL when it cannot be read. */
static char *read_file(const char *path)
{
    FILE *file = fopen(path, "rb");
    char *text = NULL;
    size_t len = 0;
    size_t cap = 0;
    char chunk[4096];
    size_t n;

    if (file == NULL)
        return NULL;
    while ((n = fread(chunk, 1, sizeof(chunk), file)) > 0) {
        if (len + n + 1 > cap) {
            cap = (len + n + 1) * 2;
            text = realloc(text, cap);
        }
        memcpy(text + len, chunk, n);
        len += n;
    }
    fclose(file);
    if (text == NULL)
        text = calloc(1, 1);
    text[len] = '\0';
    return text;
}

/* ---- Child processes ---- */

/* A corrd process started by this test, with stdout and stderr in files. */
struct child {
    pid_t pid;          /* 0 once reaped */
    int exit_status;    /* exit code, 128 + signal number, or -1 while unknown */
    double exited_at_s; /* now_s() when the exit was seen */
    char stdout_path[PATH_MAX];
    char stderr_path[PATH_MAX];
    int listener_count;
    char listeners[MAX_LISTENERS][80]; /* addr= values of the msg=listening lines, in order */
    int ports[MAX_LISTENERS];
};

/*
 * Builds an environment of the test's variables minus every CORR_* one, plus extra_env. In a
 * sanitizer build LeakSanitizer would append its "Suppressions used" table to corrd's stderr
 * at exit, so LSAN_OPTIONS gets print_suppressions=0 (as in tools/test.sh). Leak reports still
 * appear there and fail the log checks.
 */
static char **build_environment(const char *const *extra_env)
{
    static char lsan_options[1024];
    const char *lsan = getenv("LSAN_OPTIONS");
    size_t count = 0;
    size_t extra = 0;
    size_t n = 0;
    char **envp;

    while (environ[count] != NULL)
        count++;
    while (extra_env != NULL && extra_env[extra] != NULL)
        extra++;
    envp = calloc(count + extra + 2, sizeof(*envp));
    for (size_t i = 0; i < count; i++) {
        if (strncmp(environ[i], "CORR_", 5) != 0 && strncmp(environ[i], "LSAN_OPTIONS=", 13) != 0)
            envp[n++] = environ[i];
    }
    snprintf(lsan_options, sizeof(lsan_options), "LSAN_OPTIONS=%s%sprint_suppressions=0",
             lsan != NULL ? lsan : "", lsan != NULL && lsan[0] != '\0' ? ":" : "");
    envp[n++] = lsan_options;
    for (size_t i = 0; i < extra; i++)
        envp[n++] = (char *)extra_env[i];
    envp[n] = NULL;
    return envp;
}

/*
 * Starts program with args (NULL-terminated, without argv[0]) and the environment from
 * build_environment. stdout and stderr go to dir/name.stdout and dir/name.stderr. Everything the
 * child needs is prepared before fork, because other test threads may hold the malloc lock.
 */
static bool spawn_process(struct child *child, const char *program, const char *dir,
                          const char *name, const char *const *args, const char *const *env)
{
    size_t argc = 0;
    char **argv;
    char **envp;
    int out_fd;
    int err_fd;
    int null_fd;

    memset(child, 0, sizeof(*child));
    child->exit_status = -1;
    snprintf(child->stdout_path, sizeof(child->stdout_path), "%s/%s.stdout", dir, name);
    snprintf(child->stderr_path, sizeof(child->stderr_path), "%s/%s.stderr", dir, name);
    while (args != NULL && args[argc] != NULL)
        argc++;
    argv = calloc(argc + 2, sizeof(*argv));
    argv[0] = (char *)program;
    for (size_t i = 0; i < argc; i++)
        argv[i + 1] = (char *)args[i];
    envp = build_environment(env);

    out_fd = open(child->stdout_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    err_fd = open(child->stderr_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    null_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (out_fd < 0 || err_fd < 0 || null_fd < 0) {
        test_fail(__FILE__, __LINE__, "cannot open output files in %s: %s", dir, strerror(errno));
        goto fail;
    }
    child->pid = fork();
    if (child->pid < 0) {
        test_fail(__FILE__, __LINE__, "fork failed: %s", strerror(errno));
        child->pid = 0;
        goto fail;
    }
    if (child->pid == 0) {
        /* The test process may die from its alarm; take the child down with it. */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        signal(SIGPIPE, SIG_DFL);
        signal(SIGALRM, SIG_DFL);
        dup2(null_fd, STDIN_FILENO);
        dup2(out_fd, STDOUT_FILENO);
        dup2(err_fd, STDERR_FILENO);
        if (strchr(program, '/') != NULL)
            execve(program, argv, envp);
        else
            execvpe(program, argv, envp);
        dprintf(STDERR_FILENO, "exec %s failed: %s\n", program, strerror(errno));
        _exit(127);
    }
    close(out_fd);
    close(err_fd);
    close(null_fd);
    free(argv);
    free(envp);
    return true;

fail:
    if (out_fd >= 0)
        close(out_fd);
    if (err_fd >= 0)
        close(err_fd);
    if (null_fd >= 0)
        close(null_fd);
    free(argv);
    free(envp);
    return false;
}

static void record_exit(struct child *child, int status)
{
    child->exited_at_s = now_s();
    if (WIFEXITED(status))
        child->exit_status = WEXITSTATUS(status);
    else if (WIFSIGNALED(status))
        child->exit_status = 128 + WTERMSIG(status);
    child->pid = 0;
}

/* Reaps the child if it has exited, and returns true when it is no longer running. */
static bool child_poll_exit(struct child *child)
{
    int status;
    pid_t result;

    if (child->pid == 0)
        return true;
    result = waitpid(child->pid, &status, WNOHANG);
    if (result == child->pid) {
        record_exit(child, status);
        return true;
    }
    return false;
}

/* Waits up to deadline_ms for the child to exit. Returns false when it is still running. */
static bool child_wait_exit(struct child *child, long deadline_ms)
{
    double deadline = now_s() + (double)deadline_ms / 1000.0;

    while (!child_poll_exit(child)) {
        if (now_s() >= deadline)
            return false;
        sleep_ms(10);
    }
    return true;
}

static void child_kill(struct child *child)
{
    int status;

    if (child->pid == 0)
        return;
    kill(child->pid, SIGKILL);
    if (waitpid(child->pid, &status, 0) == child->pid)
        record_exit(child, status);
    child->pid = 0;
}

static void child_print_stderr(const struct child *child)
{
    char *text = read_file(child->stderr_path);
    const char *start;
    const char *line;

    if (text == NULL)
        return;
    start = text;
    if (strlen(text) > 8000)
        start = text + strlen(text) - 8000;
    printf("    --- stderr of %s (last %zu bytes) ---\n", child->stderr_path, strlen(start));
    line = start;
    while (*line != '\0') {
        const char *newline = strchr(line, '\n');
        size_t len = newline != NULL ? (size_t)(newline - line) : strlen(line);

        printf("    child: %.*s\n", (int)len, line);
        line += len + (newline != NULL ? 1 : 0);
    }
    free(text);
}

/* Stores the addr= value of a "msg=listening addr=HOST:PORT" line, or returns false. */
static bool parse_listening_line(const char *line, char *addr, size_t size, int *port)
{
    const char *value;
    const char *colon;
    size_t len;

    if (strstr(line, " msg=listening ") == NULL && strstr(line, " msg=\"listening\" ") == NULL)
        return false;
    value = strstr(line, " addr=");
    if (value == NULL)
        return false;
    value += strlen(" addr=");
    len = strcspn(value, " ");
    if (len == 0 || len >= size)
        return false;
    memcpy(addr, value, len);
    addr[len] = '\0';
    colon = strrchr(addr, ':');
    *port = colon != NULL ? atoi(colon + 1) : 0;
    return *port > 0;
}

/*
 * Waits until the child logged count msg=listening lines, and stores their addresses and ports.
 * Returns false, recording a failure, when the child exits first or deadline_ms passes.
 */
static bool child_wait_listening(struct child *child, int count, long deadline_ms)
{
    double deadline = now_s() + (double)deadline_ms / 1000.0;

    for (;;) {
        char *text = read_file(child->stderr_path);
        char *save = NULL;

        child->listener_count = 0;
        for (char *line = text != NULL ? strtok_r(text, "\n", &save) : NULL; line != NULL;
             line = strtok_r(NULL, "\n", &save)) {
            int i = child->listener_count;

            if (i < MAX_LISTENERS &&
                parse_listening_line(line, child->listeners[i], sizeof(child->listeners[i]),
                                     &child->ports[i]))
                child->listener_count++;
        }
        free(text);
        if (child->listener_count >= count)
            return true;
        if (child_poll_exit(child)) {
            test_fail(__FILE__, __LINE__, "corrd exited with status %d after %d of %d "
                      "msg=listening lines", child->exit_status, child->listener_count, count);
            return false;
        }
        if (now_s() >= deadline) {
            test_fail(__FILE__, __LINE__, "corrd logged %d of %d msg=listening lines within "
                      "%ld ms", child->listener_count, count, deadline_ms);
            return false;
        }
        sleep_ms(20);
    }
}

/* Starts corrd and waits for its first listening line. On failure the child is reaped. */
static bool corrd_spawn(struct child *child, const char *dir, const char *name,
                        const char *const *args, const char *const *env)
{
    if (!spawn_process(child, corrd_path, dir, name, args, env))
        return false;
    if (child_wait_listening(child, 1, 10000))
        return true;
    child_kill(child);
    child_print_stderr(child);
    return false;
}

/* Sends SIGTERM to a running child and checks that it exits with status 0 within 15 s. */
static void child_stop(struct child *child)
{
    if (child->pid == 0)
        return;
    if (kill(child->pid, SIGTERM) != 0)
        test_fail(__FILE__, __LINE__, "kill(%d, SIGTERM) failed: %s", (int)child->pid,
                  strerror(errno));
    if (!child_wait_exit(child, 15000)) {
        test_fail(__FILE__, __LINE__, "corrd (pid %d) still running 15 s after SIGTERM; "
                  "sending SIGKILL", (int)child->pid);
        child_kill(child);
        return;
    }
    EXPECT(child->exit_status == 0, "corrd exited with status %d after SIGTERM, expected 0",
           child->exit_status);
}

/* Stops the child if it still runs, and prints its stderr when the case has failures. */
static void child_finish(struct child *child)
{
    child_stop(child);
    if (test_failures() > 0)
        child_print_stderr(child);
}

/*
 * Runs corrd with args and env to completion (at most 10 s) and stores its exit status in
 * child. Returns false, recording a failure, when it is still running after 10 s.
 */
static bool corrd_run_to_exit(struct child *child, const char *dir, const char *name,
                              const char *const *args, const char *const *env)
{
    if (!spawn_process(child, corrd_path, dir, name, args, env))
        return false;
    if (child_wait_exit(child, 10000))
        return true;
    test_fail(__FILE__, __LINE__, "corrd still running 10 s after start; expected it to exit");
    child_kill(child);
    return false;
}

/* Returns a port that was free on 127.0.0.1 a moment ago, or 0. */
static int find_free_port(void)
{
    struct sockaddr_in addr = {.sin_family = AF_INET};
    socklen_t len = sizeof(addr);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int port = 0;

    if (fd < 0)
        return 0;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, (struct sockaddr *)&addr, sizeof(addr)) == 0 &&
        getsockname(fd, (struct sockaddr *)&addr, &len) == 0)
        port = ntohs(addr.sin_port);
    close(fd);
    return port;
}

/* ---- Requests to any URL, with response headers ---- */

struct fetch_request {
    const char *url;
    const char *method;   /* NULL means GET, or POST when body is set */
    const char *body;     /* NULL sends no body */
    size_t body_len;
    long http_version;    /* CURLOPT_HTTP_VERSION value */
    const char *ca_file;  /* the only trusted certificate for https URLs */
    long timeout_ms;      /* total transfer limit; 0 means 10000 */
};

struct fetch_response {
    CURLcode result;
    char error[CURL_ERROR_SIZE];
    long status;
    long http_version; /* CURLINFO_HTTP_VERSION */
    char *body;        /* NUL-terminated */
    size_t body_len;
    char *headers;     /* header lines of the final response, NUL-terminated */
    size_t headers_len;
    double elapsed_s;  /* CURLINFO_TOTAL_TIME */
};

#define FETCH_MAX_BYTES (4u << 20)

struct growing_text {
    char *data;
    size_t len;
    size_t cap;
};

static bool text_append(struct growing_text *text, const char *data, size_t len)
{
    if (text->len + len + 1 > FETCH_MAX_BYTES)
        return false;
    if (text->len + len + 1 > text->cap) {
        text->cap = (text->len + len + 1) * 2;
        text->data = realloc(text->data, text->cap);
    }
    memcpy(text->data + text->len, data, len);
    text->len += len;
    text->data[text->len] = '\0';
    return true;
}

static size_t on_fetch_body(char *data, size_t size, size_t count, void *arg)
{
    return text_append(arg, data, size * count) ? size * count : 0;
}

static size_t on_fetch_header(char *data, size_t size, size_t count, void *arg)
{
    struct growing_text *headers = arg;

    /* A status line starts a new response, such as the one after 101 Switching Protocols. */
    if (size * count >= 5 && memcmp(data, "HTTP/", 5) == 0)
        headers->len = 0;
    return text_append(headers, data, size * count) ? size * count : 0;
}

static void fetch(const struct fetch_request *request, struct fetch_response *response)
{
    struct growing_text body = {NULL, 0, 0};
    struct growing_text headers = {NULL, 0, 0};
    struct curl_slist *header_list = NULL;
    const char *method = request->method;
    CURL *easy = curl_easy_init();

    memset(response, 0, sizeof(*response));
    if (easy == NULL)
        abort();
    if (method == NULL)
        method = request->body != NULL ? "POST" : "GET";
    curl_easy_setopt(easy, CURLOPT_URL, request->url);
    curl_easy_setopt(easy, CURLOPT_PATH_AS_IS, 1L);
    curl_easy_setopt(easy, CURLOPT_PROXY, "");
    curl_easy_setopt(easy, CURLOPT_NOPROXY, "*");
    curl_easy_setopt(easy, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(easy, CURLOPT_HTTP_VERSION, request->http_version);
    /* libcurl 7.88.1 fails streams on a reused h2c connection (see create_easy in harness.c). */
    curl_easy_setopt(easy, CURLOPT_FRESH_CONNECT, 1L);
    curl_easy_setopt(easy, CURLOPT_FORBID_REUSE, 1L);
    curl_easy_setopt(easy, CURLOPT_CONNECTTIMEOUT_MS, 5000L);
    curl_easy_setopt(easy, CURLOPT_TIMEOUT_MS,
                     request->timeout_ms > 0 ? request->timeout_ms : 10000L);
    curl_easy_setopt(easy, CURLOPT_ERRORBUFFER, response->error);
    curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, on_fetch_body);
    curl_easy_setopt(easy, CURLOPT_WRITEDATA, &body);
    curl_easy_setopt(easy, CURLOPT_HEADERFUNCTION, on_fetch_header);
    curl_easy_setopt(easy, CURLOPT_HEADERDATA, &headers);
    if (request->ca_file != NULL) {
        curl_easy_setopt(easy, CURLOPT_CAINFO, request->ca_file);
        curl_easy_setopt(easy, CURLOPT_CAPATH, NULL);
        curl_easy_setopt(easy, CURLOPT_SSL_VERIFYPEER, 1L);
        curl_easy_setopt(easy, CURLOPT_SSL_VERIFYHOST, 2L);
    }
    header_list = curl_slist_append(header_list, "Expect:");
    curl_easy_setopt(easy, CURLOPT_HTTPHEADER, header_list);
    if (request->body != NULL) {
        curl_easy_setopt(easy, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)request->body_len);
        curl_easy_setopt(easy, CURLOPT_COPYPOSTFIELDS, request->body);
    }
    if (strcmp(method, "GET") != 0 && strcmp(method, "POST") != 0)
        curl_easy_setopt(easy, CURLOPT_CUSTOMREQUEST, method);

    response->result = curl_easy_perform(easy);
    if (response->error[0] == '\0')
        snprintf(response->error, sizeof(response->error), "%s",
                 curl_easy_strerror(response->result));
    curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &response->status);
    curl_easy_getinfo(easy, CURLINFO_HTTP_VERSION, &response->http_version);
    curl_easy_getinfo(easy, CURLINFO_TOTAL_TIME, &response->elapsed_s);
    response->body = body.data != NULL ? body.data : calloc(1, 1);
    response->body_len = body.len;
    response->headers = headers.data != NULL ? headers.data : calloc(1, 1);
    response->headers_len = headers.len;
    curl_slist_free_all(header_list);
    curl_easy_cleanup(easy);
}

static void fetch_free(struct fetch_response *response)
{
    free(response->body);
    free(response->headers);
    memset(response, 0, sizeof(*response));
}

/* Copies the value of the first header called name (any case). Returns false when absent. */
static bool fetch_header(const struct fetch_response *response, const char *name, char *value,
                         size_t size)
{
    size_t name_len = strlen(name);
    const char *line = response->headers;

    while (line != NULL && *line != '\0') {
        const char *end = strchr(line, '\n');
        size_t len = end != NULL ? (size_t)(end - line) : strlen(line);

        if (len > name_len && strncasecmp(line, name, name_len) == 0 && line[name_len] == ':') {
            const char *start = line + name_len + 1;
            const char *stop = line + len;

            while (start < stop && (*start == ' ' || *start == '\t'))
                start++;
            while (stop > start && (stop[-1] == '\r' || stop[-1] == ' ' || stop[-1] == '\t'))
                stop--;
            snprintf(value, size, "%.*s", (int)(stop - start), start);
            return true;
        }
        line = end != NULL ? end + 1 : NULL;
    }
    return false;
}

/* A fetch performed on its own thread. */
struct async_fetch {
    struct fetch_request request;
    struct fetch_response response;
    char *url;
    pthread_t thread;
    double started_at_s; /* now_s() just before the request started */
    bool running;
};

static void *run_async_fetch(void *arg)
{
    struct async_fetch *async = arg;

    fetch(&async->request, &async->response);
    return NULL;
}

/* Starts the request in the background. The async_fetch takes ownership of url. */
static void async_fetch_start(struct async_fetch *async, const struct fetch_request *request,
                              char *url)
{
    memset(async, 0, sizeof(*async));
    async->request = *request;
    async->request.url = url;
    async->url = url;
    async->started_at_s = now_s();
    if (pthread_create(&async->thread, NULL, run_async_fetch, async) != 0)
        abort();
    async->running = true;
}

static void async_fetch_join(struct async_fetch *async)
{
    if (!async->running)
        return;
    pthread_join(async->thread, NULL);
    async->running = false;
    free(async->url);
    async->url = NULL;
    async->request.url = NULL;
}

/* ---- The Prometheus text format ---- */

/* Finds the sample line "series value" and stores its value. */
static bool metric_value(const char *text, const char *series, double *value)
{
    size_t len = strlen(series);
    const char *line = text;

    while (line != NULL && *line != '\0') {
        if (strncmp(line, series, len) == 0 && line[len] == ' ') {
            char *end;

            *value = strtod(line + len + 1, &end);
            return end != line + len + 1;
        }
        line = strchr(line, '\n');
        if (line != NULL)
            line++;
    }
    return false;
}

/* Sums the samples "name{...} value" of a labelled family and stores how many there were. */
static double metric_sum(const char *text, const char *name, int *count)
{
    size_t len = strlen(name);
    const char *line = text;
    double sum = 0;

    *count = 0;
    while (line != NULL && *line != '\0') {
        if (strncmp(line, name, len) == 0 && line[len] == '{') {
            const char *space = strstr(line, "} ");

            if (space != NULL) {
                sum += strtod(space + 2, NULL);
                (*count)++;
            }
        }
        line = strchr(line, '\n');
        if (line != NULL)
            line++;
    }
    return sum;
}

#define EXPECT_METRIC(text, series, expected)                                                      \
    expect_metric(__FILE__, __LINE__, (text), (series), (expected))

static void expect_metric(const char *file, int line, const char *text, const char *series,
                          long expected)
{
    double value;

    if (!metric_value(text, series, &value)) {
        test_fail(file, line, "/metrics has no sample %s (expected %ld)", series, expected);
        return;
    }
    if (value != (double)expected)
        test_fail(file, line, "%s is %.0f, but clients saw %ld", series, value, expected);
}

struct metric_family {
    char name[128];
    char type[16];
    bool has_help;
    bool has_type;
    int samples;
};

#define MAX_FAMILIES 64

static struct metric_family *find_family(struct metric_family *families, int count,
                                         const char *name)
{
    for (int i = 0; i < count; i++) {
        if (strcmp(families[i].name, name) == 0)
            return &families[i];
    }
    return NULL;
}

static struct metric_family *add_family(struct metric_family *families, int *count,
                                        const char *name)
{
    struct metric_family *family = find_family(families, *count, name);

    if (family != NULL || *count == MAX_FAMILIES)
        return family;
    family = &families[(*count)++];
    memset(family, 0, sizeof(*family));
    snprintf(family->name, sizeof(family->name), "%s", name);
    return family;
}

/* Returns the family a sample belongs to: itself, or a histogram's name without its suffix. */
static struct metric_family *family_of_sample(struct metric_family *families, int count,
                                              const char *sample)
{
    static const char *const suffixes[] = {"_bucket", "_sum", "_count"};
    struct metric_family *family = find_family(families, count, sample);

    if (family != NULL)
        return family;
    for (size_t i = 0; i < sizeof(suffixes) / sizeof(suffixes[0]); i++) {
        size_t len = strlen(sample);
        size_t suffix_len = strlen(suffixes[i]);
        char base[128];

        if (len <= suffix_len || len - suffix_len >= sizeof(base) ||
            strcmp(sample + len - suffix_len, suffixes[i]) != 0)
            continue;
        snprintf(base, sizeof(base), "%.*s", (int)(len - suffix_len), sample);
        family = find_family(families, count, base);
        if (family != NULL && strcmp(family->type, "histogram") == 0)
            return family;
    }
    return NULL;
}

static bool parse_sample_value(const char *text, double *value)
{
    char *end;

    if (strcmp(text, "+Inf") == 0 || strcmp(text, "-Inf") == 0 || strcmp(text, "NaN") == 0) {
        *value = strcmp(text, "-Inf") == 0 ? -INFINITY : INFINITY;
        return true;
    }
    errno = 0;
    *value = strtod(text, &end);
    return end != text && *end == '\0' && errno == 0;
}

/*
 * Checks the Prometheus text format 0.0.4: every line is a "# HELP name text" or
 * "# TYPE name type" comment or a sample "name value" or "name{label="v",...} value" without a
 * timestamp, every family has HELP and TYPE before its first sample, and each histogram's
 * buckets are cumulative with le="+Inf" equal to _count.
 */
static void check_exposition(const char *text, const char *where)
{
    static const char *const sample_pattern =
        "^([a-zA-Z_:][a-zA-Z0-9_:]*)"
        "(\\{[a-zA-Z_][a-zA-Z0-9_]*=\"([^\"\\\\]|\\\\.)*\""
        "(,[a-zA-Z_][a-zA-Z0-9_]*=\"([^\"\\\\]|\\\\.)*\")*\\})? ([^ ]+)$";
    static const char *const comment_pattern =
        "^# (HELP|TYPE) ([a-zA-Z_:][a-zA-Z0-9_:]*) (.*)$";
    struct metric_family families[MAX_FAMILIES];
    int family_count = 0;
    regex_t sample_re;
    regex_t comment_re;
    char *copy = strdup(text);
    char *save = NULL;
    int line_number = 0;
    size_t len = strlen(text);

    if (regcomp(&sample_re, sample_pattern, REG_EXTENDED) != 0 ||
        regcomp(&comment_re, comment_pattern, REG_EXTENDED) != 0)
        abort();
    EXPECT(len > 0 && text[len - 1] == '\n', "%s: /metrics body does not end in a newline",
           where);

    for (char *line = strtok_r(copy, "\n", &save); line != NULL;
         line = strtok_r(NULL, "\n", &save)) {
        regmatch_t match[8];

        line_number++;
        if (regexec(&comment_re, line, 4, match, 0) == 0) {
            char name[128];
            const char *rest = line + match[3].rm_so;
            struct metric_family *family;

            snprintf(name, sizeof(name), "%.*s", (int)(match[2].rm_eo - match[2].rm_so),
                     line + match[2].rm_so);
            family = add_family(families, &family_count, name);
            if (family == NULL) {
                test_fail(__FILE__, __LINE__, "%s: more than %d metric families", where,
                          MAX_FAMILIES);
                break;
            }
            if (line[2] == 'H') {
                EXPECT(!family->has_help, "%s line %d: second # HELP for %s", where,
                       line_number, name);
                EXPECT(rest[0] != '\0', "%s line %d: empty # HELP text for %s", where,
                       line_number, name);
                family->has_help = true;
                continue;
            }
            EXPECT(!family->has_type, "%s line %d: second # TYPE for %s", where, line_number,
                   name);
            EXPECT(family->samples == 0, "%s line %d: # TYPE for %s after its samples", where,
                   line_number, name);
            EXPECT(strcmp(rest, "counter") == 0 || strcmp(rest, "gauge") == 0 ||
                   strcmp(rest, "histogram") == 0 || strcmp(rest, "summary") == 0 ||
                   strcmp(rest, "untyped") == 0,
                   "%s line %d: unknown type \"%s\" for %s", where, line_number, rest, name);
            snprintf(family->type, sizeof(family->type), "%s", rest);
            family->has_type = true;
            continue;
        }
        if (line[0] == '#') {
            test_fail(__FILE__, __LINE__, "%s line %d: comment is neither # HELP nor # TYPE: "
                      "\"%s\"", where, line_number, line);
            continue;
        }
        if (regexec(&sample_re, line, 8, match, 0) != 0) {
            test_fail(__FILE__, __LINE__, "%s line %d does not match name{labels} value or "
                      "name value: \"%s\"", where, line_number, line);
            continue;
        }

        char name[128];
        char value_text[64];
        double value;
        struct metric_family *family;

        snprintf(name, sizeof(name), "%.*s", (int)(match[1].rm_eo - match[1].rm_so),
                 line + match[1].rm_so);
        snprintf(value_text, sizeof(value_text), "%.*s",
                 (int)(match[6].rm_eo - match[6].rm_so), line + match[6].rm_so);
        EXPECT(parse_sample_value(value_text, &value), "%s line %d: value \"%s\" is not a "
               "number: \"%s\"", where, line_number, value_text, line);
        family = family_of_sample(families, family_count, name);
        if (family == NULL) {
            test_fail(__FILE__, __LINE__, "%s line %d: sample %s has no # TYPE before it",
                      where, line_number, name);
            continue;
        }
        family->samples++;
        EXPECT(family->has_help, "%s line %d: family %s has no # HELP before its samples",
               where, line_number, family->name);
        if (strcmp(family->type, "counter") == 0)
            EXPECT(value >= 0, "%s line %d: counter %s is negative: %s", where, line_number,
                   name, value_text);
    }
    for (int i = 0; i < family_count; i++) {
        EXPECT(families[i].has_help, "%s: family %s has no # HELP", where, families[i].name);
        EXPECT(families[i].has_type, "%s: family %s has no # TYPE", where, families[i].name);
        EXPECT(families[i].samples > 0, "%s: family %s has no samples", where,
               families[i].name);
    }
    regfree(&sample_re);
    regfree(&comment_re);
    free(copy);
}

/* Checks that the histogram's le bounds rise, its buckets are cumulative, +Inf equals _count. */
static void check_histogram(const char *text, const char *name, const char *where)
{
    char *prefix = format_string("%s_bucket{le=\"", name);
    char *count_name = format_string("%s_count", name);
    double previous_bound = -INFINITY;
    double previous_count = 0;
    double count = -1;
    double inf_count = -1;
    const char *line = text;
    int buckets = 0;

    EXPECT(metric_value(text, count_name, &count), "%s: no sample %s", where, count_name);
    while (line != NULL && *line != '\0') {
        if (strncmp(line, prefix, strlen(prefix)) == 0) {
            const char *bound_text = line + strlen(prefix);
            const char *space = strstr(bound_text, "} ");
            double bound = strncmp(bound_text, "+Inf\"", 5) == 0 ? INFINITY
                                                                  : strtod(bound_text, NULL);
            double bucket_count = space != NULL ? strtod(space + 2, NULL) : -1;

            buckets++;
            EXPECT(bound > previous_bound, "%s: %s bucket bound %g after %g", where, name,
                   bound, previous_bound);
            EXPECT(bucket_count >= previous_count, "%s: %s bucket le=%g has %.0f, below the "
                   "%.0f of the previous bucket", where, name, bound, bucket_count,
                   previous_count);
            previous_bound = bound;
            previous_count = bucket_count;
            if (isinf(bound))
                inf_count = bucket_count;
        }
        line = strchr(line, '\n');
        if (line != NULL)
            line++;
    }
    EXPECT(buckets >= 2, "%s: %s has %d buckets", where, name, buckets);
    EXPECT(isinf(previous_bound), "%s: the last %s bucket is le=%g, not +Inf", where, name,
           previous_bound);
    EXPECT(inf_count == count, "%s: %s le=\"+Inf\" bucket is %.0f, _count is %.0f", where, name,
           inf_count, count);
    free(prefix);
    free(count_name);
}

/* Fetches /metrics from base_url (http://HOST:PORT or https://...), or returns NULL. */
static char *scrape_metrics(const char *base_url, const char *ca_file, long http_version)
{
    char *url = format_string("%s/metrics", base_url);
    struct fetch_request request = {
        .url = url, .http_version = http_version, .ca_file = ca_file,
    };
    struct fetch_response response;
    char *text = NULL;

    fetch(&request, &response);
    if (response.result != CURLE_OK || response.status != 200) {
        test_fail(__FILE__, __LINE__, "GET %s: expected 200, got status %ld, curl error \"%s\"",
                  url, response.status, response.error);
    } else {
        text = response.body;
        response.body = NULL;
    }
    fetch_free(&response);
    free(url);
    return text;
}

/*
 * Polls /metrics until the corr_pending_waiters gauges sum to expected. Unlike wait_pending in
 * the harness, it sends no probe waiters, so it leaves every counter as it was.
 */
static bool wait_pending_sum(const char *base_url, const char *ca_file, long expected,
                             long deadline_ms)
{
    double deadline = now_s() + (double)deadline_ms / 1000.0;
    double sum = -1;

    for (;;) {
        char *text = scrape_metrics(base_url, ca_file, CURL_HTTP_VERSION_1_1);
        int count;

        if (text == NULL)
            return false;
        sum = metric_sum(text, "corr_pending_waiters", &count);
        free(text);
        if (sum == (double)expected)
            return true;
        if (now_s() >= deadline)
            break;
        sleep_ms(20);
    }
    test_fail(__FILE__, __LINE__, "corr_pending_waiters summed to %.0f, not %ld, for %ld ms",
              sum, expected, deadline_ms);
    return false;
}

/* ---- Metrics against what clients saw ---- */

/* Counts, per metric, of the responses that clients observed. */
struct tally {
    long started;
    long finished_ack;
    long finished_timeout;
    long finished_client_gone;
    long rejected_conflict;
    long rejected_max_pending;
    long rejected_invalid;
    long acks_delivered;
    long acks_no_waiter;
    long acks_ring_full;
    long acks_invalid;
    long acks_too_large;
    long not_found;
    long method_not_allowed;
    long unclassified;     /* responses that fit no counter; must stay 0 */
    double min_wait_sum_s; /* lower bound of corr_wait_seconds_sum from the timeouts */
};

enum endpoint {
    ENDPOINT_START,
    ENDPOINT_ACK,
    ENDPOINT_OTHER,
};

static enum endpoint endpoint_of(const char *path)
{
    if (strncmp(path, "/start/", 7) == 0)
        return ENDPOINT_START;
    if (strncmp(path, "/ack/", 5) == 0)
        return ENDPOINT_ACK;
    return ENDPOINT_OTHER;
}

/* Adds a completed response to the tally by its endpoint and status. */
static void tally_response(struct tally *tally, enum endpoint endpoint,
                           const struct http_response *response)
{
    long status = response->status;

    if (response->result != CURLE_OK) {
        tally->unclassified++;
        return;
    }
    if (status == 405) {
        tally->method_not_allowed++;
    } else if (endpoint == ENDPOINT_START && (status == 200 || status == 504)) {
        tally->started++;
        if (status == 200)
            tally->finished_ack++;
        else
            tally->finished_timeout++;
    } else if (endpoint == ENDPOINT_START && status == 409) {
        tally->rejected_conflict++;
    } else if (endpoint == ENDPOINT_START && status == 503) {
        tally->rejected_max_pending++;
    } else if (endpoint == ENDPOINT_START && status == 400) {
        tally->rejected_invalid++;
    } else if (endpoint == ENDPOINT_ACK && status == 202) {
        tally->acks_delivered++;
    } else if (endpoint == ENDPOINT_ACK && status == 404) {
        tally->acks_no_waiter++;
    } else if (endpoint == ENDPOINT_ACK && status == 429) {
        tally->acks_ring_full++;
    } else if (endpoint == ENDPOINT_ACK && status == 400) {
        tally->acks_invalid++;
    } else if (endpoint == ENDPOINT_ACK && status == 413) {
        tally->acks_too_large++;
    } else if (endpoint == ENDPOINT_OTHER && status == 404) {
        tally->not_found++;
    } else {
        tally->unclassified++;
    }
}

#define SEND_COUNTED(port, tally, proto, method, path, body, expected_status)                      \
    send_counted(__FILE__, __LINE__, (port), (tally), (proto), (method), (path), (body),           \
                 (expected_status))

/* Sends one request, checks its status and adds the response to the tally. */
static void send_counted(const char *file, int line, int port, struct tally *tally,
                         enum http_proto proto, const char *method, const char *path,
                         const char *body, long expected_status)
{
    struct http_request request = {
        .method = method, .path = path, .body = body,
        .body_len = body != NULL ? strlen(body) : 0, .proto = proto,
    };
    struct http_response response;
    char *name = format_string("%s %s over %s", method, path, proto_name(proto));

    http_perform(port, &request, &response);
    expect_response(file, line, name, &response, proto, expected_status);
    tally_response(tally, endpoint_of(path), &response);
    if (endpoint_of(path) == ENDPOINT_START && response.status == 504) {
        const char *timeout = strstr(path, "timeout=");

        /* corrd's timers have millisecond resolution, so allow 1 ms less per waiter. */
        if (timeout != NULL)
            tally->min_wait_sum_s += (atof(timeout + strlen("timeout=")) - 1.0) / 1000.0;
    }
    http_response_free(&response);
    free(name);
}

/* Starts a waiter in the background and waits until the pending gauges sum to pending_after. */
static bool hold_waiter(struct async_request *waiter, int port, const char *base_url,
                        enum http_proto proto, const char *id, long pending_after)
{
    char *path = format_string("/start/%s?timeout=%ld", id, HOLD_TIMEOUT_MS);
    struct http_request request = {
        .method = "GET", .path = path, .proto = proto, .timeout_ms = HOLD_TIMEOUT_MS + 10000,
    };

    async_start(waiter, port, &request);
    waiter->owned_path = path;
    return wait_pending_sum(base_url, NULL, pending_after, 5000);
}

/* Joins a held waiter, checks that it got the expected body with 200 and tallies it. */
static void join_answered(struct async_request *waiter, struct tally *tally,
                          enum http_proto proto, const char *body)
{
    async_join(waiter);
    EXPECT_RESPONSE(&waiter->response, proto, 200);
    EXPECT_BODY(&waiter->response, body, strlen(body));
    tally_response(tally, ENDPOINT_START, &waiter->response);
    http_response_free(&waiter->response);
}

/*
 * Starts a waiter whose client gives up after 700 ms and closes the connection, then waits
 * until corrd removed it. The client saw no response, so it is tallied as started and gone.
 */
static void leave_waiter(int port, const char *base_url, struct tally *tally,
                         enum http_proto proto, const char *id)
{
    char *path = format_string("/start/%s?timeout=%ld", id, HOLD_TIMEOUT_MS);
    struct http_request request = {
        .method = "GET", .path = path, .proto = proto, .timeout_ms = 700,
    };
    struct http_response response;

    http_perform(port, &request, &response);
    EXPECT(response.result == CURLE_OPERATION_TIMEDOUT, "GET %s over %s: expected the client "
           "to time out after 700 ms, got curl error %d (%s), status %ld", path,
           proto_name(proto), (int)response.result, response.error, response.status);
    if (response.result == CURLE_OPERATION_TIMEDOUT) {
        tally->started++;
        tally->finished_client_gone++;
    } else {
        tally_response(tally, ENDPOINT_START, &response);
    }
    http_response_free(&response);
    free(path);
    wait_pending_sum(base_url, NULL, 0, 5000);
}

static void expect_metrics_match(const char *text, const struct tally *tally, const char *where)
{
    double wait_count = -1;
    double wait_sum = -1;
    double latency_count = -1;
    double value;
    int count;

    EXPECT(tally->unclassified == 0, "%s: %ld responses fit no counter (see the failures above)",
           where, tally->unclassified);
    EXPECT_METRIC(text, "corr_waiters_started_total", tally->started);
    EXPECT_METRIC(text, "corr_waiters_finished_total{outcome=\"ack\"}", tally->finished_ack);
    EXPECT_METRIC(text, "corr_waiters_finished_total{outcome=\"timeout\"}",
                  tally->finished_timeout);
    EXPECT_METRIC(text, "corr_waiters_finished_total{outcome=\"client_gone\"}",
                  tally->finished_client_gone);
    EXPECT_METRIC(text, "corr_waiters_finished_total{outcome=\"shutdown\"}", 0);
    EXPECT_METRIC(text, "corr_waiters_rejected_total{reason=\"conflict\"}",
                  tally->rejected_conflict);
    EXPECT_METRIC(text, "corr_waiters_rejected_total{reason=\"max_pending\"}",
                  tally->rejected_max_pending);
    EXPECT_METRIC(text, "corr_waiters_rejected_total{reason=\"draining\"}", 0);
    EXPECT_METRIC(text, "corr_waiters_rejected_total{reason=\"invalid\"}",
                  tally->rejected_invalid);
    EXPECT_METRIC(text, "corr_acks_total{outcome=\"delivered\"}", tally->acks_delivered);
    EXPECT_METRIC(text, "corr_acks_total{outcome=\"no_waiter\"}", tally->acks_no_waiter);
    EXPECT_METRIC(text, "corr_acks_total{outcome=\"ring_full\"}", tally->acks_ring_full);
    EXPECT_METRIC(text, "corr_acks_rejected_total{reason=\"invalid\"}", tally->acks_invalid);
    EXPECT_METRIC(text, "corr_acks_rejected_total{reason=\"too_large\"}", tally->acks_too_large);
    EXPECT_METRIC(text, "corr_acks_lost_total", 0);
    EXPECT_METRIC(text, "corr_requests_rejected_total{reason=\"not_found\"}", tally->not_found);
    EXPECT_METRIC(text, "corr_requests_rejected_total{reason=\"method_not_allowed\"}",
                  tally->method_not_allowed);
    value = metric_sum(text, "corr_requests_rejected_total", &count);
    EXPECT(value == (double)(tally->not_found + tally->method_not_allowed),
           "%s: corr_requests_rejected_total sums to %.0f over %d reasons, clients saw %ld "
           "unknown paths and %ld disallowed methods", where, value, count, tally->not_found,
           tally->method_not_allowed);
    EXPECT_METRIC(text, "corr_connections_closed_for_resets_total", 0);

    EXPECT(metric_value(text, "corr_wait_seconds_count", &wait_count),
           "%s: no corr_wait_seconds_count", where);
    EXPECT(wait_count == (double)(tally->finished_ack + tally->finished_timeout),
           "%s: corr_wait_seconds_count is %.0f, clients saw %ld answered and %ld timed out "
           "waiters", where, wait_count, tally->finished_ack, tally->finished_timeout);
    EXPECT(metric_value(text, "corr_wait_seconds_sum", &wait_sum),
           "%s: no corr_wait_seconds_sum", where);
    EXPECT(wait_sum >= tally->min_wait_sum_s, "%s: corr_wait_seconds_sum is %.6f s, below the "
           "%.6f s that the timed-out waiters alone waited", where, wait_sum,
           tally->min_wait_sum_s);
    EXPECT(metric_value(text, "corr_ack_to_response_seconds_count", &latency_count),
           "%s: no corr_ack_to_response_seconds_count", where);
    EXPECT(latency_count == (double)tally->finished_ack,
           "%s: corr_ack_to_response_seconds_count is %.0f, clients saw %ld waiters answered "
           "by an ack", where, latency_count, tally->finished_ack);
    check_histogram(text, "corr_wait_seconds", where);
    check_histogram(text, "corr_ack_to_response_seconds", where);
}

/* Checks the pending gauges: one sample per worker thread, summing to expected. */
static void expect_pending(const char *text, long threads, long expected, const char *where)
{
    int count;
    double sum = metric_sum(text, "corr_pending_waiters", &count);

    EXPECT(count == threads, "%s: %d corr_pending_waiters samples for %ld worker threads", where,
           count, threads);
    EXPECT(sum == (double)expected, "%s: corr_pending_waiters sums to %.0f while %ld waiters "
           "are held", where, sum, expected);
}

/* Scrapes over HTTP/1.1 and h2c, checks the format of both and returns the h2c text. */
static char *scrape_both(const char *base_url, const char *where)
{
    char *http1 = scrape_metrics(base_url, NULL, CURL_HTTP_VERSION_1_1);
    char *h2c = scrape_metrics(base_url, NULL, CURL_HTTP_VERSION_2_PRIOR_KNOWLEDGE);
    char *label;

    if (http1 != NULL) {
        label = format_string("%s over http/1.1", where);
        check_exposition(http1, label);
        free(label);
    }
    if (h2c != NULL) {
        label = format_string("%s over h2c", where);
        check_exposition(h2c, label);
        free(label);
    }
    free(http1);
    return h2c;
}

/*
 * Drives a known mix of outcomes over HTTP/1.1 and h2c, tallies what the clients saw and
 * compares every counter. The case mixes both protocols itself, so it runs once.
 */
static void test_metrics_match_clients(enum http_proto unused)
{
    static const char *const args[] = {
        "--listen", "127.0.0.1:0", "--threads", "2", "--max-pending", "3",
        "--max-ack-bytes", "16", NULL,
    };
    static const enum http_proto protos[] = {PROTO_HTTP1, PROTO_H2C};
    struct async_request held[3];
    struct tally tally = {0};
    struct child server;
    char base_url[64];
    char dir[PATH_MAX];
    char *text;
    int port;

    (void)unused;
    memset(held, 0, sizeof(held));
    if (!make_temp_dir(dir, sizeof(dir)))
        return;
    if (!corrd_spawn(&server, dir, "corrd", args, NULL)) {
        remove_temp_dir(dir);
        return;
    }
    port = server.ports[0];
    snprintf(base_url, sizeof(base_url), "http://127.0.0.1:%d", port);

    /* A fresh server has every counter at 0. */
    text = scrape_both(base_url, "fresh server");
    if (text != NULL) {
        expect_metrics_match(text, &tally, "fresh server");
        expect_pending(text, 2, 0, "fresh server");
        EXPECT(strstr(text, "corr_wait_seconds_bucket{le=\"+Inf\"} 0\n") != NULL,
               "fresh server: corr_wait_seconds +Inf bucket is not 0");
    }
    free(text);

    /* Held waiters, conflicts with them, and the --max-pending limit of 3. */
    if (!hold_waiter(&held[0], port, base_url, PROTO_HTTP1, "held-0", 1) ||
        !hold_waiter(&held[1], port, base_url, PROTO_H2C, "held-1", 2))
        goto out;
    text = scrape_both(base_url, "two held");
    if (text != NULL)
        expect_pending(text, 2, 2, "two held");
    free(text);
    SEND_COUNTED(port, &tally, PROTO_H2C, "GET", "/start/held-0?timeout=1000", NULL, 409);
    SEND_COUNTED(port, &tally, PROTO_HTTP1, "GET", "/start/held-1?timeout=1000", NULL, 409);
    if (!hold_waiter(&held[2], port, base_url, PROTO_HTTP1, "held-2", 3))
        goto out;
    SEND_COUNTED(port, &tally, PROTO_HTTP1, "GET", "/start/extra-0?timeout=1000", NULL, 503);
    SEND_COUNTED(port, &tally, PROTO_H2C, "GET", "/start/extra-1?timeout=1000", NULL, 503);
    text = scrape_both(base_url, "three held");
    if (text != NULL)
        expect_pending(text, 2, 3, "three held");
    free(text);
    SEND_COUNTED(port, &tally, PROTO_H2C, "POST", "/ack/held-0", "zero", 202);
    SEND_COUNTED(port, &tally, PROTO_HTTP1, "POST", "/ack/held-1", "one", 202);
    SEND_COUNTED(port, &tally, PROTO_H2C, "POST", "/ack/held-2", "two", 202);
    join_answered(&held[0], &tally, PROTO_HTTP1, "zero");
    join_answered(&held[1], &tally, PROTO_H2C, "one");
    join_answered(&held[2], &tally, PROTO_HTTP1, "two");

    /* More delivered pairs, each waiter and ack on opposite protocols. */
    for (int i = 0; i < 4; i++) {
        enum http_proto proto = protos[i % 2];
        char *id = format_string("pair-%d", i);
        char *ack_path = format_string("/ack/%s", id);

        if (hold_waiter(&held[0], port, base_url, proto, id, 1)) {
            SEND_COUNTED(port, &tally, protos[(i + 1) % 2], "POST", ack_path, id, 202);
            join_answered(&held[0], &tally, proto, id);
        } else {
            async_join(&held[0]);
            http_response_free(&held[0].response);
        }
        free(ack_path);
        free(id);
    }

    /* Stale and early acks. */
    SEND_COUNTED(port, &tally, PROTO_HTTP1, "POST", "/ack/pair-0", "late", 404);
    SEND_COUNTED(port, &tally, PROTO_H2C, "POST", "/ack/held-1", "late", 404);
    SEND_COUNTED(port, &tally, PROTO_HTTP1, "POST", "/ack/never-0", "early", 404);
    SEND_COUNTED(port, &tally, PROTO_H2C, "GET", "/ack/never-1", NULL, 404);

    /* Timeouts. */
    SEND_COUNTED(port, &tally, PROTO_HTTP1, "GET", "/start/late-0?timeout=50", NULL, 504);
    SEND_COUNTED(port, &tally, PROTO_H2C, "GET", "/start/late-1?timeout=80", NULL, 504);
    SEND_COUNTED(port, &tally, PROTO_HTTP1, "POST", "/start/late-2?timeout=30", NULL, 504);

    /* Invalid ids and query parameters on both endpoints. */
    SEND_COUNTED(port, &tally, PROTO_HTTP1, "GET", "/start/%zz", NULL, 400);
    SEND_COUNTED(port, &tally, PROTO_H2C, "GET", "/start/a%00", NULL, 400);
    SEND_COUNTED(port, &tally, PROTO_HTTP1, "GET", "/start/ok?timeout=0", NULL, 400);
    SEND_COUNTED(port, &tally, PROTO_H2C, "GET", "/start/ok?colour=red", NULL, 400);
    SEND_COUNTED(port, &tally, PROTO_HTTP1, "GET", "/start/", NULL, 400);
    SEND_COUNTED(port, &tally, PROTO_H2C, "POST", "/ack/%zz", "x", 400);
    SEND_COUNTED(port, &tally, PROTO_HTTP1, "POST", "/ack/ok?x=1", "x", 400);
    SEND_COUNTED(port, &tally, PROTO_HTTP1, "POST", "/ack/a/b", "x", 400);
    SEND_COUNTED(port, &tally, PROTO_H2C, "POST", "/ack/", "x", 400);

    /* Ack bodies at and one byte over --max-ack-bytes 16. */
    SEND_COUNTED(port, &tally, PROTO_HTTP1, "POST", "/ack/big-0", "0123456789abcdefX", 413);
    SEND_COUNTED(port, &tally, PROTO_H2C, "POST", "/ack/big-1", "0123456789abcdefX", 413);
    SEND_COUNTED(port, &tally, PROTO_H2C, "POST", "/ack/big-2", "0123456789abcdef", 404);

    /* Requests outside the API. */
    SEND_COUNTED(port, &tally, PROTO_HTTP1, "DELETE", "/start/x", NULL, 405);
    SEND_COUNTED(port, &tally, PROTO_H2C, "PUT", "/ack/x", "x", 405);
    SEND_COUNTED(port, &tally, PROTO_HTTP1, "GET", "/nope", NULL, 404);
    SEND_COUNTED(port, &tally, PROTO_H2C, "GET", "/metrics/extra", NULL, 404);

    /* Clients that leave, and the acks that come after them. */
    leave_waiter(port, base_url, &tally, PROTO_HTTP1, "gone-0");
    leave_waiter(port, base_url, &tally, PROTO_H2C, "gone-1");
    SEND_COUNTED(port, &tally, PROTO_H2C, "POST", "/ack/gone-0", "late", 404);
    SEND_COUNTED(port, &tally, PROTO_HTTP1, "POST", "/ack/gone-1", "late", 404);

    text = scrape_both(base_url, "final");
    if (text != NULL) {
        expect_metrics_match(text, &tally, "final");
        expect_pending(text, 2, 0, "final");
    }
    free(text);

out:
    child_finish(&server);
    for (int i = 0; i < 3; i++) {
        async_join(&held[i]);
        http_response_free(&held[i].response);
    }
    remove_temp_dir(dir);
}

/* ---- Health and readiness ---- */

static long fetch_version(enum http_proto proto)
{
    return proto == PROTO_H2C ? CURL_HTTP_VERSION_2_PRIOR_KNOWLEDGE : CURL_HTTP_VERSION_1_1;
}

/* GETs base_url + path over proto and checks the status and, unless NULL, the exact body. */
static void expect_get(const char *base_url, enum http_proto proto, const char *path,
                       long expected_status, const char *expected_body)
{
    char *url = format_string("%s%s", base_url, path);
    struct fetch_request request = {.url = url, .http_version = fetch_version(proto)};
    struct fetch_response response;

    fetch(&request, &response);
    EXPECT(response.result == CURLE_OK, "GET %s over %s failed: curl error %d (%s)", url,
           proto_name(proto), (int)response.result, response.error);
    EXPECT(response.status == expected_status, "GET %s over %s: expected %ld, got %ld (\"%s\")",
           url, proto_name(proto), expected_status, response.status,
           printable(response.body, response.body_len));
    EXPECT(expected_body == NULL || strcmp(response.body, expected_body) == 0,
           "GET %s: expected body \"%s\", got \"%s\"", url,
           expected_body != NULL ? printable(expected_body, strlen(expected_body)) : "",
           printable(response.body, response.body_len));
    fetch_free(&response);
    free(url);
}

/*
 * /readyz turns 503 with Retry-After on SIGTERM while /healthz, /metrics and new waiter pairs
 * are still served for --shutdown-delay-ms 1000. Then the drain releases the held waiters with
 * 503 and corrd exits 0.
 */
static void test_readyz_during_shutdown(enum http_proto proto)
{
    static const char *const args[] = {
        "--listen", "127.0.0.1:0", "--threads", "2", "--shutdown-delay-ms", "1000",
        "--drain-ms", "3000", NULL,
    };
    struct fetch_request readyz = {.http_version = fetch_version(proto)};
    struct fetch_response response;
    struct async_request before;
    struct async_request during;
    struct async_fetch through;
    struct child server;
    char base_url[64];
    char dir[PATH_MAX];
    char retry_after[64];
    double sigterm_at;
    bool not_ready = false;

    memset(&before, 0, sizeof(before));
    memset(&during, 0, sizeof(during));
    memset(&through, 0, sizeof(through));
    if (!make_temp_dir(dir, sizeof(dir)))
        return;
    if (!corrd_spawn(&server, dir, "corrd", args, NULL)) {
        remove_temp_dir(dir);
        return;
    }
    snprintf(base_url, sizeof(base_url), "http://127.0.0.1:%d", server.ports[0]);
    expect_get(base_url, proto, "/healthz", 200, "ok\n");
    expect_get(base_url, proto, "/readyz", 200, "ready\n");

    /* One waiter to ack during the delay, one left for the drain to release. */
    if (!hold_waiter(&before, server.ports[0], base_url, proto, "before-term", 1))
        goto out;
    {
        struct fetch_request request = {
            .http_version = fetch_version(proto), .timeout_ms = HOLD_TIMEOUT_MS + 10000,
        };

        async_fetch_start(&through, &request,
                          format_string("%s/start/through-drain?timeout=%ld", base_url,
                                        HOLD_TIMEOUT_MS));
    }
    if (!wait_pending_sum(base_url, NULL, 2, 5000))
        goto out;

    sigterm_at = now_s();
    if (kill(server.pid, SIGTERM) != 0) {
        test_fail(__FILE__, __LINE__, "kill(%d, SIGTERM) failed: %s", (int)server.pid,
                  strerror(errno));
        goto out;
    }
    readyz.url = format_string("%s/readyz", base_url);
    for (int attempt = 0; attempt < 50 && !not_ready; attempt++) {
        fetch(&readyz, &response);
        if (response.result == CURLE_OK && response.status == 503) {
            not_ready = true;
            retry_after[0] = '\0';
            EXPECT(fetch_header(&response, "Retry-After", retry_after, sizeof(retry_after)),
                   "/readyz 503 over %s has no Retry-After header; headers: \"%s\"",
                   proto_name(proto), printable(response.headers, response.headers_len));
            EXPECT(atoi(retry_after) >= 1, "/readyz 503: Retry-After \"%s\" is not a positive "
                   "number of seconds", retry_after);
            EXPECT(now_s() - sigterm_at < 1.0, "/readyz turned 503 only %.3f s after SIGTERM, "
                   "after the 1 s shutdown delay", now_s() - sigterm_at);
        } else {
            EXPECT(response.result == CURLE_OK && response.status == 200, "/readyz after "
                   "SIGTERM: expected 200 or 503, got status %ld, curl error \"%s\"",
                   response.status, response.error);
        }
        fetch_free(&response);
        if (!not_ready)
            sleep_ms(10);
    }
    free((char *)readyz.url);
    EXPECT(not_ready, "/readyz over %s never answered 503 after SIGTERM", proto_name(proto));

    /* Within the delay, corrd still accepts connections and serves every endpoint. */
    expect_get(base_url, proto, "/healthz", 200, "ok\n");
    {
        char *text = scrape_metrics(base_url, NULL, fetch_version(proto));

        if (text != NULL)
            expect_pending(text, 2, 2, "during shutdown delay");
        free(text);
    }
    if (hold_waiter(&during, server.ports[0], base_url, proto, "during-delay", 3)) {
        struct http_response ack;

        http_post(server.ports[0], proto, "/ack/during-delay", "new", 3, &ack);
        EXPECT_RESPONSE(&ack, proto, 202);
        http_response_free(&ack);
        async_join(&during);
        EXPECT_RESPONSE(&during.response, proto, 200);
        EXPECT_BODY(&during.response, "new", 3);
    }
    {
        struct http_response ack;

        http_post(server.ports[0], proto, "/ack/before-term", "old", 3, &ack);
        EXPECT_RESPONSE(&ack, proto, 202);
        http_response_free(&ack);
    }
    async_join(&before);
    EXPECT_RESPONSE(&before.response, proto, 200);
    EXPECT_BODY(&before.response, "old", 3);
    expect_get(base_url, proto, "/readyz", 503, NULL);

    /* After the delay the drain releases the last waiter, and corrd exits 0. */
    async_fetch_join(&through);
    EXPECT(through.response.result == CURLE_OK && through.response.status == 503,
           "waiter held through the drain: expected 503, got status %ld, curl error \"%s\"",
           through.response.status, through.response.error);
    EXPECT(fetch_header(&through.response, "Retry-After", retry_after, sizeof(retry_after)),
           "waiter released by the drain: no Retry-After header");
    {
        double released_at = through.started_at_s + through.response.elapsed_s;

        EXPECT(released_at - sigterm_at >= 0.95, "waiter released %.3f s after SIGTERM, before "
               "the 1 s shutdown delay passed", released_at - sigterm_at);
    }
    if (!child_wait_exit(&server, 10000)) {
        test_fail(__FILE__, __LINE__, "corrd still running 10 s after the shutdown delay");
        child_kill(&server);
    } else {
        EXPECT(server.exit_status == 0, "corrd exited with status %d after SIGTERM, expected 0",
               server.exit_status);
        EXPECT(server.exited_at_s - sigterm_at >= 0.95, "corrd exited %.3f s after SIGTERM, "
               "before the 1 s shutdown delay passed", server.exited_at_s - sigterm_at);
    }

out:
    child_finish(&server);
    async_join(&before);
    http_response_free(&before.response);
    async_join(&during);
    http_response_free(&during.response);
    async_fetch_join(&through);
    fetch_free(&through.response);
    remove_temp_dir(dir);
}

/* ---- TLS ---- */

/* Runs a command to completion (at most 60 s) with its output in dir/name.stdout/.stderr. */
static bool run_command(const char *dir, const char *name, const char *const *argv)
{
    struct child command;

    if (!spawn_process(&command, argv[0], dir, name, argv + 1, NULL))
        return false;
    if (!child_wait_exit(&command, 60000)) {
        test_fail(__FILE__, __LINE__, "%s still running after 60 s", argv[0]);
        child_kill(&command);
        return false;
    }
    if (command.exit_status == 127) {
        test_fail(__FILE__, __LINE__, "cannot run %s; is it installed?", argv[0]);
        child_print_stderr(&command);
        return false;
    }
    if (command.exit_status != 0) {
        test_fail(__FILE__, __LINE__, "%s %s exited with status %d", argv[0], argv[1],
                  command.exit_status);
        child_print_stderr(&command);
        return false;
    }
    return true;
}

struct tls_files {
    char cert[PATH_MAX];      /* self-signed, CN and SAN 127.0.0.1, SAN localhost */
    char key[PATH_MAX];       /* the private key of cert */
    char other_key[PATH_MAX]; /* a key that does not match cert */
};

static bool make_tls_files(const char *dir, struct tls_files *files)
{
    snprintf(files->cert, sizeof(files->cert), "%s/cert.pem", dir);
    snprintf(files->key, sizeof(files->key), "%s/key.pem", dir);
    snprintf(files->other_key, sizeof(files->other_key), "%s/other-key.pem", dir);

    const char *const req[] = {
        "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
        "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", files->key, "-out", files->cert,
        "-days", "2", "-subj", "/CN=127.0.0.1", "-addext",
        "subjectAltName=IP:127.0.0.1,DNS:localhost", NULL,
    };
    const char *const genpkey[] = {
        "openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-out", files->other_key, NULL,
    };

    return run_command(dir, "openssl-req", req) && run_command(dir, "openssl-genpkey", genpkey);
}

static const char *version_name(long version)
{
    switch (version) {
    case CURL_HTTP_VERSION_1_0:
        return "HTTP/1.0";
    case CURL_HTTP_VERSION_1_1:
        return "HTTP/1.1";
    case CURL_HTTP_VERSION_2_0:
        return "HTTP/2";
    default:
        return "unknown";
    }
}

/* Runs a waiter and its ack over HTTPS with the given curl HTTP version option. */
static void tls_pair(const char *base_url, const char *ca_file, long option, long expected,
                     const char *id)
{
    struct fetch_request waiter_request = {
        .http_version = option, .ca_file = ca_file, .timeout_ms = HOLD_TIMEOUT_MS + 10000,
    };
    struct fetch_request ack_request = {
        .http_version = option, .ca_file = ca_file, .body = id, .body_len = strlen(id),
    };
    struct fetch_response ack;
    struct async_fetch waiter;

    async_fetch_start(&waiter, &waiter_request,
                      format_string("%s/start/%s?timeout=%ld", base_url, id, HOLD_TIMEOUT_MS));
    if (wait_pending_sum(base_url, ca_file, 1, 5000)) {
        ack_request.url = format_string("%s/ack/%s", base_url, id);
        fetch(&ack_request, &ack);
        EXPECT(ack.result == CURLE_OK && ack.status == 202, "POST %s: expected 202, got status "
               "%ld, curl error \"%s\"", ack_request.url, ack.status, ack.error);
        EXPECT(ack.http_version == expected, "POST %s: expected %s, got %s", ack_request.url,
               version_name(expected), version_name(ack.http_version));
        fetch_free(&ack);
        free((char *)ack_request.url);
    }
    async_fetch_join(&waiter);
    EXPECT(waiter.response.result == CURLE_OK && waiter.response.status == 200,
           "TLS waiter %s: expected 200, got status %ld, curl error \"%s\"", id,
           waiter.response.status, waiter.response.error);
    EXPECT(waiter.response.http_version == expected, "TLS waiter %s: expected %s, got %s", id,
           version_name(expected), version_name(waiter.response.http_version));
    EXPECT(strcmp(waiter.response.body, id) == 0, "TLS waiter %s: expected body \"%s\", got "
           "\"%s\"", id, id, printable(waiter.response.body, waiter.response.body_len));
    fetch_free(&waiter.response);
}

static void test_tls_pairs_and_close(enum http_proto unused)
{
    struct tls_files files;
    struct child server;
    char base_url[64];
    char dir[PATH_MAX];
    char *text;

    (void)unused;
    if (!make_temp_dir(dir, sizeof(dir)))
        return;
    if (!make_tls_files(dir, &files)) {
        remove_temp_dir(dir);
        return;
    }
    const char *const args[] = {
        "--listen", "127.0.0.1:0", "--threads", "2", "--tls-cert", files.cert,
        "--tls-key", files.key, NULL,
    };
    if (!corrd_spawn(&server, dir, "corrd", args, NULL)) {
        remove_temp_dir(dir);
        return;
    }
    snprintf(base_url, sizeof(base_url), "https://127.0.0.1:%d", server.ports[0]);

    tls_pair(base_url, files.cert, CURL_HTTP_VERSION_2TLS, CURL_HTTP_VERSION_2_0, "tls-h2");
    tls_pair(base_url, files.cert, CURL_HTTP_VERSION_1_1, CURL_HTTP_VERSION_1_1, "tls-http1");

    /* The listener speaks only TLS, so a cleartext request fails or gets at most a 400. */
    {
        char *url = format_string("http://127.0.0.1:%d/healthz", server.ports[0]);
        struct fetch_request request = {
            .url = url, .http_version = CURL_HTTP_VERSION_1_1, .timeout_ms = 3000,
        };
        struct fetch_response response;

        fetch(&request, &response);
        EXPECT(response.result != CURLE_OK || response.status == 400,
               "cleartext GET on the TLS port: expected a failed request or 400, got %ld",
               response.status);
        fetch_free(&response);
        free(url);
    }

    /* An HTTP/1.1 client over TLS gives up and closes, and corrd removes its waiter. */
    {
        struct fetch_request request = {
            .http_version = CURL_HTTP_VERSION_1_1, .ca_file = files.cert, .timeout_ms = 700,
        };
        struct fetch_request ack_request = {
            .http_version = CURL_HTTP_VERSION_1_1, .ca_file = files.cert, .body = "late",
            .body_len = 4,
        };
        struct fetch_response response;

        request.url = format_string("%s/start/tls-gone?timeout=%ld", base_url, HOLD_TIMEOUT_MS);
        fetch(&request, &response);
        EXPECT(response.result == CURLE_OPERATION_TIMEDOUT, "TLS waiter: expected the client to "
               "time out after 700 ms, got curl error %d (%s), status %ld",
               (int)response.result, response.error, response.status);
        fetch_free(&response);
        free((char *)request.url);
        wait_pending_sum(base_url, files.cert, 0, 5000);

        ack_request.url = format_string("%s/ack/tls-gone", base_url);
        fetch(&ack_request, &response);
        EXPECT(response.result == CURLE_OK && response.status == 404, "ack after the TLS client "
               "closed: expected 404, got status %ld, curl error \"%s\"", response.status,
               response.error);
        fetch_free(&response);
        free((char *)ack_request.url);
    }

    text = scrape_metrics(base_url, files.cert, CURL_HTTP_VERSION_2TLS);
    if (text != NULL) {
        check_exposition(text, "TLS server");
        EXPECT_METRIC(text, "corr_waiters_finished_total{outcome=\"ack\"}", 2);
        EXPECT_METRIC(text, "corr_waiters_finished_total{outcome=\"client_gone\"}", 1);
        EXPECT_METRIC(text, "corr_acks_total{outcome=\"no_waiter\"}", 1);
    }
    free(text);
    {
        char *log = read_file(server.stderr_path);

        EXPECT(log != NULL && strstr(log, " tls=on") != NULL,
               "msg=starting line does not contain tls=on");
        free(log);
    }
    child_finish(&server);
    remove_temp_dir(dir);
}

static bool is_word_byte(char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           c == '_';
}

/* Finds needle in text where it is not part of a longer word or number, so "0" skips "1024". */
static bool contains_token(const char *text, const char *needle)
{
    size_t len = strlen(needle);

    for (const char *p = strstr(text, needle); p != NULL; p = strstr(p + 1, needle)) {
        bool starts = p == text || !is_word_byte(p[-1]) || !is_word_byte(needle[0]);
        bool ends = !is_word_byte(p[len]) || !is_word_byte(needle[len - 1]);

        if (starts && ends)
            return true;
    }
    return false;
}

/* Checks that corrd exits 2 without listening and names each of needles on stderr. */
static void expect_startup_error(const struct child *child, const char *label,
                                 const char *const *needles)
{
    char *errors = read_file(child->stderr_path);

    EXPECT(child->exit_status == 2, "%s: expected exit status 2, got %d", label,
           child->exit_status);
    if (errors == NULL) {
        test_fail(__FILE__, __LINE__, "%s: cannot read %s", label, child->stderr_path);
        return;
    }
    EXPECT(strstr(errors, "msg=listening") == NULL, "%s: corrd listened before exiting: \"%s\"",
           label, printable(errors, strlen(errors)));
    for (size_t i = 0; needles[i] != NULL; i++)
        EXPECT(contains_token(errors, needles[i]), "%s: stderr does not contain \"%s\": \"%s\"",
               label, needles[i], printable(errors, strlen(errors)));
    free(errors);
}

static void test_tls_bad_key_exit_2(enum http_proto unused)
{
    struct tls_files files;
    struct child child;
    char dir[PATH_MAX];
    char missing[PATH_MAX + 16];

    (void)unused;
    if (!make_temp_dir(dir, sizeof(dir)))
        return;
    if (!make_tls_files(dir, &files)) {
        remove_temp_dir(dir);
        return;
    }
    snprintf(missing, sizeof(missing), "%s/missing.pem", dir);

    const char *const mismatch_args[] = {
        "--listen", "127.0.0.1:0", "--tls-cert", files.cert, "--tls-key", files.other_key, NULL,
    };
    const char *const mismatch_needles[] = {"--tls-key", files.other_key, NULL};
    if (corrd_run_to_exit(&child, dir, "mismatch", mismatch_args, NULL))
        expect_startup_error(&child, "key not matching the certificate", mismatch_needles);

    const char *const missing_args[] = {
        "--listen", "127.0.0.1:0", "--tls-cert", files.cert, "--tls-key", missing, NULL,
    };
    const char *const missing_needles[] = {"--tls-key", missing, NULL};
    if (corrd_run_to_exit(&child, dir, "missing-key", missing_args, NULL))
        expect_startup_error(&child, "missing key file", missing_needles);

    const char *const cert_only_args[] = {
        "--listen", "127.0.0.1:0", "--tls-cert", files.cert, NULL,
    };
    const char *const cert_only_needles[] = {"--tls-cert", "--tls-key", NULL};
    if (corrd_run_to_exit(&child, dir, "cert-only", cert_only_args, NULL))
        expect_startup_error(&child, "--tls-cert without --tls-key", cert_only_needles);

    /* A key file given as --tls-cert contains no certificate. */
    const char *const swapped_args[] = {
        "--listen", "127.0.0.1:0", "--tls-cert", files.key, "--tls-key", files.cert, NULL,
    };
    const char *const swapped_needles[] = {"--tls-cert", files.key, NULL};
    if (corrd_run_to_exit(&child, dir, "swapped", swapped_args, NULL))
        expect_startup_error(&child, "key given as --tls-cert", swapped_needles);
    if (test_failures() > 0)
        child_print_stderr(&child);
    remove_temp_dir(dir);
}

/* ---- Configuration ---- */

/* Holds `allowed` waiters, then checks that one more gets 503 and acks the held ones. */
static void expect_pending_limit(int port, long allowed)
{
    struct async_request held[4];
    char base_url[64];
    long started = 0;
    bool all_held = true;

    snprintf(base_url, sizeof(base_url), "http://127.0.0.1:%d", port);
    memset(held, 0, sizeof(held));
    for (long i = 0; i < allowed && i < 4 && all_held; i++) {
        char *id = format_string("limit-%ld", i);

        all_held = hold_waiter(&held[i], port, base_url, PROTO_HTTP1, id, i + 1);
        started++;
        free(id);
    }
    if (all_held) {
        struct http_response extra;

        http_get(port, PROTO_HTTP1, "/start/over-limit?timeout=1000", &extra);
        EXPECT(extra.status == 503, "waiter %ld with %ld allowed: expected 503, got %ld (\"%s\")",
               allowed + 1, allowed, extra.status, printable(extra.body, extra.body_len));
        http_response_free(&extra);
    }
    for (long i = 0; i < started; i++) {
        char *path = format_string("/ack/limit-%ld", i);
        struct http_response ack;

        http_post(port, PROTO_HTTP1, path, "x", 1, &ack);
        EXPECT(ack.status == 202, "POST %s: expected 202, got %ld", path, ack.status);
        http_response_free(&ack);
        async_join(&held[i]);
        EXPECT(held[i].response.status == 200, "held waiter limit-%ld: expected 200, got %ld", i,
               held[i].response.status);
        http_response_free(&held[i].response);
        free(path);
    }
}

static void test_env_max_pending(enum http_proto unused)
{
    static const char *const args[] = {"--listen", "127.0.0.1:0", "--threads", "2", NULL};
    static const char *const env[] = {"CORR_MAX_PENDING=1", NULL};
    struct child server;
    char dir[PATH_MAX];

    (void)unused;
    if (!make_temp_dir(dir, sizeof(dir)))
        return;
    if (corrd_spawn(&server, dir, "corrd", args, env)) {
        expect_pending_limit(server.ports[0], 1);
        child_finish(&server);
    }
    remove_temp_dir(dir);
}

static void test_flag_overrides_env(enum http_proto unused)
{
    static const char *const args[] = {
        "--listen", "127.0.0.1:0", "--threads", "2", "--max-pending", "2", NULL,
    };
    static const char *const env[] = {"CORR_MAX_PENDING=1", NULL};
    struct child server;
    char dir[PATH_MAX];

    (void)unused;
    if (!make_temp_dir(dir, sizeof(dir)))
        return;
    if (corrd_spawn(&server, dir, "corrd", args, env)) {
        expect_pending_limit(server.ports[0], 2);
        child_finish(&server);
    }
    remove_temp_dir(dir);
}

static void test_flag_overrides_invalid_env(enum http_proto unused)
{
    static const char *const args[] = {
        "--listen", "127.0.0.1:0", "--threads", "1", "--max-pending", "2", NULL,
    };
    static const char *const env[] = {"CORR_MAX_PENDING=abc", "CORR_THREADS=", NULL};
    struct child server;
    char dir[PATH_MAX];

    (void)unused;
    if (!make_temp_dir(dir, sizeof(dir)))
        return;
    /* The flag replaces the invalid variable, and the empty one counts as unset. */
    if (corrd_spawn(&server, dir, "corrd", args, env)) {
        expect_pending_limit(server.ports[0], 2);
        child_finish(&server);
    }
    remove_temp_dir(dir);
}

static void test_busy_port_exit_1(enum http_proto unused)
{
    static const char *const first_args[] = {"--listen", "127.0.0.1:0", "--threads", "1", NULL};
    struct child first, second;
    char dir[PATH_MAX], listen_arg[64];

    (void)unused;
    if (!make_temp_dir(dir, sizeof(dir)))
        return;
    if (corrd_spawn(&first, dir, "first", first_args, NULL)) {
        /* A second corrd on the same port would share it through SO_REUSEPORT and split ids. */
        snprintf(listen_arg, sizeof(listen_arg), "127.0.0.1:%d", first.ports[0]);
        const char *const second_args[] = {"--listen", listen_arg, "--threads", "1", NULL};
        if (corrd_run_to_exit(&second, dir, "second", second_args, NULL)) {
            EXPECT(second.exit_status == 1, "second corrd on port %d exited with %d, expected 1",
                   first.ports[0], second.exit_status);
            char *errors = read_file(second.stderr_path);
            EXPECT(errors != NULL && strstr(errors, "Address already in use") != NULL,
                   "second corrd's stderr does not say the address is in use: \"%s\"",
                   errors != NULL ? errors : "(unreadable)");
            free(errors);
        }
        child_finish(&first);
    }
    remove_temp_dir(dir);
}

/*
 * The drain lets a request that is still arriving finish: an ack whose body trickles in after
 * SIGTERM gets its answer, while an idle keep-alive connection is closed at once.
 */
static void test_drain_finishes_slow_request(enum http_proto unused)
{
    static const char *const args[] = {
        "--listen", "127.0.0.1:0", "--threads", "1", "--drain-ms", "5000", NULL,
    };
    static const char head[] = "POST /ack/slow HTTP/1.1\r\nHost: x\r\nContent-Length: 8\r\n\r\n";
    static const char ping[] = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    struct child server;
    char dir[PATH_MAX], reply[512];

    (void)unused;
    if (!make_temp_dir(dir, sizeof(dir)))
        return;
    if (!corrd_spawn(&server, dir, "corrd", args, NULL)) {
        remove_temp_dir(dir);
        return;
    }
    int idle = raw_connect(server.ports[0]);
    int slow = raw_connect(server.ports[0]);
    EXPECT(idle >= 0 && slow >= 0, "cannot connect to corrd on port %d", server.ports[0]);
    if (idle >= 0 && slow >= 0) {
        /* The idle connection has had one answered request; the slow one sends its body late. */
        raw_send(idle, ping, strlen(ping));
        ssize_t got = recv(idle, reply, sizeof(reply), 0);
        EXPECT(got > 0, "no answer to GET /healthz on the idle connection");
        raw_send(slow, head, strlen(head));
        raw_send(slow, "ab", 2);
        sleep_ms(200);
        kill(server.pid, SIGTERM);
        double sent_at = now_s();
        got = recv(idle, reply, sizeof(reply), 0);
        EXPECT(got == 0, "idle keep-alive connection not closed by the drain (recv returned %zd)",
               got);
        EXPECT(now_s() - sent_at < 1.0, "idle connection closed %.2f s after SIGTERM, expected "
               "under 1 s", now_s() - sent_at);
        for (int i = 0; i < 3; i++) {
            sleep_ms(400);
            raw_send(slow, "cd", 2);
        }
        got = recv(slow, reply, sizeof(reply) - 1, 0);
        reply[got > 0 ? got : 0] = '\0';
        EXPECT(strncmp(reply, "HTTP/1.1 404", 12) == 0,
               "the ack that finished during the drain got \"%.40s\", expected HTTP/1.1 404",
               reply);
    }
    if (idle >= 0)
        close(idle);
    if (slow >= 0)
        close(slow);
    if (!child_wait_exit(&server, 10000)) {
        test_fail(__FILE__, __LINE__, "corrd still running 10 s after SIGTERM");
        child_kill(&server);
    } else {
        EXPECT(server.exit_status == 0, "corrd exited with %d after the drain, expected 0",
               server.exit_status);
    }
    if (test_failures() > 0)
        child_print_stderr(&server);
    remove_temp_dir(dir);
}

static void test_env_listen_two_addresses(enum http_proto unused)
{
    static const char *const args[] = {"--threads", "2", NULL};
    static const char *const env[] = {"CORR_LISTEN=127.0.0.1:0,127.0.0.2:0", NULL};
    struct async_request waiter;
    struct child server;
    char dir[PATH_MAX];
    char base_url[2][96];

    (void)unused;
    memset(&waiter, 0, sizeof(waiter));
    if (!make_temp_dir(dir, sizeof(dir)))
        return;
    if (!spawn_process(&server, corrd_path, dir, "corrd", args, env)) {
        remove_temp_dir(dir);
        return;
    }
    if (!child_wait_listening(&server, 2, 10000))
        goto out;
    EXPECT(strncmp(server.listeners[0], "127.0.0.1:", 10) == 0, "first listening addr is %s, "
           "expected 127.0.0.1:PORT", server.listeners[0]);
    EXPECT(strncmp(server.listeners[1], "127.0.0.2:", 10) == 0, "second listening addr is %s, "
           "expected 127.0.0.2:PORT", server.listeners[1]);
    for (int i = 0; i < 2; i++) {
        snprintf(base_url[i], sizeof(base_url[i]), "http://%s", server.listeners[i]);
        expect_get(base_url[i], PROTO_HTTP1, "/healthz", 200, "ok\n");
    }

    /* Both addresses reach one server: a waiter on the first is acked on the second. */
    if (hold_waiter(&waiter, server.ports[0], base_url[0], PROTO_HTTP1, "two-addrs", 1)) {
        char *url = format_string("%s/ack/two-addrs", base_url[1]);
        struct fetch_request request = {
            .url = url, .http_version = CURL_HTTP_VERSION_1_1, .body = "via 2", .body_len = 5,
        };
        struct fetch_response ack;

        fetch(&request, &ack);
        EXPECT(ack.status == 202, "POST %s: expected 202, got %ld", url, ack.status);
        fetch_free(&ack);
        free(url);
        async_join(&waiter);
        EXPECT_RESPONSE(&waiter.response, PROTO_HTTP1, 200);
        EXPECT_BODY(&waiter.response, "via 2", 5);
    }

out:
    child_finish(&server);
    async_join(&waiter);
    http_response_free(&waiter.response);
    remove_temp_dir(dir);
}

struct invalid_option {
    const char *label;
    const char *args[5];    /* after --listen 127.0.0.1:0, NULL-terminated */
    const char *env;        /* NAME=VALUE, or NULL */
    const char *needles[5]; /* the option, the value and the valid range, NULL-terminated */
};

static const struct invalid_option invalid_options[] = {
    {"threads 0", {"--threads", "0"}, NULL, {"--threads", "0", "1", "1024"}},
    {"threads 1025", {"--threads", "1025"}, NULL, {"--threads", "1025", "1", "1024"}},
    {"threads 2x", {"--threads", "2x"}, NULL, {"--threads", "2x", "1", "1024"}},
    {"max-id-bytes 70000", {"--max-id-bytes", "70000"}, NULL,
     {"--max-id-bytes", "70000", "1", "65535"}},
    {"max-id-bytes 0", {"--max-id-bytes", "0"}, NULL, {"--max-id-bytes", "0", "65535"}},
    {"listen garbage", {"--listen", "garbage"}, NULL, {"--listen", "garbage", "HOST:PORT"}},
    {"listen port 70000", {"--listen", "127.0.0.1:70000"}, NULL,
     {"--listen", "70000", "65535"}},
    {"log-level loud", {"--log-level", "loud"}, NULL,
     {"--log-level", "loud", "debug", "error"}},
    {"max-pending 0", {"--max-pending", "0"}, NULL, {"--max-pending", "0", "100000000"}},
    {"max-ack-bytes -1", {"--max-ack-bytes", "-1"}, NULL,
     {"--max-ack-bytes", "-1", "1073741824"}},
    {"max-timeout-ms 0", {"--max-timeout-ms", "0"}, NULL,
     {"--max-timeout-ms", "0", "86400000"}},
    {"default-timeout-ms 0", {"--default-timeout-ms", "0"}, NULL,
     {"--default-timeout-ms", "0", "1"}},
    {"default over max timeout",
     {"--default-timeout-ms", "5000", "--max-timeout-ms", "1000"}, NULL,
     {"--default-timeout-ms", "5000", "--max-timeout-ms", "1000"}},
    {"drain-ms 600001", {"--drain-ms", "600001"}, NULL, {"--drain-ms", "600001", "600000"}},
    {"shutdown-delay-ms abc", {"--shutdown-delay-ms", "abc"}, NULL,
     {"--shutdown-delay-ms", "abc", "600000"}},
    {"max-url-bytes 63", {"--max-url-bytes", "63"}, NULL, {"--max-url-bytes", "63", "262144"}},
    {"max-header-bytes 255", {"--max-header-bytes", "255"}, NULL,
     {"--max-header-bytes", "255", "65000"}},
    {"max-resets-per-sec 0", {"--max-resets-per-sec", "0"}, NULL,
     {"--max-resets-per-sec", "0", "1000000"}},
    {"CORR_THREADS=abc", {NULL}, "CORR_THREADS=abc",
     {"CORR_THREADS", "--threads", "abc", "1024"}},
    {"CORR_MAX_ID_BYTES=70000", {NULL}, "CORR_MAX_ID_BYTES=70000",
     {"CORR_MAX_ID_BYTES", "70000", "65535"}},
    {"CORR_LOG_LEVEL=loud", {NULL}, "CORR_LOG_LEVEL=loud", {"CORR_LOG_LEVEL", "loud", "debug"}},
    {"CORR_LISTEN=garbage", {NULL}, "CORR_LISTEN=garbage", {"CORR_LISTEN", "garbage"}},
    {"CORR_DRAIN_MS=-5", {NULL}, "CORR_DRAIN_MS=-5", {"CORR_DRAIN_MS", "-5", "600000"}},
    {"unknown flag", {"--colour", "red"}, NULL, {"--colour", "--help"}},
};

static void test_invalid_options_exit_2(enum http_proto unused)
{
    char dir[PATH_MAX];

    (void)unused;
    if (!make_temp_dir(dir, sizeof(dir)))
        return;
    for (size_t i = 0; i < sizeof(invalid_options) / sizeof(invalid_options[0]); i++) {
        const struct invalid_option *option = &invalid_options[i];
        const char *args[8] = {"--listen", "127.0.0.1:0"};
        const char *env[2] = {option->env, NULL};
        struct child child;
        char name[32];
        /* A --listen flag would win over CORR_LISTEN, so that case goes without one. */
        size_t n = option->env != NULL && strncmp(option->env, "CORR_LISTEN=", 12) == 0 ? 0 : 2;

        for (size_t a = 0; option->args[a] != NULL; a++)
            args[n++] = option->args[a];
        args[n] = NULL;
        snprintf(name, sizeof(name), "invalid-%zu", i);
        if (!corrd_run_to_exit(&child, dir, name, args, env))
            continue;
        expect_startup_error(&child, option->label, option->needles);
    }
    remove_temp_dir(dir);
}

/*
 * Every option set only by its CORR_* variable: the values show in the msg=starting line, and
 * two of them change corrd's responses.
 */
static void test_env_sets_every_option(enum http_proto unused)
{
    struct http_response response;
    struct child server;
    char dir[PATH_MAX];
    char *access_env;
    char *access_path;
    char *log;
    char *long_id;

    (void)unused;
    if (!make_temp_dir(dir, sizeof(dir)))
        return;
    access_path = format_string("%s/access.log", dir);
    access_env = format_string("CORR_ACCESS_LOG=%s", access_path);
    const char *const env[] = {
        "CORR_LISTEN=127.0.0.1:0", "CORR_THREADS=3", "CORR_DEFAULT_TIMEOUT_MS=1234",
        "CORR_MAX_TIMEOUT_MS=45678", "CORR_MAX_ACK_BYTES=4321", "CORR_MAX_ID_BYTES=99",
        "CORR_MAX_PENDING=777", "CORR_MAX_URL_BYTES=4000", "CORR_MAX_HEADER_BYTES=9000",
        "CORR_DRAIN_MS=2500", "CORR_SHUTDOWN_DELAY_MS=10", "CORR_MAX_RESETS_PER_SEC=42",
        "CORR_LOG_LEVEL=debug", access_env, NULL,
    };
    static const char *const expected_fields[] = {
        " threads=3", " default_timeout_ms=1234", " max_timeout_ms=45678",
        " max_ack_bytes=4321", " max_id_bytes=99", " max_pending=777", " max_url_bytes=4000",
        " max_header_bytes=9000", " drain_ms=2500", " shutdown_delay_ms=10",
        " max_resets_per_sec=42", " log_level=debug",
    };

    if (!corrd_spawn(&server, dir, "corrd", NULL, env))
        goto out;
    log = read_file(server.stderr_path);
    {
        const char *starting = log != NULL ? strstr(log, " msg=starting ") : NULL;
        const char *end = starting != NULL ? strchr(starting, '\n') : NULL;
        char *line = starting != NULL ? strndup(starting, end != NULL ? (size_t)(end - starting)
                                                                      : strlen(starting))
                                      : NULL;

        EXPECT(line != NULL, "no msg=starting line on stderr");
        for (size_t i = 0; line != NULL && i < sizeof(expected_fields) / sizeof(*expected_fields);
             i++)
            EXPECT(strstr(line, expected_fields[i]) != NULL, "msg=starting line lacks \"%s\": "
                   "\"%s\"", expected_fields[i] + 1, line);
        EXPECT(line == NULL || strstr(line, access_path) != NULL, "msg=starting line lacks the "
               "access log path %s", access_path);
        free(line);
    }
    free(log);
    EXPECT(strncmp(server.listeners[0], "127.0.0.1:", 10) == 0, "listening on %s, expected "
           "127.0.0.1 from CORR_LISTEN", server.listeners[0]);

    /* CORR_MAX_ID_BYTES=99 rejects a 100-byte id, CORR_MAX_ACK_BYTES=4321 a 4322-byte ack. */
    long_id = calloc(1, 200);
    memset(long_id, 'i', 100);
    {
        char *path = format_string("/start/%s?timeout=10", long_id);

        http_get(server.ports[0], PROTO_HTTP1, path, &response);
        EXPECT(response.status == 400, "100-byte id with CORR_MAX_ID_BYTES=99: expected 400, "
               "got %ld", response.status);
        http_response_free(&response);
        free(path);
    }
    {
        char *body = calloc(1, 4323);

        memset(body, 'b', 4322);
        http_post(server.ports[0], PROTO_HTTP1, "/ack/big", body, 4322, &response);
        EXPECT(response.status == 413, "4322-byte ack with CORR_MAX_ACK_BYTES=4321: expected "
               "413, got %ld", response.status);
        http_response_free(&response);
        free(body);
    }
    free(long_id);
    child_finish(&server);
    EXPECT(access(access_path, F_OK) == 0, "CORR_ACCESS_LOG=%s created no file", access_path);

out:
    remove_temp_dir(dir);
    free(access_env);
    free(access_path);
}

static void test_version_output(enum http_proto unused)
{
    static const char *const args[] = {"--version", NULL};
    struct child child;
    char dir[PATH_MAX];
    regex_t pattern;
    char *out;

    (void)unused;
    if (!make_temp_dir(dir, sizeof(dir)))
        return;
    if (corrd_run_to_exit(&child, dir, "version", args, NULL)) {
        EXPECT(child.exit_status == 0, "--version: expected exit status 0, got %d",
               child.exit_status);
        out = read_file(child.stdout_path);
        if (regcomp(&pattern, "^corrd [0-9]+\\.[0-9]+\\.[0-9]+\n$", REG_EXTENDED) != 0)
            abort();
        EXPECT(out != NULL && regexec(&pattern, out, 0, NULL, 0) == 0,
               "--version printed \"%s\", expected \"corrd X.Y.Z\\n\"",
               out != NULL ? printable(out, strlen(out)) : "(nothing)");
        regfree(&pattern);
        free(out);
    }
    remove_temp_dir(dir);
}

static void test_help_lists_options(enum http_proto unused)
{
    static const char *const args[] = {"--help", NULL};
    static const char *const options[] = {
        "--listen", "--threads", "--default-timeout-ms", "--max-timeout-ms", "--max-ack-bytes",
        "--max-id-bytes", "--max-pending", "--max-url-bytes", "--max-header-bytes", "--drain-ms",
        "--shutdown-delay-ms", "--max-resets-per-sec", "--log-level", "--access-log",
        "--tls-cert", "--tls-key", "--help", "--version", "CORR_",
    };
    struct child child;
    char dir[PATH_MAX];
    char *out;

    (void)unused;
    if (!make_temp_dir(dir, sizeof(dir)))
        return;
    if (corrd_run_to_exit(&child, dir, "help", args, NULL)) {
        EXPECT(child.exit_status == 0, "--help: expected exit status 0, got %d",
               child.exit_status);
        out = read_file(child.stdout_path);
        for (size_t i = 0; out != NULL && i < sizeof(options) / sizeof(options[0]); i++)
            EXPECT(strstr(out, options[i]) != NULL, "--help output does not mention %s",
                   options[i]);
        EXPECT(out != NULL, "cannot read the --help output");
        free(out);
    }
    remove_temp_dir(dir);
}

/* ---- Logs ---- */

/*
 * Returns NULL when line is "ts=TIMESTAMP level=LEVEL" followed by logfmt key=value pairs
 * (values plain or double-quoted with backslash escapes), else a description of the problem.
 */
static const char *logfmt_error(const char *line)
{
    static const char *const prefix_pattern =
        "^ts=[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]+)?Z "
        "level=(debug|info|warn|error)( |$)";
    regex_t prefix;
    bool prefix_ok;
    const char *p = line;

    if (regcomp(&prefix, prefix_pattern, REG_EXTENDED) != 0)
        abort();
    prefix_ok = regexec(&prefix, line, 0, NULL, 0) == 0;
    regfree(&prefix);
    if (!prefix_ok)
        return "does not start with ts=YYYY-MM-DDTHH:MM:SS.fffZ level=LEVEL";
    while (*p != '\0') {
        const char *key = p;

        while (*p != '\0' && *p != '=' && *p != ' ' && *p != '"')
            p++;
        if (p == key || *p != '=')
            return "has a field that is not key=value";
        p++;
        if (*p == '"') {
            p++;
            while (*p != '\0' && *p != '"') {
                if (*p == '\\' && p[1] != '\0')
                    p++;
                p++;
            }
            if (*p != '"')
                return "has an unterminated quoted value";
            p++;
        } else {
            while (*p != '\0' && *p != ' ' && *p != '"' && *p != '=')
                p++;
        }
        if (*p == ' ' && p[1] != '\0' && p[1] != ' ')
            p++;
        else if (*p != '\0')
            return "has a value followed by something other than one space and a key";
    }
    return NULL;
}

/* Copies the value of key in a logfmt line without quotes. Returns false when it is absent. */
static bool logfmt_value(const char *line, const char *key, char *value, size_t size)
{
    size_t key_len = strlen(key);
    const char *p = line;

    while ((p = strstr(p, key)) != NULL) {
        if ((p == line || p[-1] == ' ') && p[key_len] == '=') {
            const char *start = p + key_len + 1;
            size_t len;

            if (*start == '"') {
                start++;
                len = strcspn(start, "\"");
            } else {
                len = strcspn(start, " ");
            }
            snprintf(value, size, "%.*s", (int)len, start);
            return true;
        }
        p += key_len;
    }
    return false;
}

/* Splits text into a malloc'd array of lines (pointers into text, which is modified). */
static size_t split_lines(char *text, char ***lines)
{
    size_t count = 0;
    size_t cap = 16;
    char *save = NULL;

    *lines = malloc(cap * sizeof(**lines));
    for (char *line = strtok_r(text, "\n", &save); line != NULL;
         line = strtok_r(NULL, "\n", &save)) {
        if (count == cap) {
            cap *= 2;
            *lines = realloc(*lines, cap * sizeof(**lines));
        }
        (*lines)[count++] = line;
    }
    return count;
}

/* Checks that every line is logfmt. */
static void expect_logfmt_lines(char **lines, size_t count)
{
    for (size_t i = 0; i < count; i++) {
        const char *problem = logfmt_error(lines[i]);

        EXPECT(problem == NULL, "stderr line %zu %s: \"%s\"", i + 1, problem,
               printable(lines[i], strlen(lines[i])));
    }
}

/* Returns the index of the first line at or after start whose msg is msg, or -1. */
static long find_msg(char **lines, size_t count, size_t start, const char *msg)
{
    char value[128];

    for (size_t i = start; i < count; i++) {
        if (logfmt_value(lines[i], "msg", value, sizeof(value)) && strcmp(value, msg) == 0)
            return (long)i;
    }
    return -1;
}

static void test_startup_shutdown_logs(enum http_proto unused)
{
    static const char *const args[] = {
        "--listen", "127.0.0.1:0", "--threads", "2", "--max-pending", "777", "--drain-ms", "2000",
        NULL,
    };
    static const char *const sequence[] = {
        "starting", "listening", "shutting down", "draining", "stopped",
    };
    struct child server;
    char dir[PATH_MAX];
    char value[128];
    char **lines = NULL;
    char *text;
    size_t count;
    long at[5];

    (void)unused;
    if (!make_temp_dir(dir, sizeof(dir)))
        return;
    if (!corrd_spawn(&server, dir, "corrd", args, NULL)) {
        remove_temp_dir(dir);
        return;
    }
    {
        char base_url[64];

        snprintf(base_url, sizeof(base_url), "http://127.0.0.1:%d", server.ports[0]);
        expect_get(base_url, PROTO_HTTP1, "/healthz", 200, "ok\n");
    }
    child_finish(&server);

    text = read_file(server.stderr_path);
    if (text == NULL) {
        test_fail(__FILE__, __LINE__, "cannot read %s", server.stderr_path);
        remove_temp_dir(dir);
        return;
    }
    count = split_lines(text, &lines);
    expect_logfmt_lines(lines, count);

    /* The five messages come in order, each after the previous one. */
    for (size_t i = 0; i < 5; i++) {
        at[i] = find_msg(lines, count, i == 0 || at[i - 1] < 0 ? 0 : (size_t)at[i - 1],
                         sequence[i]);
        EXPECT(at[i] >= 0, "no msg=\"%s\" line%s%s", sequence[i], i > 0 ? " after msg=" : "",
               i > 0 ? sequence[i - 1] : "");
    }
    if (at[0] >= 0) {
        const char *starting = lines[at[0]];

        EXPECT(logfmt_value(starting, "level", value, sizeof(value)) &&
               strcmp(value, "info") == 0, "msg=starting is not level=info: \"%s\"", starting);
        EXPECT(logfmt_value(starting, "version", value, sizeof(value)),
               "msg=starting has no version: \"%s\"", starting);
        EXPECT(logfmt_value(starting, "threads", value, sizeof(value)) &&
               strcmp(value, "2") == 0, "msg=starting lacks threads=2: \"%s\"", starting);
        EXPECT(logfmt_value(starting, "max_pending", value, sizeof(value)) &&
               strcmp(value, "777") == 0, "msg=starting lacks max_pending=777: \"%s\"",
               starting);
        EXPECT(logfmt_value(starting, "drain_ms", value, sizeof(value)) &&
               strcmp(value, "2000") == 0, "msg=starting lacks drain_ms=2000: \"%s\"", starting);
        EXPECT(logfmt_value(starting, "default_timeout_ms", value, sizeof(value)) &&
               strcmp(value, "10000") == 0, "msg=starting lacks default_timeout_ms=10000: "
               "\"%s\"", starting);
        EXPECT(logfmt_value(starting, "tls", value, sizeof(value)) && strcmp(value, "off") == 0,
               "msg=starting lacks tls=off: \"%s\"", starting);
    }
    if (at[1] >= 0) {
        char *expected = format_string("127.0.0.1:%d", server.ports[0]);

        EXPECT(logfmt_value(lines[at[1]], "addr", value, sizeof(value)) &&
               strcmp(value, expected) == 0, "msg=listening lacks addr=%s: \"%s\"", expected,
               lines[at[1]]);
        free(expected);
    }
    if (at[2] >= 0)
        EXPECT(logfmt_value(lines[at[2]], "signal", value, sizeof(value)) &&
               strcmp(value, "SIGTERM") == 0, "msg=\"shutting down\" lacks signal=SIGTERM: "
               "\"%s\"", lines[at[2]]);
    EXPECT(at[4] < 0 || (size_t)at[4] == count - 1, "msg=stopped is line %ld of %zu, not the "
           "last", at[4] + 1, count);
    free(lines);
    free(text);
    remove_temp_dir(dir);
}

/*
 * With --log-level warn, no info line appears from start to stop, but the warn line about a
 * second signal does.
 */
static void test_log_level_warn(enum http_proto unused)
{
    struct child server;
    char dir[PATH_MAX];
    char base_url[64];
    char listen[32];
    char **lines = NULL;
    char *text;
    size_t count;
    bool up = false;
    bool not_ready = false;
    size_t warn_lines = 0;
    int port = find_free_port();

    (void)unused;
    if (port == 0) {
        test_fail(__FILE__, __LINE__, "cannot find a free port on 127.0.0.1");
        return;
    }
    if (!make_temp_dir(dir, sizeof(dir)))
        return;
    snprintf(listen, sizeof(listen), "127.0.0.1:%d", port);
    snprintf(base_url, sizeof(base_url), "http://%s", listen);
    const char *const args[] = {
        "--listen", listen, "--threads", "2", "--log-level", "warn", "--shutdown-delay-ms",
        "10000", NULL,
    };
    if (!spawn_process(&server, corrd_path, dir, "corrd", args, NULL)) {
        remove_temp_dir(dir);
        return;
    }

    /* No msg=listening line at this level, so poll /healthz until corrd responds. */
    for (int attempt = 0; attempt < 200 && !up && !child_poll_exit(&server); attempt++) {
        char *url = format_string("%s/healthz", base_url);
        struct fetch_request request = {.url = url, .http_version = CURL_HTTP_VERSION_1_1};
        struct fetch_response response;

        fetch(&request, &response);
        up = response.result == CURLE_OK && response.status == 200;
        fetch_free(&response);
        free(url);
        if (!up)
            sleep_ms(50);
    }
    if (!up) {
        test_fail(__FILE__, __LINE__, "corrd with --log-level warn never answered /healthz on %s",
                  listen);
        goto out;
    }
    expect_get(base_url, PROTO_HTTP1, "/nope", 404, NULL);

    /* The first SIGTERM starts the 10 s delay, so the second one exits at once with a warning. */
    kill(server.pid, SIGTERM);
    for (int attempt = 0; attempt < 200 && !not_ready; attempt++) {
        char *url = format_string("%s/readyz", base_url);
        struct fetch_request request = {.url = url, .http_version = CURL_HTTP_VERSION_1_1};
        struct fetch_response response;

        fetch(&request, &response);
        not_ready = response.status == 503;
        fetch_free(&response);
        free(url);
        if (!not_ready)
            sleep_ms(10);
    }
    EXPECT(not_ready, "/readyz never answered 503 after SIGTERM");
    kill(server.pid, SIGTERM);
    if (!child_wait_exit(&server, 5000)) {
        test_fail(__FILE__, __LINE__, "corrd still running 5 s after a second SIGTERM");
        child_kill(&server);
    } else {
        EXPECT(server.exit_status == 0, "corrd exited with status %d after a second SIGTERM, "
               "expected 0", server.exit_status);
    }

    text = read_file(server.stderr_path);
    if (text != NULL) {
        count = split_lines(text, &lines);
        expect_logfmt_lines(lines, count);
        for (size_t i = 0; i < count; i++) {
            char level[16];

            if (!logfmt_value(lines[i], "level", level, sizeof(level)))
                continue;
            EXPECT(strcmp(level, "info") != 0 && strcmp(level, "debug") != 0,
                   "--log-level warn printed a level=%s line: \"%s\"", level, lines[i]);
            if (strcmp(level, "warn") == 0)
                warn_lines++;
        }
        EXPECT(warn_lines >= 1, "no level=warn line for the second SIGTERM in %zu lines", count);
        free(lines);
        free(text);
    }

out:
    child_finish(&server);
    remove_temp_dir(dir);
}

struct access_case {
    enum http_proto proto;
    const char *method;
    const char *path;
    const char *body;
    long status;
};

static const struct access_case access_cases[] = {
    {PROTO_HTTP1, "GET", "/healthz", NULL, 200},
    {PROTO_H2C, "GET", "/readyz", NULL, 200},
    {PROTO_HTTP1, "POST", "/ack/nobody", "x", 404},
    {PROTO_H2C, "GET", "/start/al-0?timeout=50", NULL, 504},
    {PROTO_HTTP1, "DELETE", "/start/al-1", NULL, 405},
    {PROTO_H2C, "GET", "/nope", NULL, 404},
    {PROTO_HTTP1, "GET", "/start/%zz", NULL, 400},
};

/* Each request adds one Apache combined line with its method, path, protocol and status. */
static void test_access_log_lines(enum http_proto unused)
{
    static const char *const line_pattern =
        "^127\\.0\\.0\\.1 [^ ]+ [^ ]+ \\[[^]]+\\] \"([A-Z]+) ([^ ]+) (HTTP/[0-9.]+)\" "
        "([0-9]{3}) ([0-9]+|-) \"[^\"]*\" \"[^\"]*\"$";
    const size_t case_count = sizeof(access_cases) / sizeof(access_cases[0]);
    struct child server;
    char dir[PATH_MAX];
    char *log_path;
    char **lines = NULL;
    char *text;
    size_t count;
    regex_t pattern;

    (void)unused;
    if (!make_temp_dir(dir, sizeof(dir)))
        return;
    log_path = format_string("%s/access.log", dir);
    const char *const args[] = {
        "--listen", "127.0.0.1:0", "--threads", "2", "--access-log", log_path, NULL,
    };
    if (!corrd_spawn(&server, dir, "corrd", args, NULL)) {
        free(log_path);
        remove_temp_dir(dir);
        return;
    }
    for (size_t i = 0; i < case_count; i++) {
        const struct access_case *c = &access_cases[i];
        struct http_request request = {
            .method = c->method, .path = c->path, .body = c->body,
            .body_len = c->body != NULL ? strlen(c->body) : 0, .proto = c->proto,
        };
        struct http_response response;

        http_perform(server.ports[0], &request, &response);
        EXPECT(response.status == c->status, "%s %s: expected %ld, got %ld", c->method, c->path,
               c->status, response.status);
        http_response_free(&response);
    }
    child_finish(&server);

    text = read_file(log_path);
    if (text == NULL) {
        test_fail(__FILE__, __LINE__, "--access-log %s: file not found", log_path);
        free(log_path);
        remove_temp_dir(dir);
        return;
    }
    count = split_lines(text, &lines);
    EXPECT(count == case_count, "access log has %zu lines for %zu requests", count, case_count);
    if (regcomp(&pattern, line_pattern, REG_EXTENDED) != 0)
        abort();
    for (size_t i = 0; i < count && i < case_count; i++) {
        const struct access_case *c = &access_cases[i];
        const char *expected_proto = c->proto == PROTO_HTTP1 ? "HTTP/1.1" : "HTTP/2";
        regmatch_t match[6];
        char field[4][256];

        if (regexec(&pattern, lines[i], 6, match, 0) != 0) {
            test_fail(__FILE__, __LINE__, "access log line %zu is not Apache combined format: "
                      "\"%s\"", i + 1, lines[i]);
            continue;
        }
        for (int f = 0; f < 4; f++)
            snprintf(field[f], sizeof(field[f]), "%.*s",
                     (int)(match[f + 1].rm_eo - match[f + 1].rm_so), lines[i] + match[f + 1].rm_so);
        EXPECT(strcmp(field[0], c->method) == 0, "access log line %zu: method %s, expected %s",
               i + 1, field[0], c->method);
        EXPECT(strcmp(field[1], c->path) == 0, "access log line %zu: path %s, expected %s",
               i + 1, field[1], c->path);
        EXPECT(strcmp(field[2], expected_proto) == 0, "access log line %zu: protocol %s, "
               "expected %s", i + 1, field[2], expected_proto);
        EXPECT(atol(field[3]) == c->status, "access log line %zu: status %s, expected %ld",
               i + 1, field[3], c->status);
    }
    regfree(&pattern);
    free(lines);
    free(text);
    free(log_path);
    remove_temp_dir(dir);
}

static const struct test_case cases[] = {
    {"metrics match clients", test_metrics_match_clients, PROTO_HTTP1},
    {"readyz during shutdown", test_readyz_during_shutdown, PROTO_BOTH},
    {"tls pairs and close", test_tls_pairs_and_close, PROTO_HTTP1},
    {"tls bad key exit 2", test_tls_bad_key_exit_2, PROTO_HTTP1},
    {"env max pending", test_env_max_pending, PROTO_HTTP1},
    {"flag overrides env", test_flag_overrides_env, PROTO_HTTP1},
    {"flag overrides invalid env", test_flag_overrides_invalid_env, PROTO_HTTP1},
    {"busy port exit 1", test_busy_port_exit_1, PROTO_HTTP1},
    {"drain finishes slow request", test_drain_finishes_slow_request, PROTO_HTTP1},
    {"env listen two addresses", test_env_listen_two_addresses, PROTO_HTTP1},
    {"env sets every option", test_env_sets_every_option, PROTO_HTTP1},
    {"invalid options exit 2", test_invalid_options_exit_2, PROTO_HTTP1},
    {"version output", test_version_output, PROTO_HTTP1},
    {"help lists options", test_help_lists_options, PROTO_HTTP1},
    {"startup and shutdown logs", test_startup_shutdown_logs, PROTO_HTTP1},
    {"log level warn", test_log_level_warn, PROTO_HTTP1},
    {"access log lines", test_access_log_lines, PROTO_HTTP1},
};

int main(int argc, char **argv)
{
    return run_tests(cases, sizeof(cases) / sizeof(cases[0]), 270, argc, argv);
}
