/* ring: 1024 live objects; each step frees the oldest and mallocs a new one of a pseudo-random
 * size in 16..=512 (16-byte steps) and writes its first byte. Counted by .ci/count under
 * callgrind: instructions per step = (Ir(3N) - Ir(N)) / 2N, so start-up and exit cancel. */
#include <stdint.h>
#include <stdlib.h>

int main(int argc, char **argv) {
    long steps = argc > 1 ? atol(argv[1]) : 1000000;
    void *ring[1024] = {0};
    uint32_t x = 12345;
    for (long i = 0; i < steps; i++) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        size_t sz = 16 + (x % 32) * 16;
        free(ring[i & 1023]);
        ring[i & 1023] = malloc(sz);
        ((char *)ring[i & 1023])[0] = 1;
    }
    for (int i = 0; i < 1024; i++)
        free(ring[i]);
    return 0;
}
