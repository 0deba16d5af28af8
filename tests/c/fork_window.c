/* Allocations made while a fork holds the allocator (GIL mode: the prepare handler holds the
 * lock, so requests are served by glibc underneath) must be freed, reallocated and sized as
 * glibc's blocks afterwards, also in debug mode, which must not wrap them in its header
 * (DESIGN.md section 7). `fork_window CASE`; exits 0 when the case completes.
 *   atfork     a pthread_atfork prepare handler (registered before the first malloc, so it runs
 *              after the allocator's, while the allocator's lock is held) mallocs and reallocs;
 *              the parent and child handlers check and free; an idle thread makes the process
 *              multi-threaded.
 *   fork-free  one thread forks in a loop while the main thread mallocs, reallocs and frees
 *              small blocks: some of those requests land inside another thread's fork. */
#define _GNU_SOURCE
#include <malloc.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static char *buf;
static volatile int bad;

static void check_and_free(void) {
    if (!buf || memcmp(buf, "window", 7) != 0 || malloc_usable_size(buf) < 64) bad = 1;
    buf = realloc(buf, 30);
    if (!buf || memcmp(buf, "window", 7) != 0) bad = 1;
    free(buf);
    buf = NULL;
}
static void prep(void) {
    buf = malloc(40);
    if (buf) strcpy(buf, "window");
    buf = realloc(buf, 64);
}
static void parent(void) { check_and_free(); }
static void child(void) { check_and_free(); }
static void *idle(void *a) { (void)a; pause(); return NULL; }

static int case_atfork(void) {
    pthread_atfork(prep, parent, child); /* before the first malloc */
    pthread_t t;
    pthread_create(&t, NULL, idle, NULL);
    for (int i = 0; i < 50; i++) {
        void *p = malloc(24);
        free(p);
        pid_t c = fork();
        if (c == 0) _exit(bad ? 3 : 0);
        int st;
        if (waitpid(c, &st, 0) != c || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
            fprintf(stderr, "fork_window: child status %#x\n", st);
            return 1;
        }
    }
    if (bad) { fprintf(stderr, "fork_window: a block from the prepare handler was wrong\n"); return 1; }
    return 0;
}

static volatile int stop;
static volatile long forks;
static void *forker(void *a) {
    (void)a;
    while (!stop) {
        pid_t p = fork();
        if (p == 0) _exit(0);
        waitpid(p, NULL, 0);
        forks++;
    }
    return NULL;
}

static int case_fork_free(void) {
    pthread_t t;
    pthread_create(&t, NULL, forker, NULL);
    struct timespec t0, now;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    long i = 0;
    /* Until 200 forks happened (and at least 1 s), at most 20 s. */
    for (;; i++) {
        char *p = malloc(24);
        if (!p) return 1;
        memset(p, 7, 24);
        p = realloc(p, 48);
        if (!p || p[23] != 7 || malloc_usable_size(p) < 48) { bad = 1; break; }
        free(p);
        if ((i & 1023) == 0) {
            clock_gettime(CLOCK_MONOTONIC, &now);
            double s = (double)(now.tv_sec - t0.tv_sec) + (now.tv_nsec - t0.tv_nsec) / 1e9;
            if ((forks >= 200 && s >= 1.0) || s >= 20.0) break;
        }
    }
    stop = 1;
    pthread_join(t, NULL);
    fprintf(stderr, "fork_window: %ld allocations across %ld forks\n", i, (long)forks);
    if (bad) { fprintf(stderr, "fork_window: a block was wrong\n"); return 1; }
    return forks < 10; /* the case needs forks to mean anything */
}

int main(int argc, char **argv) {
    if (argc != 2) { fprintf(stderr, "usage: fork_window atfork|fork-free\n"); return 2; }
    if (!strcmp(argv[1], "atfork")) return case_atfork();
    if (!strcmp(argv[1], "fork-free")) return case_fork_free();
    fprintf(stderr, "fork_window: unknown case %s\n", argv[1]);
    return 2;
}
