"""Scale-out through the shipped files: deploy/haproxy/run-local.sh starts 3 relays
behind HAProxy with deploy/haproxy/pyrycode-relay-scaleout.cfg, and every client here
talks only to HAProxy.

- For 200 server-ids a binary and one phone connect, and a phone frame reaches the
  binary and the binary's answer reaches the phone: binary and phones always meet on
  the relay that owns their server-id (hash of X-Pyrycode-Server).
- One relay is stopped (SIGTERM, as systemctl stop does). Only its server-ids move:
  its binaries and phones are closed 1001, reconnect through HAProxy (with a bounded
  retry, as a client's reconnect loop does), claim again and register again on the
  relays left, and exchange frames there, all within --grace-period. Every other
  session stays open and keeps working, and new phones of those server-ids still
  reach their binary on the same relay.
- SIGTERM to run-local.sh stops everything it started (exit 0)."""

import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from relayctl import (OP_CLOSE, REPO_ROOT, ConnClosed, RawConn, barrier, client_headers, drain_to_close, free_port,
                      read_text, read_wrapped, route, server_headers, unique_id, wait_until)

RUN_LOCAL = REPO_ROOT / "deploy" / "haproxy" / "run-local.sh"
RELAYS = 3
SERVER_IDS = 200
GRACE_S = 10           # --grace-period for the relays: the recovery bound below
RECONNECT_TIMEOUT_S = 8.0   # a client's reconnect loop gives up after this
RECONNECT_BACKOFF_S = 0.1
READY_TIMEOUT_S = 40


class Cluster:
    """run-local.sh in the foreground, its "relay I pid ... log FILE" lines parsed."""

    def __init__(self, relay_bin: str, log_dir: Path, relay_args):
        self.port = free_port()
        self.log_dir = log_dir
        self.proc = subprocess.Popen(
            [str(RUN_LOCAL), "--relays", str(RELAYS), "--listen", f"127.0.0.1:{self.port}", "--relay-bin", relay_bin,
             "--log-dir", str(log_dir), "--", *relay_args],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines, self.err = [], []
        self.ready = threading.Event()
        threading.Thread(target=self._pump, daemon=True).start()
        threading.Thread(target=lambda: self.err.extend(self.proc.stderr), daemon=True).start()
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not self.ready.wait(0.1) and self.proc.poll() is None and time.monotonic() < deadline:
            pass
        if not self.ready.is_set():
            self.stop()
            pytest.fail(f"run-local.sh not ready in {READY_TIMEOUT_S}s:\n" + "".join(self.lines + self.err))
        self.relays = {}
        for line in self.lines:
            m = re.match(r"relay (\d+) pid (\d+) listen (\S+) metrics (\S+) log (\S+)", line)
            if m:
                self.relays[int(m[1])] = {"pid": int(m[2]), "listen": m[3], "log": Path(m[5])}
        assert len(self.relays) == RELAYS, self.lines

    def _pump(self):
        for line in self.proc.stdout:
            self.lines.append(line)
            if line.strip() == "ready":
                self.ready.set()

    def connect(self) -> RawConn:
        return RawConn("127.0.0.1", self.port, timeout=5)

    def claims(self):
        """server_id -> [relay index, ...] for every server_claimed line so far (by
        relay, not in time order)."""
        out = {}
        for i, r in self.relays.items():
            for line in r["log"].read_text(errors="replace").splitlines():
                m = re.search(r"msg=server_claimed .*?server_id=(\S+)", line)
                if m:
                    out.setdefault(m[1], []).append(i)
        return out

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode


@pytest.fixture
def cluster(relay_bin, tmp_path):
    args = ["--rate-limit-burst", "0", "--grace-period", f"{GRACE_S}s"]  # 600 upgrades from one address
    if os.environ.get("RELAY_WORKERS"):
        args += ["--workers", os.environ["RELAY_WORKERS"]]
    c = Cluster(relay_bin, tmp_path / "logs", args)
    yield c
    c.stop()


class Session:
    """A binary and its phones for one server-id, all through HAProxy."""

    def __init__(self, cluster: Cluster, sid: str):
        self.cluster, self.sid = cluster, sid
        self.binary = None
        self.phones = []  # (conn, conn_id or None until the first frame)
        self.n = 0

    def claim(self):
        b = self.cluster.connect()
        b.upgrade("/v1/server", server_headers(self.sid))
        barrier(b)  # the claim is made before the relay answers frames on the connection
        self.binary = b

    def add_phone(self):
        p = self.cluster.connect()
        p.upgrade("/v1/client", client_headers(self.sid))
        self.phones.append([p, None])
        return len(self.phones) - 1

    def exchange(self, k: int):
        """A frame from phone k to the binary and one back, byte-exact."""
        self.n += 1
        phone = self.phones[k]
        up = f'{{"sid":"{self.sid}","n":{self.n}}}'.encode()
        phone[0].send_text(up)
        cid, frame = read_wrapped(self.binary)
        assert frame == up, (self.sid, frame)
        assert phone[1] in (None, cid), f"{self.sid}: conn_id changed {phone[1]} -> {cid}"
        phone[1] = cid
        down = f'{{"back":{self.n}}}'.encode()
        route(self.binary, cid, down)
        assert read_text(phone[0]) == down

    def close(self):
        for c in [self.binary] + [p for p, _ in self.phones]:
            if c is not None:
                c.close()


def _closed_1001(conn: RawConn, timeout: float = 15.0):
    kind, code, reason, _ = drain_to_close(conn, timeout)
    assert kind == "close" and code == 1001, (kind, code, reason)
    conn.close()


def _retry(what, fn, timeout=RECONNECT_TIMEOUT_S):
    """A client's reconnect loop: try until it works or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return fn()
        except (OSError, ConnClosed, AssertionError, TimeoutError) as e:
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: not recovered within {timeout}s: {e!r}") from e
            time.sleep(RECONNECT_BACKOFF_S)


def _reconnect(s: Session):
    """Claim again and register the phone again, then exchange; a fresh Session state."""
    def attempt():
        s.close()
        s.binary, s.phones = None, []
        s.claim()
        s.add_phone()
        s.exchange(0)
    _retry(f"server-id {s.sid}", attempt)


def test_binaries_and_phones_meet_and_only_a_stopped_relays_ids_move(cluster):
    sessions = [Session(cluster, unique_id(f"scale{i}")) for i in range(SERVER_IDS)]
    try:
        for s in sessions:
            s.claim()
            s.add_phone()
            s.exchange(0)

        owner = {}
        claims = cluster.claims()
        for s in sessions:
            assert len(claims.get(s.sid, [])) == 1, f"{s.sid} claimed on relays {claims.get(s.sid)}"
            owner[s.sid] = claims[s.sid][0]
        per_relay = {i: sum(1 for o in owner.values() if o == i) for i in cluster.relays}
        assert all(n >= SERVER_IDS // 10 for n in per_relay.values()), \
            f"hash spread: {per_relay}; HAProxy log:\n" + (cluster.log_dir / "haproxy.log").read_text(errors="replace")

        victim = max(per_relay, key=per_relay.get)
        moved = [s for s in sessions if owner[s.sid] == victim]
        stayed = [s for s in sessions if owner[s.sid] != victim]
        t0 = time.monotonic()
        os.kill(cluster.relays[victim]["pid"], signal.SIGTERM)

        # The victim drains: its binaries and phones are closed 1001 "shutting down".
        for s in moved:
            _closed_1001(s.binary)
            for p, _ in s.phones:
                _closed_1001(p)
        # ... and they reconnect, claim again and register again elsewhere.
        for s in moved:
            _reconnect(s)
        recovered_s = time.monotonic() - t0
        assert recovered_s < GRACE_S, f"{len(moved)} server-ids took {recovered_s:.1f}s to recover"

        # Once HAProxy's health check has marked the stopped relay down, the hash itself
        # (no longer the redispatch) sends new phones of the moved ids to the relay that
        # took their binary: a new phone per moved id still meets its binary.
        hap_log = cluster.log_dir / "haproxy.log"
        wait_until(lambda: f"relay{victim} is DOWN" in hap_log.read_text(errors="replace"), 10, 0.1,
                   f"HAProxy to mark relay{victim} down")
        for s in moved:
            k = s.add_phone()
            s.exchange(k)

        # Every other session never noticed: same connections, same conn_ids, and a new
        # phone of the same server-id still reaches its binary on the same relay.
        for s in stayed:
            s.exchange(0)
            k = s.add_phone()
            s.exchange(k)

        claims = cluster.claims()
        for s in stayed:
            assert claims[s.sid] == [owner[s.sid]], f"{s.sid} moved: {claims[s.sid]}"
        for s in moved:
            again = sorted(claims[s.sid], key=lambda i: i != victim)  # the victim's claim, then the new one
            assert len(again) == 2 and again[0] == victim and again[1] != victim, f"{s.sid}: {claims[s.sid]}"
        print(f"scale-out: {per_relay} server-ids per relay; relay {victim} stopped; "
              f"{len(moved)} moved and recovered in {recovered_s:.2f}s, {len(stayed)} untouched")
    finally:
        for s in sessions:
            s.close()

    pids = [r["pid"] for r in cluster.relays.values()]
    assert cluster.stop() == 0, "".join(cluster.err)
    assert "".join(cluster.lines).count("exited with code 0") >= 1  # the victim, reported
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists(), f"relay pid {pid} survived run-local.sh"


def test_run_local_drops_privileges_and_stops_everything(cluster):
    pids = [r["pid"] for r in cluster.relays.values()]
    if os.geteuid() == 0:
        uids = set()
        for pid in pids:
            status = Path(f"/proc/{pid}/status").read_text().splitlines()
            uid = next(l for l in status if l.startswith("Uid:")).split()[1:]
            cap_eff = next(l for l in status if l.startswith("CapEff:")).split()[1]
            assert len(set(uid)) == 1 and int(uid[0]) >= 3_000_000_000, uid  # a uid of its own, no account
            assert int(cap_eff, 16) == 0, cap_eff
            uids.add(uid[0])
        assert len(uids) == RELAYS, uids  # one locked-memory budget each
    hap = re.search(r"haproxy pid (\d+)", "".join(cluster.lines))
    assert hap
    args = Path(f"/proc/{pids[0]}/cmdline").read_bytes().split(b"\0")
    assert b"--trust-x-forwarded-for" in args, args  # the pair of the config's X-Forwarded-For
    assert cluster.stop() == 0, "".join(cluster.err)
    for pid in pids + [int(hap[1])]:
        assert not Path(f"/proc/{pid}").exists(), f"pid {pid} survived run-local.sh"
    assert not any(cluster.log_dir.glob("*.tmp"))
