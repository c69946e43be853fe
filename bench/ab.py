#!/usr/bin/python3
"""bench/ab.py: two relay builds on the same `make bench` scenarios, alternating.

    /usr/bin/python3 bench/ab.py --old /tmp/before17/build/gcc/pyrycode-relay \\
        --only '^relay/1000x1/64B/capacity$' --rounds 3 [--json out.json]

For each round and each scenario the new build (BUILD/pyrycode-relay) and the old one
run back to back (bench/run.py --only, one scenario at a time, the order swapped every
round), so that a slow stretch of a shared machine falls on both. Prints each pair and,
per scenario, the median over rounds of frames/s new/old and CPU per frame old/new:
above 1 is better for the new build. An open-loop scenario runs at 50% or 90% of the
capacity each build measured itself, as in `make bench`; its capacity scenario is run
first, each round, for each build.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run_one(build: str, relay: str, pattern: str) -> dict:
    """bench/run.py for the scenarios matching pattern; {name: (frames/s, cpu, p99)}."""
    with tempfile.TemporaryDirectory() as out:
        subprocess.run([sys.executable, str(REPO / "bench" / "run.py"), "--build", build, "--relay", relay,
                        "--only", pattern, "--out", out], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       timeout=900)
        files = list(Path(out).glob("*.json"))
        if not files:
            return {}
        d = json.loads(files[0].read_text())
    res = {}
    for s in d.get("scenarios", []):
        if s.get("status") != "ok" or not s.get("derived"):
            continue
        dv = s["derived"]
        if s.get("mode") == "handshakes":
            res[s["name"]] = (dv.get("handshakes_per_s"), 1e6 / dv["handshakes_per_server_cpu_s"]
                              if dv.get("handshakes_per_server_cpu_s") else None,
                              (s.get("loadgen") or {}).get("hs_lat_p99_us"))
        else:
            res[s["name"]] = (dv.get("frames_per_s"), dv.get("server_cpu_s_per_mframe"),
                              (s.get("loadgen") or {}).get("lat_p99_us"))
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--old", required=True, help="the relay binary to compare against")
    ap.add_argument("--build", default=str(REPO / "build" / "gcc"), help="the new build (and loadgen, rawfwd)")
    ap.add_argument("--only", required=True, help="regex over scenario names, as bench/run.py --only")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", help="write the rows here")
    args = ap.parse_args()
    new = str(Path(args.build) / "pyrycode-relay")
    rows = []
    for r in range(args.rounds):
        order = [("new", new), ("old", args.old)]
        if r % 2:
            order.reverse()
        got = {label: run_one(args.build, binary, args.only) for label, binary in order}
        for name in sorted(set(got["new"]) & set(got["old"])):
            if not re.search(args.only, name):
                continue
            (fn, cn, pn), (fo, co, po) = got["new"][name], got["old"][name]
            row = {"round": r + 1, "scenario": name, "new": {"rate": fn, "cpu": cn, "p99_us": pn},
                   "old": {"rate": fo, "cpu": co, "p99_us": po}}
            rows.append(row)
            print(f"round {r + 1} {name:<28} rate {fn:>10.0f} / {fo:>10.0f}  cpu {cn or 0:6.2f} / {co or 0:6.2f}"
                  f"  p99 {pn or 0:8.0f} / {po or 0:8.0f} us", flush=True)
    print()
    for name in sorted({r["scenario"] for r in rows}):
        rs = [r for r in rows if r["scenario"] == name]
        rate = statistics.median(r["new"]["rate"] / r["old"]["rate"] for r in rs if r["old"]["rate"])
        cpus = [r["old"]["cpu"] / r["new"]["cpu"] for r in rs if r["new"]["cpu"] and r["old"]["cpu"]]
        cpu = statistics.median(cpus) if cpus else float("nan")
        print(f"{name:<28} median over {len(rs)} rounds: rate new/old {rate:.2f}, cpu per frame old/new {cpu:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
