#!/usr/bin/env bash
# Cost curves of fan-out (docs/benchmarks.md): server CPU per delivery, latency and
# memory per connection at 1k, 10k, 50k and 100k subscribers (one gateway process
# per 20,000 connections: a process may open at most 20,000 files here), and at
# 10k subscribers with 100 B, 1 KiB and 16 KiB payloads. Every run checks every
# delivery (lost, duplicated, out of order). Loopback only; each run stops itself.
#
# Usage: loadtest/scripts/cost-curves.sh [OUT_DIR]   (after
#        cargo build --release -p gateway -p loadtest)
set -euo pipefail
cd "$(dirname "$0")/../.."
out="${1:-bench-out/curves}"
mkdir -p "$out"
lt=${LOADTEST:-target/release/loadtest}
gw=${GATEWAY:-target/release/gateway}

run() { # name, then fanout arguments
    local name="$1"
    shift
    echo "== $name"
    "$lt" fanout --spawn-gateway "$gw" --redis --quiet --json "$out/$name.json" "$@" |
        tail -n 3
}

# Deliveries per second stay within what two shared cores can write and read
# (about 100,000/s with the load generator on the same cores): fewer messages per
# second for more subscribers.
run n1k -n 1000 --messages 300 --rate 10
run n10k -n 10000 --messages 300 --rate 10
run n50k -n 50000 --gateways 3 --messages 60 --rate 2
run n100k -n 100000 --gateways 6 --messages 30 --rate 1
run p1k -n 10000 --messages 300 --rate 10 --payload-size 1024
run p16k -n 10000 --messages 100 --rate 2 --payload-size 16384
