/* Debug-mode checks of libftmalloc.so (FTMALLOC_DEBUG=1), run under LD_PRELOAD by
 * tests/preload.sh: `debug CASE`.
 *
 * Cases that commit an error print `target 0x...` (the pointer handed over) on stderr first; the
 * library must then abort with a message naming that pointer. Reaching the end of such a case
 * means nothing was detected: it says what happened and exits 1.
 *   realloc-interior   realloc(p + 16, 200)                 (must not return NULL / ENOMEM)
 *   usable-interior    malloc_usable_size(p + 16)           (must not read the fill pattern)
 *   free-pool-start    free() of a pool's start address     (must not crash reading before it)
 *   free-arena-start   free() of the arena's start address
 *   free-interior      free(p + 16), p live in the thread's own pool (free's fast path)
 *   double-free        free(q) twice, q the only block of its pool
 *   realloc-zero-free  free(p) after realloc(p, 0), which freed p (debug mode names it)
 * Cases that must succeed (exit 0, or print what failed and exit 1):
 *   small              malloc(0) / calloc(0, 1) have a usable size above 0; calloc gives zeros
 *   calloc-rss         calloc(1, 4 GiB) leaves the resident set within 64 MiB of before
 * The geometry is pymalloc's (16 KiB pools, 1 MiB arenas aligned to their size). */
#define _GNU_SOURCE
#pragma GCC diagnostic ignored "-Wfree-nonheap-object"
#include <errno.h>
#include <malloc.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define POOL_SIZE ((uintptr_t)16 << 10)
#define ARENA_SIZE ((uintptr_t)1 << 20)

static int failures;
#define CHECK(cond)                                                          \
    do {                                                                     \
        if (!(cond)) {                                                       \
            fprintf(stderr, "debug.c:%d: check failed: %s\n", __LINE__, #cond); \
            failures++;                                                      \
        }                                                                    \
    } while (0)

static void announce(void *p) { fprintf(stderr, "target %p\n", p); }

/* Resident set in KiB, from /proc/self/status. */
static long vm_rss_kib(void) {
    char line[256];
    long kib = -1;
    FILE *f = fopen("/proc/self/status", "r");
    if (!f) return -1;
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, "VmRSS:", 6)) kib = atol(line + 6);
    fclose(f);
    return kib;
}

static int small(void) {
    void *z = malloc(0);
    CHECK(z != NULL && malloc_usable_size(z) > 0);
    fprintf(stderr, "malloc(0) -> %p, usable size %zu\n", z, malloc_usable_size(z));
    free(z);
    void *cz = calloc(0, 1);
    CHECK(cz != NULL && malloc_usable_size(cz) > 0);
    free(cz);
    /* A freed block comes back to calloc: its old bytes (or a fill pattern) must not show. */
    for (size_t n = 1; n <= 600; n += 37) {
        unsigned char *p = malloc(n);
        memset(p, 0xAB, n);
        free(p);
        unsigned char *c = calloc(1, n);
        CHECK(c != NULL && malloc_usable_size(c) >= n);
        for (size_t i = 0; c && i < n; i++)
            if (c[i] != 0) {
                fprintf(stderr, "debug.c: calloc(1, %zu)[%zu] = %#x\n", n, i, c[i]);
                failures++;
                break;
            }
        free(c);
    }
    return failures != 0;
}

static int calloc_rss(void) {
    size_t n = (size_t)4 << 30;
    long before = vm_rss_kib();
    unsigned char *p = calloc(1, n);
    long after = vm_rss_kib();
    fprintf(stderr, "calloc(1, 4 GiB) -> %p: VmRSS before %ld KiB, after %ld KiB\n", (void *)p,
            before, after);
    CHECK(p != NULL);
    CHECK(before > 0 && after > 0 && after - before < 64 << 10);
    if (p) CHECK(p[0] == 0 && p[n / 2] == 0 && p[n - 1] == 0);
    free(p);
    return failures != 0;
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: debug CASE\n");
        return 2;
    }
    const char *c = argv[1];
    if (!strcmp(c, "small")) return small();
    if (!strcmp(c, "calloc-rss")) return calloc_rss();

    /* Left as handed out: in debug mode its bytes are the 0xCD fill, which a header read at
     * p + 16 - 32 would take for a size. */
    char *p = malloc(64);
    if (!strcmp(c, "realloc-interior")) {
        announce(p + 16);
        errno = 0;
        void *q = realloc(p + 16, 200);
        fprintf(stderr, "debug.c: realloc(p + 16, 200) returned %p, errno %d\n", q, errno);
    } else if (!strcmp(c, "usable-interior")) {
        announce(p + 16);
        size_t n = malloc_usable_size(p + 16);
        fprintf(stderr, "debug.c: malloc_usable_size(p + 16) returned %#zx\n", n);
    } else if (!strcmp(c, "free-interior")) {
        /* p's pool is the thread's own current pool of its class, which free's fast path
         * tests first: the block check must still refuse an interior pointer. */
        announce(p + 16);
        free(p + 16);
        fprintf(stderr, "debug.c: free(p + 16) returned\n");
    } else if (!strcmp(c, "realloc-zero-free")) {
        /* realloc(p, 0) frees p (glibc's convention): debug mode then names a second free. */
        void *r = realloc(p, 0);
        fprintf(stderr, "debug.c: realloc(p, 0) returned %p\n", r);
        announce(p);
        free(p);
        fprintf(stderr, "debug.c: free(p) after realloc(p, 0) returned\n");
    } else if (!strcmp(c, "double-free")) {
        /* A class nothing else here uses (440 bytes; 472 in debug mode): its pool's only block, so the second
         * free finds no block in use (a double free into a pool with other live blocks goes
         * undetected without debug mode; README, "Not detected"). */
        char *q = malloc(440);
        free(q);
        announce(q);
        free(q);
        fprintf(stderr, "debug.c: second free(%p) returned\n", (void *)q);
    } else if (!strcmp(c, "free-pool-start") || !strcmp(c, "free-arena-start")) {
        uintptr_t size = !strcmp(c, "free-pool-start") ? POOL_SIZE : ARENA_SIZE;
        void *start = (void *)((uintptr_t)p & ~(size - 1));
        announce(start);
        free(start);
        fprintf(stderr, "debug.c: free(%p) returned\n", start);
    } else {
        fprintf(stderr, "debug.c: unknown case %s\n", c);
        return 2;
    }
    return 1;
}
