#!/usr/bin/env bash
# Gossip and memory at scale: runs the simulator (in-process nodes) at several mesh
# sizes and tabulates time to full membership, time for a health change to reach
# every node, time for a killed node to leave every routing table, false deaths in
# a steady period, gossip bytes per node per second and process memory, and what
# a quiet mesh costs (gossip bytes and process CPU per node per second, measured
# over a period in which nothing changes and the simulator does not poll).
#
#   sim/bench/gossip.sh [--sizes "10 100 250 500 1000"] [--interval 250ms]
#                       [--steady 60s] [--quiet 30s] [--timeout 180s]
#
# Stops at the first size that does not converge within --timeout and says so.
# Needs the release simulator: cargo build --release -p shoal-sim
set -euo pipefail
cd "$(dirname "$0")/../.."

SIZES="10 100 250 500 1000"
INTERVAL="250ms"
STEADY="60s"
QUIET="30s"
TIMEOUT="180s"
while [ $# -gt 0 ]; do
    case "$1" in
        --sizes) SIZES="$2"; shift 2 ;;
        --interval) INTERVAL="$2"; shift 2 ;;
        --steady) STEADY="$2"; shift 2 ;;
        --quiet) QUIET="$2"; shift 2 ;;
        --timeout) TIMEOUT="$2"; shift 2 ;;
        -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
        *) echo "gossip.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

SIM=target/release/shoal-sim
if [ ! -x "$SIM" ]; then
    echo "gossip.sh: $SIM is missing; build it first: cargo build --release -p shoal-sim" >&2
    exit 2
fi
STAMP=$(date -u +%Y-%m-%d-%H%M%S)
OUT=sim/bench/results
mkdir -p "$OUT"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

for n in $SIZES; do
    hosts=$(python3 -c "print(', '.join(f'\"n{i}\"' for i in range(1, min($n, 10) + 1)))")
    victim="n$(( n / 2 > 1 ? n / 2 : 2 ))"
    cat > "$WORK/n$n.toml" <<TOML
name = "gossip-$n"
description = "$n nodes, gossip every $INTERVAL"
seed = $n
[mesh]
nodes = $n
zones = ["zone-a", "zone-b", "zone-c"]
seeds = 3
gossip_interval = "$INTERVAL"
[[mesh.service]]
name = "echo"
on = [$hosts]
[[step]]
action = "wait"
until = "converged"
timeout = "$TIMEOUT"
[[step]]
action = "steady"
for = "$STEADY"
[[step]]
action = "quiet"
for = "$QUIET"
[[step]]
action = "health"
service = "echo"
node = "n1"
healthy = false
[[step]]
action = "wait"
for = "10s"
[[step]]
action = "kill"
node = "$victim"
[[step]]
action = "wait"
for = "15s"
TOML
    echo "== $n nodes ($INTERVAL)" >&2
    if ! "$SIM" run "$WORK/n$n.toml" --quiet --json "$WORK/n$n.json" > "$WORK/n$n.txt" 2>&1; then
        tail -5 "$WORK/n$n.txt" >&2
    fi
    cp "$WORK/n$n.txt" "$OUT/gossip-$STAMP-n$n.txt"
    [ -f "$WORK/n$n.json" ] && cp "$WORK/n$n.json" "$OUT/gossip-$STAMP-n$n.json"
    if ! grep -q "converged" "$WORK/n$n.txt" || grep -q "did not become converged" "$WORK/n$n.txt"; then
        echo "stopping: $n nodes did not converge within $TIMEOUT (see $OUT/gossip-$STAMP-n$n.txt)" >&2
        break
    fi
done

python3 - "$OUT" "$STAMP" "$INTERVAL" <<'PY'
import json, sys, glob, os, re
out, stamp, interval = sys.argv[1:4]
rows = []
for path in sorted(glob.glob(f"{out}/gossip-{stamp}-n*.json"), key=lambda p: int(re.search(r"-n(\d+)\.json$", p).group(1))):
    r = json.load(open(path))
    def t(event, what):
        for x in r["timings"]:
            if x["event"].startswith(event) and x["what"].startswith(what):
                return x["after_s"]
        return None
    fmt = lambda v: "—" if v is None else f"{v:.2f} s"
    conv = t("wait (", "converged")
    own, every = t("echo@n1", "seen by its own node"), t("echo@n1", "seen by every node")
    prop = None if own is None or every is None else every - own
    killed = next((x["after_s"] for x in r["timings"] if x["event"].startswith("killed")), None)
    q = r.get("quiet") or {}
    qbytes = "—" if not q else f"{q['gossip_bytes_per_node_per_s']/1000:.2f} KB/s"
    qcpu = "—" if q.get("cpu_ms_per_node_per_s") is None else f"{q['cpu_ms_per_node_per_s']:.2f} ms/s"
    conns = f"{r.get('max_connections_per_node', '—')} ({r.get('max_connections_node') or '—'}) / {q.get('max_connections_per_node', '—')}"
    rows.append(f"| {r['nodes']} | {fmt(conv)} | {fmt(every)} ({fmt(prop)} after its node) | {fmt(killed)} | {r['false_deaths']} | {r['gossip_bytes_per_node_per_s']/1000:.1f} KB/s | {qbytes} | {qcpu} | {conns} | {r['rss_mib']:.0f} MiB | {'passed' if not r['errors'] else 'FAILED: ' + '; '.join(r['errors'])} |")
table = ["| nodes | full membership | health change everywhere | killed node gone everywhere | false deaths (steady) | gossip / node (run) | quiet: gossip / node | quiet: CPU / node | gossip connections per node, most: run (node) / quiet | memory (process) | run |", "|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|"] + rows
text = f"# Gossip at scale {stamp}\n\nCommand: `sim/bench/gossip.sh` (in-process nodes, gossip every {interval}).\n\n" + "\n".join(table) + "\n"
open(f"{out}/gossip-{stamp}.md", "w").write(text)
print(text)
PY
