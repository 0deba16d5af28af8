/* malloc and free in a SIGALRM handler while the interrupted thread allocates (POSIX leaves it
 * undefined; glibc survives it). In GIL mode a signal that lands inside the interrupted
 * thread's own critical section finds the lock held by its own thread: the lock must not wait
 * for itself (src/gil/mod.rs, "A holder that does not come back"). tests/preload.sh runs it
 * under `timeout`: a hang is the failure. Exits 0 after `signal_malloc [N=300]` handler runs,
 * each checking its blocks. A second thread allocates too (so the process is multi-threaded
 * and the lock is contended). */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

static volatile sig_atomic_t handled;
static volatile int stop;
static volatile int bad;

static void on_alarm(int sig) {
    (void)sig;
    /* Small (the heap's pools) and large (underneath) requests, a realloc, and frees. */
    char *a = malloc(40), *b = malloc(200), *c = calloc(1, 3000);
    if (!a || !b || !c || c[2999] != 0) bad = 1;
    if (a) memset(a, 0x5A, 40);
    if (b) memset(b, 0xA5, 200);
    a = realloc(a, 100);
    if (!a || a[39] != 0x5A) bad = 1;
    free(a);
    free(b);
    free(c);
    handled++;
}

static void churn(void) {
    void *slot[64] = {0};
    for (unsigned i = 0; !stop; i++) {
        unsigned k = i % 64;
        free(slot[k]);
        slot[k] = malloc(16 + (i * 16) % 512);
        if (!slot[k]) { bad = 1; break; }
        *(volatile char *)slot[k] = 1;
    }
    for (int k = 0; k < 64; k++) free(slot[k]);
}

static void *other(void *arg) {
    (void)arg;
    /* The signal goes to the main thread only. */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGALRM);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    churn();
    return NULL;
}

int main(int argc, char **argv) {
    int want = argc > 1 ? atoi(argv[1]) : 300;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_alarm;
    sa.sa_flags = SA_RESTART;
    sigaction(SIGALRM, &sa, NULL);
    pthread_t t;
    pthread_create(&t, NULL, other, NULL);
    struct itimerval it = {{0, 500}, {0, 500}};
    setitimer(ITIMER_REAL, &it, NULL);
    /* The main thread churns until enough handlers ran (stop is read in churn's loop). */
    void *slot[64] = {0};
    for (unsigned i = 0; handled < want; i++) {
        unsigned k = i % 64;
        free(slot[k]);
        slot[k] = malloc(16 + (i * 16) % 512);
        if (!slot[k]) { bad = 1; break; }
        *(volatile char *)slot[k] = 1;
    }
    struct itimerval off = {{0, 0}, {0, 0}};
    setitimer(ITIMER_REAL, &off, NULL);
    for (int k = 0; k < 64; k++) free(slot[k]);
    stop = 1;
    pthread_join(t, NULL);
    if (bad) { fprintf(stderr, "signal_malloc: a handler's block was wrong\n"); return 1; }
    printf("signal_malloc: %d handlers allocated\n", (int)handled);
    return 0;
}
