#!/usr/bin/env bash
# Where does orderd's CPU per order go? Runs the benchmark's order mix against a fresh orderd at
# a fixed rate, samples the daemon with perf (call stacks via DWARF), and attributes every
# sample to a stage of an order (classify_profile.py). Needs perf and the release builds:
#   cargo build --release -p orderd -p orderd-benches
# Usage: benches/scripts/profile-orderd.sh [RATE=1500] [SECONDS=10] [AFTER=4] [MIX=1:70,10:25,100:5]
# (MIX=100:100 shows where the cost per line goes.)
# Sampling starts AFTER seconds into the run: with AFTER=60 at 3000/s the daemon holds about
# 180,000 orders by then (how a daemon that has stored more orders spends its CPU).
set -euo pipefail
cd "$(dirname "$0")/../.."
rate=${1:-1500}
secs=${2:-10}
after=${3:-4}
mix=${4:-1:70,10:25,100:5}
command -v perf >/dev/null || { echo "profile-orderd: perf is missing (apt-get install linux-perf)" >&2; exit 1; }
out=$(mktemp -d /tmp/orderd-profile-XXXXXX)
target/release/orderd-bench --orderd target/release/orderd --fixed-rate "$rate" --mix "$mix" \
  --fixed-secs $((after + secs + 2)) --noise-max-cores 100 --out "$out" 2>"$out/bench.err" &
bench=$!
for _ in $(seq 1 120); do
  grep -q "orderd pid" "$out/bench.err" && break
  sleep 0.5
done
pid=$(grep -o "orderd pid [0-9]*" "$out/bench.err" | awk '{print $3}')
[ -n "$pid" ] || { cat "$out/bench.err" >&2; exit 1; }
sleep "$after" # settle + warm-up (+ aging)
perf record -q -e cpu-clock -F 499 --call-graph dwarf,32768 -p "$pid" -o "$out/perf.data" -- sleep "$secs"
wait "$bench"
grep '^\[orderd' "$out/bench.err" || true
perf script -i "$out/perf.data" -F comm,tid,ip,sym 2>/dev/null >"$out/perf.txt"
python3 benches/scripts/classify_profile.py <"$out/perf.txt" | tee "$out/profile.txt"
echo "profile-orderd: perf data, samples and the table are in $out"
