#!/usr/bin/python3
"""bench/compare.py: two `make bench` result files side by side, scenario by scenario.

    /usr/bin/python3 bench/compare.py NEW.json OLD.json [--markdown]

For every scenario in both files: frames/s, the server's CPU-seconds per million frames
and the p99 round trip of each, and the ratios (frames/s new/old: above 1 is faster;
CPU per frame old/new: above 1 is cheaper). Handshake scenarios compare handshakes/s
and handshakes per server CPU-second, idle ones the bytes per connection. Both files
should come from the same session on the same machine (bench/run.py --relay runs the
list against another build): the ratios are the result, not the absolute figures.
"""

from __future__ import annotations

import argparse
import json
import sys


def load(path: str) -> dict:
    with open(path) as f:
        d = json.load(f)
    return {s["name"]: s for s in d.get("scenarios", [])}


def figures(s: dict) -> dict | None:
    """The scenario's comparable figures, or None when it did not run cleanly."""
    if s.get("status") not in ("ok", "errors"):
        return None
    d, lg = s.get("derived") or {}, s.get("loadgen") or {}
    if s.get("mode") == "handshakes":
        return {"kind": "handshakes", "rate": lg.get("handshakes_per_s"),
                "per_cpu": d.get("handshakes_per_server_cpu_s"), "p99": lg.get("hs_lat_p99_us")}
    if s.get("mode") == "idle":
        return {"kind": "idle", "bytes": (s.get("memory") or {}).get("user_bytes_per_connection")}
    return {"kind": "frames", "rate": d.get("frames_per_s"), "cpu": d.get("server_cpu_s_per_mframe"),
            "p99": lg.get("lat_p99_us"), "status": s.get("status")}


def ratio(a, b) -> str:
    return f"{a / b:.2f}" if a and b else "-"


def fmt(v, digits=2) -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and v >= 1000:
        return f"{v / 1000:.1f}k"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("new")
    ap.add_argument("old")
    ap.add_argument("--markdown", action="store_true", help="a docs/benchmarks.md table")
    args = ap.parse_args()
    new, old = load(args.new), load(args.old)
    rows = []
    for name in new:
        if name not in old:
            continue
        a, b = figures(new[name]), figures(old[name])
        if a is None or b is None:
            rows.append((name, "not comparable", f"{new[name].get('status')} / {old[name].get('status')}"))
            continue
        if a["kind"] == "frames":
            rows.append((name, f"{fmt(a['rate'])} / {fmt(b['rate'])}", ratio(a["rate"], b["rate"]),
                         f"{fmt(a['cpu'])} / {fmt(b['cpu'])}", ratio(b["cpu"], a["cpu"]),
                         f"{fmt(a['p99'], 0)} / {fmt(b['p99'], 0)}"))
        elif a["kind"] == "handshakes":
            rows.append((name, f"{fmt(a['rate'])} / {fmt(b['rate'])} handshakes/s", ratio(a["rate"], b["rate"]),
                         f"{fmt(a['per_cpu'], 0)} / {fmt(b['per_cpu'], 0)} per cpu-s",
                         ratio(a["per_cpu"], b["per_cpu"]), f"{fmt(a['p99'], 0)} / {fmt(b['p99'], 0)}"))
        else:
            rows.append((name, f"{fmt(a['bytes'], 0)} / {fmt(b['bytes'], 0)} B/conn", ratio(b["bytes"], a["bytes"])))
    head = ("scenario", "frames/s new / old", "new/old", "CPU-s/M frames new / old", "old/new", "p99 us new / old")
    if args.markdown:
        print("| " + " | ".join(head) + " |")
        print("|---|" + "---:|" * (len(head) - 1))
        for r in rows:
            cells = list(r[1:]) + [""] * (len(head) - len(r))
            print("| `" + r[0] + "` | " + " | ".join(cells) + " |")
    else:
        print("  ".join(f"{h:<26}" for h in head))
        for r in rows:
            print("  ".join(f"{c:<26}" for c in r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
