// harness.mjs - shared helpers for the hookrelay integration tests.
//
// Everything here talks to the real binary ($HOOKRELAY_BIN) and to real HTTP receivers,
// on 127.0.0.1 only. Every wait is bounded. Every process and server a test starts is
// tracked and torn down by cleanup() (wire it with afterEach(cleanup)), and killed with
// SIGKILL at process exit as a last resort, so no relay is ever left behind.
//
// The same suite runs against the ASan/UBSan build: start-up and waits are generous, and
// cleanup() fails the test if a relay wrote a sanitizer report to stderr.

import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, existsSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import http2 from 'node:http2';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import assert from 'node:assert/strict';
import { Webhook } from 'standardwebhooks';

export { sleep };

const HOST = '127.0.0.1';
const START_TIMEOUT_MS = Number(process.env.HOOKRELAY_TEST_START_TIMEOUT_MS || 10_000);
const STOP_TIMEOUT_MS = Number(process.env.HOOKRELAY_TEST_STOP_TIMEOUT_MS || 10_000);
const SANITIZER_MARKERS = ['ERROR: AddressSanitizer', 'runtime error:', 'ERROR: LeakSanitizer',
  'WARNING: ThreadSanitizer'];

const liveRelays = new Set();
const allRelays = []; // every relay started in this file, in order (for failure logs)
const liveReceivers = new Set();
const liveHelpers = new Set(); // other child processes a test started (sqlite3 sessions)
const tmpDirs = new Set();

process.on('exit', () => {
  for (const r of liveRelays) {
    try { r.proc.kill('SIGKILL'); } catch { /* already gone */ }
  }
  for (const p of liveHelpers) {
    try { p.kill('SIGKILL'); } catch { /* already gone */ }
  }
  for (const d of tmpDirs) {
    try { rmSync(d, { recursive: true, force: true }); } catch { /* best effort */ }
  }
});

export function relayBin() {
  const bin = process.env.HOOKRELAY_BIN;
  assert.ok(bin, 'HOOKRELAY_BIN must point at the hookrelay binary');
  assert.ok(existsSync(bin), `HOOKRELAY_BIN=${bin} does not exist`);
  return path.resolve(bin); // a test that runs it from another directory (cwd) finds it too
}

/**
 * The env of a relay run under tests/faults/step_fault.c (LD_PRELOAD, built by make): a
 * disk that fails chosen SQLite steps or stalls each fdatasync. `faults` holds the
 * shim's FAULT_* settings (see the top of that file).
 */
export function faultEnv(faults) {
  const shim = fileURLToPath(new URL('../../build/faults/step_fault.so', import.meta.url));
  assert.ok(existsSync(shim), `${shim} is missing: make build/faults/step_fault.so`);
  return {
    LD_PRELOAD: shim,
    ...faults,
    // The shim comes before the sanitizer build's runtime in the library list.
    ASAN_OPTIONS: [process.env.ASAN_OPTIONS, 'verify_asan_link_order=0'].filter(Boolean).join(':'),
  };
}

export function tmpDir() {
  const d = mkdtempSync(path.join(os.tmpdir(), 'hookrelay-it-'));
  tmpDirs.add(d);
  return d;
}

/** Resolves with the promise's value, or 'timeout' after ms (the timer keeps the loop alive). */
function bounded(promise, ms) {
  let t;
  return Promise.race([promise, new Promise((resolve) => { t = setTimeout(() => resolve('timeout'), ms); })])
    .finally(() => clearTimeout(t));
}

export function tail(text, n = 4000) {
  return text.length > n ? '...' + text.slice(-n) : text;
}

/**
 * Runs `node script` in fresh namespaces (`unshare <flags>`, e.g. '-n' or '-mn') after the
 * shell commands `setup` ("$2".. are extraArgs), with HOOKRELAY_BIN set to this run's
 * relay. Killed after timeoutMs. Resolves {code, signal, stdout, stderr}; never rejects.
 */
export function runNamespaced({ flags, setup, script, extraArgs = [], env = {}, timeoutMs, label }) {
  return new Promise((resolve) => {
    const childEnv = { ...process.env, HOOKRELAY_BIN: relayBin(), ...env };
    // $0 is the script's path and $1 node's, so no quoting of them in the shell string.
    const proc = spawn('unshare', [flags, 'sh', '-c', `${setup} && exec "$1" "$0"`, script,
      process.execPath, ...extraArgs], { env: childEnv, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    proc.stdout.setEncoding('utf8').on('data', (d) => { stdout += d; });
    proc.stderr.setEncoding('utf8').on('data', (d) => { if (stderr.length < 1_000_000) stderr += d; });
    const timer = setTimeout(() => {
      stderr += `\n[${label}] child did not finish within ${timeoutMs} ms; killed\n`;
      proc.kill('SIGKILL');
    }, timeoutMs);
    proc.on('error', (err) => { clearTimeout(timer); resolve({ code: null, stdout, stderr: stderr + String(err) }); });
    proc.on('exit', (code, signal) => { clearTimeout(timer); resolve({ code, signal, stdout, stderr }); });
  });
}

/** In a script runNamespaced runs: awaits main(), then prints `<prefix> {summary}` (with
 * ok false and the error if it threw) and exits 0 or 1, for the test to read. */
export function reportChild(prefix, summary, main) {
  const report = (code) => {
    process.stdout.write(`${prefix} ${JSON.stringify(summary)}\n`);
    process.exit(code);
  };
  main().then(() => report(0), (err) => {
    summary.ok = false;
    summary.error = String(err?.stack ?? err);
    report(1);
  });
}

function sanitizerReport(stderr) {
  return SANITIZER_MARKERS.some((m) => stderr.includes(m));
}

// Environment for the child: the parent's, minus any HOOKRELAY_* setting (a developer's
// shell must not change what the tests see), plus what the test asks for.
function childEnv(extra) {
  const env = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (!k.startsWith('HOOKRELAY_')) env[k] = v;
  }
  return { ...env, ...extra };
}

/**
 * Starts `hookrelay serve` on 127.0.0.1:0 with a fresh (or the given) database.
 * opts.args: extra flags; opts.env: extra environment; opts.dbPath: reuse a database;
 * opts.retrySchedule: --retry-schedule value (default "200ms,400ms"; null to omit);
 * opts.bare: pass only opts.args (plus nothing else), for CLI/env tests.
 */
export async function startRelay(opts = {}) {
  const bin = relayBin();
  const dbPath = opts.dbPath ?? path.join(tmpDir(), 'hr.db');
  const schedule = opts.retrySchedule === undefined ? '200ms,400ms' : opts.retrySchedule;
  const args = opts.bare
    ? ['serve', ...(opts.args ?? [])]
    : [
        'serve',
        '--listen', `${HOST}:0`,
        '--db', dbPath,
        '--allow-private-targets',
        ...(schedule ? ['--retry-schedule', schedule] : []),
        ...(opts.args ?? []),
      ];
  // opts.wrap: a command line the relay's own is appended to, which must exec it (so that
  // proc.pid stays the relay's), e.g. ['sh', '-c', 'ulimit -Sn 256 && exec "$@"', 'sh'].
  const [cmd, ...cmdArgs] = opts.wrap ? [...opts.wrap, bin, ...args] : [bin, ...args];
  const proc = spawn(cmd, cmdArgs, {
    env: childEnv(opts.env ?? {}),
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const relay = {
    proc,
    dbPath,
    args,
    url: null,
    port: null,
    exitCode: undefined, // number | null (signal) once exited
    exitSignal: null,
    stdoutText: '',
    stderrText: '',
    get stderr() { return this.stderrText; },
    exited: null,
    stopped: false,
  };
  relay.exited = new Promise((resolve) => {
    proc.on('exit', (code, signal) => {
      relay.exitCode = code;
      relay.exitSignal = signal;
      liveRelays.delete(relay);
      resolve({ code, signal });
    });
    // spawn itself failed (ENOENT, EACCES, ETXTBSY while the binary is being rebuilt):
    // there will be no 'exit' event, so settle here or every await on it would hang.
    proc.on('error', (err) => {
      relay.spawnError = err;
      if (relay.exitCode === undefined) relay.exitCode = null;
      liveRelays.delete(relay);
      resolve({ code: null, signal: null, error: err });
    });
  });
  proc.stderr.setEncoding('utf8');
  proc.stderr.on('data', (d) => {
    if (relay.stderrText.length < 4_000_000) relay.stderrText += d;
  });
  proc.stdout.setEncoding('utf8');
  liveRelays.add(relay);
  allRelays.push(relay);

  const listening = new Promise((resolve, reject) => {
    proc.stdout.on('data', (d) => {
      relay.stdoutText += d;
      const m = relay.stdoutText.match(/hookrelay listening on http:\/\/127\.0\.0\.1:(\d+)\r?\n/);
      if (m) resolve(Number(m[1]));
    });
    relay.exited.then(({ code, signal, error }) => reject(error
      ? new Error(`cannot start ${bin}: ${error.message}`)
      : new Error(`hookrelay exited before listening (code ${code}, signal ${signal})`)));
  });
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(
      `hookrelay did not print "hookrelay listening on http://127.0.0.1:PORT" within ${START_TIMEOUT_MS} ms`)),
    START_TIMEOUT_MS);
  });
  try {
    relay.port = await Promise.race([listening, timeout]);
  } catch (err) {
    try { proc.kill('SIGKILL'); } catch { /* gone */ }
    await bounded(relay.exited, 5000);
    err.message += `\nargs: ${args.join(' ')}\nstdout: ${tail(relay.stdoutText)}\nstderr: ${tail(relay.stderrText)}`;
    throw err;
  } finally {
    clearTimeout(timer);
  }
  assert.ok(relay.port > 0 && relay.port < 65536, `bad port ${relay.port}`);
  relay.url = `http://${HOST}:${relay.port}`;

  relay.assertNoSanitizerReport = () => {
    assert.ok(!sanitizerReport(relay.stderrText),
      `sanitizer report in relay stderr:\n${tail(relay.stderrText, 8000)}`);
  };

  // Graceful stop: SIGTERM, wait (bounded) for the exit, expect exit code 0.
  relay.stop = async ({ signal = 'SIGTERM', timeoutMs = STOP_TIMEOUT_MS } = {}) => {
    if (relay.stopped) return relay.exited;
    relay.stopped = true;
    if (relay.exitCode === undefined) {
      try { proc.kill(signal); } catch { /* gone */ }
    }
    let t;
    const res = await Promise.race([
      relay.exited,
      new Promise((resolve) => { t = setTimeout(() => resolve('timeout'), timeoutMs); }),
    ]);
    clearTimeout(t);
    if (res === 'timeout') {
      try { proc.kill('SIGKILL'); } catch { /* gone */ }
      await bounded(relay.exited, 5000);
      throw new Error(`hookrelay did not exit within ${timeoutMs} ms of ${signal}\nstderr: ${tail(relay.stderrText)}`);
    }
    relay.assertNoSanitizerReport();
    assert.equal(res.code, 0,
      `hookrelay exited with code ${res.code} signal ${res.signal} after ${signal}\nstderr: ${tail(relay.stderrText)}`);
    return res;
  };

  // Crash: SIGKILL, no chance to clean up.
  relay.kill9 = async () => {
    relay.stopped = true;
    if (relay.exitCode === undefined) {
      try { proc.kill('SIGKILL'); } catch { /* gone */ }
    }
    assert.notEqual(await bounded(relay.exited, 5000), 'timeout', 'relay did not die on SIGKILL');
    relay.assertNoSanitizerReport();
  };

  relay.stderrTail = (n) => tail(relay.stderrText, n);
  return relay;
}

/** Lets the OS pick a free port and closes it again: a URL nobody listens on. */
export async function closedPortUrl() {
  const srv = net.createServer();
  await new Promise((resolve) => srv.listen(0, HOST, resolve));
  const { port } = srv.address();
  await new Promise((resolve) => srv.close(resolve));
  return `http://${HOST}:${port}`;
}

/**
 * HTTP call to the relay. body: undefined (none), a string/Buffer (sent as is), or any
 * other value (JSON-encoded). Content-Type defaults to application/json when a body is
 * sent; pass headers to override. Returns {status, headers, json, text}.
 */
export async function api(relay, method, urlPath, body, headers = {}, { timeoutMs = 10_000 } = {}) {
  const h = { ...headers };
  let payload;
  if (body !== undefined) {
    payload = typeof body === 'string' || Buffer.isBuffer(body) ? body : JSON.stringify(body);
    if (!Object.keys(h).some((k) => k.toLowerCase() === 'content-type')) {
      h['content-type'] = 'application/json';
    }
  }
  let res;
  // A plain (ref'd) timer rather than AbortSignal.timeout(), whose timer does not keep
  // the event loop alive: a stuck request must fail the test, not silently end the run.
  const ac = new AbortController();
  const timer = setTimeout(() => ac.abort(new Error(`no complete answer within ${timeoutMs} ms`)), timeoutMs);
  try {
    res = await fetch(relay.url + urlPath, {
      method,
      headers: h,
      body: payload,
      signal: ac.signal,
    });
  } catch (err) {
    clearTimeout(timer);
    const state = relay.exitCode === undefined
      ? 'relay still running'
      : `relay exited (code ${relay.exitCode}, signal ${relay.exitSignal})${relay.stopped ? ''
        : ' although the test did not stop it (crash, or a signal from outside the test)'}`;
    const e = new Error(`${method} ${urlPath} failed: ${err.message} (${err.cause?.message ?? ''}); ${state}\nrelay stderr: ${tail(relay.stderrText)}`);
    e.cause = err;
    throw e;
  }
  let text;
  try {
    text = await res.text();
  } catch (err) {
    throw new Error(`${method} ${urlPath}: reading the ${res.status} body failed: ${err.message}\nrelay stderr: ${tail(relay.stderrText)}`);
  } finally {
    clearTimeout(timer);
  }
  let json;
  try { json = text.length ? JSON.parse(text) : undefined; } catch { json = undefined; }
  return { status: res.status, headers: res.headers, json, text };
}

/** Asserts a JSON error response: status, error.code and a non-empty message. */
export function assertError(res, status, code, what = '') {
  const ctx = `${what} -> ${res.status} ${res.text}`;
  assert.equal(res.status, status, `expected ${status} ${code}: ${ctx}`);
  assert.ok(res.json && typeof res.json.error === 'object', `no error object: ${ctx}`);
  assert.equal(res.json.error.code, code, `error.code: ${ctx}`);
  assert.equal(typeof res.json.error.message, 'string', `error.message: ${ctx}`);
  assert.ok(res.json.error.message.length > 0, `empty error.message: ${ctx}`);
}

/** Writes raw bytes on a fresh connection to the relay (for what fetch would not send);
 * resolves with what came back once enough(text) holds, the relay closes, or timeoutMs
 * pass. */
export function rawExchange(relay, raw, enough = () => false, timeoutMs = 3000) {
  return new Promise((resolve, reject) => {
    let got = '';
    const sock = net.connect(relay.port, '127.0.0.1', () => sock.write(raw));
    const done = () => { clearTimeout(timer); sock.destroy(); resolve(got); };
    const timer = setTimeout(done, timeoutMs);
    sock.on('data', (d) => {
      got += d;
      if (enough(got)) done();
    });
    sock.on('close', done);
    sock.on('error', (e) => { clearTimeout(timer); reject(e); });
  });
}

/**
 * Holds the database's write lock from an sqlite3 session, as an operator's shell could:
 * the relay's writer then waits (its busy timeout is 5 s) and what is submitted meanwhile
 * queues behind it. Resolves once the lock is held; release() ends the session.
 */
export async function holdWriteLock(dbPath) {
  const cli = spawn('sqlite3', [dbPath], { stdio: ['pipe', 'pipe', 'pipe'] });
  liveHelpers.add(cli); // cleanup() ends it if the test fails before release()
  const exited = new Promise((resolve) => cli.on('exit', () => { liveHelpers.delete(cli); resolve(); }));
  let out = '';
  cli.stdout.on('data', (d) => { out += d; });
  cli.stdin.on('error', () => { /* it went away: release() or cleanup() says so */ });
  cli.stdin.write("PRAGMA busy_timeout = 3000;\nBEGIN IMMEDIATE;\nSELECT 'locked';\n");
  await waitUntil(() => out.includes('locked'), 3000, 'sqlite3 holds the write lock');
  return {
    async release() {
      cli.stdin.end('ROLLBACK;\n.quit\n');
      const r = await Promise.race([exited, sleep(3000).then(() => 'timeout')]);
      if (r === 'timeout') cli.kill('SIGKILL');
      assert.notEqual(r, 'timeout', 'sqlite3 did not end');
    },
  };
}

/** Polls fn() (sync or async) until it returns a truthy value; returns that value. */
export async function waitUntil(fn, timeoutMs = 5000, what = 'condition', intervalMs = 25) {
  const deadline = Date.now() + timeoutMs;
  let last;
  let lastErr;
  for (;;) {
    try {
      last = await fn();
      lastErr = undefined;
      if (last) return last;
    } catch (err) {
      lastErr = err;
    }
    if (Date.now() >= deadline) break;
    await sleep(intervalMs);
  }
  const relays = [...liveRelays].map((r) => `relay :${r.port} stderr:\n${tail(r.stderrText, 2000)}`).join('\n');
  const dead = allRelays.filter((r) => !r.stopped && r.exitCode !== undefined)
    .map((r) => `relay :${r.port} exited (code ${r.exitCode}, signal ${r.exitSignal}) without being stopped by the test`).join('\n');
  throw new Error(`${dead ? dead + '\n' : ''}timed out after ${timeoutMs} ms waiting for ${what}; last value: ${
    JSON.stringify(last)}${lastErr ? `; last error: ${lastErr.message}` : ''}\n${relays}`);
}

/**
 * An HTTP receiver on 127.0.0.1:0 that records every request and answers as told.
 *
 * behavior: an action, an array of actions (request i gets actions[min(i, len-1)]) or a
 * function (request, index) => action. An action is
 *   {status = 200, body = 'ok', headers = {}, delayMs = 0, retryAfter, reset, hang}
 * reset: destroy the socket without answering; hang: never answer.
 * Each recorded request: {method, url, headers, body (Buffer), arrivedAt (ms, wall clock),
 * arrivedMono (ms, monotonic), index, perConnection, httpVersion}.
 * tls: {key, cert} (PEM) serves https instead; receiver.handshakes counts the TLS
 * handshakes it completed, full and resumed. tls.http2: serve HTTP/2 only (ALPN h2).
 */
export async function startReceiver({ behavior = {}, tls = null } = {}) {
  const requests = [];
  const waiters = new Set();
  let current = behavior;
  let count = 0;
  const secrets = [];

  const pick = (req, i) => {
    const b = current;
    if (typeof b === 'function') return b(req, i) ?? {};
    if (Array.isArray(b)) return b[Math.min(i, b.length - 1)] ?? {};
    return b ?? {};
  };

  const onSocket = new WeakMap(); // socket -> requests seen on it
  const handshakes = { full: 0, resumed: 0 };
  const handler = (req, res) => {
    const arrivedAt = Date.now();
    const arrivedMono = performance.now();
    const index = count++;
    const perConnection = (onSocket.get(req.socket) ?? 0) + 1;
    onSocket.set(req.socket, perConnection);
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', async () => {
      const rec = {
        method: req.method,
        url: req.url,
        headers: req.headers,
        body: Buffer.concat(chunks),
        arrivedAt,
        arrivedMono,
        index,
        perConnection, // 1 for the first request on its TCP connection, 2 for the next...
        httpVersion: req.httpVersion, // '1.1', or '2.0' from a tls.http2 receiver
      };
      requests.push(rec);
      for (const w of [...waiters]) w();
      const a = pick(rec, index);
      if (a.processing) res.writeProcessing(); // an interim 102 before anything else
      if (a.delayMs) await sleep(a.delayMs);
      if (a.reset) {
        req.socket.destroy();
        return;
      }
      if (a.hang) return; // keep the socket open until the relay gives up or close()
      if (a.cutBody) { // status line and part of a chunked body, then the connection drops
        res.writeHead(a.status ?? 200, { 'content-type': 'text/plain' });
        res.write('partial');
        setTimeout(() => req.socket.destroy(), 50);
        return;
      }
      const headers = { 'content-type': 'text/plain', ...(a.headers ?? {}) };
      if (a.retryAfter !== undefined) headers['retry-after'] = String(a.retryAfter);
      try {
        res.writeHead(a.status ?? 200, headers);
        res.end(a.body ?? 'ok');
      } catch { /* the relay went away */ }
    });
  };
  const server = !tls ? http.createServer(handler)
    : tls.http2 ? http2.createSecureServer({ key: tls.key, cert: tls.cert }, handler)
      : https.createServer({ key: tls.key, cert: tls.cert }, handler);
  server.on('clientError', (_err, socket) => socket.destroy());
  server.on('secureConnection', (socket) => {
    if (socket.isSessionReused()) handshakes.resumed++;
    else handshakes.full++;
  });
  let open = 0; // TCP connections open now
  const sockets = new Set(); // and their sockets (an HTTP/2 server has no closeAllConnections)
  const dropAll = () => { for (const socket of sockets) socket.destroy(); };
  server.on('connection', (socket) => {
    open++;
    sockets.add(socket);
    socket.once('close', () => { open--; sockets.delete(socket); });
  });
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, HOST, resolve);
  });
  const { port } = server.address();
  const receiver = {
    url: `${tls ? 'https' : 'http'}://${HOST}:${port}`,
    port,
    requests,
    handshakes,
    secrets, // secrets every recorded request must verify with (checked by cleanup())
    setBehavior(b) { current = b; },
    /** Resolves with the requests once at least n have arrived; rejects after timeoutMs. */
    waitFor(n, timeoutMs = 5000) {
      if (requests.length >= n) return Promise.resolve(requests);
      return new Promise((resolve, reject) => {
        const check = () => {
          if (requests.length >= n) {
            clearTimeout(timer);
            waiters.delete(check);
            resolve(requests);
          }
        };
        const timer = setTimeout(() => {
          waiters.delete(check);
          const relays = [...liveRelays].map((r) => `relay :${r.port} stderr:\n${tail(r.stderrText, 2000)}`).join('\n');
          const dead = allRelays.filter((r) => !r.stopped && r.exitCode !== undefined)
            .map((r) => `relay :${r.port} exited (code ${r.exitCode}, signal ${r.exitSignal}) without being stopped by the test\n`).join('');
          reject(new Error(`${dead}receiver ${port}: expected ${n} request(s) within ${timeoutMs} ms, got ${requests.length}\n${relays}`));
        }, timeoutMs);
        waiters.add(check);
      });
    },
    /** TCP connections open now (a hanging request holds its connection until the relay gives up). */
    openConnections() { return open; },
    /** Drops every open connection (e.g. hanging ones) without closing the listener. */
    dropConnections() { dropAll(); },
    async close() {
      liveReceivers.delete(receiver);
      dropAll();
      await new Promise((resolve) => server.close(() => resolve()));
    },
  };
  liveReceivers.add(receiver);
  return receiver;
}

/** Verifies one recorded request with the Standard Webhooks library; returns the envelope. */
export function verifySigned(req, secret) {
  const wh = new Webhook(secret);
  return wh.verify(req.body, {
    'webhook-id': req.headers['webhook-id'],
    'webhook-timestamp': req.headers['webhook-timestamp'],
    'webhook-signature': req.headers['webhook-signature'],
  });
}

/** Creates a subscription for `receiver` (201 expected) and remembers its secret so
 * cleanup() verifies the signature of every request the receiver got. */
export async function createSub(relay, receiver, body = {}) {
  const res = await api(relay, 'POST', '/v1/subscriptions', {
    url: receiver ? receiver.url + '/hook' : undefined,
    event_types: ['#'],
    ...body,
  });
  assert.equal(res.status, 201, `create subscription: ${res.status} ${res.text}`);
  assert.match(res.json.secret ?? '', /^whsec_[A-Za-z0-9+/]+={0,2}$/, `secret: ${res.text}`);
  if (receiver) receiver.secrets.push(res.json.secret);
  return res.json;
}

/** POST /v1/events expecting 202; returns {id, deliveries}. */
export async function postEvent(relay, body, headers = {}) {
  const res = await api(relay, 'POST', '/v1/events', body, headers);
  assert.equal(res.status, 202, `POST /v1/events ${JSON.stringify(body)}: ${res.status} ${res.text}`);
  assert.match(res.json.id, /^evt_[0-9A-Za-z]{26}$/, `event id: ${res.text}`);
  assert.equal(typeof res.json.deliveries, 'number');
  return res.json;
}

/** GET /v1/events/{id} -> its deliveries (200 expected). */
export async function eventDeliveries(relay, eventId) {
  const res = await api(relay, 'GET', `/v1/events/${eventId}`);
  assert.equal(res.status, 200, `GET /v1/events/${eventId}: ${res.status} ${res.text}`);
  assert.ok(Array.isArray(res.json.deliveries), `deliveries array: ${res.text}`);
  return res.json.deliveries;
}

/** GET /v1/deliveries/{id} (200 expected). */
export async function getDelivery(relay, id) {
  const res = await api(relay, 'GET', `/v1/deliveries/${id}`);
  assert.equal(res.status, 200, `GET /v1/deliveries/${id}: ${res.status} ${res.text}`);
  return res.json;
}

/** The value of one sample of /metrics, named as it is written there (labels included:
 * 'hookrelay_requests_refused_total{code="overloaded"}'), or NaN when it is missing. */
export async function metricValue(relay, sample) {
  const line = (await api(relay, 'GET', '/metrics')).text.split('\n').find((l) => l.startsWith(`${sample} `));
  return line === undefined ? NaN : Number(line.slice(sample.length + 1));
}

/** Waits until delivery `id` reaches `status`; returns the delivery with its attempts. */
export async function waitDelivery(relay, id, status, timeoutMs = 8000) {
  return waitUntil(async () => {
    const d = await getDelivery(relay, id);
    return d.status === status ? d : false;
  }, timeoutMs, `delivery ${id} to be ${status}`, 50);
}

/** Follows `next` cursors through a list route; returns every item in order. */
export async function listAll(relay, urlPath, limit = 1000) {
  const items = [];
  const sep = urlPath.includes('?') ? '&' : '?';
  let url = `${urlPath}${sep}limit=${limit}`;
  for (let page = 0; page < 1000; page++) {
    const res = await api(relay, 'GET', url);
    assert.equal(res.status, 200, `GET ${url}: ${res.status} ${res.text}`);
    assert.ok(Array.isArray(res.json.data), `list shape: ${res.text}`);
    items.push(...res.json.data);
    if (res.json.next === null) return items;
    assert.equal(typeof res.json.next, 'string', `next: ${res.text}`);
    url = `${urlPath}${sep}limit=${limit}&after=${encodeURIComponent(res.json.next)}`;
  }
  throw new Error(`pagination of ${urlPath} did not end`);
}

/** Waits a little to be sure nothing more arrives at a receiver. */
export async function assertNoMore(receiver, count, quietMs = 700) {
  await sleep(quietMs);
  assert.equal(receiver.requests.length, count,
    `receiver ${receiver.port} got ${receiver.requests.length} request(s), expected ${count}: ${
      receiver.requests.map((r) => r.body.toString()).join(' | ')}`);
}

/**
 * Tears down everything the test started: receivers are closed; relays still running are
 * stopped with SIGTERM and must exit 0; no relay may have a sanitizer report; every
 * request a receiver got must verify with one of the secrets registered on it.
 */
export async function cleanup() {
  const errors = [];
  for (const rcv of [...liveReceivers]) {
    if (rcv.secrets.length) {
      for (const req of rcv.requests) {
        const ok = rcv.secrets.some((s) => {
          try { verifySigned(req, s); return true; } catch { return false; }
        });
        if (!ok) errors.push(new Error(`request #${req.index} to receiver ${rcv.port} does not verify with any subscription secret: headers ${JSON.stringify(req.headers)}`));
      }
    }
    try { await rcv.close(); } catch (e) { errors.push(e); }
  }
  for (const p of [...liveHelpers]) { // a test that failed before releasing it
    try { p.kill('SIGKILL'); } catch { /* already gone */ }
    liveHelpers.delete(p);
  }
  for (const relay of [...liveRelays]) {
    try { await relay.stop(); } catch (e) { errors.push(e); }
  }
  if (errors.length) throw errors[0];
}

/**
 * Wraps a test body so a failure message carries the tail of the stderr of every relay
 * started during the test.
 */
export function withLogs(fn) {
  return async (t) => {
    const first = allRelays.length;
    try {
      await fn(t);
    } catch (err) {
      const mine = allRelays.slice(first);
      if (mine.length && err && typeof err.message === 'string') {
        err.message += '\n' + mine.map((r) => `--- relay :${r.port} stderr (tail) ---\n${tail(r.stderrText, 3000)}`).join('\n');
      }
      throw err;
    }
  };
}
