"""Converts a raw FTMALLOC_TRACE file into the compact `pytrace` format the harness replays.

Raw events carry addresses; the compact trace numbers objects densely instead (the lowest free
number is reused), drops frees of objects allocated before recording began, and varint-encodes:

    header: b"FTMPYT01", u32 threads, u32 max live objects, u64 events   (little endian)
    event:  u8 (op << 7 | thread), then varint size (alloc) and varint object number

Usage: python3 convert.py RAW OUT.gz
"""
import gzip
import heapq
import struct
import sys


def varint(n, out):
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return


def main(raw_path, out_path):
    with open(raw_path, "rb") as f:
        data = f.read()
    assert data[:8] == b"FTMTRC01", "not an FTMALLOC_TRACE file"
    (count,) = struct.unpack_from("<Q", data, 8)
    live = {}  # address -> object number
    free_numbers = []
    next_number = 0
    max_live = 0
    threads = 0
    events = 0
    body = bytearray()
    for off in range(16, 16 + 16 * count, 16):
        addr, size, thread, op = struct.unpack_from("<QIHB", data, off)
        if thread >= 127:
            continue
        if op == 0:
            if addr in live:  # a missed free (not recorded): end the old object first
                heapq.heappush(free_numbers, live.pop(addr))
            if free_numbers:
                num = heapq.heappop(free_numbers)
            else:
                num = next_number
                next_number += 1
            live[addr] = num
            max_live = max(max_live, len(live))
            body.append(thread)
            varint(size, body)
            varint(num, body)
        else:
            num = live.pop(addr, None)
            if num is None:
                continue  # allocated before recording began
            heapq.heappush(free_numbers, num)
            body.append(0x80 | thread)
            varint(num, body)
        threads = max(threads, thread + 1)
        events += 1
    header = b"FTMPYT01" + struct.pack("<IIQ", threads, next_number, events)
    with open(out_path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=9, mtime=0) as f:
        f.write(header + bytes(body))
    print(f"{out_path}: {events} events, {threads} threads, {next_number} object numbers, "
          f"{max_live} live at most")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
