#!/usr/bin/env python3
# Ratios of `handler/` sides measured one process a run, as docs/BENCHMARKS.md section 9 reports
# them beside criterion's: each round runs every side once (`VFD_BENCH_STRACE=<side>`, 10,000
# map+unmap pairs, the process pinned to one CPU), in the order given, and the ratios are the
# medians of the per-round ratios, with their quartiles.
#
#   python3 scripts/bench-ab.py 41 floor_epoll_4k spawn_4k lean_epoll_4k vhost_epoll_4k
#
# The first side is the base every other side is divided by; every pair of the others is
# printed too. Needs `taskset` (util-linux).
import os
import re
import statistics
import subprocess
import sys


def bench_binary():
    out = subprocess.run(
        ["cargo", "bench", "--bench", "main", "--no-run"],
        capture_output=True,
        text=True,
        check=True,
        cwd=os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."),
    ).stderr
    found = re.findall(r"Executable .*\((.*)\)", out)
    if not found:
        sys.exit("bench binary not found")
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", found[-1])


def run(binary, side):
    env = dict(os.environ, VFD_BENCH_STRACE=side)
    r = subprocess.run(["taskset", "-c", "1", binary], env=env, capture_output=True, text=True)
    m = re.search(r"in ([\d.]+)(s|ms|µs)\b", r.stderr)
    if r.returncode != 0 or not m:
        sys.exit(f"{side}: {r.stderr.strip()}")
    scale = {"s": 1e3, "ms": 1.0, "µs": 1e-3}[m.group(2)]
    return float(m.group(1)) * scale


def quartiles(xs):
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 4], statistics.median(xs), xs[3 * n // 4]


def main():
    if len(sys.argv) < 4:
        sys.exit("usage: bench-ab.py ROUNDS BASE SIDE... (handler/ ids without the group)")
    rounds, sides = int(sys.argv[1]), sys.argv[2:]
    binary = bench_binary()
    times = {s: [] for s in sides}
    for _ in range(rounds):
        for s in sides:
            times[s].append(run(binary, s))

    def show(a, b):
        lo, mid, hi = quartiles([x / y for x, y in zip(times[a], times[b])])
        print(f"{a} / {b}: {mid:.3f} (quartiles {lo:.3f}-{hi:.3f})")

    for s in sides:
        print(f"{s}: median {statistics.median(times[s]):.1f} ms for 10,000 pairs")
    for s in sides[1:]:
        show(s, sides[0])
    for i, a in enumerate(sides[1:], 1):
        for b in sides[i + 1 :]:
            show(a, b)


if __name__ == "__main__":
    main()
