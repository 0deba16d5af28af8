/* N threads make their first request above the small limit (served by glibc underneath) at the
 * same moment; the process made none before. If glibc's allocator were still unset-up, its
 * set-up (ptmalloc_init, not thread-safe) would run in several threads at once and corrupt its
 * arena state: "malloc assertion failure in __malloc_arena_thread_freeres: a->attached_threads
 * > 0" in about 1 run in 170 with two CPU hogs. tests/preload.sh runs it many times under load.
 * `first_large_race [N=8] [size=4096]`. (From ../shared/review/turn3/peers/first_large_race.c.) */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
static pthread_barrier_t b;
static size_t sz = 4096;
static void *thr(void *a) {
    (void)a;
    pthread_barrier_wait(&b);
    for (int i = 0; i < 100; i++) {
        char *p = malloc(sz);
        if (!p) abort();
        memset(p, 1, sz);
        free(p);
    }
    return NULL;
}
int main(int argc, char **argv) {
    int n = argc > 1 ? atoi(argv[1]) : 8;
    if (n < 1 || n > 64) n = 8;
    if (argc > 2) sz = strtoul(argv[2], 0, 0);
    pthread_t t[64];
    pthread_barrier_init(&b, NULL, n);
    for (int i = 0; i < n; i++) pthread_create(&t[i], NULL, thr, NULL);
    for (int i = 0; i < n; i++) pthread_join(t[i], NULL);
    return 0;
}
