#!/usr/bin/env bash
# rackwarden's benchmark, one command from a clean checkout:
#   bash bench/run.sh [--quick] [--only miners,modbus,decide,reaction,grid,site,policy,journal,scan]
# Builds in release mode, puts pyasic and pymodbus into a virtual environment under
# target/bench/venv (from the package registry, once), then runs bench/run.py, which
# prints one table and writes target/bench/bench.json. Loopback only; every step is
# bounded in time. Takes about 10 minutes on a 2-core machine once built.
set -euo pipefail
cd "$(dirname "$0")/.."

# `--only scan` needs the binary alone: no examples, no Python peers.
only_scan=0
prev=""
for a in "$@"; do
    case "$prev:$a" in
        --only:scan | *:--only=scan) only_scan=1 ;;
    esac
    prev=$a
done

echo "== build (release)"
if [ "$only_scan" = 1 ]; then
    timeout 3600 cargo build --release --locked -p rackwarden --bin rackwarden
    exec timeout 600 python3 bench/run.py "$@"
fi
timeout 3600 cargo build --release --locked -p rackwarden --bin rackwarden \
    --example bench_decide --example bench_reaction --example bench_grid --example bench_policy --example bench_journal
timeout 3600 cargo build --release --locked -p rackwarden-protocols \
    --example miner_bench --example modbus_bench

venv=target/bench/venv
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import pyasic, pymodbus' 2>/dev/null; then
    echo "== python peers into $venv"
    mkdir -p target/bench
    python3 -m venv "$venv"
    timeout 900 "$venv/bin/python" -m pip install --quiet 'pyasic==0.79.*' 'pymodbus==3.16.*'
fi

timeout 3000 "$venv/bin/python" bench/run.py --python-pyasic "$venv/bin/python" "$@"
