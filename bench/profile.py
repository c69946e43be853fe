#!/usr/bin/python3
"""bench/profile.py: where a server's CPU goes at one load point, and the rawfwd floor (issue #17).

Starts the server (the relay with one worker, or tools/rawfwd with --raw traffic) pinned
to CPU 0 and the load generator pinned to CPU 1, lets the generator connect and warm up,
then samples the server with `perf record -e cpu-clock` (the VM has no hardware PMU) for
--record seconds while the generator runs. Reports, from that one run:

  - server CPU-seconds per million relayed frames over the recorded window
    (utime+stime from /proc, frames from the generator's counters);
  - the share of the server's samples in the kernel and in user space;
  - the kernel and user-space functions with the most samples (self time).

Every figure is from this run on this machine; compare rows of the same run.

    /usr/bin/python3 bench/profile.py --point 100x4:4096:closed
    /usr/bin/python3 bench/profile.py --point 100x4:64:open:5000 --server rawfwd
    /usr/bin/python3 bench/profile.py --point 1000x1:4096:open:1000 --relay /tmp/before17/build/gcc/pyrycode-relay

Needs perf (Debian: linux-perf). Builds nothing: `make` first (build/gcc).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as benchrun  # noqa: E402
from workers import server_argv  # noqa: E402

PERF_FREQ_HZ = 4999        # cpu-clock samples per second of the server's CPU time
WARMUP_S = 2.0             # generator connected and running before perf attaches
RECORD_S_DEFAULT = 6.0
TOP_FUNCTIONS = 12


def parse_point(s: str) -> dict:
    """TOPO:SIZE:MODE[:RATE], e.g. 100x4:4096:closed or 1000x1:4096:open:1000."""
    parts = s.split(":")
    if len(parts) not in (3, 4) or "x" not in parts[0] or parts[2] not in ("closed", "open"):
        raise argparse.ArgumentTypeError(f"bad point {s!r}: want TOPO:SIZE:closed or TOPO:SIZE:open:RATE")
    b, p = (int(x) for x in parts[0].split("x"))
    if parts[2] == "open" and len(parts) != 4:
        raise argparse.ArgumentTypeError("an open-loop point needs :RATE (frames/s over all phones)")
    return {"binaries": b, "phones": p, "size": int(parts[1]), "mode": parts[2],
            "rate": int(parts[3]) if len(parts) == 4 else None}


def wait_listening(port: int, srv: benchrun.Child, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not benchrun.listening(port):
        if time.monotonic() > deadline or not srv.alive():
            raise RuntimeError("server did not come up")
        time.sleep(0.05)


def frames_now(metrics_port: int) -> float:
    """Frames the relay forwarded so far (its own counter), or 0 when it has none."""
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    except OSError:
        return 0.0
    total = 0.0
    for line in text.splitlines():
        if line.startswith("pyrycode_relay_frames_forwarded_total"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def summarize(perf_data: Path) -> dict:
    """Samples by function (self), split kernel / user, from `perf report`."""
    out = subprocess.run(["perf", "report", "-i", str(perf_data), "--stdio", "--no-children",
                          "--sort", "sym", "--percent-limit", "0", "-F", "period,sym"],
                         capture_output=True, text=True, timeout=120).stdout
    kern, user = Counter(), Counter()
    for line in out.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split(None, 1)
        if len(fields) != 2 or not fields[0].isdigit():
            continue
        period, sym = int(fields[0]), fields[1]
        # "[k] name" kernel, "[.] name" user space
        if sym.startswith("[k]"):
            kern[sym[3:].strip()] += period
        else:
            user[sym[3:].strip() if sym.startswith("[.]") else sym] += period
    total = sum(kern.values()) + sum(user.values())
    if total == 0:
        return {"samples": 0}
    pct = lambda c: [(name, round(100.0 * v / total, 1)) for name, v in c.most_common(TOP_FUNCTIONS)]
    return {"samples_period_total": total, "kernel_pct": round(100.0 * sum(kern.values()) / total, 1),
            "user_pct": round(100.0 * sum(user.values()) / total, 1),
            "kernel_top": pct(kern), "user_top": pct(user)}


def profile(args, pt: dict) -> dict:
    port = benchrun.PORT_BASE + 900
    while not benchrun.port_free(port) or not benchrun.port_free(port + 1):
        port += 2
    mport = port + 1
    raw = args.server == "rawfwd"
    argv = server_argv(args.rawfwd if raw else args.relay, port, mport, ["--workers", "1", *args.relay_arg])
    srv = benchrun.Child("server", argv, 0, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_listening(port, srv)
        duration = WARMUP_S + args.record + 1.0
        lg = [args.loadgen, "--quiet", "--url", f"{'tcp' if raw else 'ws'}://127.0.0.1:{port}",
              "--binaries", str(pt["binaries"]), "--phones", str(pt["phones"]), "--size", str(pt["size"]),
              "--mode", pt["mode"], "--src-ips", "4", "--warmup", "0", "--drain", "1",
              "--connect-timeout", "30", "--duration", str(duration)]
        if pt["rate"]:
            lg += ["--rate", str(pt["rate"])]
        gen = subprocess.Popen(["taskset", "-c", "1", *lg], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
        # the generator prints "connected" progress on stderr; wait for its window to start
        # by watching the server's connection count settle, bounded
        time.sleep(WARMUP_S + (pt["binaries"] * (pt["phones"] + 1)) / 2000.0)
        with tempfile.TemporaryDirectory() as tmp:
            data = Path(tmp) / "perf.data"
            f0 = frames_now(mport) if not raw else 0.0
            cpu0 = benchrun.proc_cpu_s(srv.pid)
            perf = subprocess.run(["perf", "record", "-q", "-e", "cpu-clock", "-F", str(PERF_FREQ_HZ),
                                   "-p", str(srv.pid), "-o", str(data), "--", "sleep", str(args.record)],
                                  capture_output=True, text=True, timeout=args.record + 60)
            cpu1 = benchrun.proc_cpu_s(srv.pid)
            f1 = frames_now(mport) if not raw else 0.0
            if perf.returncode != 0:
                raise RuntimeError(f"perf record failed: {perf.stderr.strip()[-300:]}")
            summary = summarize(data)
        out, err = gen.communicate(timeout=duration + 90)
        res = json.loads(out.strip().splitlines()[-1])
        lg_frames = res["frames_p2b"] + res["frames_b2p"]
        # the relay counts what it forwarded in the window; rawfwd has no counter, so its
        # window's frames are the generator's rate over the recorded time
        if raw or f1 <= f0:
            rate = (res["frames_p2b_per_s"] + res["frames_b2p_per_s"])
            frames = rate * args.record
        else:
            frames = f1 - f0
        cpu = (cpu1 or 0) - (cpu0 or 0)
        return {"point": args.point_text, "server": args.server, "binary": args.rawfwd if raw else args.relay,
                "relay_args": [] if raw else args.relay_arg, "ok": res["ok"] and gen.returncode == 0,
                "frames_in_window": frames, "generator_frames": lg_frames, "cpu_s": round(cpu, 3),
                "cpu_s_per_mframe": round(cpu / frames * 1e6, 2) if frames > 0 else None,
                "p99_us": res.get("lat_p99_us"), **summary,
                "command_server": srv.command(), "command_loadgen": "taskset -c 1 " + " ".join(lg)}
    finally:
        srv.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--point", required=True, help="TOPO:SIZE:closed or TOPO:SIZE:open:RATE")
    ap.add_argument("--server", choices=("relay", "rawfwd"), default="relay")
    ap.add_argument("--build", default=str(benchrun.REPO / "build" / "gcc"))
    ap.add_argument("--relay")
    ap.add_argument("--relay-arg", action="append", default=[], help="extra relay flag (repeatable)")
    ap.add_argument("--record", type=float, default=RECORD_S_DEFAULT, help="seconds of perf sampling")
    ap.add_argument("--json", help="append the result here (one JSON object per line)")
    args = ap.parse_args()
    if shutil.which("perf") is None:
        print("perf not found (Debian: apt-get install linux-perf)", file=sys.stderr)
        return 2
    try:
        pt = parse_point(args.point)
    except argparse.ArgumentTypeError as e:
        ap.error(str(e))
    args.point_text = args.point
    args.relay = args.relay or str(Path(args.build) / "pyrycode-relay")
    args.rawfwd = str(Path(args.build) / "rawfwd")
    args.loadgen = str(Path(args.build) / "loadgen")
    try:
        r = profile(args, pt)
    finally:
        benchrun.kill_all_children()
    print(f"{r['point']} {r['server']} {' '.join(r['relay_args'])}: {r['cpu_s_per_mframe']} cpu-s/Mframe, "
          f"p99 {r['p99_us']} us, kernel {r.get('kernel_pct')}% user {r.get('user_pct')}%, ok={r['ok']}")
    for side in ("kernel_top", "user_top"):
        print(f"  {side.split('_')[0]}: " + ", ".join(f"{n} {p}%" for n, p in r.get(side, [])))
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps(r) + "\n")
    return 0 if r["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
