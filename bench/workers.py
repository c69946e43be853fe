#!/usr/bin/python3
"""bench/workers.py: the relay with 1 and with N workers on the same CPUs (issue #11).

For each worker count it starts the relay and the load generator on the same CPU set
(the relay's workers pinned one per CPU by the relay itself, the generator's threads
free to run on those CPUs), runs a closed-loop capacity scenario, and reports:

  - relay CPU-seconds per million relayed frames (utime+stime of the relay process
    over the measured window, divided by phone->binary + binary->phone frames): the
    figure that says whether more workers cost more per frame;
  - frames per second (generator-side);
  - connections per second through upgrade (and, with N workers, handoff): the
    generator's connect phase, binaries + phones / connect_s;
  - the relay's cross-worker messages (handoffs) against the frames relayed.

Every figure is from this run on this machine; compare the rows with each other, not
with another run (the machines are shared). Usage:

    /usr/bin/python3 bench/workers.py                     # 100x4 and 1000x1, 64 B, workers 1 and 2
    /usr/bin/python3 bench/workers.py --cpus 0,1 --workers 1,2 --topo 100x4 --rounds 3

Builds nothing: `make` first (build/gcc). Every child is killed on exit.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as benchrun  # noqa: E402  (the harness: Child, proc_cpu_s, ports, cleanup)

REPO = benchrun.REPO


def scrape_handoffs(port: int) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return sum(float(m.group(1)) for m in
               re.finditer(r'^pyrycode_relay_worker_handoffs_sent_total\{[^}]*\} (\S+)$', text, re.M))


def one(args, workers: int, binaries: int, phones: int, port: int, mport: int) -> dict:
    cpus = args.cpus
    relay = benchrun.Child("relay", ["taskset", "-c", cpus, str(benchrun.RUN_UNPRIVILEGED), str(args.relay),
                                     "--insecure-listen", f"127.0.0.1:{port}",
                                     f"--metrics-listen=127.0.0.1:{mport}", "--workers", str(workers),
                                     "--max-connections", "30000", "--max-connections-per-ip", "0",
                                     "--rate-limit-burst", "0",
                                     "--grace-period", "0"],
                           None, stdout=open(os.devnull, "w"), stderr=open(os.devnull, "w"))
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1).read()
                break
            except OSError:
                if time.monotonic() > deadline or not relay.alive():
                    raise RuntimeError("relay did not come up")
                time.sleep(0.05)
        threads = min(args.threads or workers, binaries)
        lg = ["taskset", "-c", cpus, str(args.loadgen), "--quiet", "--url", f"ws://127.0.0.1:{port}",
              "--binaries", str(binaries), "--phones", str(phones), "--size", str(args.size),
              "--src-ips", "4", "--warmup", "1", "--duration", str(args.duration), "--drain", "1",
              "--connect-timeout", "30", "--threads", str(threads)]
        handoffs0 = scrape_handoffs(mport)
        cpu0 = benchrun.proc_cpu_s(relay.pid)
        t0 = time.monotonic()
        out = benchrun.subprocess.run(lg, capture_output=True, text=True, timeout=args.duration + 60)
        wall = time.monotonic() - t0
        cpu1 = benchrun.proc_cpu_s(relay.pid)
        handoffs1 = scrape_handoffs(mport)
        res = json.loads(out.stdout.strip().splitlines()[-1])
        frames = res["frames_p2b"] + res["frames_b2p"]
        # the generator's whole run (connect, warm-up, window, drain) against the frames of
        # its window: an upper bound that the same shape inflates equally for every row
        return {
            "workers": workers, "topology": f"{binaries}x{phones}", "threads": threads, "ok": res["ok"],
            "frames_per_s": res["frames_p2b_per_s"] + res["frames_b2p_per_s"],
            "relay_cpu_s": cpu1 - cpu0, "wall_s": wall,
            "cpu_s_per_mframe": (cpu1 - cpu0) / frames * 1e6 if frames else None,
            "connections_per_s": res["connections"] / res["connect_s"] if res["connect_s"] else None,
            "handoffs": handoffs1 - handoffs0, "frames": frames,
            "command_relay": relay.command(), "command_loadgen": " ".join(lg),
        }
    finally:
        relay.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build", default=str(REPO / "build" / "gcc"))
    ap.add_argument("--relay")
    ap.add_argument("--loadgen")
    ap.add_argument("--cpus", default="0,1", help="CPU list for the relay and the generator (taskset)")
    ap.add_argument("--workers", default="1,2", help="worker counts to compare")
    ap.add_argument("--threads", type=int, default=0, help="generator threads (default: as many as workers)")
    ap.add_argument("--topo", default="100x4,1000x1")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--duration", type=float, default=4.0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--json", help="write the rows here")
    args = ap.parse_args()
    args.relay = args.relay or str(Path(args.build) / "pyrycode-relay")
    args.loadgen = args.loadgen or str(Path(args.build) / "loadgen")
    rows = []
    port = benchrun.PORT_BASE + 500
    try:
        for r in range(args.rounds):
            for topo in args.topo.split(","):
                b, p = (int(x) for x in topo.split("x"))
                for w in (int(x) for x in args.workers.split(",")):
                    port += 2
                    row = one(args, w, b, p, port, port + 1)
                    row["round"] = r + 1
                    rows.append(row)
                    print(f"round {r + 1} {row['topology']:>7} workers {w}: {row['frames_per_s'] / 1e3:7.1f}k frames/s, "
                          f"{row['cpu_s_per_mframe']:.2f} relay cpu-s/Mframe, "
                          f"{row['connections_per_s']:.0f} conn/s, {row['handoffs']:.0f} handoffs "
                          f"for {row['frames']} frames, ok={row['ok']}", flush=True)
    finally:
        benchrun.kill_all_children()
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
