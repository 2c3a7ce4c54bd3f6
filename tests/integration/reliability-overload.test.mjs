// reliability-overload.test.mjs - issue #5, part 5: a burst far beyond what the relay is
// configured to queue (--max-queue 8, one HTTP thread). Every request gets an answer in
// bounded time, 202 or 503 overloaded with Retry-After; every 202 is stored; memory stays
// bounded; the relay serves normally afterwards. And 128 requests arriving together on
// 128 open connections are all answered at once (a libmicrohttpd epoll stall).

import { test, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import net from 'node:net';
import { Worker } from 'node:worker_threads';
import {
  startRelay, startReceiver, createSub, api, postEvent, listAll, cleanup, withLogs, sleep, waitUntil,
  metricValue, rawExchange,
} from './harness.mjs';
import { SOAK, SLOW, tryPost, rssMiB } from './reliability/lib.mjs';

afterEach(cleanup);

// RSS ceiling: the plain build stays far below 200 MiB; ASan's shadow memory and
// quarantine (256 MiB by default) need more room.
const RSS_LIMIT_MIB = SLOW > 1 ? 600 : 200;

async function burst(relay, n, padBytes, tag) {
  let peak = rssMiB(relay.proc.pid);
  const sampler = setInterval(() => { peak = Math.max(peak, rssMiB(relay.proc.pid) || 0); }, 20);
  const t0 = performance.now();
  let results;
  try {
    results = await Promise.all(Array.from({ length: n }, (_, i) => tryPost(`${relay.url}/v1/events`,
      { type: `overload.${tag}`, data: { i, pad: 'p'.repeat(padBytes) } }, { timeoutMs: 20_000 * SLOW })));
  } finally {
    clearInterval(sampler);
  }
  peak = Math.max(peak, rssMiB(relay.proc.pid) || 0);
  const counts = {};
  const accepted = [];
  const bad = [];
  for (const [i, r] of results.entries()) {
    const k = r.status ?? 'no answer';
    counts[k] = (counts[k] ?? 0) + 1;
    if (r.status === 202) accepted.push(r.json.id);
    else if (r.status === 503) {
      if (r.json?.error?.code !== 'overloaded' || !/^\d+$/.test(r.headers.get('retry-after') ?? '')) {
        bad.push(`#${i}: 503 retry-after=${r.headers.get('retry-after')} ${r.text}`);
      }
    } else bad.push(`#${i}: ${r.status ?? r.error?.message} ${r.text ?? ''}`);
  }
  return { counts, accepted, bad, peak, ms: performance.now() - t0 };
}

test('400 concurrent POSTs against --max-queue 8 and one HTTP thread: 202 or 503 overloaded, all answered', withLogs(async () => {
  const relay = await startRelay({ args: ['--max-queue', '8', '--http-threads', '1'] });
  const N = SOAK ? 2000 : 400;
  const small = await burst(relay, N, 100, 'small');
  const big = await burst(relay, SOAK ? 800 : 200, 64 * 1024, 'big');
  console.log(`reliability overload: ${N} small POSTs -> ${JSON.stringify(small.counts)} in ${small.ms.toFixed(0)} ms; `
    + `${SOAK ? 800 : 200} x 64 KiB -> ${JSON.stringify(big.counts)} in ${big.ms.toFixed(0)} ms; `
    + `peak RSS ${Math.max(small.peak, big.peak).toFixed(1)} MiB`);

  for (const b of [small, big]) {
    assert.deepEqual(b.bad, [], 'every answer is 202, or 503 overloaded with a Retry-After');
  }
  // 400 at once against a queue of 8 must shed some load: if this ever fails, the flag
  // is not enforced (or the writer became fast enough to need a bigger burst here).
  assert.ok((small.counts[503] ?? 0) > 0, `no 503 among ${N} concurrent POSTs with --max-queue 8`);
  // and /metrics counts each one turned away (nothing else said so)
  const refused = await metricValue(relay, 'hookrelay_requests_refused_total{code="overloaded"}');
  assert.equal(refused, (small.counts[503] ?? 0) + (big.counts[503] ?? 0),
    'hookrelay_requests_refused_total{code="overloaded"} counts the 503s');
  assert.ok(small.accepted.length > 0, 'some POSTs accepted during the burst');
  assert.ok(small.peak < RSS_LIMIT_MIB && big.peak < RSS_LIMIT_MIB,
    `relay RSS peaked at ${Math.max(small.peak, big.peak).toFixed(1)} MiB (limit ${RSS_LIMIT_MIB})`);

  const stored = new Set((await listAll(relay, '/v1/events')).map((e) => e.id));
  const accepted = [...small.accepted, ...big.accepted];
  const lost = accepted.filter((id) => !stored.has(id));
  assert.deepEqual(lost, [], `${lost.length} of ${accepted.length} accepted events not stored`);
  assert.equal(stored.size, accepted.length, 'nothing stored that was answered 503');

  // Afterwards the relay serves normally.
  assert.equal((await api(relay, 'GET', '/healthz')).status, 200);
  await postEvent(relay, { type: 'overload.after' });
}));

// Opens n keep-alive connections to the relay; if any fails, closes the ones that opened and throws its error.
async function openConnections(relay, n) {
  const settled = await Promise.allSettled(Array.from({ length: n }, () => new Promise((resolve, reject) => {
    const sock = net.connect(relay.port, '127.0.0.1', () => resolve(sock));
    sock.once('error', reject);
  })));
  const failed = settled.find((s) => s.status === 'rejected');
  if (failed) {
    for (const s of settled) if (s.status === 'fulfilled') s.value.destroy();
    throw failed.reason;
  }
  return settled.map((s) => s.value);
}

// Writes GET /healthz on every connection and resolves once every one was answered 200;
// rejects after timeoutMs. `between` runs after the writes, before the wait.
async function healthzOnEach(conns, timeoutMs, between = async () => {}) {
  const request = 'GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n';
  const answered = (sock) => new Promise((resolve, reject) => {
    let seen = '';
    const onData = (chunk) => {
      seen += chunk.toString('latin1');
      if (/^HTTP\/1\.1 200 /.test(seen) && /\r\n\r\n.*\}\s*$/s.test(seen)) {
        sock.off('data', onData);
        resolve();
      }
    };
    sock.on('data', onData);
    sock.once('error', reject);
  });
  const all = Promise.all(conns.map(answered));
  for (const sock of conns) sock.write(request);
  await between();
  let timer;
  const late = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`not all ${conns.length} answered within ${timeoutMs} ms`)), timeoutMs);
  });
  try {
    await Promise.race([all, late]);
  } finally {
    clearTimeout(timer);
  }
}

// libmicrohttpd 0.9.75's epoll loop waits again, with the full timeout, whenever one
// epoll_wait returned exactly its 128-event maximum, before handling those 128: the relay
// sat up to 60 s (the connection timeout) on requests already read-ready. The relay polls
// instead. The stop/continue makes all 128 ready in the same instant, which with epoll
// stalled every time.
test('128 keep-alive connections whose requests arrive at once are all answered promptly', withLogs(async () => {
  const relay = await startRelay({ args: ['--http-threads', '1'] });
  const conns = await openConnections(relay, 128);
  try {
    await healthzOnEach(conns, 5000 * SLOW); // every connection is now open and idle
    for (let i = 0; i < 3; i++) {
      process.kill(relay.proc.pid, 'SIGSTOP'); // this round's requests arrive while it is stopped
      await healthzOnEach(conns, 5000 * SLOW, async () => {
        await sleep(100);
        process.kill(relay.proc.pid, 'SIGCONT');
      }).catch((err) => { throw new Error(`round ${i}: ${err.message}`); });
    }
  } finally {
    for (const sock of conns) sock.destroy();
    try {
      process.kill(relay.proc.pid, 'SIGCONT');
    } catch {
      // it died: the test's own error says why
    }
  }
}));

// A shell's soft open-file limit is often 1,024 (here 256, for a quicker test): without
// raising it the relay accepted connections only up to it and left the rest unanswered.
test('a low soft open-file limit is raised: 400 connections at once are all answered', withLogs(async (t) => {
  const hard = Number((readFileSync('/proc/self/limits', 'utf8').match(/Max open files\s+\d+\s+(\d+|unlimited)/) ?? [])[1] ?? 'NaN');
  if (!(hard >= 1024)) { // also when the line could not be read
    t.skip(`the hard open-file limit here is ${hard}`);
    return;
  }
  const relay = await startRelay({ wrap: ['sh', '-c', 'ulimit -Sn 256 && exec "$@"', 'sh'] });
  const limits = readFileSync(`/proc/${relay.proc.pid}/limits`, 'utf8');
  const soft = Number(limits.match(/Max open files\s+(\d+)/)[1]);
  assert.ok(soft >= 1024, `soft open-file limit of the relay is ${soft}`);
  const conns = await openConnections(relay, 400);
  try {
    await healthzOnEach(conns, 5000 * SLOW);
  } finally {
    for (const sock of conns) sock.destroy();
  }
}));

// Reads run on their own threads: an operator's slow query must not hold up publishes
// that share the HTTP thread with it, whether the time goes into the query (the pending
// deliveries of a subscription that has delivered 45,000, which walks its history) or
// into the answer (pages of 1,000 deliveries, whose JSON must be written off the HTTP
// thread too). Before, each publish waited behind the reads (p50 31 ms against 0.9 ms
// now, with 16 ms reads). The history and the readers (2 and 6, on the relay's two read
// threads) keep each read at 7-9 ms here, well above the 4 ms under which a read is too
// quick to tell anything (with 30,000 and 1 and 4 they read 4.3-5.7 ms: a machine a
// fifth faster would have failed every round as too fast). Reads on the HTTP thread
// still fail every round: p50 28.6-29.2 ms against reads of 11.7-11.9 ms.
//
// The readers run in a worker thread of their own: reading 300 KB answers in this
// thread would put the test's own work in the publishes' way and measure Node, not the
// relay.
const READ_LOOP = `
const { parentPort, workerData: { url, readers, deadlineMs } } = require('node:worker_threads');
let stop = false;
parentPort.on('message', () => { stop = true; });
const end = Date.now() + deadlineMs;
const ms = [];
const loops = Array.from({ length: readers }, async () => {
  while (!stop && Date.now() < end) {
    const t = performance.now();
    const res = await fetch(url, { signal: AbortSignal.timeout(10000) });
    const body = await res.arrayBuffer();
    if (res.status !== 200) throw new Error('GET answered ' + res.status + ': ' + Buffer.from(body).toString().slice(0, 200));
    ms.push(performance.now() - t);
  }
});
Promise.all(loops).then(() => parentPort.postMessage({ ms }), (err) => parentPort.postMessage({ error: String(err) }));
`;

async function publishBesideReads(relay, path, readers) {
  const worker = new Worker(READ_LOOP, { eval: true, workerData: { url: relay.url + path, readers, deadlineMs: 60_000 } });
  const done = new Promise((resolve, reject) => {
    worker.once('message', resolve);
    worker.once('error', reject);
  });
  let readMs;
  const lat = [];
  try {
    await sleep(200);
    for (let i = 0; i < 60; i++) {
      const t = performance.now();
      await postEvent(relay, { type: 'pub.x', data: i });
      lat.push(performance.now() - t);
    }
    worker.postMessage('stop');
    const out = await done;
    assert.equal(out.error, undefined, out.error);
    readMs = out.ms;
  } finally {
    await worker.terminate();
  }
  lat.sort((a, b) => a - b);
  const read = readMs.reduce((a, b) => a + b, 0) / readMs.length;
  const p50 = lat[Math.floor(lat.length / 2)];
  console.log(`${readers} x GET ${path}: ${read.toFixed(1)} ms on average (${readMs.length}); publish p50 ${p50.toFixed(1)} ms, max ${lat.at(-1).toFixed(1)} ms`);
  return { read, p50 };
}

test('a slow read does not hold up publishing, and reads past the read queue are refused', { timeout: 120_000 }, withLogs(async () => {
  // --synchronous normal: a publish is answered without waiting for the WAL's fdatasync.
  // This test is about the HTTP thread, not the disk; with the fsync in, a disk busy with
  // another test file's writes put 1-2 ms into each publish's p50 and 25-45 ms into its
  // tail (here, beside a dd writing with conv=fdatasync), against reads of 5-7 ms. Reads
  // on the HTTP thread still fail every round: p50 4.2-4.7 ms against reads of 4.3-5.1
  // ms (7.5-8.3 ms with the fsync), with the history and readers of before.
  const relay = await startRelay({ args: ['--synchronous', 'normal'] });
  const r = await startReceiver();
  const sub = await createSub(relay, r, { event_types: ['hist.*'], max_in_flight: 64 });
  const N = 45_000;
  for (let k = 0; k < N / 1000; k++) {
    const res = await api(relay, 'POST', '/v1/events/batch',
      Array.from({ length: 1000 }, (_, i) => ({ type: 'hist.x', data: i })));
    assert.equal(res.status, 202, res.text);
  }
  await r.waitFor(N, 90_000);
  for (const [path, readers] of [
    [`/v1/deliveries?subscription=${sub.id}&status=pending`, 2],
    ['/v1/deliveries?limit=1000', 6],
  ]) {
    // Up to three rounds: a busy machine (another test file running beside this one) can
    // slow one round's publishes for reasons of its own (CI once read p50 3.6 ms against
    // reads of 6.2 ms, where 1.0 against 4.7 is usual); publishes that wait behind reads
    // fail every round.
    let round;
    for (let k = 0; k < 3; k++) {
      round = await publishBesideReads(relay, path, readers);
      if (round.read >= 4 && round.p50 < round.read / 2) break;
    }
    const { read, p50 } = round;
    assert.ok(read >= 4, `GET ${path} took ${read.toFixed(1)} ms: too fast to tell anything`);
    assert.ok(p50 < read / 2, `publishes waited behind GET ${path}: p50 ${p50.toFixed(1)} ms against reads of ${read.toFixed(1)} ms`);
  }

  // A storm of slow reads, far more than the read queue holds: the ones past it are
  // answered 503 overloaded at once, and /healthz and publishing stay prompt. (Before,
  // the queue held 1,024 and the reads past it ran on the HTTP thread, one after
  // another: after a storm of abandoned big reads under ASan, /healthz went unanswered
  // for 12 s.)
  const STORM = 400;
  const storm = Array.from({ length: STORM }, () => fetch(
    `${relay.url}/v1/deliveries?subscription=${sub.id}&status=pending`, { signal: AbortSignal.timeout(60_000) })
    .then(async (res) => ({ status: res.status, retryAfter: res.headers.get('retry-after'), text: await res.text() })));
  await sleep(50);
  const t = performance.now();
  const health = await api(relay, 'GET', '/healthz');
  const healthMs = performance.now() - t;
  const t2 = performance.now();
  await postEvent(relay, { type: 'pub.storm' });
  const publishMs = performance.now() - t2;
  const answers = await Promise.all(storm);
  const by = {};
  for (const a of answers) by[a.status] = (by[a.status] ?? 0) + 1;
  console.log(`read storm: ${STORM} pending scans -> ${JSON.stringify(by)}; /healthz in ${healthMs.toFixed(0)} ms, a publish in ${publishMs.toFixed(0)} ms`);
  assert.equal(health.status, 200);
  for (const a of answers) {
    if (a.status === 200) continue;
    assert.equal(a.status, 503, a.text.slice(0, 200));
    assert.equal(JSON.parse(a.text).error.code, 'overloaded', a.text);
    assert.equal(a.retryAfter, '1');
  }
  assert.ok(by[503] > 0, 'the reads past the queue were refused');
  assert.ok(by[200] >= 256, `the queued reads were answered: ${JSON.stringify(by)}`);
  assert.ok(healthMs < 500 * SLOW, `/healthz took ${healthMs.toFixed(0)} ms during the read storm`);
  assert.ok(publishMs < 500 * SLOW, `a publish took ${publishMs.toFixed(0)} ms during the read storm`);
}));

// A reply is held in memory until its client has read it. Clients that ask for 4 MiB
// list pages and read nothing pinned one each, on up to 1,024 connections (an operator
// saw 150 of them take the relay from 70 MB to 611 MB): large replies now count against
// 64 MiB in all, and past it a large read is 503 overloaded until they are read or gone.
test('clients that do not read their large replies cannot pin more than 64 MiB', withLogs(async () => {
  const relay = await startRelay();
  const event = { type: 'big.page', data: { pad: 'p'.repeat(60_000) } };
  for (let k = 0; k < 7; k++) {
    const res = await api(relay, 'POST', '/v1/events/batch', Array.from({ length: 10 }, () => event));
    assert.equal(res.status, 202, res.text);
  }
  const page = '/v1/events?type=big.page&limit=1000';
  const probe = await api(relay, 'GET', page);
  assert.equal(probe.status, 200, probe.text);
  assert.ok(probe.text.length > 3.5 * 1048576, `a page of ${probe.text.length} bytes`);

  const stalled = [];
  try {
    for (let i = 0; i < 24; i++) {
      const sock = net.connect(relay.port, '127.0.0.1');
      sock.on('error', () => {});
      sock.on('connect', () => {
        sock.pause(); // reads nothing: the reply stays in the relay
        sock.write(`GET ${page} HTTP/1.1\r\nHost: x\r\n\r\n`);
      });
      stalled.push(sock);
    }
    let refused = null;
    await waitUntil(async () => {
      const res = await api(relay, 'GET', page);
      if (res.status === 503) refused = res;
      return res.status === 503;
    }, 20_000 * SLOW, 'a large read refused while 24 pages wait for readers', 100);
    assert.equal(refused.json.error.code, 'overloaded', refused.text);
    assert.match(refused.headers.get('retry-after') ?? '', /^\d+$/);
    const small = await api(relay, 'GET', '/v1/events?type=big.page&limit=1');
    assert.equal(small.status, 200, 'small replies are not held to it');
  } finally {
    for (const sock of stalled) sock.destroy();
  }
  await waitUntil(async () => (await api(relay, 'GET', page)).status === 200, 10_000 * SLOW,
    'large reads served again once the stalled clients are gone', 100);
}));

// A request body is held in memory as it arrives, up to --max-body. Clients (with a key,
// or on loopback with none) that sent most of a large body and then stalled pinned one
// each, on up to 1,024 connections (1 GiB at the default 1 MiB; 1,000 such connections
// took the relay from 39 MB to 1.05 GB): bodies over 64 KiB now count against 64 MiB in
// all, and past it a large body is dropped as it comes and answered 503 overloaded.
test('clients that stall in the middle of large bodies cannot pin more than 64 MiB', withLogs(async () => {
  const relay = await startRelay({ args: ['--max-body', '8MiB'] });
  const stalled = [];
  try {
    // 1.5 MiB each sent of 8 declared, 75 MiB wanted: the budget fills to within a
    // holder's last step (under 1 MiB) of 64 MiB, where the 6 MiB publish cannot fit
    for (let i = 0; i < 50; i++) {
      const sock = net.connect(relay.port, '127.0.0.1');
      sock.on('error', () => {});
      await new Promise((resolve) => sock.on('connect', resolve));
      sock.write(`POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n` +
        `Content-Length: ${8 * 1048576 - 64}\r\n\r\n{"type":"stall.x","data":"${'x'.repeat(1.5 * 1048576)}`);
      stalled.push(sock);
    }
    const large = JSON.stringify({ type: 'large.x', data: 'y'.repeat(6 * 1048576) });
    let refused = null;
    await waitUntil(async () => {
      const res = await api(relay, 'POST', '/v1/events', large);
      if (res.status === 503) refused = res;
      return res.status === 503;
    }, 20_000 * SLOW, 'a large publish refused while 50 large bodies are half sent', 100);
    assert.equal(refused.json.error.code, 'overloaded', refused.text);
    assert.match(refused.headers.get('retry-after') ?? '', /^\d+$/);
    const small = await postEvent(relay, { type: 'small.x', data: { pad: 'p'.repeat(30_000) } });
    assert.ok(small.id, 'small bodies are not held to it');
    // a body past --max-body is still 413 (not a 503 that a retry could never get past)
    const chunk = `{"type":"over.x","data":"${'o'.repeat(9 * 1048576)}"}`;
    const over = await rawExchange(relay, 'POST /v1/events HTTP/1.1\r\nHost: x\r\n' +
      'Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n' +
      `${chunk.length.toString(16)}\r\n${chunk}\r\n0\r\n\r\n`, (got) => /\r\n\r\n[\s\S]*\}/.test(got), 20_000 * SLOW);
    assert.match(over, /^HTTP\/1\.1 413 /, over.slice(0, 200));
  } finally {
    for (const sock of stalled) sock.destroy();
  }
  await waitUntil(async () => (await api(relay, 'POST', '/v1/events',
    JSON.stringify({ type: 'large.x', data: 'z'.repeat(6 * 1048576) }))).status === 202, 10_000 * SLOW,
  'large publishes taken again once the stalled clients are gone', 100);
}));

// The 64 MiB budget must not refuse a reply that is larger on its own: an event of
// --max-body's 64 MiB, in its envelope, is a few bytes over it, and would be 503
// overloaded forever (no retry could ever read it) if one reply alone did not go.
test('one reply over 64 MiB alone still goes: a 64 MiB event can be read back', withLogs(async () => {
  const relay = await startRelay({ args: ['--max-body', '64MiB'] });
  const head = '{"type":"big.one","data":"';
  const tail = '"}';
  const body = head + 'b'.repeat(64 * 1048576 - head.length - tail.length) + tail;
  const res = await fetch(`${relay.url}/v1/events`, { method: 'POST', headers: { 'content-type': 'application/json' }, body });
  const text = await res.text();
  assert.equal(res.status, 202, text);
  const { id } = JSON.parse(text);
  const got = await fetch(`${relay.url}/v1/events/${id}`);
  const reply = await got.text();
  assert.equal(got.status, 200, reply.slice(0, 300));
  assert.ok(reply.length > 64 * 1048576, `a reply of ${reply.length} bytes: not over the budget, so it tests nothing`);
  const ev = JSON.parse(reply);
  assert.equal(ev.id, id);
  assert.equal(ev.data.length, body.length - head.length - tail.length);
}));
