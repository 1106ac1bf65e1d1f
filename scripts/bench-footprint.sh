#!/usr/bin/env bash
# Instructions and lines of code a map+unmap pair costs the server thread of `handler/` sides, as
# docs/BENCHMARKS.md section 9 reports them: each side runs its 10,000 pairs
# (`VFD_BENCH_STRACE=<side>`) under callgrind, and the server thread's counts are divided by
# 10,000. "Hot lines" are the 64-byte lines of code holding an instruction that ran at least
# 5,000 times: the code each message runs, fetched again each time the thread wakes.
#
#   bash scripts/bench-footprint.sh spawn_2m floor_epoll_2m vhost_epoll_2m
#
# Sides are `handler/` ids without the group (benches/main/handler.rs), but for the `_live_32k`
# ones, whose servers run in processes of their own. Needs valgrind
# (`apt-get install valgrind`) and python3. Deterministic: the same build gives the same counts
# whatever else the machine does.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v valgrind >/dev/null; then
    echo "valgrind is required: apt-get install valgrind" >&2
    exit 1
fi
[ $# -gt 0 ] || set -- spawn_2m handle_one_2m floor_epoll_2m floor_2m vhost_epoll_2m vhost_blocking_2m \
    lean_epoll_2m lean_2m
bin=$(cargo bench --bench main --no-run 2>&1 | sed -n 's/.*Executable .*(\(.*\))$/\1/p' | tail -1)
[ -x "$bin" ] || { echo "bench binary not found" >&2; exit 1; }
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
printf '%-28s %12s %10s\n' side 'instr/pair' 'hot lines'
for side in "$@"; do
    case $side in
    *_live_32k)
        echo "$side: its server runs in a process of its own (see benches/main/handler.rs)," \
            "which this script does not follow" >&2
        exit 1
        ;;
    esac
    VFD_BENCH_STRACE=$side valgrind --tool=callgrind --separate-threads=yes --dump-instr=yes \
        --compress-pos=no --callgrind-out-file="$out/$side.%p" "$bin" >/dev/null 2>&1
    # Thread 2 is the server: the sender runs on the main thread.
    python3 - "$side" "$out/$side".*-02 <<'PY'
import sys

side, path = sys.argv[1], sys.argv[2]
PAIRS = 10_000
counts = {}
total = 0
skip = False
for line in open(path):
    if line.startswith("summary:"):
        total = int(line.split()[1])
    if line.startswith("calls="):
        # The next line is the call's inclusive cost, not an instruction of its own.
        skip = True
        continue
    if skip:
        skip = False
        continue
    if line.startswith("0x"):
        fields = line.split()
        addr = int(fields[0], 16)
        counts[addr] = counts.get(addr, 0) + int(fields[-1])
hot = {addr >> 6 for addr, n in counts.items() if n >= PAIRS // 2}
print(f"{side:28} {total / PAIRS:12,.0f} {len(hot):10}")
PY
done
