/* FTMALLOC_TRACE under the drop-in, checked by tests/preload.sh (which reads the trace file):
 * prints its pid, allocates and frees blocks of sizes nothing else here asks for (77 from the
 * pools, 1001 underneath, a realloc to 3003), then forks: the parent allocates and frees 55
 * bytes 10 times, then the child 4242 bytes 10 times and exits through exit() (so its atexit
 * handlers run): a forked child records nothing and must not truncate the parent's trace. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
int main(void) {
    printf("pid %d\n", (int)getpid());
    fflush(stdout);
    for (int i = 0; i < 3; i++) {
        char *a = malloc(77), *b = malloc(1001);
        if (!a || !b) return 1;
        memset(a, 1, 77);
        memset(b, 2, 1001);
        b = realloc(b, 3003);
        free(a);
        free(b);
    }
    /* The child waits until the parent has recorded its events after the fork, then
     * allocates: had it recorded (its counter is a copy of the parent's), its events would
     * overwrite the parent's in the shared mapping. */
    int gate[2];
    if (pipe(gate) != 0) return 1;
    pid_t c = fork();
    if (c == 0) {
        char go;
        close(gate[1]);
        if (read(gate[0], &go, 1) != 1) _exit(1);
        for (int i = 0; i < 10; i++) free(malloc(4242));
        exit(0);
    }
    close(gate[0]);
    for (int i = 0; i < 10; i++) free(malloc(55));
    if (write(gate[1], "g", 1) != 1) return 1;
    int st;
    if (waitpid(c, &st, 0) != c || !WIFEXITED(st) || WEXITSTATUS(st) != 0) return 1;
    return 0;
}
