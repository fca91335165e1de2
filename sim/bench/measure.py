#!/usr/bin/env python3
"""Measurement half of sim/bench/dataplane.sh (which sets everything up and calls this).

    measure.py BENCH.json
    measure.py --render RESULT.json     (re-make RESULT.md from the raw numbers)

BENCH.json (written by dataplane.sh) names the setups, their ports and proxy PIDs, the
backend PIDs, the rounds, durations and bulk size. For every round and every setup, in
order, this runs:

  HTTP: wrk warm-up (not counted), then `wrk -t1 -c16 -dD --latency`;
  bulk: one connection carrying BULK bytes in 256 KiB writes to the counting sink.

Around each measured phase it samples /proc: utime+stime of every proxy process, of
the backend, of the client (getrusage of the child), the machine totals from /proc/stat,
and the CPU of every process this benchmark started (the process tree under
dataplane.sh). "other CPU" = machine user+nice+system time minus that tree: CPU used
by processes that are not part of the benchmark. A phase where it exceeds
disturbed_core_fraction of one core is "disturbed": shown, but left out of the medians
when the same setup has at least one undisturbed phase of that kind.

Writes the tables to stdout and results_dir/dataplane-STAMP.md, raw numbers to
results_dir/dataplane-STAMP.json.
"""
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import time
import urllib.request

CLK = os.sysconf("SC_CLK_TCK")
GIB = 2**30
MIN_DISTURBANCE_S = 0.05


# ------------------------------------------------------------------ /proc sampling
def proc_stat_fields(pid):
    with open("/proc/%d/stat" % pid) as f:
        s = f.read()
    # The command name may contain spaces and parentheses: split after the last ')'.
    rest = s[s.rindex(")") + 2:].split()
    return rest  # rest[0] is field 3 (state)


def pid_cpu(pid):
    """utime+stime of a process (all its threads, live and exited), seconds."""
    try:
        r = proc_stat_fields(pid)
    except (OSError, ValueError):
        return None
    return (int(r[11]) + int(r[12])) / CLK  # fields 14, 15


def all_procs():
    """pid -> (ppid, utime+stime+cutime+cstime seconds, comm)."""
    out = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                s = f.read()
        except OSError:
            continue
        comm = s[s.index("(") + 1:s.rindex(")")]
        r = s[s.rindex(")") + 2:].split()
        out[int(d)] = (int(r[1]), (int(r[11]) + int(r[12]) + int(r[13]) + int(r[14])) / CLK, comm)
    return out


def tree_cpu(root, outside=None):
    """CPU of root and all its descendants, including reaped children (cutime/cstime).
    If `outside` is a dict, fill it with pid -> (comm, cpu) of every other process."""
    procs = all_procs()
    children = {}
    for pid, (ppid, _, _) in procs.items():
        children.setdefault(ppid, []).append(pid)
    total, stack, seen = 0.0, [root], set()
    while stack:
        p = stack.pop()
        if p in seen or p not in procs:
            continue
        seen.add(p)
        total += procs[p][1]
        stack.extend(children.get(p, []))
    if outside is not None:
        for pid, (_, cpu, comm) in procs.items():
            if pid not in seen:
                outside[pid] = (comm, cpu)
    return total


def machine_cpu():
    """Seconds of user+nice+system, irq+softirq, steal, idle+iowait over all CPUs."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = v[:8]
    return {
        "task": (user + nice + system) / CLK,
        "irq": (irq + softirq) / CLK,
        "steal": steal / CLK,
        "idle": (idle + iowait) / CLK,
    }


def udp_counters():
    try:
        with open("/proc/net/snmp") as f:
            lines = [l.split() for l in f if l.startswith("Udp:")]
        d = dict(zip(lines[0][1:], (int(x) for x in lines[1][1:])))
        return {k: d.get(k, 0) for k in ("InErrors", "RcvbufErrors", "SndbufErrors")}
    except (OSError, IndexError):
        return {}


class Phase:
    """CPU accounting around one measured phase."""

    def __init__(self, cfg, setup):
        self.cfg, self.setup = cfg, setup
        self.backend_pids = list(cfg["backends"].values())

    def backend_cpu(self):
        total = 0.0
        procs = all_procs()
        # nginx: the master and its worker(s).
        for pid in self.backend_pids:
            if pid in procs:
                total += pid_cpu(pid) or 0.0
                total += sum(pid_cpu(c) or 0.0 for c, (pp, _, _) in procs.items() if pp == pid)
        return total

    def sample(self):
        outside = {}
        return {
            "t": time.perf_counter(),
            "proxies": {n: pid_cpu(p) for n, p in self.setup["proxies"].items()},
            "backend": self.backend_cpu(),
            "tree": tree_cpu(self.cfg["root_pid"], outside),
            "outside": outside,
            "machine": machine_cpu(),
            "udp": udp_counters(),
        }

    def __enter__(self):
        self.s0 = self.sample()
        return self

    def finish(self, client_cpu):
        s0, s1 = self.s0, self.sample()
        wall = s1["t"] - s0["t"]
        dead = [n for n, v in s1["proxies"].items() if v is None]
        proxies = {n: round(s1["proxies"][n] - s0["proxies"][n], 3)
                   for n in s1["proxies"] if n not in dead and s0["proxies"][n] is not None}
        m0, m1 = s0["machine"], s1["machine"]
        tree = s1["tree"] - s0["tree"]
        # Process times include the softirq work done in their context (they follow the
        # scheduler's runtime), while /proc/stat books it as softirq: compare like with like.
        other = (m1["task"] - m0["task"]) + (m1["irq"] - m0["irq"]) - tree
        # Who else ran (by name), for the record.
        busy = {}
        for pid, (comm, cpu) in s1["outside"].items():
            d = cpu - s0["outside"].get(pid, (comm, 0.0))[1]
            if d > 0:
                busy[comm] = busy.get(comm, 0.0) + d
        top = sorted(busy.items(), key=lambda kv: -kv[1])[:3]
        res = {
            "wall_s": round(wall, 3),
            "proxy_cpu_s": round(sum(proxies.values()), 3),
            "proxy_cpu_by_process_s": proxies,
            "backend_cpu_s": round(s1["backend"] - s0["backend"], 3),
            "client_cpu_s": round(client_cpu, 3),
            "bench_tree_cpu_s": round(tree, 3),
            "other_cpu_s": round(other, 3),
            "other_core_fraction": round(max(other, 0.0) / wall, 3) if wall > 0 else 0.0,
            "irq_softirq_s": round(m1["irq"] - m0["irq"], 3),
            "steal_s": round(m1["steal"] - m0["steal"], 3),
            "idle_s": round(m1["idle"] - m0["idle"], 3),
            "udp_errors": {k: s1["udp"].get(k, 0) - s0["udp"].get(k, 0) for k in s1["udp"]},
            "other_top": {k: round(v, 2) for k, v in top},
        }
        # Tick-granular counters make ~0.05 s of noise: short phases need an absolute floor.
        res["disturbed"] = (res["other_core_fraction"] > self.cfg["disturbed_core_fraction"]
                            and other > MIN_DISTURBANCE_S)
        if dead:
            res["dead_proxies"] = dead
        return res

    def __exit__(self, *a):
        return False


def wait_quiet(cfg, max_wait):
    """Wait (up to max_wait s) for a 1 s window in which other processes use less than
    the disturbance threshold. Returns the seconds waited."""
    t0 = time.time()
    while True:
        m0, tr0 = machine_cpu(), tree_cpu(cfg["root_pid"])
        time.sleep(1.0)
        m1, tr1 = machine_cpu(), tree_cpu(cfg["root_pid"])
        other = (m1["task"] - m0["task"]) + (m1["irq"] - m0["irq"]) - (tr1 - tr0)
        if other < cfg["disturbed_core_fraction"] or time.time() - t0 >= max_wait:
            return round(time.time() - t0 - 1.0, 1)


# ------------------------------------------------------------------ clients
CURRENT_CHILD = None


def on_term(signum, frame):
    """Stop the running client too (dataplane.sh's cleanup sends TERM)."""
    if CURRENT_CHILD is not None and CURRENT_CHILD.poll() is None:
        CURRENT_CHILD.kill()
    sys.exit(128 + signum)


def run_child(argv, timeout):
    """Run a client to its end; return (rc, stdout, stderr). Its CPU shows in
    RUSAGE_CHILDREN once reaped (see children_cpu)."""
    global CURRENT_CHILD
    p = CURRENT_CHILD = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        so, se = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        so, se = p.communicate()
        se += "\n[killed after %s s: timeout]" % timeout
    # communicate() reaped it; its rusage is in our RUSAGE_CHILDREN. Take the difference.
    return p.returncode, so, se


def children_cpu():
    import resource
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


UNITS = {"us": 1.0, "ms": 1e3, "s": 1e6, "m": 60e6, "h": 3600e6}


def parse_time_us(s):
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", s.strip())
    return float(m.group(1)) * UNITS[m.group(2)] if m else None


def parse_wrk(text):
    r = {}
    m = re.search(r"^Requests/sec:\s+([\d.]+)", text, re.M)
    r["rps"] = float(m.group(1)) if m else None
    m = re.search(r"^\s*(\d+) requests in ([\d.]+\w+),", text, re.M)
    r["requests"] = int(m.group(1)) if m else None
    r["wrk_duration_s"] = parse_time_us(m.group(2)) / 1e6 if m else None
    lat = {}
    for pct, val in re.findall(r"^\s+(50|75|90|99)%\s+(\S+)", text, re.M):
        lat["p" + pct + "_us"] = parse_time_us(val)
    r.update(lat)
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    r["socket_errors"] = dict(zip(("connect", "read", "write", "timeout"), map(int, m.groups()))) if m else {}
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    r["non_2xx"] = int(m.group(1)) if m else 0
    return r


def http_phase(cfg, setup):
    url = "http://127.0.0.1:%d/" % setup["http_port"]
    wrk = cfg["wrk"]
    if cfg["warmup"] > 0:
        rc, so, se = run_child([wrk, "-t1", "-c16", "-d%ds" % cfg["warmup"], url], cfg["warmup"] + 30)
    d = cfg["duration"]
    with Phase(cfg, setup) as ph:
        c0 = children_cpu()
        rc, so, se = run_child([wrk, "-t1", "-c16", "-d%ds" % d, "--latency", url], d + 60)
        client = children_cpu() - c0
        res = ph.finish(client)
    res.update(parse_wrk(so))
    res["wrk_rc"] = rc
    if rc != 0 or res["rps"] is None:
        res["error"] = ("wrk exit %s: %s" % (rc, (se or so).strip()[-300:]))
    if res.get("requests"):
        res["proxy_ms_per_1k_req"] = round(res["proxy_cpu_s"] * 1e3 / (res["requests"] / 1e3), 3)
    return res


def parse_h2load(text):
    """h2load's summary: req/s, requests that succeeded, mean time per request."""
    r = {}
    m = re.search(r"^finished in [\d.]+\w+, ([\d.]+) req/s", text, re.M)
    r["rps"] = float(m.group(1)) if m else None
    m = re.search(r"^requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed, (\d+) errored", text, re.M)
    if m:
        r["requests"], r["failed"], r["errored"] = (int(x) for x in m.groups())
    m = re.search(r"^time for request:\s+(\S+)\s+(\S+)\s+(\S+)", text, re.M)
    r["mean_us"] = parse_time_us(m.group(3)) if m else None
    return r


def h2_phase(cfg, setup):
    """HTTP/2 (h2c, prior knowledge): h2load, 16 connections, 10 streams each."""
    url = "http://127.0.0.1:%d/" % setup["h2_port"]
    d = cfg["duration"]
    argv = [cfg["h2load"], "-c16", "-m10", "-t1", "-D%d" % d, "--warm-up-time=%d" % cfg["warmup"], url]
    with Phase(cfg, setup) as ph:
        c0 = children_cpu()
        rc, so, se = run_child(argv, d + cfg["warmup"] + 60)
        client = children_cpu() - c0
        res = ph.finish(client)
    res.update(parse_h2load(so))
    res["h2load_rc"] = rc
    if rc != 0 or not res.get("rps") or not res.get("requests") or res.get("failed") or res.get("errored"):
        res["error"] = "h2load exit %s: %s" % (rc, (se or so).strip()[-300:])
    elif res.get("requests"):
        res["proxy_ms_per_1k_req"] = round(res["proxy_cpu_s"] * 1e3 / (res["requests"] / 1e3), 3)
    return res


def bulk_phase(cfg, setup):
    n = cfg["bulk_bytes"]
    timeout = 30 + n / 20e6
    with Phase(cfg, setup) as ph:
        c0 = children_cpu()
        rc, so, se = run_child([cfg["bulk"], "send", str(setup["bulk_port"]), str(n)], timeout)
        client = children_cpu() - c0
        res = ph.finish(client)
    try:
        res.update(json.loads(so.strip().splitlines()[-1]))
    except (ValueError, IndexError):
        pass
    res["bulk_rc"] = rc
    if rc != 0 or not res.get("ok"):
        res["error"] = "bulk sender exit %s, confirmed %s of %d bytes: %s" % (
            rc, res.get("confirmed"), n, se.strip()[-300:])
        res.pop("mb_per_s", None)
    else:
        res["proxy_s_per_gib"] = round(res["proxy_cpu_s"] / (n / GIB), 4)
    if res.get("sink_reads"):
        res["sink_mean_read_bytes"] = round(res["confirmed"] / res["sink_reads"])
    return res


# ------------------------------------------------------------------ summary
def median_of(rows, key):
    vals = [r[key] for r in rows if r.get(key) is not None and not r.get("error")]
    return statistics.median(vals) if vals else None


def usable(rows):
    """Undisturbed phases if any, else all; and whether the fallback was used."""
    good = [r for r in rows if not r.get("error")]
    calm = [r for r in good if not r["disturbed"]]
    return (calm, False) if calm else (good, bool(good))


def fmt(v, nd=0, suffix=""):
    if v is None:
        return "—"
    return ("{:,.%df}" % nd).format(v) + suffix


def ratio(a, b, nd=2):
    return None if a is None or not b else a / b


def us(v):
    if v is None:
        return "—"
    return "%.0f µs" % v if v < 10000 else "%.1f ms" % (v / 1e3)


def summarize(cfg, raw):
    summary = {}
    for s in cfg["setups"]:
        name = s["name"]
        h_rows, h_fallback = usable([r["http"] for r in raw if r["setup"] == name])
        b_rows, b_fallback = usable([r["bulk"] for r in raw if r["setup"] == name and not r["bulk"].get("skipped")])
        summary[name] = {
            "rps": median_of(h_rows, "rps"),
            "p50_us": median_of(h_rows, "p50_us"),
            "p99_us": median_of(h_rows, "p99_us"),
            "proxy_ms_per_1k_req": median_of(h_rows, "proxy_ms_per_1k_req"),
            "mb_per_s": median_of(b_rows, "mb_per_s"),
            "h2_rps": median_of(usable([r["h2"] for r in raw if r["setup"] == name and "h2" in r])[0], "rps"),
            "h2_mean_us": median_of(usable([r["h2"] for r in raw if r["setup"] == name and "h2" in r])[0], "mean_us"),
            "h2_proxy_ms_per_1k_req": median_of(
                usable([r["h2"] for r in raw if r["setup"] == name and "h2" in r])[0], "proxy_ms_per_1k_req"),
            "proxy_s_per_gib": median_of(b_rows, "proxy_s_per_gib"),
            "http_rounds_used": len(h_rows), "bulk_rounds_used": len(b_rows),
            "http_only_disturbed": h_fallback, "bulk_only_disturbed": b_fallback,
        }
    d = summary["direct"]
    for name, m in summary.items():
        m["rps_x_direct"] = ratio(m["rps"], d["rps"])
        m["p99_x_direct"] = ratio(m["p99_us"], d["p99_us"])
        m["bulk_x_direct"] = ratio(m["mb_per_s"], d["mb_per_s"])
    return summary


def per_setup(cfg, summary):
    """One object per setup (the `--json FILE` of dataplane.sh): medians, null where
    not measured (no proxy: no CPU; no bulk port: no bulk)."""
    def rnd(v, nd):
        return None if v is None else round(v, nd)
    out = []
    for s in cfg["setups"]:
        m = summary[s["name"]]
        proxied = bool(s["proxies"])
        out.append({
            "setup": s["name"],
            "rps": rnd(m["rps"], 1),
            "p50_ms": rnd(None if m["p50_us"] is None else m["p50_us"] / 1e3, 3),
            "p99_ms": rnd(None if m["p99_us"] is None else m["p99_us"] / 1e3, 3),
            "cpu_ms_per_1k": rnd(m["proxy_ms_per_1k_req"], 2) if proxied else None,
            "bulk_mib_s": rnd(None if m["mb_per_s"] is None else m["mb_per_s"] * 1e6 / 2**20, 1),
            "cpu_s_per_gib": rnd(m["proxy_s_per_gib"], 3) if proxied else None,
            "h2_rps": rnd(m.get("h2_rps"), 1),
            "h2_mean_ms": rnd(None if m.get("h2_mean_us") is None else m["h2_mean_us"] / 1e3, 3),
            "h2_cpu_ms_per_1k": rnd(m.get("h2_proxy_ms_per_1k_req"), 2) if proxied else None,
        })
    return out


GOALS = [  # design.md §9, for the Shoal row
    ("HTTP req/s ×direct", "rps_x_direct", ">=", 0.25, "stunnel pair 0.14, ztunnel 0.20"),
    ("p99 latency ×direct", "p99_x_direct", "<=", 6.0, "stunnel 7.7, ztunnel 11"),
    ("bulk ×direct", "bulk_x_direct", ">=", 0.30, "ztunnel 0.27, stunnel 0.29"),
    ("proxy CPU per 1k requests (ms)", "proxy_ms_per_1k_req", "<=", 25.0, "ztunnel 29.7, stunnel 54.3"),
]


SHOAL_COUNTERS = re.compile(
    r"^shoal_(quic_connections|listener_connections_total|listener_closed|upstream_|inbound_streams_total|"
    r"inbound_refusals|outlier|health_checks_total|members\{state=\"dead|.*(error|fail|refus|reset|drop|eject|timeout))")


def shoal_counters(metrics):
    out = {}
    for node, lines in metrics.items():
        out[node] = [l for l in lines if "_bucket{" not in l and "_sum{" not in l and SHOAL_COUNTERS.search(l)
                     and l.split()[-1] not in ("0", "0.0")]
    return out


def render(cfg, machine, raw, summary, shoal_metrics=None):
    L = []
    q = " (QUICK smoke run: figures are not meaningful)" if cfg["quick"] else ""
    L.append("# Data-plane benchmark %s%s" % (cfg["stamp"], q))
    L.append("")
    L.append("Command: `%s`" % cfg.get("command", "sim/bench/dataplane.sh"))
    L.append("")
    L.append("Rounds: %d; HTTP: `wrk -t1 -c16 -d%ds --latency` after a %d s warm-up; bulk: %s bytes (%.3g GiB) "
             "over one connection in 256 KiB writes; nginx keepalive_requests %s; disturbed = other processes used "
             "more than %.0f%% of one core during the phase." % (
                 cfg["rounds"], cfg["duration"], cfg["warmup"], format(cfg["bulk_bytes"], ","),
                 cfg["bulk_bytes"] / GIB, cfg.get("nginx_keepalive_requests"), cfg["disturbed_core_fraction"] * 100))
    L.append("")
    L.append("## Machine")
    L.append("")
    for k, v in machine.items():
        L.append("- %s: %s" % (k, v))
    L.append("")
    L.append("## Medians")
    L.append("")
    L.append("| setup | req/s | req/s ×direct | p50 | p99 | p99 ×direct | bulk MB/s | bulk ×direct | "
             "proxy CPU ms / 1k req | proxy CPU s / GiB | rounds used (HTTP/bulk) |")
    L.append("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
    for s in cfg["setups"]:
        m = summary[s["name"]]
        mark = lambda flag: "*" if flag else ""
        L.append("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %d%s / %d%s |" % (
            s["name"], fmt(m["rps"]), fmt(m["rps_x_direct"], 2), us(m["p50_us"]), us(m["p99_us"]),
            fmt(m["p99_x_direct"], 1), fmt(m["mb_per_s"]), fmt(m["bulk_x_direct"], 2),
            "—" if not s["proxies"] else fmt(m["proxy_ms_per_1k_req"], 1),
            "—" if not s["proxies"] else fmt(m["proxy_s_per_gib"], 2),
            m["http_rounds_used"], mark(m["http_only_disturbed"]),
            m["bulk_rounds_used"], mark(m["bulk_only_disturbed"])))
    if any(m["http_only_disturbed"] or m["bulk_only_disturbed"] for m in summary.values()):
        L.append("")
        L.append("\\* every round of this kind was disturbed; the median is over disturbed rounds.")
    L.append("")
    L.append("Setups: " + "; ".join("**%s**: %s" % (s["name"], s["what"]) for s in cfg["setups"]) + ".")
    L.append("")
    h2 = [s for s in cfg["setups"] if summary[s["name"]].get("h2_rps") is not None]
    if h2:
        d = summary.get("direct", {}).get("h2_rps")
        L.append("## HTTP/2 (h2c, prior knowledge)")
        L.append("")
        L.append("`h2load -c16 -m10 -t1 -D%ds --warm-up-time=%ds` (16 connections, 10 concurrent streams each); "
                 "the proxies speak HTTP/1.1 to nginx. h2load gives no percentiles: the mean time per request." % (
                     cfg["duration"], cfg["warmup"]))
        L.append("")
        L.append("| setup | req/s | req/s ×direct | mean | proxy CPU ms / 1k req |")
        L.append("|---|--:|--:|--:|--:|")
        for s in h2:
            m = summary[s["name"]]
            L.append("| %s | %s | %s | %s | %s |" % (
                s["name"], fmt(m["h2_rps"]), fmt(ratio(m["h2_rps"], d), 2), us(m.get("h2_mean_us")),
                "—" if not s["proxies"] else fmt(m.get("h2_proxy_ms_per_1k_req"), 1)))
        L.append("")
    sh = summary.get("shoal")
    if sh:
        L.append("## Shoal against the goals (design.md §9)")
        L.append("")
        L.append("| figure | Shoal | goal | met | stunnel pair, this run | haproxy pair, this run | peers in design.md |")
        L.append("|---|--:|--:|---|--:|--:|---|")
        for label, key, op, goal, peers in GOALS:
            v = sh.get(key)
            met = "—" if v is None else ("yes" if (v >= goal if op == ">=" else v <= goal) else "no")
            L.append("| %s | %s | %s %s | %s | %s | %s | %s |" % (
                label, fmt(v, 2), op.replace(">=", "≥").replace("<=", "≤"), goal, met,
                fmt(summary.get("stunnel pair", {}).get(key), 2), fmt(summary.get("haproxy pair", {}).get(key), 2),
                peers))
        L.append("")
        L.append("The goals were set against the peer figures in design.md; compare with the peers as measured "
                 "in this same run too.")
        L.append("")
    L.append("## Per round")
    L.append("")
    L.append("HTTP phase: other = CPU of processes outside the benchmark, as a fraction of one core; "
             "D = disturbed (left out of the medians).")
    L.append("")
    L.append("| round | setup | req/s | p50 | p99 | errors | proxy CPU s | ms / 1k req | wrk CPU s | nginx CPU s "
             "| irq+softirq s | other | |")
    L.append("|--:|---|--:|--:|--:|---|--:|--:|--:|--:|--:|--:|---|")
    for r in raw:
        h = r["http"]
        errs = sum(h.get("socket_errors", {}).values()) + h.get("non_2xx", 0)
        err_txt = ("%d" % errs) if not h.get("error") else "FAILED"
        L.append("| %d | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %.2f | %s |" % (
            r["round"], r["setup"], fmt(h.get("rps")), us(h.get("p50_us")), us(h.get("p99_us")), err_txt,
            fmt(h["proxy_cpu_s"], 2), fmt(h.get("proxy_ms_per_1k_req"), 1), fmt(h["client_cpu_s"], 2),
            fmt(h["backend_cpu_s"], 2), fmt(h["irq_softirq_s"], 2), h["other_core_fraction"],
            "D" if h["disturbed"] else ""))
    L.append("")
    L.append("Bulk phase: sink read = mean bytes per read() at the sink (how finely the last hop delivers).")
    L.append("")
    L.append("| round | setup | bulk MB/s | seconds | confirmed bytes | proxy CPU s | s / GiB | sender CPU s "
             "| sink CPU s | sink read | irq+softirq s | UDP drops | other | |")
    L.append("|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|")
    for r in raw:
        b = r["bulk"]
        if b.get("skipped"):
            continue
        udp = b.get("udp_errors", {})
        rd = b.get("sink_mean_read_bytes")
        L.append("| %d | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %.2f | %s |" % (
            r["round"], r["setup"], fmt(b.get("mb_per_s")) if not b.get("error") else "FAILED",
            fmt(b.get("seconds"), 3), fmt(b.get("confirmed")), fmt(b["proxy_cpu_s"], 2),
            fmt(b.get("proxy_s_per_gib"), 3), fmt(b["client_cpu_s"], 2), fmt(b["backend_cpu_s"], 2),
            "—" if not rd else "%.1f KiB" % (rd / 1024),
            fmt(b["irq_softirq_s"], 2), udp.get("RcvbufErrors", 0) + udp.get("SndbufErrors", 0),
            b["other_core_fraction"], "D" if b["disturbed"] else ""))
    errors = [(r["round"], r["setup"], k, r[k]["error"]) for r in raw for k in ("http", "bulk") if r[k].get("error")]
    problems = []
    for r in raw:
        for k in ("http", "bulk"):
            x = r[k]
            e = sum(x.get("socket_errors", {}).values()) + x.get("non_2xx", 0)
            if e:
                problems.append("round %d, %s, HTTP: wrk counted %d errors %s, %d non-2xx" % (
                    r["round"], r["setup"], e, x.get("socket_errors"), x.get("non_2xx", 0)))
            if x.get("dead_proxies"):
                problems.append("round %d, %s, %s: proxy process(es) gone: %s" % (r["round"], r["setup"], k, x["dead_proxies"]))
            u = x.get("udp_errors", {})
            if any(u.values()):
                problems.append("round %d, %s, %s: UDP counters moved: %s" % (r["round"], r["setup"], k, u))
    for r in raw:
        for k in ("http", "bulk"):
            x = r[k]
            if x["disturbed"]:
                problems.append("round %d, %s, %s: disturbed, other processes used %.2f of a core (%s)" % (
                    r["round"], r["setup"], k, x["other_core_fraction"],
                    ", ".join("%s %.2f s" % kv for kv in x.get("other_top", {}).items()) or "no process named"))
    if errors or problems:
        L.append("")
        L.append("## Problems seen")
        L.append("")
        for rd, setup, k, e in errors:
            L.append("- round %d, %s, %s: %s" % (rd, setup, k, e))
        for p in problems:
            L.append("- " + p)
    if shoal_metrics:
        L.append("")
        L.append("## Shoal counters at the end of the run")
        L.append("")
        L.append("```text")
        for node, lines in shoal_counters(shoal_metrics).items():
            for l in lines:
                L.append("%s  %s" % (node, l))
        L.append("```")
    L.append("")
    return "\n".join(L)


def machine_info(cfg):
    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info = {
        "nproc": os.cpu_count(),
        "CPU": model,
        "kernel": platform.release(),
    }
    info.update(cfg["versions"])
    info["shoal binary"] = "%s (built %s, sha256 %s…)" % (cfg["binary"]["shoal"], cfg["binary"]["mtime"],
                                                        cfg["binary"]["sha256"])
    dirty = cfg.get("git_status") or []
    if dirty:
        info["working tree"] = "%d uncommitted path(s) (listed in the JSON); the binary may include some of them" % len(dirty)
    return info


def rerender(path):
    """measure.py --render RESULT.json: rewrite RESULT.md from the raw numbers."""
    d = json.load(open(path))
    md = render(d["config"], d["machine"], d["rounds"], summarize(d["config"], d["rounds"]),
                d.get("shoal_metrics_at_end"))
    with open(path[:-len(".json")] + ".md", "w") as f:
        f.write(md)
    print(md)


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--render":
        return rerender(sys.argv[2])
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    cfg = json.load(open(sys.argv[1]))
    cfg["command"] = os.environ.get("DATAPLANE_COMMAND", "sim/bench/dataplane.sh")
    machine = machine_info(cfg)
    print("machine:", file=sys.stderr)
    for k, v in machine.items():
        print("  %-18s %s" % (k + ":", v), file=sys.stderr)
    raw = []
    quiet_wait = cfg.get("quiet_wait", 0)
    for rnd in range(1, cfg["rounds"] + 1):
        for s in cfg["setups"]:
            waited = wait_quiet(cfg, quiet_wait) if quiet_wait > 0 else 0
            h = http_phase(cfg, s)
            # A setup without a bulk port (the HTTP listener) has no bulk phase.
            b = bulk_phase(cfg, s) if s.get("bulk_port") else {
                "skipped": True, "other_core_fraction": 0.0, "disturbed": False}
            row = {"round": rnd, "setup": s["name"], "waited_for_quiet_s": waited, "http": h, "bulk": b}
            if s.get("h2_port"):
                row["h2"] = h2_phase(cfg, s)
                print("[round %d/%d] %-17s HTTP/2: %9s req/s  mean %8s  proxy %5s ms/1k%s" % (
                    rnd, cfg["rounds"], s["name"], fmt(row["h2"].get("rps")), us(row["h2"].get("mean_us")),
                    fmt(row["h2"].get("proxy_ms_per_1k_req"), 1),
                    "  ERROR: %s" % row["h2"]["error"] if row["h2"].get("error") else ""),
                      file=sys.stderr, flush=True)
            raw.append(row)
            print("[round %d/%d] %-17s %9s req/s  p50 %8s  p99 %8s  proxy %5s ms/1k  other %.2f%s | "
                  "bulk %7s MB/s  proxy %5s s/GiB  other %.2f%s%s" % (
                      rnd, cfg["rounds"], s["name"], fmt(h.get("rps")), us(h.get("p50_us")), us(h.get("p99_us")),
                      fmt(h.get("proxy_ms_per_1k_req"), 1), h["other_core_fraction"], " D" if h["disturbed"] else "",
                      fmt(b.get("mb_per_s")), fmt(b.get("proxy_s_per_gib"), 2), b["other_core_fraction"],
                      " D" if b["disturbed"] else "",
                      "".join("  ERROR(%s): %s" % (k, x["error"]) for k, x in (("http", h), ("bulk", b)) if x.get("error"))),
                  file=sys.stderr, flush=True)
    summary = summarize(cfg, raw)
    extra = {}
    shoal_admin = cfg.get("shoal_admin")
    if shoal_admin:
        for node, port in shoal_admin.items():
            try:
                text = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=3).read().decode()
                extra[node] = [l for l in text.splitlines() if l and not l.startswith("#")]
            except OSError as e:
                extra[node] = ["metrics unavailable: %s" % e]
    md = render(cfg, machine, raw, summary, extra)
    os.makedirs(cfg["results_dir"], exist_ok=True)
    base = os.path.join(cfg["results_dir"], "dataplane-%s" % cfg["stamp"])
    with open(base + ".md", "w") as f:
        f.write(md)
    with open(base + ".json", "w") as f:
        json.dump({"config": {k: v for k, v in cfg.items() if k not in ("root_pid",)}, "machine": machine,
                   "summary": summary, "rounds": raw, "shoal_metrics_at_end": extra}, f, indent=1)
    print(md)
    print("results: %s.md and %s.json" % (base, base), file=sys.stderr)
    if cfg.get("json_out"):
        with open(cfg["json_out"], "w") as f:
            json.dump(per_setup(cfg, summary), f, indent=1)
        print("per-setup figures: %s" % cfg["json_out"], file=sys.stderr)
    failed = [r for r in raw for k in ("http", "bulk", "h2") if r.get(k, {}).get("error")]
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
