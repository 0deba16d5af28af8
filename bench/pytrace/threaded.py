"""A threaded CPython workload for bench/pytrace/cpython_bench.py: four threads each build and
drop dicts, lists, strings and small objects, and hand a share of them to the next thread through
a queue (remote frees). Under the GIL only one thread runs Python at a time, but the allocator
still sees four threads allocating and freeing on each other's behalf."""
import queue
import sys
import threading

N = int(sys.argv[1]) if len(sys.argv) > 1 else 30000
THREADS = 4


class Node:
    __slots__ = ("key", "value", "children")

    def __init__(self, key, value):
        self.key, self.value, self.children = key, value, []


def work(me, inbox, outbox, results):
    kept = []
    upstream_done = False
    for i in range(N):
        n = Node(i, {"k": str(i), "v": [i] * (i % 9)})
        n.children.append(("%d-%d" % (me, i)) * (1 + i % 4))
        if i % 3 == 0:
            outbox.put(n)
        else:
            kept.append(n)
            if len(kept) > 2000:
                del kept[:1500]
        while not upstream_done and not inbox.empty():
            got = inbox.get_nowait()
            if got is None:
                upstream_done = True
            else:
                got.children.clear()
    outbox.put(None)
    while not upstream_done:
        got = inbox.get()
        if got is None:
            upstream_done = True
    results[me] = len(kept)


def main():
    queues = [queue.Queue() for _ in range(THREADS)]
    results = [0] * THREADS
    threads = [
        threading.Thread(target=work, args=(t, queues[t], queues[(t + 1) % THREADS], results))
        for t in range(THREADS)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print("threaded checksum", sum(results))


if __name__ == "__main__":
    main()
