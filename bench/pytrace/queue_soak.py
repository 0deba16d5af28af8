"""A CPython soak program for ftmalloc's cross-thread frees (the regression test for a user report).

Four producer threads build small items (a dict with a few str keys, a list of ints, a formatted
str and a bytes object, of varying sizes so that many of pymalloc's size classes up to 512 bytes
are used) and pass them through a bounded queue.Queue to four consumer threads. Each consumer
keeps what it receives in a ring of 2,000 slots for a while and then drops it, so almost every
object dies on another thread than the one that made it.

The live set does not depend on the item count (the queue is bounded and the rings are fixed), so
under a sound allocator peak RSS stays nearly flat as the count grows; an allocator that loses
remotely freed memory shows peak RSS growing with the count.

Usage: python3 queue_soak.py [ITEMS_PER_PRODUCER]   (default 30000)
Prints one line: queue_soak items=<N> peak_rss_kib=<ru_maxrss of this process>
"""
import queue
import resource
import sys
import threading

N = int(sys.argv[1]) if len(sys.argv) > 1 else 30000
PRODUCERS = 4
CONSUMERS = 4
QUEUE_MAX = 1000
RING = 2000
DONE = None  # end-of-stream marker, one per consumer
PAD = bytes(range(256)) * 3  # slices of it make the bytes objects (a slice is a new object)


def make_item(me, i):
    k = i % 61
    return {
        "id": i,
        "owner": "producer-%d" % me,
        "name": "item-%d-%d" % (me, i) + "x" * (k % 23),
        "tags": list(range(i, i + k % 40)),  # list of ints: 0 to 39 slots
        "text": "{}:{:08d}:{}".format(me, i, "abc" * (k % 50)),  # str of ~14 to ~160 chars
        "blob": PAD[i & 0xFF:(i & 0xFF) + (k * 7) % 420],  # bytes of 0 to 419
    }


def producer(me, q):
    for i in range(N):
        q.put(make_item(me, i))


def consumer(q):
    ring = [None] * RING
    pos = 0
    while True:
        item = q.get()
        if item is DONE:
            break
        # Touch the item and keep it a while; the slot's old occupant dies here, on this thread.
        item["seen"] = len(item["tags"]) + len(item["blob"])
        ring[pos] = item
        pos = (pos + 1) % RING
    ring.clear()


def main():
    q = queue.Queue(maxsize=QUEUE_MAX)
    consumers = [threading.Thread(target=consumer, args=(q,)) for _ in range(CONSUMERS)]
    producers = [threading.Thread(target=producer, args=(me, q)) for me in range(PRODUCERS)]
    for t in consumers + producers:
        t.start()
    for t in producers:
        t.join()
    for _ in consumers:
        q.put(DONE)
    for t in consumers:
        t.join()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print("queue_soak items=%d peak_rss_kib=%d" % (N, peak))
    return 0


if __name__ == "__main__":
    sys.exit(main())
