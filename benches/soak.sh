#!/usr/bin/env bash
# Soak: `clusterscope serve` on loopback for DURATION seconds (default 300) at 2,000 requests/s
# over TLS (1,000/s HTTP/1.1 + 1,000/s HTTP/2, keep-alive), with the serving certificate
# rotated every 10 s and the configuration reloaded every 5 s (both by the Kubernetes `..data`
# symlink swap), and 1% malformed requests (20/s) mixed in. Then 10,000 idle TLS connections are
# opened at once. Reports errors on valid requests, latency, RSS and open file descriptors.
# Needs oha (`cargo install oha --locked`) and python3. Bounded in time; loopback only.
# Usage: benches/soak.sh [DURATION]
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${1:-300}
command -v oha >/dev/null || { echo "benches/soak.sh: oha not found (cargo install oha --locked)" >&2; exit 1; }
cargo build --profile dist --locked -q
bin=target/dist/clusterscope
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}" ${server:-}; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
ulimit -n 65536 || true

swap() { # dir version: point dir/..data at version
  ln -sfn "$2" "$1/..data_tmp" && mv -Tf "$1/..data_tmp" "$1/..data"
}
# Certificates, Secret-volume layout.
mkdir -p "$work/tls"
"$bin" certs --service localhost --namespace default --out "$work/tls/v0" >/dev/null 2>&1
swap "$work/tls" v0
ln -s ..data/tls.crt "$work/tls/tls.crt"; ln -s ..data/tls.key "$work/tls/tls.key"
# Configuration, ConfigMap layout; two valid versions alternate.
mkdir -p "$work/cfg/a" "$work/cfg/b"
printf 'channels: [{name: nodes}, {name: cluster}]\nroutes:\n  - {channel: nodes, match: {kinds: [Node]}}\n  - {channel: cluster}\n' > "$work/cfg/a/config.yaml"
printf 'channels: [{name: infra}]\nroutes: [{channel: infra}]\n' > "$work/cfg/b/config.yaml"
swap "$work/cfg" a
ln -s ..data/config.yaml "$work/cfg/config.yaml"

python3 -c 'import json,sys; json.dump(json.load(open(sys.argv[1])), open(sys.argv[2],"w"), separators=(",",":"))' \
  tests/fixtures/kubelet-node-not-ready.json "$work/review.json"
printf '{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":' > "$work/bad.json"

port=18543; admin=18580
"$bin" serve --listen 127.0.0.1:$port --admin-listen 127.0.0.1:$admin --cluster off --log-level warn \
  --tls-cert "$work/tls/tls.crt" --tls-key "$work/tls/tls.key" --config "$work/cfg/config.yaml" \
  --cert-reload-interval 10s 2>"$work/server.log" &
server=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$admin/readyz" >/dev/null && break; sleep 0.1; done
sleep 1
rss() { awk '/VmRSS/{print $2}' "/proc/$server/status"; }
fds() { ls "/proc/$server/fd" | wc -l; }
rss_start=$(rss); fds_start=$(fds)
echo "start: RSS ${rss_start} kB, ${fds_start} fds"

url="https://localhost:$port/mutate?timeout=10s"
oha --no-tui --insecure -z "${duration}s" -q 1000 -c 8 -m POST -T application/json -D "$work/review.json" "$url" > "$work/h1.txt" 2>&1 &
pids+=($!)
oha --no-tui --insecure --http2 -p 1 -z "${duration}s" -q 1000 -c 8 -m POST -T application/json -D "$work/review.json" "$url" > "$work/h2.txt" 2>&1 &
pids+=($!)
oha --no-tui --insecure -z "${duration}s" -q 20 -c 2 -m POST -T application/json -D "$work/bad.json" "$url" > "$work/bad.txt" 2>&1 &
pids+=($!)
(
  i=0; end=$((SECONDS + duration))
  while [ $SECONDS -lt $end ]; do
    sleep 5; i=$((i + 1))
    if [ $((i % 2)) -eq 0 ]; then
      "$bin" certs --service localhost --namespace default --out "$work/tls/v$i" >/dev/null 2>&1 && swap "$work/tls" "v$i"
    fi
    if [ $((i % 2)) -eq 0 ]; then swap "$work/cfg" a; else swap "$work/cfg" b; fi
  done
) &
pids+=($!)
# RSS every 30 s: growth after warm-up is what a leak would show.
(
  for _ in $(seq $((duration / 30))); do sleep 30; echo "$(rss)" >> "$work/rss.txt"; done
) &
pids+=($!)
wait "${pids[0]}" "${pids[1]}" "${pids[2]}"
sleep 2
rss_end=$(rss); fds_end=$(fds)
metrics=$(curl -s "http://127.0.0.1:$admin/metrics")
echo "== HTTP/1.1 valid";  grep -E "Success rate|Requests/sec|99.00%|99.90%|\[[0-9]+\]|Error distribution" -A0 "$work/h1.txt"
echo "== HTTP/2 valid";    grep -E "Success rate|Requests/sec|99.00%|99.90%|\[[0-9]+\]|Error distribution" -A0 "$work/h2.txt"
echo "== malformed (1%)";  grep -E "Requests/sec|\[[0-9]+\]" "$work/bad.txt"
echo "== reloads";         echo "$metrics" | grep -E "^clusterscope_(tls_certificate|config)_reloads_total"
echo "== RSS every 30 s (kB): $(tr '\n' ' ' < "$work/rss.txt" 2>/dev/null)"
warm=$(head -1 "$work/rss.txt" 2>/dev/null || echo "$rss_start")
echo "== end: RSS ${rss_end} kB (cold start ${rss_start} kB; after the first 30 s ${warm} kB, growth since then $(( (rss_end - warm) * 100 / warm ))%), ${fds_end} fds (start ${fds_start})"

echo "== 10,000 idle TLS connections at once"
python3 - "$port" "$server" <<'PY'
import socket, ssl, sys, time
port, pid = int(sys.argv[1]), sys.argv[2]
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
ctx.set_alpn_protocols(["http/1.1"])
conns, refused = [], 0
for _ in range(10000):
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        conns.append(ctx.wrap_socket(s, server_hostname="localhost"))
    except Exception:
        refused += 1
rss = [l for l in open(f"/proc/{pid}/status") if l.startswith("VmRSS")][0].split()[1]
fds = len(__import__("os").listdir(f"/proc/{pid}/fd"))
print(f"held {len(conns)} TLS connections ({refused} refused at the cap): server RSS {rss} kB, {fds} fds")
for c in conns:
    c.close()
time.sleep(2)
rss = [l for l in open(f"/proc/{pid}/status") if l.startswith("VmRSS")][0].split()[1]
fds = len(__import__("os").listdir(f"/proc/{pid}/fd"))
print(f"after closing them: server RSS {rss} kB, {fds} fds")
PY
echo "$(curl -s "http://127.0.0.1:$admin/metrics" | grep -E '^clusterscope_connections_(rejected_total|open)')"
