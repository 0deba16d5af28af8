#!/usr/bin/env python3
"""Run-to-run noise of the harness: compares two results.csv files cell by cell.

    python3 papers/noise.py papers/results/results.csv papers/results/results-rerun.csv

Prints, over the cells present in both, the median, 90th-percentile and largest relative
change of Mops/s, and the cells that moved most.
"""
import csv
import statistics
import sys


def load(path):
    with open(path, newline="") as f:
        return {
            (r["workload"], r["allocator"], int(r["threads"])): float(r["mops_per_sec"])
            for r in csv.DictReader(f)
        }


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: noise.py FIRST.csv SECOND.csv")
    a, b = load(sys.argv[1]), load(sys.argv[2])
    changes = sorted(
        (abs(b[k] / a[k] - 1), k, a[k], b[k]) for k in a if k in b and a[k] > 0
    )
    if not changes:
        sys.exit("noise.py: no cell is in both files")
    rel = [c[0] for c in changes]
    p90 = rel[min(len(rel) - 1, int(len(rel) * 0.9))]
    print(f"cells compared: {len(changes)}")
    print(f"median change: {statistics.median(rel) * 100:.1f}%")
    print(f"90th percentile: {p90 * 100:.1f}%")
    print("largest changes (workload, allocator, threads: first -> second Mops/s):")
    for r, (w, al, t), x, y in changes[-8:][::-1]:
        print(f"  {w:>13} {al:>8} {t}: {x:8.2f} -> {y:8.2f}  ({r * 100:.1f}%)")


if __name__ == "__main__":
    main()
