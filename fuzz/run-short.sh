#!/usr/bin/env bash
# Copyright 2026 The virtio-fs-dax Authors
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
#
# Short fuzzing pass over every target: build once, run each for SECONDS (default 60) without a
# sanitizer, seeding corpus/<target> from seeds/<target> when present. Prints one line per target
# with its exec count; exits non-zero if any target crashed (the reproducer is in
# artifacts/<target>/, the log in target/run-short/<target>.log).
#
# Usage: bash fuzz/run-short.sh [SECONDS]
# Needs cargo-fuzz (`cargo install cargo-fuzz --locked`).

set -uo pipefail

secs="${1:-60}"
case "$secs" in
'' | *[!0-9]*)
	echo "usage: $0 [SECONDS]" >&2
	exit 2
	;;
esac

cd "$(dirname "${BASH_SOURCE[0]}")" || exit 2

if ! cargo fuzz --version >/dev/null 2>&1; then
	echo "cargo-fuzz is missing: cargo install cargo-fuzz --locked" >&2
	exit 2
fi

# cargo-fuzz passes -Z flags to rustc; RUSTC_BOOTSTRAP=1 lets a stable toolchain accept them.
export RUSTC_BOOTSTRAP=1
sanitizer=(-s none)

echo "building fuzz targets..."
if ! cargo fuzz build "${sanitizer[@]}"; then
	echo "build failed" >&2
	exit 1
fi

mapfile -t targets < <(cargo fuzz list)
if [ "${#targets[@]}" -eq 0 ]; then
	echo "no fuzz targets found" >&2
	exit 1
fi

mkdir -p target/run-short
failed=0
summary=()
for t in "${targets[@]}"; do
	mkdir -p "corpus/$t" "artifacts/$t"
	if [ -d "seeds/$t" ]; then
		find "seeds/$t" -maxdepth 1 -type f -exec cp -n -t "corpus/$t" {} +
	fi
	log="target/run-short/$t.log"
	echo "fuzzing $t for ${secs}s (log: fuzz/$log)..."
	cargo fuzz run "${sanitizer[@]}" "$t" -- -max_total_time="$secs" -print_final_stats=1 \
		>"$log" 2>&1
	rc=$?
	# libFuzzer ends a clean run with "Done N runs in S second(s)"; after a crash only the "#N"
	# status lines tell how far it got.
	runs=$(sed -n 's/^Done \([0-9][0-9]*\) runs.*/\1/p' "$log" | tail -n 1)
	if [ -z "$runs" ]; then
		runs=$(sed -n 's/^#\([0-9][0-9]*\)[[:space:]].*/\1/p' "$log" | tail -n 1)
	fi
	corpus=$(find "corpus/$t" -maxdepth 1 -type f | wc -l)
	if [ "$rc" -eq 0 ]; then
		line="$t: ok, ${runs:-?} execs in ${secs}s, corpus ${corpus} inputs"
	else
		failed=1
		line="$t: FAILED (exit $rc) after ${runs:-?} execs; see fuzz/$log and fuzz/artifacts/$t/"
		grep -m 1 -A 4 -E "panicked at|ERROR: (libFuzzer|AddressSanitizer)" "$log" >&2 || tail -n 20 "$log" >&2
	fi
	echo "$line"
	summary+=("$line")
done

echo
echo "summary:"
printf '  %s\n' "${summary[@]}"
exit "$failed"
