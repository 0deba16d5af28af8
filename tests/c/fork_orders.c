/* fork against the allocator, in the lock orders that deadlock a malloc whose fork handler
 * takes its lock unconditionally. Each case exits 0 when it completes; tests/preload.sh runs it
 * under `timeout`, so a hang fails the test.
 *
 *   stdio     threads in getline() (a FILE lock held while the line buffer grows), one in
 *             fflush(NULL) (stdio's list lock, then each FILE lock), and threads calling fork():
 *             glibc takes the list lock after the pthread_atfork prepare handlers.
 *   sigfork   a single-threaded process whose SIGALRM handler forks while the main loop
 *             mallocs, frees and forks (so the signal lands inside the allocator and inside fork).
 *   atfork    pthread_atfork handlers registered before the first malloc (so they run after the
 *             allocator's prepare handler and before its parent/child handlers) that themselves
 *             allocate and free, in a process with other allocating threads.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

static volatile int done;

static void fork_and_reap(int code) {
    pid_t p = fork();
    if (p < 0) { perror("fork"); abort(); }
    if (p == 0) {
        /* The child's heap must be usable. */
        char *s = malloc(100);
        if (!s) _exit(3);
        strcpy(s, "child");
        free(s);
        _exit(code);
    }
    int st;
    while (waitpid(p, &st, 0) < 0) {}
    if (!WIFEXITED(st) || WEXITSTATUS(st) != code) {
        fprintf(stderr, "fork_orders: child ended with status %#x, expected exit %d\n", st, code);
        abort();
    }
}

/* ---- stdio ---- */
static char stdio_path[64];

static void *stdio_forker(void *arg) {
    (void)arg;
    while (!done) fork_and_reap(5);
    return NULL;
}

static void *stdio_reader(void *arg) {
    (void)arg;
    FILE *f = fopen(stdio_path, "r");
    if (!f) { perror("fopen"); abort(); }
    while (!done) {
        rewind(f);
        char *line = NULL;
        size_t cap = 0;
        if (getline(&line, &cap, f) < 0) abort();
        free(line);
    }
    fclose(f);
    return NULL;
}

static void *stdio_flusher(void *arg) {
    (void)arg;
    while (!done) fflush(NULL);
    return NULL;
}

static int case_stdio(double seconds) {
    snprintf(stdio_path, sizeof stdio_path, "/tmp/ftmalloc-fork-orders-%d", (int)getpid());
    FILE *w = fopen(stdio_path, "w");
    if (!w) { perror("fopen"); return 1; }
    for (int i = 0; i < 40000; i++) fputc('a' + i % 26, w); /* one long line: getline reallocs */
    fputc('\n', w);
    fclose(w);
    pthread_t t[12];
    int n = 0;
    for (int i = 0; i < 3; i++) pthread_create(&t[n++], NULL, stdio_forker, NULL);
    for (int i = 0; i < 8; i++) pthread_create(&t[n++], NULL, stdio_reader, NULL);
    pthread_create(&t[n++], NULL, stdio_flusher, NULL);
    usleep((useconds_t)(seconds * 1e6));
    done = 1;
    for (int i = 0; i < n; i++) pthread_join(t[i], NULL);
    unlink(stdio_path);
    return 0;
}

/* ---- sigfork ---- */
static void on_alarm(int sig) {
    (void)sig;
    pid_t p = fork();
    if (p == 0) _exit(0); /* only async-signal-safe calls in this child */
    int st;
    while (waitpid(p, &st, 0) < 0) {}
}

static int case_sigfork(int rounds) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_alarm;
    sa.sa_flags = SA_RESTART;
    sigaction(SIGALRM, &sa, NULL);
    struct itimerval every = {{0, 300}, {0, 300}}; /* every 300 us of real time */
    setitimer(ITIMER_REAL, &every, NULL);
    for (int i = 0; i < rounds; i++) {
        void *v[64];
        for (int k = 0; k < 64; k++) v[k] = malloc(16 + (size_t)k * 7);
        for (int k = 0; k < 64; k++) free(v[k]);
        if (i % 16 == 0) fork_and_reap(0);
    }
    struct itimerval off = {{0, 0}, {0, 0}};
    setitimer(ITIMER_REAL, &off, NULL);
    return 0;
}

/* ---- atfork ---- */
static void *held;
static void on_prepare(void) { held = malloc(40); memset(held, 1, 40); }
static void on_parent(void) { free(held); held = NULL; }
static void on_child(void) {
    void *q = malloc(56);
    memset(q, 2, 56);
    free(q);
    free(held);
    held = NULL;
}

__attribute__((constructor)) static void register_early(void) {
    /* Before main, so before the first malloc registers the allocator's own handlers. */
    const char *c = getenv("FORK_ORDERS_CASE");
    if (c && !strcmp(c, "atfork")) pthread_atfork(on_prepare, on_parent, on_child);
}

static void *churner(void *arg) {
    (void)arg;
    while (!done) {
        void *v[32];
        for (int k = 0; k < 32; k++) v[k] = malloc(16 + (size_t)k * 16);
        for (int k = 0; k < 32; k++) free(v[k]);
    }
    return NULL;
}

static int case_atfork(int rounds) {
    pthread_t t[2];
    for (int i = 0; i < 2; i++) pthread_create(&t[i], NULL, churner, NULL);
    for (int i = 0; i < rounds; i++) {
        void *p = malloc(24);
        fork_and_reap(7);
        free(p);
    }
    done = 1;
    for (int i = 0; i < 2; i++) pthread_join(t[i], NULL);
    return 0;
}

int main(void) {
    const char *c = getenv("FORK_ORDERS_CASE");
    int rc;
    if (!c) { fprintf(stderr, "fork_orders: set FORK_ORDERS_CASE to stdio, sigfork or atfork\n"); return 2; }
    if (!strcmp(c, "stdio")) rc = case_stdio(2.0);
    else if (!strcmp(c, "sigfork")) rc = case_sigfork(4000);
    else if (!strcmp(c, "atfork")) rc = case_atfork(200);
    else { fprintf(stderr, "fork_orders: FORK_ORDERS_CASE=\"%s\" is not accepted; accepted values: stdio, sigfork, atfork\n", c); return 2; }
    if (rc == 0) printf("fork_orders %s: ok\n", c);
    return rc;
}
