#!/usr/bin/env bash
# Load tests over loopback, every path measured in one run, interleaved, and
# reported as ratios to the physical limit (an axum route handing out
# pre-built bytes). See docs/benchmarks.md for what each row means.
#
#   bench/load.sh                 # full run: 1 KiB and 64 KiB, 3 rounds of 5 s
#   QUICK=1 bench/load.sh         # a smoke run: 1 round of 2 s
#
# Settings (environment): SIZES ("1024 65536"), ROUNDS (3), DURATION (5,
# seconds per wrk run), WARMUP (2), THREADS (2), CONNECTIONS (64),
# STAMPEDE (500 clients), MEMORY_MIB (256), EXPIRY_KEYS (100000),
# EXPIRY_SECS (15, the entries' max-age in the mass-expiry row),
# EXPIRY_RUN (30, seconds of load through it), OUT (bench/results).
#
# Installs wrk, h2load, nginx, openssl, redis-server, redis-tools and python3 with apt-get when missing
# (run as root or with sudo). Starts everything it needs on free loopback
# ports, by PID, and stops it on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

SIZES=${SIZES:-"1024 65536"}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5}
WARMUP=${WARMUP:-2}
THREADS=${THREADS:-2}
CONNECTIONS=${CONNECTIONS:-64}
STAMPEDE=${STAMPEDE:-500}
MEMORY_MIB=${MEMORY_MIB:-256}
EXPIRY_KEYS=${EXPIRY_KEYS:-100000}
EXPIRY_SECS=${EXPIRY_SECS:-15}
EXPIRY_RUN=${EXPIRY_RUN:-30}
OUT=${OUT:-bench/results}
if [ "${QUICK:-0}" = 1 ]; then
    ROUNDS=1 DURATION=2 WARMUP=1
fi

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
apt_updated=0
need() { # need <command> <debian package>
    if ! command -v "$1" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$1" ]; then
        if [ "$apt_updated" -eq 0 ]; then as_root apt-get update -qq; apt_updated=1; fi
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
    fi
}
need wrk wrk
need nginx nginx-light
need redis-server redis-server
need redis-cli redis-tools
need python3 python3-minimal
need h2load nghttp2-client
need openssl openssl
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

echo "==> building (release)"
cargo build --release -q -p cachette-suite --example bench_server --example bench_stampede --example bench_memory --example bench_replication --example bench_expiry
cargo build --release -q -p cachette-cli
# The peer crates: a package outside the workspace, built into this target.
cargo build --release -q --manifest-path bench/peers/Cargo.toml --target-dir target
BIN=target/release
ulimit -n 65536 2>/dev/null || ulimit -n 4096 2>/dev/null || true

WORK=$(mktemp -d)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]:-}"; do
        [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
    done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
wait_port() { # wait_port <port>
    for _ in $(seq 1 200); do
        if (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.05
    done
    echo "nothing listens on port $1" >&2
    exit 1
}
stop() { # stop <pid>
    kill "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}

# Unique paths for the miss rows: per wrk thread and per run.
cat >"$WORK/unique.lua" <<'LUA'
local counter = 0
local thread_id = 0
local prefix = os.getenv("MISS_PREFIX") or "/miss/"
local run = os.getenv("MISS_RUN") or "0"
local threads = 0
function setup(thread)
    threads = threads + 1
    thread:set("thread_id", threads)
end
function request()
    counter = counter + 1
    return wrk.format("GET", prefix .. run .. "-" .. thread_id .. "-" .. counter)
end
LUA

# Many keys: each request a random one of KEYS query strings on the row's
# URL (`?k=<1..KEYS>`); the warm-up walks them in order so every key is
# stored before the measured runs.
cat >"$WORK/keys.lua" <<'LUA'
local keys = tonumber(os.getenv("KEYS") or "1000")
local walk = os.getenv("KEYS_WALK") == "1"
local counter = 0
math.randomseed(os.time())
function request()
    local k
    if walk then
        counter = counter + 1
        k = (counter - 1) % keys + 1
    else
        k = math.random(1, keys)
    end
    return wrk.format("GET", wrk.path .. "?k=" .. k)
end
LUA

RESULTS="$WORK/results.tsv"
: >"$RESULTS"

# run_wrk <size> <row> <round> <url> <threads> <connections> [lua script]
run_wrk() {
    local size=$1 row=$2 round=$3 url=$4 threads=$5 conns=$6 script=${7:-}
    local args=(-t"$threads" -c"$conns" -d"${DURATION}s" --latency)
    [ -n "$script" ] && args+=(-s "$script")
    local out
    out=$(wrk "${args[@]}" "$url")
    python3 - "$size" "$row" "$round" "$RESULTS" <<PY
import re, sys
out = """$out"""
size, row, rnd, path = sys.argv[1:5]
def ms(text):
    value, unit = re.match(r"([\d.]+)(us|ms|s)", text).groups()
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
p50 = ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))
p99 = ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))
errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
errors = int(errors.group(1)) if errors else 0
with open(path, "a") as f:
    f.write(f"{size}\t{row}\t{rnd}\t{rps:.0f}\t{p50:.3f}\t{p99:.3f}\t{errors}\n")
PY
}

# run_h2load <size> <row> <round> <url> <threads> <connections>: the same
# shape as run_wrk (one request in flight per connection) over HTTP/2: h2c
# with prior knowledge for http://, ALPN h2 for https://. Latencies from its
# per-request log (h2load prints no percentiles).
run_h2load() {
    local size=$1 row=$2 round=$3 url=$4 threads=$5 conns=$6
    local log="$WORK/h2load.log" out
    out=$(h2load -t"$threads" -c"$conns" -m1 -D"$DURATION" --log-file="$log" "$url")
    python3 - "$size" "$row" "$round" "$RESULTS" "$log" <<PY
import re, statistics, sys
out = """$out"""
size, row, rnd, path, log = sys.argv[1:6]
rps = float(re.search(r"finished in [\d.]+s, ([\d.]+) req/s", out).group(1))
times, errors = [], 0
for line in open(log):
    _, status, micros = line.split("\t")
    times.append(int(micros) / 1000.0)
    errors += not status.startswith("2")
failed = re.search(r"(\d+) failed, (\d+) errored, (\d+) timeout", out)
errors += sum(int(n) for n in failed.groups())
times.sort()
pick = lambda q: times[min(len(times) - 1, int(q * len(times)))]
with open(path, "a") as f:
    f.write(f"{size}\t{row}\t{rnd}\t{rps:.0f}\t{pick(0.50):.3f}\t{pick(0.99):.3f}\t{errors}\n")
PY
    rm -f "$log"
}

# A self-signed certificate for the TLS rows (clients here do not verify:
# the handshake happens once per kept-alive connection either way).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 \
    -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
    -keyout "$WORK/key.pem" -out "$WORK/cert.pem" 2>/dev/null
chmod 644 "$WORK/key.pem"

REDIS_PORT=$(free_port)
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
    --dir "$WORK" --logfile "$WORK/redis.log" &
PIDS+=($!)
wait_port "$REDIS_PORT"

# A Redis Cluster of 3 primaries (no replicas: one machine), for the
# cluster-hit row. A node also listens on port + 10000 (its bus).
cluster_port() {
    python3 -c '
import socket
while True:
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]
    if p > 55535: continue
    t = socket.socket()
    try:
        t.bind(("127.0.0.1", p + 10000)); print(p); break
    except OSError:
        pass
'
}
CLUSTER_SEEDS=()
for i in 1 2 3; do
    port=$(cluster_port)
    mkdir -p "$WORK/cluster-$port"
    redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no \
        --cluster-enabled yes --cluster-config-file nodes.conf \
        --dir "$WORK/cluster-$port" --logfile "$WORK/cluster-$port/redis.log" &
    PIDS+=($!)
    wait_port "$port"
    CLUSTER_SEEDS+=("127.0.0.1:$port")
done
redis-cli --cluster create "${CLUSTER_SEEDS[@]}" --cluster-replicas 0 --cluster-yes >/dev/null
for seed in "${CLUSTER_SEEDS[@]}"; do
    for _ in $(seq 1 200); do
        redis-cli -p "${seed#*:}" cluster info | grep -q cluster_state:ok && break
        sleep 0.05
    done
done
CLUSTER_URLS=$(printf 'redis://%s,' "${CLUSTER_SEEDS[@]}")
CLUSTER_URLS=${CLUSTER_URLS%,}

STAMPEDE_TSV="$WORK/stampede.tsv"
: >"$STAMPEDE_TSV"

for size in $SIZES; do
    echo "==> body $size bytes"
    APP_PORT=$(free_port)
    "$BIN/examples/bench_server" "$APP_PORT" "$size" "redis://127.0.0.1:$REDIS_PORT/0" "$CLUSTER_URLS" >/dev/null &
    APP=$!
    PIDS+=("$APP")
    wait_port "$APP_PORT"

    PEER_PORT=$(free_port)
    "$BIN/cachette-bench-peers" "$PEER_PORT" "$size" >/dev/null &
    PEER=$!
    PIDS+=("$PEER")
    wait_port "$PEER_PORT"

    PROXY_PORT=$(free_port)
    "$BIN/cachette" proxy --listen "127.0.0.1:$PROXY_PORT" --upstream "http://127.0.0.1:$APP_PORT" 2>/dev/null &
    PROXY=$!
    PIDS+=("$PROXY")
    wait_port "$PROXY_PORT"
    PROXY_TLS_PORT=$(free_port)
    "$BIN/cachette" proxy --listen "127.0.0.1:$PROXY_TLS_PORT" --upstream "http://127.0.0.1:$APP_PORT" \
        --tls-cert "$WORK/cert.pem" --tls-key "$WORK/key.pem" 2>/dev/null &
    PROXY_TLS=$!
    PIDS+=("$PROXY_TLS")
    wait_port "$PROXY_TLS_PORT"

    NGINX_PORT=$(free_port)
    NGINX_H2C_PORT=$(free_port)
    NGINX_TLS_PORT=$(free_port)
    mkdir -p "$WORK/nginx-$size/cache" "$WORK/nginx-$size/logs"
    # nginx's workers drop root privileges: let them write their cache.
    chmod 755 "$WORK" "$WORK/nginx-$size"
    chmod 777 "$WORK/nginx-$size/cache"
    # The same cached location behind every listener.
    NGINX_LOCATION='location / {
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_cache peer;
            proxy_cache_lock on;
            add_header X-Cache-Status $upstream_cache_status;
        }'
    cat >"$WORK/nginx-$size/nginx.conf" <<NGINX
worker_processes auto;
pid $WORK/nginx-$size/nginx.pid;
error_log $WORK/nginx-$size/logs/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    sendfile on;
    tcp_nodelay on;
    keepalive_requests 1000000;
    proxy_cache_path $WORK/nginx-$size/cache levels=1:2 keys_zone=peer:16m max_size=1g inactive=1h use_temp_path=off;
    upstream origin {
        server 127.0.0.1:$APP_PORT;
        keepalive 64;
    }
    # The same cache behind three listeners: HTTP/1.1, h2c (prior
    # knowledge) and TLS with HTTP/2 or HTTP/1.1 by ALPN, as cachette proxy.
    server {
        listen 127.0.0.1:$NGINX_PORT;
        listen 127.0.0.1:$NGINX_TLS_PORT ssl http2;
        ssl_certificate $WORK/cert.pem;
        ssl_certificate_key $WORK/key.pem;
        ssl_protocols TLSv1.2 TLSv1.3;
        $NGINX_LOCATION
    }
    # h2c without sendfile: nginx 1.22 sending a cached file over
    # plaintext HTTP/2 with sendfile waits ~40 ms per response (delayed ACK).
    server {
        listen 127.0.0.1:$NGINX_H2C_PORT http2;
        sendfile off;
        $NGINX_LOCATION
    }
}
NGINX
    "$NGINX" -p "$WORK/nginx-$size" -c "$WORK/nginx-$size/nginx.conf" -g 'daemon off;' &
    NGINX_PID=$!
    PIDS+=("$NGINX_PID")
    wait_port "$NGINX_PORT"

    # id|row|client|url: wrk speaks HTTP/1.1 (over TLS for https://),
    # h2load HTTP/2.
    ROWS=(
        "1|plain|wrk|http://127.0.0.1:$APP_PORT/plain"
        "2|layer-memory|wrk|http://127.0.0.1:$APP_PORT/cached"
        "2p|peer|wrk|http://127.0.0.1:$PEER_PORT/peer"
        "3|layer-redis|wrk|http://127.0.0.1:$APP_PORT/redis"
        "3c|layer-cluster|wrk|http://127.0.0.1:$APP_PORT/cluster"
        "4|proxy|wrk|http://127.0.0.1:$PROXY_PORT/plain"
        "5|nginx|wrk|http://127.0.0.1:$NGINX_PORT/plain"
        "4a|proxy-h2c|h2load|http://127.0.0.1:$PROXY_PORT/plain"
        "5a|nginx-h2c|h2load|http://127.0.0.1:$NGINX_H2C_PORT/plain"
        "4b|proxy-tls|wrk|https://127.0.0.1:$PROXY_TLS_PORT/plain"
        "5b|nginx-tls|wrk|https://127.0.0.1:$NGINX_TLS_PORT/plain"
        "4c|proxy-tls-h2|h2load|https://127.0.0.1:$PROXY_TLS_PORT/plain"
        "5c|nginx-tls-h2|h2load|https://127.0.0.1:$NGINX_TLS_PORT/plain"
    )
    echo "    warm-up"
    for entry in "${ROWS[@]}"; do
        IFS='|' read -r _ _ client url <<<"$entry"
        curl_args=(-fsS -k -o /dev/null)
        [ "$client" = h2load ] && case "$url" in http:*) curl_args+=(--http2-prior-knowledge) ;; esac
        if ! curl "${curl_args[@]}" "$url"; then
            echo "$url does not answer 200" >&2
            cat "$WORK"/nginx-*/logs/error.log >&2 2>/dev/null || true
            exit 1
        fi
        if [ "$client" = wrk ]; then
            wrk -t1 -c8 -d"${WARMUP}s" "$url" >/dev/null
        else
            h2load -t1 -c8 -m1 -D"$WARMUP" "$url" >/dev/null
        fi
    done
    echo "    warm-up: 1,000 and 100,000 keys"
    for keys in 1000 100000; do
        for url in "http://127.0.0.1:$APP_PORT/cached" "http://127.0.0.1:$PEER_PORT/peer"; do
            KEYS=$keys KEYS_WALK=1 wrk -t1 -c16 -d"$((WARMUP + keys / 25000))s" -s "$WORK/keys.lua" "$url" >/dev/null
        done
    done
    for round in $(seq 1 "$ROUNDS"); do
        echo "    round $round/$ROUNDS"
        for entry in "${ROWS[@]}"; do
            IFS='|' read -r _ row client url <<<"$entry"
            "run_$client" "$size" "$row" "$round" "$url" "$THREADS" "$CONNECTIONS"
        done
        # Many keys with a query string, random, on the same routes.
        for keys in 1000 100000; do
            for entry in "plain|http://127.0.0.1:$APP_PORT/plain" \
                "layer-memory|http://127.0.0.1:$APP_PORT/cached" \
                "peer|http://127.0.0.1:$PEER_PORT/peer"; do
                IFS='|' read -r row url <<<"$entry"
                KEYS=$keys run_wrk "$size" "$row-keys$keys" "$round" "$url" "$THREADS" "$CONNECTIONS" "$WORK/keys.lua"
            done
        done
        # Misses: every request a new key, one connection, so that p50 is
        # the cost of one request and not queueing.
        MISS_RUN="$size-$round" MISS_PREFIX=/miss/ \
            run_wrk "$size" miss-plain "$round" "http://127.0.0.1:$APP_PORT/" 1 1 "$WORK/unique.lua"
        MISS_RUN="$size-$round" MISS_PREFIX=/miss-cached/ \
            run_wrk "$size" miss-layer "$round" "http://127.0.0.1:$APP_PORT/" 1 1 "$WORK/unique.lua"
    done

    echo "    stampede: $STAMPEDE clients, one cold key, origin 200 ms"
    # The fleet: this server and two more on the same Redis, the clients
    # spread over the three; origin calls summed over them.
    FLEET_PORTS=("$APP_PORT")
    FLEET_PIDS=()
    for _ in 1 2; do
        port=$(free_port)
        "$BIN/examples/bench_server" "$port" "$size" "redis://127.0.0.1:$REDIS_PORT/0" >/dev/null &
        FLEET_PIDS+=($!)
        PIDS+=($!)
        wait_port "$port"
        FLEET_PORTS+=("$port")
    done
    fleet_calls() {
        local total=0
        for port in "${FLEET_PORTS[@]}"; do
            total=$((total + $(curl -fsS "http://127.0.0.1:$port/calls")))
        done
        echo "$total"
    }
    for target in layer proxy fleet; do
        for round in $(seq 1 "$ROUNDS"); do
            case "$target" in
                layer) url="http://127.0.0.1:$APP_PORT/slow-cached/$size-$round" ;;
                proxy) url="http://127.0.0.1:$PROXY_PORT/slow/$size-$round" ;;
                fleet) url=$(printf "http://127.0.0.1:%s/slow-fleet/$size-$round," "${FLEET_PORTS[@]}")
                       url=${url%,} ;;
            esac
            before=$(fleet_calls)
            line=$("$BIN/examples/bench_stampede" "$url" "$STAMPEDE")
            after=$(fleet_calls)
            echo "$size	$target	$round	$((after - before))	$line" >>"$STAMPEDE_TSV"
        done
    done
    for pid in "${FLEET_PIDS[@]}"; do stop "$pid"; done
    stop "$NGINX_PID"
    stop "$PEER"
    stop "$PROXY_TLS"
    stop "$PROXY"
    stop "$APP"
done

echo "==> memory tier filled to ${MEMORY_MIB} MiB"
MEMORY_LINE=$("$BIN/examples/bench_memory" "$MEMORY_MIB")

echo "==> mass expiry: $EXPIRY_KEYS keys stored for ${EXPIRY_SECS}s, random load through their expiry"
EXPIRY_TSV="$WORK/expiry.tsv"
: >"$EXPIRY_TSV"
for target in layer peer; do
    port=$(free_port)
    case "$target" in
        layer) EXPIRY_SECS=$EXPIRY_SECS "$BIN/examples/bench_server" "$port" 1024 >/dev/null & ;;
        peer) EXPIRY_SECS=$EXPIRY_SECS "$BIN/cachette-bench-peers" "$port" 1024 >/dev/null & ;;
    esac
    pid=$!
    PIDS+=("$pid")
    wait_port "$port"
    "$BIN/examples/bench_expiry" "http://127.0.0.1:$port/expiring" "http://127.0.0.1:$port/expiring-calls" \
        "$EXPIRY_KEYS" "$CONNECTIONS" "$EXPIRY_RUN" | sed "s/^/$target /" >>"$EXPIRY_TSV"
    stop "$pid"
done

echo "==> a fleet of two peers: store on A to hit on B, copies per second"
PEER_URLS=()
for i in 1 2; do
    port=$(free_port)
    mkdir -p "$WORK/peer-$port"
    redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no \
        --dir "$WORK/peer-$port" --logfile "$WORK/peer-$port/redis.log" &
    PIDS+=($!)
    wait_port "$port"
    PEER_URLS+=("redis://127.0.0.1:$port/0")
done
REPLICATION_LINE=$("$BIN/examples/bench_replication" "${PEER_URLS[@]}" 20000)

mkdir -p "$OUT"
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
cp "$RESULTS" "$OUT/$STAMP-wrk.tsv"
cp "$STAMPEDE_TSV" "$OUT/$STAMP-stampede.tsv"
echo "$MEMORY_LINE" >"$OUT/$STAMP-memory.txt"
echo "$REPLICATION_LINE" >"$OUT/$STAMP-replication.txt"
cp "$EXPIRY_TSV" "$OUT/$STAMP-expiry.txt"

python3 - "$RESULTS" "$STAMPEDE_TSV" "$MEMORY_LINE" "$OUT/$STAMP-report.md" "$REPLICATION_LINE" "$EXPIRY_TSV" "$OUT/$STAMP-expiry.svg" "$EXPIRY_SECS" <<'PY'
import statistics, sys
from collections import defaultdict

results, stampede_path, memory_line, report_path, replication_line, expiry_path, expiry_svg, expiry_secs = sys.argv[1:9]
runs = defaultdict(list)
for line in open(results):
    size, row, rnd, rps, p50, p99, errors = line.split("\t")
    runs[(int(size), row)].append((float(rps), float(p50), float(p99), int(errors)))

def median(values):
    return statistics.median(values) if values else float("nan")

names = {
    "plain": "1. axum route, pre-built bytes, no layer (the limit)",
    "layer-memory": "2. same route + CacheLayer, memory hit",
    "peer": "2p. same route + axum-response-cache hit (the strongest peer crate)",
    "layer-redis": "3. same route + CacheLayer, local Redis hit (no memory tier)",
    "layer-cluster": "3c. same route + CacheLayer, Redis Cluster hit, 3 primaries (no memory tier)",
    "proxy": "4. cachette proxy, memory hit",
    "nginx": "5. nginx proxy_cache hit (the peer)",
    "proxy-h2c": "4a. cachette proxy, memory hit, HTTP/2 (h2c)",
    "nginx-h2c": "5a. nginx proxy_cache hit, HTTP/2 (h2c)",
    "proxy-tls": "4b. cachette proxy, memory hit, TLS + HTTP/1.1",
    "nginx-tls": "5b. nginx proxy_cache hit, TLS + HTTP/1.1",
    "proxy-tls-h2": "4c. cachette proxy, memory hit, TLS + HTTP/2",
    "nginx-tls-h2": "5c. nginx proxy_cache hit, TLS + HTTP/2",
    "plain-keys1000": "8a. route alone, 1,000 random query strings",
    "layer-memory-keys1000": "8b. route + CacheLayer, memory hits over 1,000 random keys",
    "peer-keys1000": "8c. route + axum-response-cache, hits over 1,000 random keys",
    "plain-keys100000": "9a. route alone, 100,000 random query strings",
    "layer-memory-keys100000": "9b. route + CacheLayer, memory hits over 100,000 random keys",
    "peer-keys100000": "9c. route + axum-response-cache, hits over 100,000 random keys",
    "miss-plain": "7a. route without the layer, new key each request (1 conn)",
    "miss-layer": "7b. route + CacheLayer, miss + store each request (1 conn)",
}
lines = []
sizes = sorted({size for size, _ in runs})
lines.append("| path | body | req/s | p50 ms | p99 ms | × row 1 |")
lines.append("|---|---|---:|---:|---:|---:|")
summary = {}
for size in sizes:
    base = median([r[0] for r in runs[(size, "plain")]])
    for row in names:
        data = runs.get((size, row))
        if not data:
            continue
        rps = median([r[0] for r in data])
        p50 = median([r[1] for r in data])
        p99 = median([r[2] for r in data])
        errors = sum(r[3] for r in data)
        summary[(size, row)] = (rps, p50, p99)
        # Keyed rows compare with the route alone under the same keys.
        keyed = row.rsplit("-keys", 1)
        row_base = base
        if len(keyed) == 2:
            row_base = median([r[0] for r in runs.get((size, f"plain-keys{keyed[1]}"), [])])
        ratio = f"{rps / row_base:.2f}" if not row.startswith("miss") else "—"
        note = f" ({errors} non-2xx)" if errors else ""
        label = f"{size // 1024} KiB" if size >= 1024 else f"{size} B"
        lines.append(f"| {names[row]}{note} | {label} | {rps:,.0f} | {p50:.3f} | {p99:.3f} | {ratio} |")

lines.append("")
lines.append("| stampede | body | clients | origin calls (each run) | p50 ms | p99 ms | max ms |")
lines.append("|---|---|---:|---|---:|---:|---:|")
stampedes = defaultdict(list)
for line in open(stampede_path):
    size, target, rnd, calls, text = line.rstrip("\n").split("\t")
    fields = dict(kv.split("=") for kv in text.split()[1:])
    stampedes[(int(size), target)].append((int(calls), fields))
for (size, target), data in sorted(stampedes.items()):
    calls = ", ".join(str(c) for c, _ in data)
    get = lambda k: median([float(f[k]) for _, f in data])
    clients = data[0][1]["requests"]
    ok = min(int(f["ok"]) for _, f in data)
    label = f"{size // 1024} KiB" if size >= 1024 else f"{size} B"
    shown = "fleet: 3 servers on one Redis" if target == "fleet" else target
    lines.append(f"| 6. {shown} ({ok}/{clients} ok) | {label} | {clients} | {calls} | {get('p50_ms'):.1f} | {get('p99_ms'):.1f} | {get('max_ms'):.1f} |")

lines.append("")
lines.append("Derived (targets in docs/benchmarks.md):")
lines.append("")
for size in sizes:
    label = f"{size // 1024} KiB" if size >= 1024 else f"{size} B"
    get = lambda row: summary.get((size, row))
    for suffix, what in (("", "one URL"), ("-keys1000", "1,000 keys"), ("-keys100000", "100,000 keys")):
        layer, peer = get("layer-memory" + suffix), get("peer" + suffix)
        if layer and peer:
            lines.append(f"- {label}, {what}: CacheLayer / axum-response-cache = {layer[0] / peer[0]:.2f}× req/s; p99 {layer[2]:.3f} ms vs {peer[2]:.3f} ms")
    for suffix, protocol in (("", "HTTP/1.1"), ("-h2c", "h2c"), ("-tls", "TLS + HTTP/1.1"), ("-tls-h2", "TLS + HTTP/2")):
        proxy, nginx = get("proxy" + suffix), get("nginx" + suffix)
        if proxy and nginx:
            lines.append(f"- {label}, {protocol}: cachette proxy / nginx = {proxy[0] / nginx[0]:.2f}× req/s; p99 {proxy[2]:.3f} ms vs {nginx[2]:.3f} ms")
    if get("miss-plain") and get("miss-layer"):
        lines.append(f"- {label}: a miss adds {get('miss-layer')[1] - get('miss-plain')[1]:.3f} ms at p50 ({get('miss-layer')[1]:.3f} vs {get('miss-plain')[1]:.3f})")
fields = dict(kv.split("=") for kv in memory_line.split()[1:])
lines.append(f"- memory tier full at {int(fields['max_bytes']) >> 20} MiB: resident growth {int(fields['growth']) / 2**20:.1f} MiB = {float(fields['ratio']):.2f}× max_bytes ({fields['entries']} entries, baseline RSS {int(fields['baseline_rss']) / 2**20:.1f} MiB)")
# The mass-expiry row: per second, requests, p50/p99/max, for each target.
expiry = defaultdict(list)
expiry_calls = {}
for line in open(expiry_path):
    target, *fields = line.split()
    kv = dict(f.split("=") for f in fields)
    if "sec" in kv:
        expiry[target].append(kv)
    else:
        expiry_calls[target] = (int(kv["calls"]), int(kv["keys"]))
def expiry_summary(target):
    rows = expiry.get(target, [])
    if not rows:
        return None
    p99 = [int(r["p99_us"]) for r in rows]
    steady = statistics.median(p99[: max(1, len(p99) // 3)])
    worst = max(rows, key=lambda r: int(r["p99_us"]))
    return steady, worst
lines.append("")
lines.append("| mass expiry | steady p99 ms | worst second: req/s | p50 ms | p99 ms | max ms | × steady p99 | origin calls / keys |")
lines.append("|---|---:|---:|---:|---:|---:|---:|---:|")
for target, label in (("layer", "CacheLayer, memory"), ("peer", "axum-response-cache")):
    summary = expiry_summary(target)
    if summary is None:
        continue
    steady, worst = summary
    calls, keys = expiry_calls.get(target, (0, 0))
    lines.append(f"| {label} | {steady / 1000:.2f} | {int(worst['requests'])} | {int(worst['p50_us']) / 1000:.2f} | {int(worst['p99_us']) / 1000:.2f} | {int(worst['max_us']) / 1000:.1f} | {int(worst['p99_us']) / steady:.1f} | {calls} / {keys} |")
# A small plot: p99 and max per second, log scale.
import math
width, height, left, bottom = 640, 260, 50, 30
seconds = max((len(v) for v in expiry.values()), default=1)
def y(us):
    lo, hi = math.log10(100), math.log10(1_000_000)
    v = min(max(math.log10(max(us, 100)), lo), hi)
    return 10 + (height - bottom - 10) * (1 - (v - lo) / (hi - lo))
def x(sec):
    return left + (width - left - 10) * sec / max(seconds - 1, 1)
svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11">']
for us, label in ((100, "0.1 ms"), (1000, "1 ms"), (10_000, "10 ms"), (100_000, "100 ms"), (1_000_000, "1 s")):
    svg.append(f'<line x1="{left}" x2="{width - 10}" y1="{y(us):.1f}" y2="{y(us):.1f}" stroke="#ddd"/><text x="4" y="{y(us) + 4:.1f}">{label}</text>')
colors = {"layer": "#c0392b", "peer": "#2c3e50"}
for target, rows in expiry.items():
    for key, dash in (("p99_us", ""), ("max_us", ' stroke-dasharray="4 3"')):
        points = " ".join(f"{x(i):.1f},{y(int(r[key])):.1f}" for i, r in enumerate(rows))
        svg.append(f'<polyline fill="none" stroke="{colors.get(target, "#888")}"{dash} points="{points}"/>')
svg.append(f'<text x="{left}" y="{height - 8}">seconds of load (entries expire ~{expiry_secs}s after their fill); solid p99, dashed max; red CacheLayer, dark axum-response-cache</text>')
svg.append("</svg>")
open(expiry_svg, "w").write("\n".join(svg) + "\n")

rep = dict(kv.split("=") for kv in replication_line.split()[1:])
lines.append(f"- peers replication (2 nodes, 1 KiB): store on A to hit on B p50 {int(rep['p50_us']) / 1000:.2f} ms, p99 {int(rep['p99_us']) / 1000:.2f} ms, max {int(rep['max_us']) / 1000:.2f} ms; one replicator copies {float(rep['copies_per_s']):.0f}/s while A stores {float(rep['stores_per_s']):.0f}/s ({rep['copied']} copied, {rep['dropped']} dropped of {rep['stores']})")
report = "\n".join(lines) + "\n"
open(report_path, "w").write(report)
print()
print(report)
PY
echo "(raw results and this report: $OUT/$STAMP-*)"
