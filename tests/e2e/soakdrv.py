#!/usr/bin/python3
"""soakdrv: one process of the soak driver (tests/e2e/test_soak.py starts several).

    soakdrv.py --port P --src 127.0.0.N --binaries B --phones K --stable S
               --seconds T --churn-rate R --prefix ID [--host 127.0.0.1]

Opens B binaries (/v1/server, one server-id each) and K phones per binary (/v1/client):
S of each binary's phones stay up the whole run and keep a stream of frames going (a
window of 2 in flight, a frame every ~PACE_S); the other K-S churn: connect, upgrade,
exchange CHURN_FRAMES frames, close 1000 (waiting for the relay's echo and its end of
TCP, so the relay holds the TIME_WAIT, not our port), sleep, reconnect. The binaries
echo every envelope back verbatim, so each frame makes the round trip phone -> relay ->
binary -> relay -> phone, and each phone checks every byte it gets back against what
it sent, in order: a frame lost, reordered or changed is counted. Every phone session
that ends makes the relay send its binary a close notice with 1000: the binaries
count them, and the count must equal the sessions ended.

Every wait is bounded. Prints "ready" (a JSON line) once every connection is up, then
one JSON line of counts at the end; exits 0 when nothing went wrong, 1 otherwise.
Standard library only (asyncio); server frames are read unmasked, client frames masked.
"""

import argparse
import asyncio
import base64
import json
import os
import random
import struct
import sys
import time

PACE_S = 1.0          # a stable phone's frame interval
STABLE_WINDOW = 2     # frames a stable phone keeps in flight
CHURN_FRAMES = 3      # frames a churning phone exchanges per session
IO_TIMEOUT_S = 15.0   # any single read or handshake (the box is small and shared)
CONNECT_CONCURRENCY = 64

OP_TEXT, OP_CLOSE, OP_PING, OP_PONG = 0x1, 0x8, 0x9, 0xA


class Fail(Exception):
    pass


def mask_frame(opcode: int, payload: bytes) -> bytes:
    n = len(payload)
    if n <= 125:
        hdr = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n <= 0xFFFF:
        hdr = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        hdr = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    key = os.urandom(4)
    if n == 0:
        return hdr + key
    k = (key * (n // 4 + 1))[:n]
    return hdr + key + (int.from_bytes(payload, "big") ^ int.from_bytes(k, "big")).to_bytes(n, "big")


class Ws:
    """A raw client WebSocket over asyncio streams."""

    def __init__(self, reader, writer):
        self.r, self.w = reader, writer

    @classmethod
    async def open(cls, host, port, src, path, headers):
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, local_addr=(src, 0), limit=1 << 20), IO_TIMEOUT_S)
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [f"GET {path} HTTP/1.1", "Host: soak", "Upgrade: websocket", "Connection: Upgrade",
                 "Sec-WebSocket-Version: 13", f"Sec-WebSocket-Key: {key}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), IO_TIMEOUT_S)
        if not head.startswith(b"HTTP/1.1 101 "):
            writer.close()
            status = head.split(b"\r\n")[0]
            raise Fail(f"upgrade {path}: {status!r}")
        return cls(reader, writer)

    def send(self, opcode, payload):
        self.w.write(mask_frame(opcode, payload))

    async def frame(self, timeout=IO_TIMEOUT_S):
        """Next frame (opcode, payload); pings are answered here and skipped."""
        while True:
            h = await asyncio.wait_for(self.r.readexactly(2), timeout)
            b0, b1 = h[0], h[1]
            if b1 & 0x80 or not b0 & 0x80 or b0 & 0x70:
                raise Fail(f"bad server frame header {h!r}")
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack("!H", await self.r.readexactly(2))[0]
            elif n == 127:
                n = struct.unpack("!Q", await self.r.readexactly(8))[0]
            payload = await asyncio.wait_for(self.r.readexactly(n), timeout) if n else b""
            op = b0 & 0x0F
            if op == OP_PING:
                self.send(OP_PONG, payload)
                continue
            if op == OP_PONG:
                continue
            return op, payload

    async def close_1000(self):
        """Our close, the relay's echo, then its end of TCP (EOF) before ours."""
        self.send(OP_CLOSE, struct.pack("!H", 1000))
        while True:
            op, payload = await self.frame()
            if op == OP_CLOSE:
                break
        if payload[:2] != struct.pack("!H", 1000):
            raise Fail(f"close echo {payload!r}")
        rest = await asyncio.wait_for(self.r.read(1), IO_TIMEOUT_S)
        if rest:
            raise Fail(f"data after the close echo {rest!r}")
        self.abort()

    def abort(self):
        try:
            self.w.close()
        except Exception:  # noqa: BLE001
            pass


class Driver:
    def __init__(self, a):
        self.a = a
        self.c = dict(frames=0, sessions=0, churn_sessions=0, notices=0, notices_not_1000=0,
                      lost_or_reordered=0, corrupted=0, errors=0)
        self.err_samples = []
        self.sem = asyncio.Semaphore(CONNECT_CONCURRENCY)
        self.stop_at = 0.0
        self.notices_by_binary = {}

    def error(self, what):
        self.c["errors"] += 1
        if len(self.err_samples) < 10:
            self.err_samples.append(what)

    async def ws(self, path, headers):
        async with self.sem:
            return await Ws.open(self.a.host, self.a.port, self.a.src, path, headers)

    async def binary_loop(self, sid, b):
        """Echo every envelope verbatim; count the close notices (all must be 1000)."""
        try:
            while True:
                op, payload = await b.frame(timeout=3600)
                if op == OP_CLOSE:
                    raise Fail(f"binary {sid} closed by the relay: {payload!r}")
                if payload.startswith(b'{"conn_id":') and b',"frame":' in payload:
                    b.send(OP_TEXT, payload)
                    continue
                try:
                    notice = json.loads(payload)
                except ValueError:
                    raise Fail(f"binary {sid}: not an envelope nor a notice: {payload[:80]!r}") from None
                if list(notice) != ["conn_id", "close_code"]:
                    raise Fail(f"binary {sid}: unexpected message {payload[:80]!r}")
                self.c["notices"] += 1
                self.notices_by_binary[sid] += 1
                if notice["close_code"] != 1000:
                    self.c["notices_not_1000"] += 1
        except asyncio.CancelledError:
            raise
        except (Fail, OSError, asyncio.IncompleteReadError, asyncio.TimeoutError) as e:
            self.error(f"binary {sid}: {e!r}")

    async def exchange(self, ph, tag, seq0, n, window):
        """Send n frames (at most `window` in flight) and check each one comes back
        exactly and in order. Returns the next seq."""
        sent, got = seq0, seq0
        end = seq0 + n
        while got < end:
            while sent < end and sent - got < window:
                ph.send(OP_TEXT, b'{"t":"%s","s":%d}' % (tag, sent))
                sent += 1
            op, payload = await ph.frame()
            if op != OP_TEXT:
                raise Fail(f"phone {tag.decode()}: opcode {op} {payload[:60]!r}")
            want = b'{"t":"%s","s":%d}' % (tag, got)
            if payload != want:
                if payload.startswith(b'{"t":"%s","s":' % tag):
                    self.c["lost_or_reordered"] += 1
                else:
                    self.c["corrupted"] += 1
                raise Fail(f"phone {tag.decode()}: got {payload[:60]!r}, expected {want!r}")
            got += 1
            self.c["frames"] += 1
        return end

    async def stable_phone(self, sid, tag):
        ph = await self.ws("/v1/client", self.phone_headers(sid))
        self.ready_count += 1
        await self.all_ready.wait()
        seq = 0
        try:
            while time.monotonic() < self.stop_at:
                seq = await self.exchange(ph, tag, seq, STABLE_WINDOW, STABLE_WINDOW)
                await asyncio.sleep(min(PACE_S * random.uniform(0.5, 1.5), max(0.0, self.stop_at - time.monotonic())))
            await ph.close_1000()
            self.c["sessions"] += 1
        except (Fail, OSError, asyncio.IncompleteReadError, asyncio.TimeoutError) as e:
            self.error(f"stable phone {tag.decode()} after {seq} frames: {e!r}")
            ph.abort()

    async def churn_phone(self, sid, tag, period):
        ph = await self.ws("/v1/client", self.phone_headers(sid))
        self.ready_count += 1
        await self.all_ready.wait()
        cycle = 0
        while True:
            t = b"%s.%x" % (tag, cycle)
            try:
                await self.exchange(ph, t, 0, CHURN_FRAMES, CHURN_FRAMES)
                await ph.close_1000()
                self.c["sessions"] += 1
                self.c["churn_sessions"] += 1
            except (Fail, OSError, asyncio.IncompleteReadError, asyncio.TimeoutError) as e:
                self.error(f"churning phone {t.decode()}: {e!r}")
                ph.abort()
                return
            cycle += 1
            await asyncio.sleep(min(period * random.uniform(0.5, 1.5), max(0.0, self.stop_at - time.monotonic())))
            if time.monotonic() >= self.stop_at:
                return
            try:
                ph = await self.ws("/v1/client", self.phone_headers(sid))
            except (Fail, OSError, asyncio.IncompleteReadError, asyncio.TimeoutError) as e:
                self.error(f"churning phone {t.decode()} reconnecting: {e!r}")
                return

    def phone_headers(self, sid):
        return {"X-Pyrycode-Server": sid, "X-Pyrycode-Token": "soak", "User-Agent": "soak-phone/1"}

    async def main(self):
        a = self.a
        self.ready_count = 0
        self.all_ready = asyncio.Event()
        churners = a.binaries * (a.phones - a.stable)
        # each churning phone waits ~period between sessions: churn_rate sessions/s in all
        period = churners / a.churn_rate if a.churn_rate > 0 else 1e9
        binaries = {}
        t0 = time.monotonic()
        for i in range(a.binaries):
            sid = f"{a.prefix}-{i}"
            self.notices_by_binary[sid] = 0
            binaries[sid] = asyncio.ensure_future(self.ws("/v1/server", {
                "X-Pyrycode-Server": sid, "X-Pyrycode-Version": "soak-1", "User-Agent": "soak-binary/1"}))
        try:
            for sid in binaries:
                binaries[sid] = await binaries[sid]
        except (Fail, OSError, asyncio.IncompleteReadError, asyncio.TimeoutError) as e:
            print(json.dumps({"fatal": f"binary connect: {e!r}"}), flush=True)
            return 1
        echo = [asyncio.ensure_future(self.binary_loop(sid, b)) for sid, b in binaries.items()]
        self.stop_at = float("inf")
        phones = []
        for sid in binaries:
            for k in range(a.phones):
                tag = f"{sid}.{k}".encode()
                phones.append(asyncio.ensure_future(
                    self.stable_phone(sid, tag) if k < a.stable else self.churn_phone(sid, tag, period)))
        want = a.binaries * a.phones
        while self.ready_count < want:
            failed = [p for p in phones if p.done()]
            if failed:
                e = failed[0].exception()
                print(json.dumps({"fatal": f"phone connect: {e!r}"}), flush=True)
                return 1
            if time.monotonic() - t0 > 120:
                print(json.dumps({"fatal": f"only {self.ready_count}/{want} phones up after 120 s"}), flush=True)
                return 1
            await asyncio.sleep(0.05)
        print(json.dumps({"ready": a.binaries + want, "connect_s": round(time.monotonic() - t0, 2)}), flush=True)
        self.stop_at = time.monotonic() + a.seconds
        self.all_ready.set()
        done, pending = await asyncio.wait(phones, timeout=a.seconds + 3 * IO_TIMEOUT_S)
        for p in pending:
            p.cancel()
            self.error("a phone did not finish in time")
        for p in done:
            if p.exception() is not None:
                self.error(f"phone task: {p.exception()!r}")
        # every ended phone session made the relay send its binary a notice: wait for them
        deadline = time.monotonic() + IO_TIMEOUT_S
        while self.c["notices"] < self.c["sessions"] and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for t in echo:
            t.cancel()
        await asyncio.gather(*echo, return_exceptions=True)
        for sid, b in binaries.items():
            try:
                await b.close_1000()
            except (Fail, OSError, asyncio.IncompleteReadError, asyncio.TimeoutError) as e:
                self.error(f"binary {sid} close: {e!r}")
                b.abort()
        out = dict(self.c, connections=a.binaries + want, errors_sample=self.err_samples)
        print(json.dumps(out), flush=True)
        bad = (self.c["errors"] or self.c["lost_or_reordered"] or self.c["corrupted"] or
               self.c["notices"] != self.c["sessions"] or self.c["notices_not_1000"])
        return 1 if bad else 0


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--src", default="127.0.0.1")
    p.add_argument("--binaries", type=int, required=True)
    p.add_argument("--phones", type=int, required=True)
    p.add_argument("--stable", type=int, required=True)
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--churn-rate", type=float, required=True, help="phone sessions per second, this process")
    p.add_argument("--prefix", required=True)
    a = p.parse_args()
    if not 0 <= a.stable <= a.phones <= 16:
        p.error("need 0 <= --stable <= --phones <= 16")
    sys.exit(asyncio.run(Driver(a).main()))


if __name__ == "__main__":
    main()
