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

static void announce(void *p) { fprintf(stderr, "target %p\n", p); }

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: debug CASE\n");
        return 2;
    }
    const char *c = argv[1];
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
