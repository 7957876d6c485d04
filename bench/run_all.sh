#!/usr/bin/env bash
# Runs every benchmark once; each prints its ratio against a baseline from the same run
# (the soak last: it takes about 12 minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
for b in throughput latency agent isolation link fanout logs gateway memory quota dispatch groups deep_queue cpu_bound failover restart soak; do
  echo "== $b"
  "$PY" -m "bench.bench_$b"
done
