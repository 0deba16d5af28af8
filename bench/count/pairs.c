/* pairs: each step mallocs one object of 16 + (i*16) % 512 bytes (all 32 classes in turn),
 * writes a byte and frees it at once, so a pool goes empty at every free. Counted by .ci/count
 * under callgrind, as ring.c. */
#include <stdlib.h>

int main(int argc, char **argv) {
    long steps = argc > 1 ? atol(argv[1]) : 1000000;
    for (long i = 0; i < steps; i++) {
        char *p = malloc(16 + (i * 16) % 512);
        p[0] = 1;
        free(p);
    }
    return 0;
}
