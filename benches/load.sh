#!/usr/bin/env bash
# Load benchmark of `clusterscope serve` on loopback: the server pinned to core 0, the load on
# core 1. Reports, per run, the requests answered 2xx, every non-2xx answer and socket error
# (a benchmark must show its failures), latency percentiles, and requests per server
# CPU-second (the figure that does not depend on how many cores the load tool has), and the
# peak RSS after the 2000 req/s runs and again after the full loads.
#
# Needs wrk and h2load (`apt-get install wrk nghttp2-client`), oha for latency at a fixed rate
# (`cargo install oha --locked`), taskset, bc and python3. Bounded: each run lasts DURATION seconds.
#
# Usage: benches/load.sh [--bin PATH | --profile release|dist] [--against URL --against-pid PID]
#                      [--duration SECONDS]
#   --bin PATH        the binary to run (no build); default: build --profile (release)
#   --against URL     also load this webhook URL (a reference server, e.g. kube-rs's
#                     admission_controller example) with the same body, started by you
#                     pinned to core 0; --against-pid its process, for its CPU seconds
set -euo pipefail
cd "$(dirname "$0")/.."
duration=10 profile=release bin="" against="" against_pid=""
while [ $# -gt 0 ]; do
  case "$1" in
    --bin) bin=$2; shift 2 ;;
    --profile) profile=$2; shift 2 ;;
    --against) against=$2; shift 2 ;;
    --against-pid) against_pid=$2; shift 2 ;;
    --duration) duration=$2; shift 2 ;;
    [0-9]*) duration=$1; shift ;;
    *) echo "benches/load.sh: unknown argument $1 (see the usage at the top of the script)" >&2; exit 2 ;;
  esac
done
for tool in wrk h2load oha taskset bc python3; do
  command -v "$tool" >/dev/null || { echo "benches/load.sh: $tool not found (see the top of the script)" >&2; exit 1; }
done
if [ -z "$bin" ]; then
  cargo build --profile "$profile" --locked -q --bin clusterscope
  dir=$profile; [ "$profile" = dev ] && dir=debug
  bin=target/$dir/clusterscope
fi
[ -x "$bin" ] || { echo "benches/load.sh: $bin is not an executable" >&2; exit 1; }
if [ -n "$against" ] && [ -z "$against_pid" ]; then
  echo "benches/load.sh: --against needs --against-pid (its CPU seconds are measured)" >&2; exit 2
fi
work=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT
body="$work/review.json"
python3 -c 'import json,sys; json.dump(json.load(open(sys.argv[1])), open(sys.argv[2],"w"), separators=(",",":"))' \
  tests/fixtures/kubelet-node-not-ready.json "$body"
port=18443; admin=18080
taskset -c 0 "$bin" serve --cluster off --listen 127.0.0.1:$port --admin-listen 127.0.0.1:$admin \
  --cert-dir "$work/certs" --log-level warn 2>"$work/server.log" &
pid=$!
for _ in $(seq 50); do curl -sf "http://127.0.0.1:$admin/readyz" >/dev/null && break; sleep 0.1; done
echo "== $bin ($(stat -c %s "$bin") bytes), body $(stat -c %s "$body") bytes, ${duration}s per run"
tck=$(getconf CLK_TCK)
cpu() { awk '{print $14+$15}' "/proc/$1/stat"; }
cat > "$work/post.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = io.open("$body", "rb"); wrk.body = f:read("*a"); f:close()
LUA
# The 2xx answers a run's output reports (wrk: all requests less non-2xx; h2load: 2xx; oha:
# the 200 line of its status code distribution).
answered() {
  local out=$1
  if grep -q "requests in" "$out"; then
    local all non
    all=$(grep -oE "^ *[0-9]+ requests in" "$out" | grep -oE "[0-9]+")
    non=$(grep -oE "Non-2xx or 3xx responses: [0-9]+" "$out" | grep -oE "[0-9]+$" || echo 0)
    echo $((all - non))
  elif grep -q "status codes:" "$out"; then
    grep -oE "status codes: [0-9]+ 2xx" "$out" | grep -oE "[0-9]+ 2xx" | grep -oE "^[0-9]+"
  else
    grep -oE "\[200\] [0-9]+ responses" "$out" | grep -oE "[0-9]+ responses" | grep -oE "^[0-9]+" || echo 0
  fi
}
run() { # server pid, name, command...
  local server=$1 name=$2; shift 2
  local c0 c1 secs ok
  c0=$(cpu "$server")
  "$@" > "$work/out" 2>&1 || true
  c1=$(cpu "$server")
  secs=$(echo "scale=3; ($c1-$c0)/$tck" | bc)
  ok=$(answered "$work/out")
  echo "== $name"
  echo "   2xx answers: $ok; server CPU seconds: $secs; 2xx per server CPU-second: $( [ "$secs" != 0 ] && echo "scale=0; $ok/$secs" | bc || echo n/a)"
  # Failures first, then latency.
  grep -E "Non-2xx|Socket errors|failed|errored|timeout|Error distribution|\[[0-9]+\] .*(error|Error)|status codes|\[[2-5][0-9][0-9]\]" "$work/out" | sed 's/^/   /' || true
  grep -E "Requests/sec|finished in|Latency|50(\.00)?%|90(\.00)?%|99(\.00)?%|99\.90%|99\.9%|time for request|Success rate" "$work/out" | sed 's/^/   /' || true
}
# Latency percentiles of the requests oha stored (--db-url): over all of them, and from the
# first second on. oha opens its connections when the clock has started: with
# --latency-correction, requests scheduled while its TLS client gets ready (about 25 ms here,
# during which the server has not yet received a ClientHello) count as slow, and at 2000
# req/s those alone decide p99.9 of a 10 s run, for any server.
stored_latency() { # db
  python3 - "$1" <<'PY'
import sqlite3, sys
rows = sqlite3.connect(sys.argv[1]).execute(
    "select start_latency_correction, duration from oha where status between 200 and 299"
).fetchall()
if not rows:
    sys.exit(0)
t0 = min(s for s, _ in rows)
def line(durations):
    d = sorted(durations)
    p = lambda q: d[min(len(d) - 1, int(len(d) * q))] * 1000
    return f"{len(d)} requests: p50 {p(.5):.2f} ms, p99 {p(.99):.2f} ms, p99.9 {p(.999):.2f} ms, max {d[-1] * 1000:.1f} ms"
print("   all " + line([d for _, d in rows]))
print("   from 1 s on " + line([d for s, d in rows if s - t0 >= 1.0]))
PY
}
peak_rss() { # server pid, label, when
  echo "== $2 peak RSS $3: $(grep VmHWM "/proc/$1/status" | awk '{print $2, $3}')"
}
# The fixed-rate runs come first, so that the peak RSS at 2000 req/s is read before the full
# loads raise it.
load() { # server pid, url, label, CA file or "" (skip certificate checks)
  local server=$1 url=$2 label=$3 ca=$4
  local trust=(--insecure); [ -n "$ca" ] && trust=(--cacert "$ca")
  rm -f "$work/h1.db" "$work/h2.db"
  run "$server" "$label: HTTP/1.1 at 2000 req/s (oha, 8 connections)" \
    taskset -c 1 oha --no-tui -z "${duration}s" -q 2000 -c 8 --latency-correction -m POST \
      -T application/json -D "$body" "${trust[@]}" --db-url "$work/h1.db" "$url"
  stored_latency "$work/h1.db"
  run "$server" "$label: HTTP/2 at 2000 req/s (oha, 8 connections)" \
    taskset -c 1 oha --no-tui -z "${duration}s" -q 2000 -c 8 --latency-correction -m POST \
      -T application/json -D "$body" "${trust[@]}" --http2 -p 1 --db-url "$work/h2.db" "$url"
  stored_latency "$work/h2.db"
  peak_rss "$server" "$label" "at 2000 req/s"
  run "$server" "$label: HTTP/1.1 full load (wrk, 2 threads, 32 connections)" \
    taskset -c 1 wrk -t2 -c32 -d"${duration}s" --latency -s "$work/post.lua" "$url"
  run "$server" "$label: HTTP/2 full load (h2load, 8 connections x 16 streams)" \
    taskset -c 1 h2load -D "$duration" -c8 -m16 -H 'Content-Type: application/json' -d "$body" "$url"
  peak_rss "$server" "$label" "after the full loads too"
}
load "$pid" "https://localhost:$port/mutate?timeout=10s" clusterscope "$work/certs/ca.crt"
if [ -n "$against" ]; then
  load "$against_pid" "$against" reference ""
fi
