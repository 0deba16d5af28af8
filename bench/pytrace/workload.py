"""A representative CPython workload, recorded as the `pytrace` allocation trace and timed by
bench/pytrace/cpython_bench.py.

Stdlib-heavy and allocation-heavy, as real Python programs are: JSON round trips, regular
expressions, dict/list/str churn, a small class-heavy simulation, and a threaded part that passes
objects between threads through queues (so objects die on threads other than their creators').
Deterministic (fixed seeds); about half a second on one core. `--scale N` multiplies the work.
"""
import json
import queue
import random
import re
import sys
import threading

SCALE = int(sys.argv[sys.argv.index("--scale") + 1]) if "--scale" in sys.argv else 1


def json_roundtrips(rng, n):
    total = 0
    for i in range(n):
        doc = {
            "id": i,
            "name": f"user-{i}",
            "tags": [rng.choice(["a", "b", "c", "d"]) * rng.randint(1, 5) for _ in range(rng.randint(0, 8))],
            "scores": [rng.random() for _ in range(rng.randint(1, 10))],
            "nested": {"k": str(i), "v": list(range(i % 13))},
        }
        text = json.dumps(doc)
        back = json.loads(text)
        total += len(text) + len(back["tags"])
    return total


LOG = re.compile(r"(?P<ip>\d+\.\d+\.\d+\.\d+) - - \[(?P<day>\d+)/(?P<mon>\w+)/(?P<year>\d+)\] \"(?P<verb>GET|POST) (?P<path>\S+)\" (?P<code>\d{3}) (?P<size>\d+)")


def regex_parsing(rng, n):
    counts = {}
    for i in range(n):
        line = '%d.%d.%d.%d - - [%d/Nov/2026] "%s /item/%d?q=%s" %d %d' % (
            rng.randint(1, 255), rng.randint(0, 255), rng.randint(0, 255), rng.randint(0, 255),
            rng.randint(1, 28), rng.choice(["GET", "POST"]), i, "x" * rng.randint(0, 20),
            rng.choice([200, 200, 200, 404, 500]), rng.randint(10, 100000))
        m = LOG.match(line)
        key = (m.group("verb"), m.group("code"))
        counts[key] = counts.get(key, 0) + int(m.group("size"))
        re.sub(r"\d+", "#", m.group("path"))
    return len(counts)


def churn(rng, n):
    live = {}
    out = []
    for i in range(n):
        k = rng.randrange(n // 4 + 1)
        r = rng.random()
        if r < 0.5:
            live[k] = [str(k)] * rng.randint(0, 6) + [k, float(k), (k, k + 1)]
        elif r < 0.8:
            live.pop(k, None)
        else:
            out.append("-".join(str(x) for x in range(rng.randint(1, 12))))
            if len(out) > 500:
                del out[: rng.randint(1, 400)]
    return len(live) + len(out)


class Particle:
    __slots__ = ("x", "y", "vx", "vy", "history")

    def __init__(self, rng):
        self.x, self.y = rng.random(), rng.random()
        self.vx, self.vy = rng.random() - 0.5, rng.random() - 0.5
        self.history = []

    def step(self, dt):
        self.x += self.vx * dt
        self.y += self.vy * dt
        self.history.append((self.x, self.y))
        if len(self.history) > 8:
            self.history = self.history[-4:]


class Cell:
    def __init__(self):
        self.members = []


def simulation(rng, n):
    particles = [Particle(rng) for _ in range(400)]
    for _ in range(n):
        grid = {}
        for p in particles:
            p.step(0.01)
            key = (int(p.x * 8) % 8, int(p.y * 8) % 8)
            cell = grid.get(key)
            if cell is None:
                cell = grid[key] = Cell()
            cell.members.append(p)
        # Replace a few particles each step: objects die and are born.
        for _ in range(20):
            particles[rng.randrange(len(particles))] = Particle(rng)
    return len(grid)


def threaded(rng_seed, n, workers=4):
    """Producers build objects, consumers (other threads) transform and drop them."""
    q_in, q_out = queue.Queue(maxsize=256), queue.Queue()

    def producer(seed):
        r = random.Random(seed)
        for i in range(n):
            q_in.put({"id": i, "payload": [r.random() for _ in range(r.randint(1, 16))], "s": "p%d" % i})
        q_in.put(None)

    def consumer():
        done = 0
        while True:
            item = q_in.get()
            if item is None:
                break
            summary = (item["s"], sum(item["payload"]), json.dumps(item["payload"][:3]))
            q_out.put(summary)
            done += 1
        q_out.put(done)

    threads = [threading.Thread(target=producer, args=(rng_seed + i,)) for i in range(workers // 2)]
    threads += [threading.Thread(target=consumer) for _ in range(workers // 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    results = []
    while not q_out.empty():
        results.append(q_out.get())
    return len(results)


def main():
    rng = random.Random(2026)
    total = 0
    for _ in range(SCALE):
        total += json_roundtrips(rng, 2500)
        total += regex_parsing(rng, 4000)
        total += churn(rng, 25000)
        total += simulation(rng, 40)
        total += threaded(7, 2000)
    print("workload checksum", total)


if __name__ == "__main__":
    main()
