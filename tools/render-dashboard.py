#!/usr/bin/python3
"""Render the Grafana dashboard's queries from a real run into a PNG.

Grafana is not in Debian, so this is not a Grafana screenshot: it runs what the
dashboard runs. It starts a relay in certificate-files mode (2 workers), a real
Prometheus scraping its /metrics every second, and a short scripted load (tools/loadgen:
phones and binaries over wss, a TLS handshake churn, and a trickle of refused upgrades),
then evaluates every panel's PromQL expressions of deploy/grafana/pyrycode-relay.json
over that window through Prometheus' query_range API ($__rate_interval as 4 scrapes,
$instance as every instance) and draws each panel where the dashboard's grid puts it.

    tools/deps.sh docs     # python3-matplotlib, prometheus, openssl
    make CC=gcc all tools
    RELAY_RUN_UID=65534 tools/render-dashboard.py --out docs/img/dashboard.png

Takes about 90 seconds. Everything it starts listens on 127.0.0.1 and is stopped at
the end; the relay runs unprivileged through tools/run-unprivileged.sh.
"""

import argparse
import json
import math
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SCRAPE_S = 1
RATE_INTERVAL = f"{4 * SCRAPE_S}s"
STEP_S = 1


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_http(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1).read()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"render-dashboard: {url} did not answer within {timeout}s")


def refused_upgrades(port: int, stop: threading.Event, taken_id: str) -> None:
    """A trickle of upgrades the relay refuses: missing headers, a phone for a server-id
    nobody serves, a second binary for a server-id in use."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    kinds = [
        ("/v1/server", {"X-Pyrycode-Version": "1", "User-Agent": "dash"}),
        ("/v1/client", {"X-Pyrycode-Server": "nobody-serves-this", "X-Pyrycode-Token": "t", "User-Agent": "dash"}),
        ("/v1/server", {"X-Pyrycode-Server": taken_id, "X-Pyrycode-Version": "1", "User-Agent": "dash"}),
    ]
    i = 0
    while not stop.is_set():
        path, headers = kinds[i % len(kinds)]
        i += 1
        try:
            with ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=5)) as s:
                req = (f"GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                       "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                       + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n")
                s.sendall(req.encode())
                s.recv(4096)
        except OSError:
            pass
        stop.wait(0.05)


def run_load(args, port: int, log) -> None:
    lg = [str(args.loadgen), "--url", f"wss://127.0.0.1:{port}", "--insecure", "--quiet", "--mode", "open",
          "--warmup", "1", "--drain", "1"]
    phases = [
        ("idle", 6, []),
        ("20 binaries x 4 phones, 2000 frames/s", 0, lg + ["--binaries", "20", "--phones", "4", "--rate", "2000",
                                                          "--duration", "20", "--server-prefix", "dash-a-"]),
        ("60 binaries x 4 phones, 4000 frames/s + TLS handshake churn + refused upgrades", 0,
         lg + ["--binaries", "60", "--phones", "4", "--rate", "4000", "--duration", "20",
               "--server-prefix", "dash-b-", "--threads", "2"]),
        ("idle", 8, []),
    ]
    for name, idle_s, cmd in phases:
        print(f"render-dashboard: {name}", file=sys.stderr)
        if not cmd:
            time.sleep(idle_s)
            continue
        extra = []
        stop = threading.Event()
        if "dash-b-" in cmd:
            churn = [str(args.loadgen), "--url", f"wss://127.0.0.1:{port}", "--insecure", "--quiet",
                     "--mode", "handshakes", "--binaries", "4", "--warmup", "1", "--duration", "15"]
            extra.append(subprocess.Popen(churn, stdout=subprocess.DEVNULL, stderr=log))
            t = threading.Thread(target=refused_upgrades, args=(port, stop, "dash-b-0"), daemon=True)
            t.start()
        rc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=log).returncode
        stop.set()
        for p in extra:
            p.wait(60)
        if rc != 0:
            print(f"render-dashboard: loadgen exited {rc} in phase {name!r} (see the log)", file=sys.stderr)


def query_range(prom: str, expr: str, start: float, end: float) -> list:
    q = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": STEP_S})
    with urllib.request.urlopen(f"{prom}/api/v1/query_range?{q}", timeout=30) as r:
        body = json.load(r)
    if body.get("status") != "success":
        raise SystemExit(f"render-dashboard: query failed: {expr}: {body}")
    return body["data"]["result"]


def legend(fmt: str, metric: dict) -> str:
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: metric.get(m.group(1), ""), fmt) or json.dumps(metric)


UNITS = {  # Grafana unit -> (divisor, axis label)
    "ops": (1, "per second"), "reqps": (1, "per second"), "s": (1e-3, "milliseconds"),
    "Bps": (2 ** 20, "MiB/s"), "bytes": (2 ** 20, "MiB"), "d": (1, "days"), "short": (1, ""),
}


def render(dash: dict, prom: str, start: float, end: float, out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.gridspec import GridSpec

    panels = dash["panels"]
    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
    fig = plt.figure(figsize=(16, rows * 0.42 + 1.2), dpi=100)
    gs = GridSpec(rows, 24, figure=fig, hspace=3.6, wspace=2.5, top=1 - 0.9 / (rows * 0.42 + 1.2), bottom=0.03,
                  left=0.05, right=0.98)
    fig.suptitle("pyrycode-relay dashboard (deploy/grafana/pyrycode-relay.json): its queries over a real run of about a minute, "
                 "drawn with matplotlib; not a Grafana screenshot", fontsize=12)
    for p in panels:
        g = p["gridPos"]
        ax = fig.add_subplot(gs[g["y"]:g["y"] + g["h"], g["x"]:g["x"] + g["w"]])
        unit = p.get("fieldConfig", {}).get("defaults", {}).get("unit", "short")
        div, label = UNITS.get(unit, (1, unit))
        n = zeros = 0
        top = 0.0
        for t in p["targets"]:
            expr = t["expr"].replace("$__rate_interval", RATE_INTERVAL).replace("$instance", ".*")
            for series in query_range(prom, expr, start, end):
                xs = [float(v[0]) - start for v in series["values"]]
                ys = [float(v[1]) / div for v in series["values"]]  # NaN: no data at that step
                finite = [y for y in ys if math.isfinite(y)]
                if not any(finite):
                    zeros += 1  # Grafana draws these flat at 0; here they would only crowd the legend
                    continue
                top = max(top, max(finite))
                ax.plot(xs, ys, linewidth=1.2, label=legend(t.get("legendFormat", ""), series["metric"]))
                n += 1
        ax.set_title(p["title"] + (f"  ({zeros} series at 0 not drawn)" if zeros else ""), fontsize=10)
        ax.set_xlim(0, end - start)
        if g["y"] + g["h"] == rows:
            ax.set_xlabel("seconds into the run", fontsize=8)
        if label:
            ax.set_ylabel(label, fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
        if n:
            ax.legend(fontsize=7, loc="upper left", ncol=2 if n > 4 else 1)
        else:
            ax.text(0.5, 0.5, "no data (nothing of this kind happened)", ha="center", va="center",
                    transform=ax.transAxes, fontsize=9, color="gray")
        ax.set_ylim(0, top * 1.15 if top > 0 else 1)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    print(f"render-dashboard: wrote {out}", file=sys.stderr)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--relay-bin", default=REPO / "build/gcc/pyrycode-relay", type=Path)
    ap.add_argument("--loadgen", default=REPO / "build/gcc/loadgen", type=Path)
    ap.add_argument("--dashboard", default=REPO / "deploy/grafana/pyrycode-relay.json", type=Path)
    ap.add_argument("--out", default=REPO / "docs/img/dashboard.png", type=Path)
    ap.add_argument("--workers", default="2")
    args = ap.parse_args()
    dash = json.loads(args.dashboard.read_text())
    for tool in (args.relay_bin, args.loadgen):
        if not os.access(tool, os.X_OK):
            raise SystemExit(f"render-dashboard: {tool} missing; fix: make CC=gcc all tools")

    procs = []
    with tempfile.TemporaryDirectory(prefix="pyrelay-dash-") as tmp:
        os.chmod(tmp, 0o755)
        cert, key = f"{tmp}/cert.pem", f"{tmp}/key.pem"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                        "-days", "30", "-subj", "/CN=localhost", "-keyout", key, "-out", cert],
                       check=True, capture_output=True)
        os.chmod(key, 0o644)
        port, mport, pport = free_port(), free_port(), free_port()
        log = open(f"{tmp}/run.log", "w")
        try:
            procs.append(subprocess.Popen(
                [str(REPO / "tools/run-unprivileged.sh"), str(args.relay_bin), "--https-listen", f"127.0.0.1:{port}",
                 "--tls-cert", cert, "--tls-key", key, "--metrics-listen", f"127.0.0.1:{mport}",
                 "--workers", args.workers, "--rate-limit-burst", "0", "--max-connections", "20000"],
                stdout=log, stderr=log))
            wait_http(f"http://127.0.0.1:{mport}/metrics", 10)
            Path(f"{tmp}/prometheus.yml").write_text(
                f"global:\n  scrape_interval: {SCRAPE_S}s\n  evaluation_interval: {SCRAPE_S}s\n"
                f"scrape_configs:\n  - job_name: pyrycode-relay\n    static_configs:\n"
                f"      - targets: ['127.0.0.1:{mport}']\n")
            procs.append(subprocess.Popen(
                ["prometheus", f"--config.file={tmp}/prometheus.yml", f"--storage.tsdb.path={tmp}/data",
                 f"--web.listen-address=127.0.0.1:{pport}"], stdout=log, stderr=log))
            prom = f"http://127.0.0.1:{pport}"
            wait_http(f"{prom}/-/ready", 30)
            start = time.time()
            run_load(args, port, log)
            end = time.time()
            time.sleep(2 * SCRAPE_S)  # the last scrape is in
            render(dash, prom, start, end, args.out)
        finally:
            for p in reversed(procs):
                p.send_signal(signal.SIGTERM)
            for p in procs:
                try:
                    p.wait(20)
                except subprocess.TimeoutExpired:
                    p.kill()
            log.close()


if __name__ == "__main__":
    main()
