#!/usr/bin/env bash
# Data-plane benchmark: direct vs haproxy pairs (plaintext, and TLS 1.3 with client
# certificates between the two in mode tcp and in mode http) vs stunnel pair vs Shoal
# (two nodes), measured side by side in one run, interleaved round by round.
# See sim/bench/README.md.
#
#   sim/bench/dataplane.sh [--rounds N] [--duration SECONDS] [--bulk-gib G] [--quick]
#                          [--warmup SECONDS] [--quiet-wait SECONDS]
#                          [--keepalive-requests N] [--json FILE] [--keep]
#
# Needs: the release binaries (cargo build --release -p shoal-node -p shoal-pki),
# python3, gcc, openssl; installs haproxy, stunnel4, nginx, wrk and h2load (nghttp2-client)
# with apt-get if missing.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
RELEASE="${SHOAL_RELEASE_DIR:-$REPO/target/release}"

ROUNDS=3
DURATION=10
WARMUP=2
BULK_GIB=2
QUICK=0
KEEP=0
QUIET_WAIT=20
KEEPALIVE_REQUESTS=1000   # nginx's own default
JSON_OUT=""
SHOAL_THREADS=1           # `shoal run --threads`, both nodes
DISTURBED_CORE_FRACTION=0.10

usage() {
    sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'
    cat <<'EOF'

Options:
  --rounds N          rounds; each round measures every setup once, in order (default 3)
  --duration SECONDS  measured wrk run per setup and round (default 10)
  --warmup SECONDS    wrk warm-up before each measured run, not counted (default 2)
  --bulk-gib G        bulk transfer size in GiB, may be fractional (default 2)
  --quick             smoke mode: 1 round, 1 s warm-up, 1 s wrk, 64 MiB bulk
  --quiet-wait S      before each setup's phases, wait up to S seconds for a 1 s window in
                      which other processes use < 10% of a core (default 20; 0 = never)
  --keepalive-requests N
                      nginx keepalive_requests (default 1000, nginx's own default: each
                      wrk connection is re-opened after 1000 requests)
  --json FILE         also write one object per setup (setup, rps, p50_ms, p99_ms,
                      cpu_ms_per_1k, bulk_mib_s, cpu_s_per_gib; null where not measured)
  --shoal-threads N   worker threads of each Shoal node (`shoal run --threads N`, default 1)
  --keep              keep the temp dir (configs, certificates, logs) after the run
  -h, --help          this help
EOF
}

ARGS="$*"
MEASURE_RC=0
need() { [ $# -ge 2 ] || { echo "dataplane.sh: $1 needs a value (see --help)" >&2; exit 2; }; }
while [ $# -gt 0 ]; do
    case "$1" in
        --rounds|--duration|--warmup|--bulk-gib|--quiet-wait|--keepalive-requests|--json|--shoal-threads) need "$@" ;;
    esac
    case "$1" in
        --rounds) ROUNDS="$2"; shift 2 ;;
        --duration) DURATION="$2"; shift 2 ;;
        --warmup) WARMUP="$2"; shift 2 ;;
        --bulk-gib) BULK_GIB="$2"; shift 2 ;;
        --quick) QUICK=1; shift ;;
        --keep) KEEP=1; shift ;;
        --json) JSON_OUT="$(cd "$(dirname "$2")" 2>/dev/null && pwd)/$(basename "$2")" \
                    || { echo "dataplane.sh: --json: no directory $(dirname "$2")" >&2; exit 2; }; shift 2 ;;
        --quiet-wait) QUIET_WAIT="$2"; shift 2 ;;
        --keepalive-requests) KEEPALIVE_REQUESTS="$2"; shift 2 ;;
        --shoal-threads) SHOAL_THREADS="$2"; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "dataplane.sh: unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
done

if [ "$QUICK" = 1 ]; then
    ROUNDS=1; DURATION=1; WARMUP=1; BULK_BYTES=$((64 * 1024 * 1024)); QUIET_WAIT=0
else
    BULK_BYTES="$(python3 -c "import sys; print(int(float(sys.argv[1]) * 2**30))" "$BULK_GIB" 2>/dev/null)" \
        && [ "$BULK_BYTES" -gt 0 ] || { echo "dataplane.sh: --bulk-gib takes a positive number of GiB" >&2; exit 2; }
    [ "$BULK_BYTES" -ge $((1 << 30)) ] || echo "dataplane.sh: note: bulk transfers under 1 GiB are too short for published figures" >&2
fi
case "$ROUNDS$DURATION$WARMUP$QUIET_WAIT$KEEPALIVE_REQUESTS$SHOAL_THREADS" in *[!0-9]*) echo "dataplane.sh: --rounds, --duration, --warmup, --quiet-wait, --keepalive-requests and --shoal-threads take whole numbers" >&2; exit 2 ;; esac
[ "$ROUNDS" -ge 1 ] && [ "$DURATION" -ge 1 ] || { echo "dataplane.sh: --rounds and --duration must be at least 1" >&2; exit 2; }

log() { printf '[dataplane %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { printf 'dataplane.sh: error: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------- prerequisites
SHOAL_BIN="$RELEASE/shoal"
PKI_BIN="$RELEASE/shoal-pki"
for b in "$SHOAL_BIN" "$PKI_BIN"; do
    if [ ! -x "$b" ]; then
        die "missing release binary $b
build them first, from $REPO:
    cargo build --release -p shoal-node -p shoal-pki"
    fi
done
for t in python3 gcc openssl; do
    command -v "$t" >/dev/null || die "$t is required (apt-get install -y ${t/python3/python3})"
done

missing=()
command -v haproxy >/dev/null || missing+=(haproxy)
command -v stunnel4 >/dev/null || command -v stunnel >/dev/null || missing+=(stunnel4)
command -v nginx >/dev/null || missing+=(nginx)
command -v wrk >/dev/null || missing+=(wrk)
command -v h2load >/dev/null || missing+=(nghttp2-client)
if [ ${#missing[@]} -gt 0 ]; then
    log "installing missing packages with apt-get: ${missing[*]}"
    [ "$(id -u)" = 0 ] || die "need root to install ${missing[*]} (or install them yourself: apt-get install -y ${missing[*]})"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2 || die "apt-get update failed"
    apt-get install -y -qq "${missing[@]}" >&2 || die "apt-get install ${missing[*]} failed"
    log "installed: ${missing[*]}"
    # Debian starts the packaged daemons where systemd runs; stop them so that they
    # neither hold ports nor use CPU during the benchmark.
    if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
        for s in haproxy nginx stunnel4; do systemctl stop "$s" 2>/dev/null || true; done
    fi
fi
STUNNEL="$(command -v stunnel4 || command -v stunnel)"

# ---------------------------------------------------------------- temp dir, cleanup
WORK="$(mktemp -d /tmp/shoal-dataplane.XXXXXX)"
PIDS=()
cleanup() {
    local rc=$?
    set +e
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
        kill -TERM "${PIDS[$i]}" 2>/dev/null
    done
    for p in "${PIDS[@]}"; do
        for _ in $(seq 1 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$p" 2>/dev/null
        wait "$p" 2>/dev/null
    done
    if [ "$KEEP" = 1 ] || [ $rc -ne 0 ]; then
        log "temp dir kept: $WORK"
    else
        rm -rf "$WORK"
    fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
mkdir -p "$WORK/bin" "$WORK/logs"

# Snapshot the binaries: the tree may be rebuilt while we run.
cp "$SHOAL_BIN" "$PKI_BIN" "$WORK/bin/"
SHOAL="$WORK/bin/shoal"
PKI="$WORK/bin/shoal-pki"
gcc -O2 -Wall -o "$WORK/bin/bulk" "$HERE/bulk.c" || die "cannot compile $HERE/bulk.c"
BULK="$WORK/bin/bulk"

# ---------------------------------------------------------------- ports
# 25 ports outside the ephemeral range, free for both TCP and UDP right now.
read -r -a P <<<"$(python3 - <<'EOF'
import random, socket
lo, hi = (int(x) for x in open("/proc/sys/net/ipv4/ip_local_port_range").read().split())
cands = [p for p in range(20000, 32000) if not lo <= p <= hi] or list(range(20000, 32000))
random.shuffle(cands)
ports = []
for p in cands:
    ok = True
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        s = socket.socket(socket.AF_INET, kind)
        try:
            s.bind(("127.0.0.1", p))
        except OSError:
            ok = False
        finally:
            s.close()
    if ok:
        ports.append(p)
    if len(ports) == 25:
        break
print(" ".join(map(str, ports)))
EOF
)"
[ ${#P[@]} -eq 25 ] || die "could not find 25 free ports"
NGINX_PORT=${P[0]};   SINK_PORT=${P[1]}
HAA_HTTP=${P[2]};     HAA_BULK=${P[3]};   HAB_HTTP=${P[4]};   HAB_BULK=${P[5]}
STA_HTTP=${P[6]};     STA_BULK=${P[7]};   STB_HTTP=${P[8]};   STB_BULK=${P[9]}
SHA_QUIC=${P[10]};    SHA_ADMIN=${P[11]}; SHA_HTTP=${P[12]};  SHA_BULK=${P[13]}
SHB_QUIC=${P[14]};    SHB_ADMIN=${P[15]}; SHA_L7=${P[16]}
# haproxy pairs with mTLS between them: mode tcp (http and bulk), mode http (http).
HTA_HTTP=${P[17]};    HTA_BULK=${P[18]};  HTB_HTTP=${P[19]};  HTB_BULK=${P[20]}
HHA_HTTP=${P[21]};    HHB_HTTP=${P[22]}
# HTTP/2 (h2c, prior knowledge) entry points: nginx itself, haproxy mTLS http's A.
NGINX_H2=${P[23]};    HHA_H2=${P[24]}

wait_listen() { # port what [seconds]: wait until something LISTENs on 127.0.0.1:port
    # (reads /proc/net/tcp instead of connecting, so that no proxy or backend sees a
    # half-open probe connection and logs an error for it)
    local port=$1 what=$2 secs=${3:-10}
    python3 - "$port" "$secs" <<'EOF' || die "$what did not start listening on 127.0.0.1:$port (logs in $WORK/logs)"
import sys, time
port, deadline = int(sys.argv[1]), time.time() + float(sys.argv[2])
want = "0100007F:%04X" % port
while time.time() < deadline:
    with open("/proc/net/tcp") as f:
        if any(l.split()[1] == want and l.split()[3] == "0A" for l in list(f)[1:]):
            sys.exit(0)
    time.sleep(0.05)
sys.exit(1)
EOF
}

start() { # name cmd...: start in the background, log to logs/name.log, remember the PID
    local name=$1; shift
    "$@" >"$WORK/logs/$name.log" 2>&1 &
    PIDS+=($!)
    eval "PID_${name//-/_}=$!"
}

check_alive() {
    local name=$1 pid=$2
    kill -0 "$pid" 2>/dev/null || { tail -20 "$WORK/logs/$name.log" >&2; die "$name exited at start (log above)"; }
}

# ---------------------------------------------------------------- backends
log "temp dir $WORK; starting backends (nginx :$NGINX_PORT, bulk sink :$SINK_PORT)"
mkdir -p "$WORK/nginx/www" "$WORK/nginx/logs" "$WORK/nginx/tmp"
printf 'hello world\n' >"$WORK/nginx/www/index.html"   # the 12-byte static body
cat >"$WORK/nginx/nginx.conf" <<EOF
daemon off;
master_process on;
worker_processes 1;
user root root;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/logs/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $WORK/nginx/tmp/body;
    proxy_temp_path $WORK/nginx/tmp/proxy;
    fastcgi_temp_path $WORK/nginx/tmp/fastcgi;
    uwsgi_temp_path $WORK/nginx/tmp/uwsgi;
    scgi_temp_path $WORK/nginx/tmp/scgi;
    keepalive_requests $KEEPALIVE_REQUESTS;
    keepalive_timeout 300s;
    server {
        listen 127.0.0.1:$NGINX_PORT;
        root $WORK/nginx/www;
        location / { index index.html; }
    }
    # The direct HTTP/2 baseline: h2load does not reconnect when nginx ends a
    # connection after keepalive_requests, so this one keeps its connections.
    server {
        listen 127.0.0.1:$NGINX_H2 http2;
        keepalive_requests 100000000;
        root $WORK/nginx/www;
        location / { index index.html; }
    }
}
EOF
start nginx nginx -e "$WORK/nginx/logs/error.log" -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf"
start sink "$BULK" sink "$SINK_PORT"
wait_listen "$NGINX_PORT" nginx
wait_listen "$SINK_PORT" "bulk sink"
body="$(python3 -c "import urllib.request,sys; sys.stdout.write(urllib.request.urlopen('http://127.0.0.1:$NGINX_PORT/').read().decode())")"
[ "$body" = "hello world" ] || die "nginx does not serve the 12-byte body (got: $body)"

# ---------------------------------------------------------------- haproxy pair
log "starting haproxy pair (A :$HAA_HTTP/:$HAA_BULK -> B :$HAB_HTTP/:$HAB_BULK)"
haproxy_cfg() { # file http_bind bulk_bind http_to bulk_to
    cat >"$1" <<EOF
global
    maxconn 4096
defaults
    mode tcp
    timeout connect 5s
    timeout client 300s
    timeout server 300s
frontend http_in
    bind 127.0.0.1:$2
    default_backend http_out
backend http_out
    server s1 127.0.0.1:$4
frontend bulk_in
    bind 127.0.0.1:$3
    default_backend bulk_out
backend bulk_out
    server s1 127.0.0.1:$5
EOF
}
mkdir -p "$WORK/haproxy"
haproxy_cfg "$WORK/haproxy/b.cfg" "$HAB_HTTP" "$HAB_BULK" "$NGINX_PORT" "$SINK_PORT"
haproxy_cfg "$WORK/haproxy/a.cfg" "$HAA_HTTP" "$HAA_BULK" "$HAB_HTTP" "$HAB_BULK"
start haproxy-b haproxy -db -f "$WORK/haproxy/b.cfg"
start haproxy-a haproxy -db -f "$WORK/haproxy/a.cfg"

# ---------------------------------------------------------------- stunnel pair
log "making the stunnel test CA and ECDSA P-256 certificates (openssl)"
S="$WORK/stunnel"; mkdir -p "$S"
(
    cd "$S"
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out ca.key 2>/dev/null
    openssl req -x509 -new -key ca.key -subj "/CN=dataplane bench test CA" -days 2 -out ca.crt \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
    for n in a b; do
        openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$n.key" 2>/dev/null
        openssl req -new -key "$n.key" -subj "/CN=stunnel-$n" -out "$n.csr" 2>/dev/null
        printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=DNS:stunnel-%s,IP:127.0.0.1\n' "$n" >"$n.ext"
        openssl x509 -req -in "$n.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -extfile "$n.ext" -out "$n.crt" 2>/dev/null
        openssl verify -CAfile ca.crt "$n.crt" >/dev/null
    done
) || die "openssl could not make the stunnel certificates"
stunnel_cfg() { # file side(a|b) client(yes|no) http_accept bulk_accept http_connect bulk_connect peer(a|b)
    cat >"$1" <<EOF
foreground = yes
pid =
debug = warning
output = $S/$2.log
cert = $S/$2.crt
key = $S/$2.key
CAfile = $S/ca.crt
verifyChain = yes
requireCert = yes
checkHost = stunnel-$8
sslVersionMin = TLSv1.3
sslVersionMax = TLSv1.3
client = $3

[http]
accept = 127.0.0.1:$4
connect = 127.0.0.1:$6

[bulk]
accept = 127.0.0.1:$5
connect = 127.0.0.1:$7
EOF
}
stunnel_cfg "$S/b.conf" b no "$STB_HTTP" "$STB_BULK" "$NGINX_PORT" "$SINK_PORT" a
stunnel_cfg "$S/a.conf" a yes "$STA_HTTP" "$STA_BULK" "$STB_HTTP" "$STB_BULK" b
log "starting stunnel pair (A client mode :$STA_HTTP/:$STA_BULK -> B server mode :$STB_HTTP/:$STB_BULK)"
start stunnel-b "$STUNNEL" "$S/b.conf"
start stunnel-a "$STUNNEL" "$S/a.conf"

# ---------------------------------------------------------------- haproxy mTLS pairs
# The same CA and certificates as stunnel's. Between A and B: TLS 1.3 only, B requires
# and verifies A's client certificate, A verifies B's (name stunnel-b). One pair in
# mode tcp (L4, like stunnel), one in mode http (parses HTTP on both sides and keeps
# pooled TLS connections from A to B, like a mesh's L7 path).
cat "$S/a.crt" "$S/a.key" >"$S/a.pem"; cat "$S/b.crt" "$S/b.key" >"$S/b.pem"
haproxy_mtls_cfg() { # file mode side(a|b) "port:to_port"...
    local file=$1 mode=$2 side=$3; shift 3
    {
        printf 'global\n    maxconn 4096\n'
        printf '    ssl-default-bind-options ssl-min-ver TLSv1.3\n    ssl-default-server-options ssl-min-ver TLSv1.3\n'
        printf 'defaults\n    mode %s\n    timeout connect 5s\n    timeout client 300s\n    timeout server 300s\n' "$mode"
        local i=0 pair from to
        for pair in "$@"; do
            from=${pair%%:*}; to=${pair##*:}; i=$((i + 1))
            printf 'frontend in%d\n' "$i"
            if [ "$side" = b ]; then
                printf '    bind 127.0.0.1:%s ssl crt %s/b.pem ca-file %s/ca.crt verify required\n' "$from" "$S" "$S"
                printf '    default_backend out%d\nbackend out%d\n    server s1 127.0.0.1:%s\n' "$i" "$i" "$to"
            else
                printf '    bind 127.0.0.1:%s\n' "$from"
                printf '    default_backend out%d\nbackend out%d\n' "$i" "$i"
                printf '    server s1 127.0.0.1:%s ssl crt %s/a.pem ca-file %s/ca.crt verify required verifyhost stunnel-b sni str(stunnel-b)\n' "$to" "$S" "$S"
            fi
        done
    } >"$file"
}
mkdir -p "$WORK/haproxy-mtls"
haproxy_mtls_cfg "$WORK/haproxy-mtls/tcp-b.cfg" tcp b "$HTB_HTTP:$NGINX_PORT" "$HTB_BULK:$SINK_PORT"
haproxy_mtls_cfg "$WORK/haproxy-mtls/tcp-a.cfg" tcp a "$HTA_HTTP:$HTB_HTTP" "$HTA_BULK:$HTB_BULK"
haproxy_mtls_cfg "$WORK/haproxy-mtls/http-b.cfg" http b "$HHB_HTTP:$NGINX_PORT"
haproxy_mtls_cfg "$WORK/haproxy-mtls/http-a.cfg" http a "$HHA_HTTP:$HHB_HTTP"
# haproxy's h2 front end (h2c, prior knowledge) on A, to the same backend.
printf 'frontend in_h2\n    bind 127.0.0.1:%s proto h2\n    default_backend out1\n' "$HHA_H2" \
    >>"$WORK/haproxy-mtls/http-a.cfg"
for c in tcp-b tcp-a http-b http-a; do
    haproxy -c -q -f "$WORK/haproxy-mtls/$c.cfg" >"$WORK/logs/haproxy-check-$c.log" 2>&1 \
        || { cat "$WORK/logs/haproxy-check-$c.log" >&2; die "haproxy rejected $WORK/haproxy-mtls/$c.cfg"; }
done
log "starting haproxy mTLS pairs (mode tcp :$HTA_HTTP/:$HTA_BULK -> :$HTB_HTTP/:$HTB_BULK; mode http :$HHA_HTTP -> :$HHB_HTTP)"
start haproxy-tcp-b haproxy -db -f "$WORK/haproxy-mtls/tcp-b.cfg"
start haproxy-tcp-a haproxy -db -f "$WORK/haproxy-mtls/tcp-a.cfg"
start haproxy-http-b haproxy -db -f "$WORK/haproxy-mtls/http-b.cfg"
start haproxy-http-a haproxy -db -f "$WORK/haproxy-mtls/http-a.cfg"

# ---------------------------------------------------------------- Shoal pair
log "making Shoal certificates (shoal-pki) and configs"
H="$WORK/shoal"; mkdir -p "$H"
"$PKI" ca init --trust-domain bench.local --out "$H/ca" >"$WORK/logs/pki.log" 2>&1 || { cat "$WORK/logs/pki.log" >&2; die "shoal-pki ca init failed"; }
"$PKI" issue --ca "$H/ca" --node b --service http --service bulk --out "$H/b/tls" >>"$WORK/logs/pki.log" 2>&1 || { cat "$WORK/logs/pki.log" >&2; die "shoal-pki issue (b) failed"; }
"$PKI" issue --ca "$H/ca" --node a --out "$H/a/tls" >>"$WORK/logs/pki.log" 2>&1 || { cat "$WORK/logs/pki.log" >&2; die "shoal-pki issue (a) failed"; }
cat >"$H/b/node.toml" <<EOF
[node]
name = "b"
cluster = "bench"
listen = "127.0.0.1:$SHB_QUIC"
admin = "127.0.0.1:$SHB_ADMIN"
data_dir = "data"

[tls]
cert = "tls/node.crt"
key = "tls/node.key"
ca = "tls/ca.crt"

[[service]]
name = "http"
address = "127.0.0.1:$NGINX_PORT"
protocol = "http"

[[service]]
name = "bulk"
address = "127.0.0.1:$SINK_PORT"
protocol = "tcp"
EOF
cat >"$H/a/node.toml" <<EOF
[node]
name = "a"
cluster = "bench"
listen = "127.0.0.1:$SHA_QUIC"
admin = "127.0.0.1:$SHA_ADMIN"
data_dir = "data"
seeds = ["127.0.0.1:$SHB_QUIC"]

[tls]
cert = "tls/node.crt"
key = "tls/node.key"
ca = "tls/ca.crt"

[[listener]]
bind = "127.0.0.1:$SHA_HTTP"
service = "http"

[[listener]]
bind = "127.0.0.1:$SHA_BULK"
service = "bulk"

[[listener]]
name = "l7"
bind = "127.0.0.1:$SHA_L7"
protocol = "http"
service = "http"
EOF
for n in a b; do
    "$SHOAL" check --config "$H/$n/node.toml" >"$WORK/logs/check-$n.log" 2>&1 \
        || { cat "$WORK/logs/check-$n.log" >&2; die "shoal check rejected the config of node $n"; }
done
log "starting Shoal nodes (A: listeners :$SHA_HTTP/:$SHA_BULK, QUIC :$SHA_QUIC; B: QUIC :$SHB_QUIC)"
RUST_LOG=warn start shoal-b "$SHOAL" run --threads "$SHOAL_THREADS" --config "$H/b/node.toml"
RUST_LOG=warn start shoal-a "$SHOAL" run --threads "$SHOAL_THREADS" --config "$H/a/node.toml"

# ---------------------------------------------------------------- readiness
for port_name in "$HAB_HTTP haproxy-b" "$HAB_BULK haproxy-b" "$HAA_HTTP haproxy-a" "$HAA_BULK haproxy-a" \
                 "$STB_HTTP stunnel-b" "$STB_BULK stunnel-b" "$STA_HTTP stunnel-a" "$STA_BULK stunnel-a" \
                 "$HTB_HTTP haproxy-tcp-b" "$HTB_BULK haproxy-tcp-b" "$HTA_HTTP haproxy-tcp-a" "$HTA_BULK haproxy-tcp-a" \
                 "$HHB_HTTP haproxy-http-b" "$HHA_HTTP haproxy-http-a" "$HHA_H2 haproxy-http-a" "$NGINX_H2 nginx" \
                 "$SHB_ADMIN shoal-b" "$SHA_ADMIN shoal-a" "$SHA_HTTP shoal-a" "$SHA_BULK shoal-a" "$SHA_L7 shoal-a"; do
    set -- $port_name
    wait_listen "$1" "$2" 15
done
for n in nginx sink haproxy-a haproxy-b haproxy-tcp-a haproxy-tcp-b haproxy-http-a haproxy-http-b \
         stunnel-a stunnel-b shoal-a shoal-b; do
    v="PID_${n//-/_}"; check_alive "$n" "${!v}"
done
log "waiting until node A's /services shows http and bulk healthy"
python3 - "$SHA_ADMIN" <<'EOF' || die "Shoal node A never saw both services healthy (logs: $WORK/logs/shoal-a.log, shoal-b.log)"
import json, sys, time, urllib.request
url = "http://127.0.0.1:%s/services" % sys.argv[1]
deadline, last = time.time() + 30, None
while time.time() < deadline:
    try:
        last = json.load(urllib.request.urlopen(url, timeout=2))
        if all(any(e.get("health") == "healthy" for e in last.get(s, [])) for s in ("http", "bulk")):
            sys.exit(0)
    except OSError as e:
        last = str(e)
    time.sleep(0.2)
print("last /services answer: %s" % last, file=sys.stderr)
sys.exit(1)
EOF

# A request and a small bulk transfer through every setup before measuring.
for hp in "direct $NGINX_PORT $SINK_PORT" "haproxy $HAA_HTTP $HAA_BULK" "haproxy-mtls-tcp $HTA_HTTP $HTA_BULK" \
          "stunnel $STA_HTTP $STA_BULK" "shoal $SHA_HTTP $SHA_BULK"; do
    set -- $hp
    body="$(python3 -c "import urllib.request,sys; sys.stdout.write(urllib.request.urlopen('http://127.0.0.1:$2/', timeout=5).read().decode())" 2>&1)" \
        || die "setup $1: HTTP request through 127.0.0.1:$2 failed: $body"
    [ "$body" = "hello world" ] || die "setup $1: wrong body through 127.0.0.1:$2: $body"
    "$BULK" send "$3" 1048576 >/dev/null || die "setup $1: 1 MiB bulk test through 127.0.0.1:$3 failed"
done
for hp in "haproxy-mtls-http $HHA_HTTP" "shoal-http $SHA_L7"; do
    set -- $hp
    body="$(python3 -c "import urllib.request,sys; sys.stdout.write(urllib.request.urlopen('http://127.0.0.1:$2/', timeout=5).read().decode())" 2>&1)" \
        || die "setup $1: HTTP request through 127.0.0.1:$2 failed: $body"
    [ "$body" = "hello world" ] || die "setup $1: wrong body through 127.0.0.1:$2: $body"
done
for hp in "direct $NGINX_H2" "haproxy-mtls-http $HHA_H2" "shoal-http $SHA_L7"; do
    set -- $hp
    out="$(h2load -n 4 -c 1 "http://127.0.0.1:$2/" 2>&1)" || die "setup $1: h2load through 127.0.0.1:$2 failed: $out"
    grep -q "4 succeeded" <<<"$out" || die "setup $1: HTTP/2 (h2c) requests through 127.0.0.1:$2 failed: $(grep -E 'requests:|status codes' <<<"$out")"
done
log "all seven setups answer (and three over HTTP/2); measuring"

# ---------------------------------------------------------------- versions, then measure
RESULTS="$HERE/results"
mkdir -p "$RESULTS"
STAMP="$(date +%Y-%m-%d-%H%M%S)"
[ "$QUICK" = 1 ] && STAMP="$STAMP-quick"
cat >"$WORK/bench.json" <<EOF
{
  "stamp": "$STAMP",
  "quick": $([ "$QUICK" = 1 ] && echo true || echo false),
  "rounds": $ROUNDS, "duration": $DURATION, "warmup": $WARMUP, "bulk_bytes": $BULK_BYTES,
  "nginx_keepalive_requests": $KEEPALIVE_REQUESTS,
  "git_status": $(cd "$REPO" && git status --porcelain 2>/dev/null | python3 -c 'import json,sys; print(json.dumps(sys.stdin.read().splitlines()))'),
  "disturbed_core_fraction": $DISTURBED_CORE_FRACTION, "quiet_wait": $QUIET_WAIT,
  "shoal_admin": {"shoal-a": $SHA_ADMIN, "shoal-b": $SHB_ADMIN},
  "bulk": "$BULK", "wrk": "$(command -v wrk)", "h2load": "$(command -v h2load)",
  "json_out": $([ -n "$JSON_OUT" ] && python3 -c 'import json,sys; print(json.dumps(sys.argv[1]))' "$JSON_OUT" || echo null),
  "root_pid": $$,
  "results_dir": "$RESULTS",
  "repo": "$REPO",
  "binary": {"shoal": "$SHOAL_BIN", "mtime": "$(date -u -r "$SHOAL_BIN" +%FT%TZ)", "sha256": "$(sha256sum "$SHOAL" | cut -c1-16)"},
  "versions": {
    "haproxy": $(haproxy -v 2>&1 | head -1 | python3 -c 'import json,sys; print(json.dumps(sys.stdin.read().strip()))'),
    "stunnel": $("$STUNNEL" -version 2>&1 | grep -m1 '^stunnel' | python3 -c 'import json,sys; print(json.dumps(sys.stdin.read().strip()))'),
    "openssl (stunnel)": $("$STUNNEL" -version 2>&1 | grep -m1 'Running' | python3 -c 'import json,sys; print(json.dumps(sys.stdin.read().strip()))'),
    "nginx": $(nginx -v 2>&1 | python3 -c 'import json,sys; print(json.dumps(sys.stdin.read().strip()))'),
    "wrk": $(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2 | python3 -c 'import json,sys; print(json.dumps(sys.stdin.read().strip()))'),
    "shoal": $("$SHOAL" --version 2>&1 | python3 -c 'import json,sys; print(json.dumps(sys.stdin.read().strip()))'),
    "git": $(cd "$REPO" && { git describe --always --dirty 2>/dev/null || echo unknown; } | python3 -c 'import json,sys; print(json.dumps(sys.stdin.read().strip()))')
  },
  "setups": [
    {"name": "direct", "what": "client -> backend", "http_port": $NGINX_PORT, "h2_port": $NGINX_H2, "bulk_port": $SINK_PORT, "proxies": {}},
    {"name": "haproxy pair", "what": "client -> haproxy A -> haproxy B -> backend (mode tcp, plaintext)",
     "http_port": $HAA_HTTP, "bulk_port": $HAA_BULK, "proxies": {"haproxy-a": $PID_haproxy_a, "haproxy-b": $PID_haproxy_b}},
    {"name": "haproxy mTLS tcp", "what": "client -> haproxy A -> TLS 1.3 mTLS -> haproxy B -> backend (mode tcp)",
     "http_port": $HTA_HTTP, "bulk_port": $HTA_BULK, "proxies": {"haproxy-tcp-a": $PID_haproxy_tcp_a, "haproxy-tcp-b": $PID_haproxy_tcp_b}},
    {"name": "haproxy mTLS http", "what": "client -> haproxy A -> TLS 1.3 mTLS, pooled -> haproxy B -> backend (mode http on both)",
     "http_port": $HHA_HTTP, "h2_port": $HHA_H2, "bulk_port": null, "proxies": {"haproxy-http-a": $PID_haproxy_http_a, "haproxy-http-b": $PID_haproxy_http_b}},
    {"name": "stunnel pair", "what": "client -> stunnel A -> TLS 1.3 mTLS -> stunnel B -> backend",
     "http_port": $STA_HTTP, "bulk_port": $STA_BULK, "proxies": {"stunnel-a": $PID_stunnel_a, "stunnel-b": $PID_stunnel_b}},
    {"name": "shoal", "what": "client -> listener on node A -> mTLS QUIC -> node B -> backend",
     "http_port": $SHA_HTTP, "bulk_port": $SHA_BULK, "proxies": {"shoal-a": $PID_shoal_a, "shoal-b": $PID_shoal_b}},
    {"name": "shoal http", "what": "client -> HTTP listener on node A (parses, routes, one QUIC stream per request) -> node B -> backend",
     "http_port": $SHA_L7, "h2_port": $SHA_L7, "bulk_port": null, "proxies": {"shoal-a": $PID_shoal_a, "shoal-b": $PID_shoal_b}}
  ],
  "backends": {"nginx": $PID_nginx, "sink": $PID_sink},
  "logs": "$WORK/logs"
}
EOF
# In the background and waited for, so that a TERM or INT to this script is handled at
# once (the trap stops measure.py, which stops its current client, then everything else).
DATAPLANE_COMMAND="sim/bench/dataplane.sh${ARGS:+ $ARGS}" python3 "$HERE/measure.py" "$WORK/bench.json" &
PIDS+=($!)
wait $! || MEASURE_RC=$?

# Anything the proxies logged at warn or above is worth a look.
for n in shoal-a shoal-b haproxy-a haproxy-b haproxy-tcp-a haproxy-tcp-b haproxy-http-a haproxy-http-b; do
    if [ -s "$WORK/logs/$n.log" ]; then
        log "$n logged $(wc -l <"$WORK/logs/$n.log") line(s); last ones:"
        tail -5 "$WORK/logs/$n.log" | sed 's/^/    /' >&2
    fi
done
for n in a b; do
    if [ -s "$S/$n.log" ]; then
        log "stunnel-$n logged $(wc -l <"$S/$n.log") line(s); last ones:"
        tail -5 "$S/$n.log" | sed 's/^/    /' >&2
    fi
done
exit "$MEASURE_RC"
