/* glibc's allocator underneath must be set up when the library has loaded, before any thread
 * exists (its set-up is not thread-safe; DESIGN.md section 7). Deterministic check: a thread
 * with a pending cancellation calls malloc_stats(), which is glibc's own. Set up, it prints
 * and returns (it makes stderr non-cancelling while it prints, as glibc's
 * tst-malloc-stats-cancellation relies on); left to its first use, its set-up (ptmalloc_init)
 * calls getrandom(), a cancellation point, and the thread dies inside it. Exits 0 when
 * malloc_stats returned. (From ../shared/review/turn3/peers/stats_cancel.c.) */
#include <malloc.h>
#include <pthread.h>
#include <stdio.h>
static pthread_barrier_t gate;
static volatile int printed;
static void *thr(void *a) {
    (void)a;
    pthread_barrier_wait(&gate);
    malloc_stats();
    printed = 1;
    return NULL;
}
int main(void) {
    pthread_t t;
    void *rv;
    pthread_barrier_init(&gate, NULL, 2);
    pthread_create(&t, NULL, thr, NULL);
    pthread_cancel(t);
    pthread_barrier_wait(&gate);
    pthread_join(t, &rv);
    printf("stats_cancel: malloc_stats %s; thread %s\n",
           printed ? "returned" : "did NOT return (cancelled inside glibc's malloc set-up)",
           rv == PTHREAD_CANCELED ? "cancelled" : "not cancelled");
    return !printed;
}
