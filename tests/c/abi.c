/* C-ABI checks of libftmalloc.so, run under LD_PRELOAD by tests/preload.sh.
 * Every check prints what failed and exits non-zero. */
#define _GNU_SOURCE
#pragma GCC diagnostic ignored "-Walloc-size-larger-than="
#include <errno.h>
#include <malloc.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int failures;
#define CHECK(cond)                                                      \
    do {                                                                 \
        if (!(cond)) {                                                   \
            fprintf(stderr, "abi.c:%d: check failed: %s\n", __LINE__, #cond); \
            failures++;                                                  \
        }                                                                \
    } while (0)

/* Frees that changed errno (a GIL-mode free may sleep on the lock's futex, which fails with
 * EAGAIN when the lock word changed: free must keep errno all the same). */
static int errno_lost;

static void *worker(void *arg) {
    void **slots = arg;
    for (int i = 0; i < 100000; i++) {
        void *p = malloc(1 + i % 512);
        memset(p, i, 1 + i % 512);
        errno = 777;
        free(p);
        if (errno != 777) __atomic_fetch_add(&errno_lost, 1, __ATOMIC_RELAXED);
    }
    /* Hand blocks to the main thread: freed after this thread exits. */
    for (int i = 0; i < 64; i++) slots[i] = malloc(24 + i);
    return NULL;
}

int main(void) {
    /* malloc / free / usable size of small and large blocks. */
    for (size_t n = 1; n <= 4096; n += 7) {
        unsigned char *p = malloc(n);
        CHECK(p != NULL && ((uintptr_t)p & 15) == 0);
        CHECK(malloc_usable_size(p) >= n);
        memset(p, 0xAB, n);
        free(p);
    }
    CHECK(malloc_usable_size(NULL) == 0);
    void *z = malloc(0);
    CHECK(z != NULL);
    free(z);

    /* calloc: zeroed; overflow gives NULL and ENOMEM. */
    unsigned char *c = calloc(10, 40);
    CHECK(c != NULL);
    for (int i = 0; i < 400; i++) CHECK(c[i] == 0);
    free(c);
    errno = 0;
    CHECK(calloc(SIZE_MAX / 2, 3) == NULL && errno == ENOMEM);

    /* realloc: NULL allocates, size 0 frees and returns NULL, contents kept across classes. */
    char *r = realloc(NULL, 10);
    CHECK(r != NULL);
    strcpy(r, "ftmalloc");
    r = realloc(r, 300);
    CHECK(r && strcmp(r, "ftmalloc") == 0);
    r = realloc(r, 5000);
    CHECK(r && strcmp(r, "ftmalloc") == 0);
    r = realloc(r, 20);
    CHECK(r && strcmp(r, "ftmalloc") == 0);
    CHECK(realloc(r, 0) == NULL);

    /* reallocarray overflow: NULL, ENOMEM, the old block untouched. */
    char *ra = malloc(16);
    strcpy(ra, "kept");
    errno = 0;
    CHECK(reallocarray(ra, SIZE_MAX / 2, 4) == NULL && errno == ENOMEM);
    CHECK(strcmp(ra, "kept") == 0);
    /* realloc to a size whose 16-byte rounding passes PTRDIFF_MAX: NULL, ENOMEM, block kept. */
    for (size_t n = (size_t)PTRDIFF_MAX - 15; n != (size_t)PTRDIFF_MAX + 1; n++) {
        errno = 0;
        CHECK(realloc(ra, n) == NULL && errno == ENOMEM);
    }
    CHECK(strcmp(ra, "kept") == 0);
    ra = reallocarray(ra, 8, 8);
    CHECK(ra && strcmp(ra, "kept") == 0);
    free(ra);

    /* Aligned allocation. */
    void *a = NULL;
    CHECK(posix_memalign(&a, 3, 16) == EINVAL);
    CHECK(posix_memalign(&a, 4, 16) == EINVAL); /* not a multiple of sizeof(void *) */
    for (size_t al = 8; al <= 8192; al *= 2) {
        CHECK(posix_memalign(&a, al, 100) == 0 && ((uintptr_t)a % al) == 0);
        free(a);
        void *b = aligned_alloc(al, 200);
        CHECK(b && ((uintptr_t)b % al) == 0);
        free(b);
        void *m = memalign(al, 50);
        CHECK(m && ((uintptr_t)m % al) == 0);
        free(m);
    }
    errno = 0;
    CHECK(aligned_alloc(24, 100) == NULL && errno == EINVAL);
    void *m3 = memalign(24, 10); /* rounded up to 32, as glibc does */
    CHECK(m3 && ((uintptr_t)m3 % 32) == 0);
    free(m3);
    /* posix_memalign failures leave *out untouched. */
    void *sentinel = (void *)0x5a5a;
    a = sentinel;
    CHECK(posix_memalign(&a, 3, 16) == EINVAL && a == sentinel);
    CHECK(posix_memalign(&a, 0, 16) == EINVAL && a == sentinel);
    CHECK(posix_memalign(&a, 4, 16) == EINVAL && a == sentinel);
    CHECK(posix_memalign(&a, 64, SIZE_MAX - 100) == ENOMEM && a == sentinel);
    long page = sysconf(_SC_PAGESIZE);
    /* valloc / pvalloc overflow: NULL and ENOMEM. */
    errno = 0;
    CHECK(valloc(SIZE_MAX) == NULL && errno == ENOMEM);
    errno = 0;
    CHECK(valloc(SIZE_MAX - (size_t)page) == NULL && errno == ENOMEM);
    errno = 0;
    CHECK(pvalloc(SIZE_MAX) == NULL && errno == ENOMEM);
    errno = 0;
    CHECK(pvalloc(SIZE_MAX - (size_t)page + 2) == NULL && errno == ENOMEM);
    void *v = valloc(10);
    CHECK(v && ((uintptr_t)v % page) == 0);
    free(v);
    void *pv = pvalloc(10);
    CHECK(pv && ((uintptr_t)pv % page) == 0 && malloc_usable_size(pv) >= (size_t)page);
    free(pv);

    /* free preserves errno. */
    void *e = malloc(32);
    errno = 1234;
    free(e);
    CHECK(errno == 1234);
    errno = 4321;
    free(malloc(5000));
    CHECK(errno == 4321);

    /* Threads: churn, then frees after the owners exited. */
    pthread_t t[4];
    void *slots[4][64];
    for (int i = 0; i < 4; i++) pthread_create(&t[i], NULL, worker, slots[i]);
    for (int i = 0; i < 4; i++) pthread_join(t[i], NULL);
    CHECK(errno_lost == 0);
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 64; j++) {
            CHECK(malloc_usable_size(slots[i][j]) >= (size_t)(24 + j));
            free(slots[i][j]);
        }

    if (failures) {
        fprintf(stderr, "abi.c: %d checks failed\n", failures);
        return 1;
    }
    printf("abi.c: all checks passed\n");
    return 0;
}
