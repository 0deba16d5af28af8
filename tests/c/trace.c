/* FTMALLOC_TRACE under the drop-in, checked by tests/preload.sh (which reads the trace file):
 * prints its pid, allocates and frees blocks of sizes nothing else here asks for (77 from the
 * pools, 1001 underneath, a realloc to 3003), then forks a child that allocates 4242 bytes and
 * exits through exit() (so its atexit handlers run): a forked child records nothing and must
 * not truncate the parent's trace. */
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
    pid_t c = fork();
    if (c == 0) {
        for (int i = 0; i < 5; i++) free(malloc(4242));
        exit(0);
    }
    int st;
    if (waitpid(c, &st, 0) != c || !WIFEXITED(st) || WEXITSTATUS(st) != 0) return 1;
    return 0;
}
