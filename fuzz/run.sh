#!/usr/bin/env bash
# Runs every cargo-fuzz target for a bounded time and prints, per target, the executions,
# the time it ran and the crashes it found (fuzz/README.md).
#
#   fuzz/run.sh [SECONDS_PER_TARGET] [TARGET...]     (default: 60 s, every target)
#
# The stable toolchain runs cargo-fuzz with RUSTC_BOOTSTRAP=1. Corpora grow in
# fuzz/corpus/<target> (seeded from fuzz/seeds/<target>), crashes land in
# fuzz/artifacts/<target>; both are git-ignored. Exit status 1 when any target crashed.
set -u
cd "$(dirname "$0")"
secs=${1:-60}
[ $# -gt 0 ] && shift
if [ $# -gt 0 ]; then
  targets=("$@")
else
  targets=(miner_reply miner_http modbus_decode gpu_node_body config_file state_file)
fi
export RUSTC_BOOTSTRAP=1
command -v cargo-fuzz >/dev/null || { echo "cargo-fuzz missing: cargo install cargo-fuzz" >&2; exit 2; }
# One target at a time: linking several sanitizer binaries at once has run the linker
# out of resources on a 2-core machine.
for t in "${targets[@]}"; do
  cargo fuzz build "$t" || exit 2
done
mkdir -p target/run-logs
status=0
printf '%-15s %12s %8s %10s %8s\n' target executions time_s exec_per_s crashes
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t" "artifacts/$t"
  [ -d "seeds/$t" ] && cp -n seeds/"$t"/* "corpus/$t/" 2>/dev/null
  before=$(find "artifacts/$t" -type f | wc -l)
  start=$(date +%s)
  # -timeout: one input taking longer than 10 s is a hang, reported like a crash.
  cargo fuzz run "$t" "corpus/$t" -- -max_total_time="$secs" -timeout=10 \
    -rss_limit_mb=2048 -print_final_stats=1 >"target/run-logs/$t.log" 2>&1
  rc=$?
  elapsed=$(( $(date +%s) - start ))
  # libFuzzer's own figure (the wall time above includes cargo's up-to-date check).
  done_s=$(grep -ao 'Done [0-9]* runs in [0-9]* second' "target/run-logs/$t.log" | grep -o 'in [0-9]*' | grep -o '[0-9]*$' | tail -1)
  [ -n "$done_s" ] && elapsed=$done_s
  execs=$(grep -ao 'stat::number_of_executed_units: *[0-9]*' "target/run-logs/$t.log" | grep -o '[0-9]*$' | tail -1)
  rate=$(grep -ao 'stat::average_exec_per_sec: *[0-9]*' "target/run-logs/$t.log" | grep -o '[0-9]*$' | tail -1)
  crashes=$(( $(find "artifacts/$t" -type f | wc -l) - before ))
  if [ "$rc" -ne 0 ] && [ "$crashes" -eq 0 ]; then crashes=1; fi
  [ "$crashes" -gt 0 ] && status=1
  printf '%-15s %12s %8s %10s %8s\n' "$t" "${execs:-?}" "$elapsed" "${rate:-?}" "$crashes"
  if [ "$crashes" -gt 0 ]; then
    echo "  see fuzz/target/run-logs/$t.log and fuzz/artifacts/$t/" >&2
  fi
done
exit $status
