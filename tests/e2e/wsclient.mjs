// wsclient.mjs: an independent WebSocket client (npm `ws`) for the e2e tests.
//
// Reads one JSON object on stdin:
//   {"url": "ws://127.0.0.1:PORT/v1/server",
//    "headers": {"X-Pyrycode-Server": "...", ...},
//    "options": {...},              // extra `ws` client options (e.g. {"perMessageDeflate": false})
//    "timeout_ms": 10000,           // whole run
//    "steps": [ ... ]}
// and prints one JSON line on stdout:
//   {"ok": true|false, "error": null|"...", "upgrade": {"status", "headers", "body"?},
//    "results": [per-step result], "close": {"code", "reason", "elapsed_ms"}|null}
//
// Steps (every wait is bounded by "timeout_ms" of the step, default 3000):
//   {"op": "send", "text": "..."}                 send a text message
//   {"op": "send", "base64": "...", "binary": true} send a binary message
//   {"op": "recv"}                                 next message -> {"text"|"base64", "binary"}
//   {"op": "expect_message", "text": "..."}        next message must equal text
//   {"op": "ping", "data": "..."}                  ping, wait for the pong with the same payload
//   {"op": "pong", "data": "..."}                  send an unsolicited pong
//   {"op": "close", "code": 1000, "reason": ""}    start the close handshake
//   {"op": "expect_close", "code": 1000}           wait for the connection to close (code checked if given)
//   {"op": "expect_open", "ms": 300}               connection must still be open after ms
//   {"op": "sleep", "ms": 100}
// A failed step stops the script: ok=false, error says why, the socket is terminated.
import WebSocket from 'ws';

const readStdin = async () => {
  const chunks = [];
  for await (const c of process.stdin) chunks.push(c);
  return JSON.parse(Buffer.concat(chunks).toString('utf8'));
};

const spec = await readStdin();
const out = { ok: false, error: null, upgrade: null, results: [], close: null };
let printed = false;
const finish = (code) => {
  if (!printed) {
    printed = true;
    process.stdout.write(JSON.stringify(out) + '\n');
  }
  process.exit(code);
};
setTimeout(() => { out.error = out.error || `wsclient: overall timeout ${spec.timeout_ms} ms`; finish(1); },
  spec.timeout_ms || 10000).unref();

// Event queues filled by the socket, drained by the steps.
const messages = [];
const pongs = [];
let closed = null;
let waiter = null;
const wake = () => { if (waiter) { const w = waiter; waiter = null; w(); } };
const waitFor = (pred, ms, what) => new Promise((resolve, reject) => {
  const deadline = Date.now() + ms;
  const check = () => {
    const v = pred();
    if (v !== undefined) return resolve(v);
    const left = deadline - Date.now();
    if (left <= 0) return reject(new Error(`timed out after ${ms} ms waiting for ${what}`));
    const t = setTimeout(() => { waiter = null; check(); }, left);
    waiter = () => { clearTimeout(t); check(); };
  };
  check();
});

const t0 = Date.now();
// options.lookupAddress: the URL's host name stands for this address (a --domain relay
// on loopback): the connection goes there, SNI, Host and the certificate check keep the name
const { lookupAddress, ...wsOptions } = spec.options || {};
if (lookupAddress) {
  wsOptions.lookup = (hostname, opts, cb) => {
    if (typeof opts === 'function') cb = opts;
    if (opts && opts.all) cb(null, [{ address: lookupAddress, family: 4 }]);
    else cb(null, lookupAddress, 4);
  };
}
const ws = new WebSocket(spec.url, { headers: spec.headers || {}, handshakeTimeout: 5000, ...wsOptions });

const opened = new Promise((resolve, reject) => {
  ws.on('upgrade', (res) => { out.upgrade = { status: res.statusCode, headers: res.headers }; });
  ws.on('unexpected-response', (req, res) => {
    const body = [];
    res.on('data', (c) => body.push(c));
    res.on('end', () => {
      out.upgrade = { status: res.statusCode, headers: res.headers, body: Buffer.concat(body).toString('latin1') };
      reject(new Error(`unexpected response ${res.statusCode}`));
      req.destroy();
    });
  });
  ws.on('open', resolve);
  ws.on('error', (e) => { out.socket_error = String(e && e.message); reject(e); wake(); });
});
ws.on('message', (data, isBinary) => { messages.push({ data, isBinary }); wake(); });
ws.on('pong', (data) => { pongs.push(data); wake(); });
ws.on('close', (code, reason) => {
  closed = { code, reason: reason.toString('utf8'), elapsed_ms: Date.now() - t0 };
  out.close = closed;
  wake();
});

const runStep = async (s) => {
  const ms = s.timeout_ms ?? 3000;
  switch (s.op) {
    case 'send':
      if (s.binary) ws.send(Buffer.from(s.base64, 'base64'), { binary: true });
      else ws.send(s.text, { binary: false });
      return { op: 'send' };
    case 'recv':
    case 'expect_message': {
      const m = await waitFor(() => messages.length ? messages.shift() : (closed ? null : undefined), ms, 'a message');
      if (m === null) throw new Error(`connection closed (${closed.code} ${closed.reason}) while waiting for a message`);
      const r = { op: s.op, binary: m.isBinary };
      if (m.isBinary) r.base64 = m.data.toString('base64'); else r.text = m.data.toString('utf8');
      if (s.op === 'expect_message' && (m.isBinary || r.text !== s.text)) {
        throw new Error(`expected message ${JSON.stringify(s.text)}, got ${JSON.stringify(r)}`);
      }
      return r;
    }
    case 'ping': {
      const data = Buffer.from(s.data ?? '', 'utf8');
      ws.ping(data);
      const p = await waitFor(() => pongs.length ? pongs.shift() : (closed ? null : undefined), ms, 'a pong');
      if (p === null) throw new Error(`connection closed (${closed.code} ${closed.reason}) while waiting for a pong`);
      if (!p.equals(data)) throw new Error(`pong payload ${p.toString('hex')} != ping payload ${data.toString('hex')}`);
      return { op: 'ping', pong: p.toString('utf8') };
    }
    case 'pong':
      ws.pong(Buffer.from(s.data ?? '', 'utf8'));
      return { op: 'pong' };
    case 'close':
      ws.close(s.code, s.reason ?? '');
      return { op: 'close' };
    case 'expect_close': {
      const c = await waitFor(() => closed ?? undefined, ms, 'the connection to close');
      if (s.code !== undefined && c.code !== s.code) throw new Error(`close code ${c.code} (reason ${JSON.stringify(c.reason)}), expected ${s.code}`);
      return { op: 'expect_close', ...c };
    }
    case 'expect_open': {
      await new Promise((r) => setTimeout(r, s.ms ?? 300));
      if (closed) throw new Error(`connection closed (${closed.code} ${closed.reason}) but should be open`);
      return { op: 'expect_open' };
    }
    case 'sleep':
      await new Promise((r) => setTimeout(r, s.ms ?? 100));
      return { op: 'sleep' };
    default:
      throw new Error(`unknown step ${JSON.stringify(s)}`);
  }
};

try {
  await opened;
  for (const [i, s] of (spec.steps || []).entries()) {
    try {
      out.results.push(await runStep(s));
    } catch (e) {
      throw new Error(`step ${i} (${s.op}): ${e.message}`);
    }
  }
  out.ok = true;
} catch (e) {
  out.error = e.message;
  try { ws.terminate(); } catch { /* already gone */ }
}
finish(out.ok ? 0 : 1);
