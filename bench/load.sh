#!/usr/bin/env bash
# Load benchmark of `clusterscope serve` on loopback, server pinned to one core.
# Needs wrk (HTTP/1.1 keep-alive TLS, latency percentiles) and h2load (HTTP/2), both from
# Debian (`apt-get install wrk nghttp2-client`), and oha for latency percentiles at a fixed
# rate (`cargo install oha --locked`). Bounded: each run lasts DURATION seconds.
# Usage: bench/load.sh [DURATION]     (default 10)
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${1:-10}
for tool in wrk h2load oha taskset; do
  command -v "$tool" >/dev/null || { echo "bench/load.sh: $tool not found" >&2; exit 1; }
done
cargo build --profile dist --locked -q
work=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT
body="$work/review.json"
python3 -c 'import json,sys; json.dump(json.load(open(sys.argv[1])), open(sys.argv[2],"w"), separators=(",",":"))' \
  tests/fixtures/kubelet-node-not-ready.json "$body"
port=18443; admin=18080
taskset -c 0 target/dist/clusterscope serve --listen 127.0.0.1:$port --admin-listen 127.0.0.1:$admin \
  --cert-dir "$work/certs" --log-level warn 2>"$work/server.log" &
pid=$!
for _ in $(seq 50); do curl -sf "http://127.0.0.1:$admin/readyz" >/dev/null && break; sleep 0.1; done
cpu() { awk '{print $14+$15}' "/proc/$pid/stat"; }
tck=$(getconf CLK_TCK)
cat > "$work/post.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = io.open("$body", "rb"); wrk.body = f:read("*a"); f:close()
LUA
run() { # name, command...
  local name=$1; shift
  local c0; c0=$(cpu)
  "$@" > "$work/out" 2>&1
  local c1; c1=$(cpu)
  local secs; secs=$(echo "scale=3; ($c1-$c0)/$tck" | bc)
  echo "== $name (server CPU seconds: $secs)"
  grep -E "Requests/sec|requests: |finished in|Latency|50(\.00)?%|90(\.00)?%|99(\.00)?%|99\.90%|time for request|Success rate|Status code" "$work/out" || cat "$work/out"
}
run "HTTP/1.1 full load (wrk, 2 threads, 32 connections)" \
  taskset -c 1 wrk -t2 -c32 -d"${duration}s" --latency -s "$work/post.lua" "https://127.0.0.1:$port/mutate?timeout=10s"
run "HTTP/2 full load (h2load, 8 connections x 16 streams)" \
  taskset -c 1 h2load -D "$duration" -c8 -m16 -H 'Content-Type: application/json' -d "$body" "https://127.0.0.1:$port/mutate?timeout=10s"
oha_rate() { # extra oha flags...
  taskset -c 1 oha --no-tui -z "${duration}s" -q 2000 -c 8 --latency-correction -m POST -T application/json \
    -D "$body" --cacert "$work/certs/ca.crt" "$@" "https://localhost:$port/mutate?timeout=10s"
}
run "HTTP/1.1 at 2000 req/s (oha, 8 connections)" oha_rate
run "HTTP/2 at 2000 req/s (oha, 8 connections)" oha_rate --http2 -p 1
echo "== peak RSS: $(grep VmHWM /proc/$pid/status | awk '{print $2, $3}')"
