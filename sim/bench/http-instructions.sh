#!/usr/bin/env bash
# Instructions per HTTP request of each Shoal node, counted by callgrind: a
# figure that, unlike time on this shared machine, repeats to within ~1 % from
# run to run, so a change to the request path can be judged on its own.
#
#   sim/bench/http-instructions.sh WORKDIR [BINARY] [REQUESTS]
#
# WORKDIR is a temp dir that `sim/bench/dataplane.sh --keep` left (its nginx and
# its two Shoal nodes' configs are used); BINARY defaults to
# target/release/shoal, REQUESTS to 3000. Both nodes run under
# `valgrind --tool=callgrind`; after 500 warm-up requests the counters are
# zeroed, then h2load sends REQUESTS GETs over 16 HTTP/1.1 keep-alive
# connections to node A's `l7` listener, and the script prints each node's
# instructions divided by REQUESTS. Callgrind files are left in /tmp
# (`callgrind-http-{a,b}.out.*`) for `callgrind_annotate`.
#
# The count includes what a node does regardless of requests while they run.
# Its once-a-second dashboard sample costs about 4 million instructions, and
# whether one or two of them fall into the run depends on callgrind's speed, so
# the first figure printed leaves it out (sim/bench/callgrind_incl.py counts
# it); the second includes it.
set -euo pipefail
WORK=${1:?usage: http-instructions.sh WORKDIR [BINARY] [REQUESTS]}
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BIN=$(realpath "${2:-$REPO/target/release/shoal}")
N=${3:-3000}
for tool in valgrind callgrind_control h2load nginx curl python3; do
    command -v "$tool" >/dev/null || { echo "needs $tool (apt-get install valgrind nghttp2-client nginx curl)" >&2; exit 2; }
done
cd "$WORK"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    pkill -f "callgrind.*run --config node.toml" 2>/dev/null || true
}
trap cleanup EXIT
rm -f /tmp/callgrind-http-*.out*
# The kept config runs nginx in the foreground (`daemon off`).
nginx -e "$WORK/nginx/logs/error.log" -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" &
pids+=($!)
for node in b a; do
    (cd "shoal/$node" && RUST_LOG=warn exec valgrind --tool=callgrind \
        --callgrind-out-file="/tmp/callgrind-http-$node.out" \
        "$BIN" run --config node.toml >"/tmp/callgrind-http-$node.log" 2>&1) &
    pids+=($!)
done
port=$(grep -A3 'name = "l7"' shoal/a/node.toml | grep bind | sed 's/.*:\([0-9]*\)"/\1/')
url="http://127.0.0.1:$port/"
for _ in $(seq 1 120); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "$url")" = 200 ] && break
    sleep 1
done
h2load --h1 -n 500 -c 16 "$url" >/dev/null
callgrind_control -z >/dev/null 2>&1
h2load --h1 -n "$N" -c 16 "$url" | grep -E '^requests:'
callgrind_control -d >/dev/null 2>&1
sleep 1
for node in a b; do
    file=$(ls -t /tmp/callgrind-http-$node.out.* | head -1)
    total=$(grep -m1 '^summary:\|^totals:' "$file" | awk '{print $2}')
    sampler=$(python3 "$REPO/sim/bench/callgrind_incl.py" "$file" golden::sample_every)
    echo "node $node: $(((total - sampler) / N)) instructions per request without the once-a-second sample ($((total / N)) with it; $file)"
done
