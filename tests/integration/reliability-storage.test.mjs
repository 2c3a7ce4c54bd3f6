// reliability-storage.test.mjs - issue #5, part 4: a full disk under a running relay, and
// storage errors inside the writer's batches.
//
// Full disk: the relay runs inside a private mount namespace whose database directory is
// a 4 MiB tmpfs (reliability/storage-child.mjs does the steps and reports a summary):
// publishing until a POST answers 503 storage_unavailable must keep the relay up and every
// earlier 202 stored; freeing space must let the next POST answer 202 without a restart;
// SIGTERM exits 0 and the database passes PRAGMA integrity_check.
//
// Errors inside batches: tests/faults/step_fault.c (LD_PRELOAD, built by make) fails
// chosen SQLite steps at random, as a flaky disk would: the savepoints each call runs in,
// the claims' reads, the attempt log. Every publish answered 202 must still be delivered,
// and none may spend an attempt on a read that failed.
//
// The WAL's length: after a burst has made it long, it must come back down while
// publishing goes on, a step at a time (SQLite cuts it on the writer thread).

import { test, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, rmdirSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { existsSync, writeFileSync, rmSync, statSync, openSync, writeSync, closeSync } from 'node:fs';
import {
  relayBin, tmpDir, startRelay, startReceiver, createSub, api, listAll, getDelivery, waitDelivery,
  waitUntil, sleep, cleanup, withLogs, faultEnv, holdWriteLock, assertError, metricValue, assertNoMore,
} from './harness.mjs';
import { SLOW } from './reliability/lib.mjs';

const CHILD = fileURLToPath(new URL('./reliability/storage-child.mjs', import.meta.url));

function canUnshare() {
  const r = spawnSync('unshare', ['-m', 'true'], { timeout: 5000 });
  return !r.error && r.status === 0;
}

afterEach(cleanup);

test('disk full: 503 storage_unavailable, nothing accepted lost, recovers by itself once there is room', {
  skip: canUnshare() ? false : 'needs `unshare -m` (root or CAP_SYS_ADMIN) for a private tmpfs',
}, async () => {
  relayBin();
  const dir = mkdtempSync(path.join(os.tmpdir(), 'hookrelay-full-'));
  try {
    const child = spawn('unshare', ['-m', 'sh', '-c',
      'mount -t tmpfs -o size=4m tmpfs "$0" && exec node "$1" "$0"', dir, CHILD],
    { stdio: ['ignore', 'pipe', 'pipe'], env: process.env });
    let out = '';
    let err = '';
    child.stdout.on('data', (d) => { out += d; });
    child.stderr.on('data', (d) => { err += d; });
    let timer;
    const code = await new Promise((resolve) => {
      timer = setTimeout(() => { child.kill('SIGKILL'); resolve('timeout'); }, 90_000 * SLOW);
      child.on('exit', (c, s) => resolve(c ?? s));
    });
    clearTimeout(timer);
    const line = out.split('\n').find((l) => l.startsWith('SUMMARY '));
    const ctx = `child exit ${code}\nstdout: ${out.slice(-3000)}\nstderr: ${err.slice(-3000)}`;
    assert.equal(code, 0, ctx);
    assert.ok(line, `no SUMMARY line: ${ctx}`);
    const s = JSON.parse(line.slice('SUMMARY '.length));
    console.log(`reliability storage: ${s.accepted} accepted before the disk filled, then 503 `
      + `(Retry-After ${s.fullRetryAfter}: ${s.fullMessage}); recovered after ${s.recoveredAfterTries} `
      + `POST(s) / ${s.recoveredInMs} ms; lost ${s.lostAtEnd}; integrity ${s.integrity}`);

    assert.equal(s.error, undefined, `child failed: ${s.error}\nrelay stderr: ${s.relayStderrTail}`);
    assert.ok(s.accepted > 0, `some events accepted before the disk filled: ${line}`);
    assert.equal(s.got503, true, `no 503 storage_unavailable within 5000 POSTs: ${line}`);
    assert.deepEqual(s.otherAnswers, {}, 'only 202 until the 503 storage_unavailable');
    assert.ok(s.fullRetryAfter, 'the 503 carries Retry-After');
    assert.equal(s.relayAliveWhenFull, true, 'the relay is still running with the disk full');
    assert.equal(s.healthzWhenFull, 200, 'GET /healthz with the disk full (the process lives)');
    assert.equal(s.writeFailuresAtStart, 0, 'no write failures before the disk filled');
    assert.ok(s.writeFailuresWhenFull > 0, `hookrelay_store_write_failures_total counts the refused writes: ${line}`);
    assert.equal(s.lostWhenFull, 0, 'every 202 before the disk filled is in GET /v1/events');
    assert.ok(s.recoveredAfterTries !== null, `no 202 within 10 s of freeing space: ${line}`);
    assert.equal(s.writeFailuresGrewAfter, 0, 'no new write failures once there is room');
    assert.equal(s.lostAtEnd, 0, 'every accepted event is still stored at the end');
    assert.equal(s.undelivered, 0, 'every accepted event reached the receiver once there was room');
    assert.equal(s.stopExit, 0, `SIGTERM: ${s.stopExit}`);
    assert.equal(s.integrity, 'ok', 'PRAGMA integrity_check after the stop');
  } finally {
    try { rmdirSync(dir); } catch { /* the tmpfs lived only in the namespace */ }
  }
});

test('storage errors inside batches (savepoints, claims, attempt logs): every 202 delivered, no attempt spent on a failed read', withLogs(async () => {
  const flag = path.join(tmpDir(), 'faults-on');
  const relay = await startRelay({
    env: faultEnv({
      FAULT_STEP_FLAG: flag,
      FAULT_STEP_P: '0.02',
      // The claim's own query rarely (a failed claim waits 200 ms and more before the
      // next), the event it reads for each job often.
      FAULT_STEP_SQL: ['SAVEPOINT', 'RELEASE', 'ROLLBACK TO', 'SELECT id, event_seq, subscription_id@0.005',
        'SELECT id, envelope@0.1', 'INSERT OR FAIL INTO attempts@0.05', 'UPDATE deliveries SET state@0.05'].join('|'),
    }),
  });
  // Receivers that answer 500 to the first request for a third of the events: retries.
  const subs = [];
  for (let i = 0; i < 6; i++) {
    const delivered = new Set();
    const seen = new Map();
    const rcv = await startReceiver({
      behavior: (req) => {
        const id = req.headers['webhook-id'];
        const n = (seen.get(id) ?? 0) + 1;
        seen.set(id, n);
        const status = n === 1 && id.charCodeAt(id.length - 1) % 3 === 0 ? 500 : 200;
        if (status === 200) delivered.add(id);
        return { status };
      },
    });
    subs.push({ sub: await createSub(relay, rcv, { event_types: [`faults${i}.x`] }), delivered, accepted: [] });
  }

  writeFileSync(flag, '');
  let stop = false;
  let notFound = 0;
  // Calls that answer 404 each roll back to their savepoint, beside the others.
  const noise = (async () => {
    while (!stop) {
      const r = await api(relay, 'PATCH', '/v1/subscriptions/sub_99999999', { description: 'x' });
      if (r.status === 404) notFound++;
      await sleep(2);
    }
  })();
  const statuses = {};
  for (let k = 0; k < 40; k++) {
    const answers = await Promise.all(subs.map((_, i) => api(relay, 'POST', '/v1/events', { type: `faults${i}.x`, data: { k } })));
    answers.forEach((r, i) => {
      statuses[r.status] = (statuses[r.status] ?? 0) + 1;
      assert.ok(r.status === 202 || r.status === 503, `publish answered ${r.status} ${r.text}`);
      if (r.status === 202) subs[i].accepted.push(r.json.id);
    });
  }
  await sleep(1000);
  rmSync(flag);
  stop = true;
  await noise;

  const missing = () => subs.reduce((n, s) => n + s.accepted.filter((id) => !s.delivered.has(id)).length, 0);
  await waitUntil(() => missing() === 0, 30_000 * SLOW,
    `every accepted event delivered (publishes answered ${JSON.stringify(statuses)})`, 50);
  const metrics = await waitUntil(async () => {
    const m = (await api(relay, 'GET', '/metrics')).text;
    return /^hookrelay_deliveries_pending 0$/m.test(m) && /^hookrelay_deliveries_in_flight 0$/m.test(m) ? m : false;
  }, 10_000 * SLOW, 'nothing pending or in flight');
  const failures = Number(metrics.match(/^hookrelay_store_write_failures_total (\d+)$/m)?.[1]);
  assert.ok(failures > 0, `the shim made no batch fail (store_write_failures_total ${failures})`);
  assert.ok(notFound > 0, 'the 404 stream ran');

  // A failed read of the event fails the claim, which is tried again; it must not become
  // an attempt that went out without a body or id.
  for (const { sub } of subs) {
    for (const d of await listAll(relay, `/v1/deliveries?subscription=${sub.id}`)) {
      assert.equal(d.status, 'delivered', `${d.id}: ${JSON.stringify(d)}`);
      const full = await getDelivery(relay, d.id);
      for (const a of full.attempts) {
        assert.ok(a.http_status !== 0, `${d.id} attempt ${a.attempt} went nowhere: ${a.error}`);
      }
    }
  }
}));

const LOADGEN = fileURLToPath(new URL('../../build/tools/loadgen', import.meta.url));

/** Runs the bench's load generator (see scripts/bench/loadgen.c) and returns its summary. */
function loadgen(args) {
  return new Promise((resolve, reject) => {
    const p = spawn(LOADGEN, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    p.stdout.on('data', (d) => { out += d; });
    p.stderr.on('data', (d) => { out += d; });
    p.on('error', reject);
    p.on('exit', (code) => (code === 0 ? resolve(out) : reject(new Error(`loadgen exited ${code}: ${out}`))));
  });
}

test('a long WAL comes back down in steps while publishing goes on, not in one cut that stops the writer', {
  skip: existsSync(LOADGEN) ? false : `needs ${LOADGEN} (make builds it)`,
}, withLogs(async (t) => {
  // A burst of batches (receivers that never answer, so the writer does little but
  // publish) makes the WAL long; SQLite cuts it back in the first commit after it
  // restarts, on the writer thread, and freeing a MiB took ~0.5-1.5 ms on ext4 here.
  // Builds before this test cut a 250-300 MiB WAL to 64 MiB at once: 500 events/s
  // published right after the burst saw p99 147-172 ms, max 225-249 ms (since: 5-6 ms
  // and 13 ms). Each restart now cuts 8 MiB at most.
  const receiver = await startReceiver({ behavior: { hang: true } });
  const relay = await startRelay({ args: ['--delivery-timeout', '60s'] });
  for (let i = 0; i < 3; i++) await createSub(relay, receiver, { event_types: ['order.*'] });
  const dir = tmpDir();
  const event = { type: 'order.updated', data: { note: 'x'.repeat(400) } };
  writeFileSync(path.join(dir, 'batch.json'), JSON.stringify(Array.from({ length: 100 }, () => event)));
  writeFileSync(path.join(dir, 'event.json'), JSON.stringify(event));
  const walBytes = () => { try { return statSync(relay.dbPath + '-wal').size; } catch { return 0; } };
  const sizes = [];
  const sampler = setInterval(() => sizes.push(walBytes()), 10);
  try {
    const burst = await loadgen(['--url', `${relay.url}/v1/events/batch`, '--body', path.join(dir, 'batch.json'),
      '--rate', '0', '--inflight', '16', '--seconds', '5', '--requests', '1000000']);
    assert.match(burst, /non2xx=0 errors=0/, burst);
    const steady = await loadgen(['--url', `${relay.url}/v1/events`, '--body', path.join(dir, 'event.json'),
      '--rate', '500', '--seconds', '8', '--requests', '100000']);
    assert.match(steady, /non2xx=0 errors=0/, steady);
    clearInterval(sampler);
    sizes.push(walBytes());
    const MiB = 1048576;
    const peak = Math.max(...sizes);
    const trace = `WAL MiB every ~0.5 s: ${sizes.filter((_, i) => i % 50 === 0).map((b) => (b / MiB).toFixed(0)).join(' ')}`;
    if (peak <= 112 * MiB) {
      // Nothing was checked: say so in the report (skipped), not as a pass.
      t.skip(`the WAL never passed 112 MiB (a slow machine?), no cut to tell: ${trace}`);
      return;
    }
    let biggestCut = 0;
    for (let i = 1; i < sizes.length; i++) biggestCut = Math.max(biggestCut, sizes[i - 1] - sizes[i]);
    console.log(`# biggest cut between samples: ${(biggestCut / MiB).toFixed(1)} MiB; ${trace}`);
    // Sampled every ~10 ms: a restart (checkpoint pass, commit, an 8 MiB cut) takes
    // several, so two steps at most fit between samples; one cut to 64 MiB is >= 48.
    assert.ok(biggestCut <= 32 * MiB, `the WAL was cut by ${(biggestCut / MiB).toFixed(0)} MiB between two samples: ${trace}`);
    assert.ok(sizes.at(-1) < peak, `the WAL must come down while publishing goes on: ${trace}`);
  } finally {
    clearInterval(sampler);
  }
}));

// Retention turned on over a long history deletes chunk after chunk with no pause: the
// checkpointer never caught up, the WAL never restarted, and it grew to several times
// the database (409 MB beside a 64 MB database in an operator's run; 91 MB beside 83
// here). Past the checkpoint threshold (32 MiB of WAL) each chunk now waits for a
// checkpoint that copies every frame.
test('a retention catch-up does not grow the WAL past its checkpoint threshold', withLogs(async () => {
  const first = await startRelay();
  const batch = Array.from({ length: 250 }, (_, i) => ({ type: 'old.x', data: { i, pad: 'x'.repeat(2000) } }));
  for (let k = 0; k < 80; k++) {
    const res = await api(first, 'POST', '/v1/events/batch', batch);
    assert.equal(res.status, 202, res.text);
  }
  await first.stop();
  const MiB = 1048576;
  const dbBytes = statSync(first.dbPath).size;
  assert.ok(dbBytes > 60 * MiB, `the history is ${dbBytes} bytes`);
  const walBytes = () => { try { return statSync(first.dbPath + '-wal').size; } catch { return 0; } };
  const sizes = [];
  const sampler = setInterval(() => sizes.push(walBytes()), 10);
  try {
    const relay = await startRelay({ dbPath: first.dbPath, args: ['--retention', '1s'] });
    await waitUntil(async () => (await api(relay, 'GET', '/v1/events?limit=2')).json.data.length <= 1,
      120_000, 'the history deleted', 200);
    clearInterval(sampler);
    const peak = Math.max(0, ...sizes);
    assert.ok(peak <= 48 * MiB, `the WAL reached ${(peak / MiB).toFixed(1)} MiB beside a ${(dbBytes / MiB).toFixed(0)} MiB database`);
  } finally {
    clearInterval(sampler);
  }
}));

// A relay whose completions' last write (the delivery's new state) fails while the flag
// file exists, a receiver, and a subscription of it to `types`.
async function failingCompletions(types, args = []) {
  const flag = path.join(tmpDir(), 'faults-on');
  const relay = await startRelay({
    args,
    env: faultEnv({ FAULT_STEP_FLAG: flag, FAULT_STEP_SQL: 'UPDATE deliveries SET state = ?2@1' }),
  });
  const r = await startReceiver();
  const sub = await createSub(relay, r, { event_types: types });
  return { flag, relay, r, sub };
}

// A completion (an attempt's result) whose write fails is rolled back to its savepoint
// and applied again: what it took out of the pending gauge must come back with it, or
// each failed try counts the same delivery out once more. The random faults above hit a
// completion's last write too rarely to show it; here every one fails for a while.
test('a completion whose write fails and is applied again counts its delivery out of pending once', withLogs(async () => {
  const { flag, relay, r, sub } = await failingCompletions(['gauge.#']);
  const pending = () => metricValue(relay, 'hookrelay_deliveries_pending'); // a drift shows below 0
  writeFileSync(flag, '');
  const ids = [];
  for (let i = 0; i < 3; i++) {
    const res = await api(relay, 'POST', '/v1/events', { type: 'gauge.x', data: { i } });
    assert.equal(res.status, 202, res.text);
    ids.push(res.json.id);
  }
  await r.waitFor(3, 5000 * SLOW); // sent; their results cannot be written
  await sleep(200);
  assert.equal(await pending(), 3, 'nothing delivered is written yet');
  rmSync(flag);
  for (const id of ids) {
    const [d] = await listAll(relay, `/v1/deliveries?event=${id}&subscription=${sub.id}`);
    await waitDelivery(relay, d.id, 'delivered', 5000 * SLOW);
  }
  await sleep(100);
  assert.equal(await pending(), 0, 'each delivery counted out of pending once');
}));

// A completion whose write keeps failing while the rest of its batch commits is tried
// again after a pause, as a failed batch is. It was handed to the writer again at once:
// 34,409 tries in 0.78 s, the writer at 100% CPU and the failure counter climbing as
// fast, for as long as the fault lasted. The pause is the completion's own: publishes
// beside it are not slowed (pausing the whole writer would have held each one 100 ms).
//
// --synchronous normal: the publishes are timed against the writer's pause, not the
// disk. With each one's fdatasync in, a disk busy with another writer (a dd with
// conv=fdatasync beside it) put their median at 13-39 ms against the old 60 ms bound
// (2 ms when quiet); without it, 2-4 ms. Without the fsync a writer that pauses for the
// completion holds a publish only until its pause ends: one every 150 ms then met each
// pause 50 ms before its end and passed the 60 ms bound. Every 110 ms, each meets it
// ~90 ms before its end (a writer that paused there held them 88-92 ms here), and the
// bound is 25 ms.
test('a completion whose write keeps failing is tried again after a pause, and publishes stay prompt', withLogs(async () => {
  const { flag, relay, r, sub } = await failingCompletions(['stuck.#'], ['--synchronous', 'normal']);
  const failures = () => metricValue(relay, 'hookrelay_store_write_failures_total');
  writeFileSync(flag, '');
  const first = await api(relay, 'POST', '/v1/events', { type: 'stuck.x', data: 0 });
  assert.equal(first.status, 202, first.text);
  await r.waitFor(1, 5000 * SLOW); // sent; its result cannot be written
  const before = await failures();
  const t0 = performance.now();
  const publishMs = [];
  for (let i = 1; i <= 5; i++) {
    await sleep(110); // see above: a paused writer would hold each one ~90 ms
    const t = performance.now();
    const res = await api(relay, 'POST', '/v1/events', { type: 'other.x', data: i });
    publishMs.push(performance.now() - t);
    assert.equal(res.status, 202, res.text);
  }
  const after = await failures();
  const seconds = (performance.now() - t0) / 1000;
  console.log(`completion failing for ${seconds.toFixed(2)} s: ${after - before} failed writes; publishes beside it ${publishMs.map((ms) => ms.toFixed(1)).join(', ')} ms`);
  assert.ok(after - before >= 2, `the completion was tried again: ${after - before} failed writes in ${seconds.toFixed(2)} s`);
  assert.ok(after - before <= 15 * seconds + 3, `${after - before} failed writes in ${seconds.toFixed(2)} s: tried again in a loop`);
  publishMs.sort((a, b) => a - b);
  assert.ok(publishMs[2] < 25 * SLOW, `publishes beside the failing completion took ${publishMs.join(', ')} ms`);
  rmSync(flag);
  const [d] = await listAll(relay, `/v1/deliveries?event=${first.json.id}&subscription=${sub.id}`);
  await waitDelivery(relay, d.id, 'delivered', 5000 * SLOW);
  assert.equal(r.requests.length, 1, 'sent once: its result was kept, not the attempt made again');
}));

// After a write that changes a subscription (here its health: the first failed attempt
// sets failing_since) the writer reads the row back into its cache. When that read
// fails, the subscription must keep delivering on the settings it had, and the read is
// tried again: dropped from the cache instead, its events got no deliveries and its
// retries were never sent, until a restart.
test('a failed read of a changed subscription keeps it delivering, and is tried again', withLogs(async () => {
  const flag = path.join(tmpDir(), 'faults-on');
  const relay = await startRelay({
    retrySchedule: '300ms',
    env: faultEnv({ FAULT_STEP_FLAG: flag, FAULT_STEP_SQL: 'SELECT url, headers, enabled@1' }),
  });
  const r = await startReceiver({ behavior: [{ status: 500 }, { status: 200 }] });
  const sub = await createSub(relay, r, { event_types: ['kept.#'] });
  writeFileSync(flag, '');
  const first = await api(relay, 'POST', '/v1/events', { type: 'kept.a' });
  assert.equal(first.status, 202, first.text);
  await waitUntil(async () => (await api(relay, 'GET', `/v1/subscriptions/${sub.id}`)).json.failing_since,
    5000 * SLOW, 'the failed attempt recorded (and the read after it failed)', 20);
  await sleep(100);
  rmSync(flag);

  const second = await api(relay, 'POST', '/v1/events', { type: 'kept.b' });
  assert.equal(second.status, 202, second.text);
  assert.equal(second.json.deliveries, 1, 'the subscription still gets deliveries');
  for (const ev of [first.json, second.json]) {
    const d = (await listAll(relay, `/v1/deliveries?event=${ev.id}`))[0];
    await waitDelivery(relay, d.id, 'delivered', 5000 * SLOW);
  }
  await waitUntil(async () => (await api(relay, 'GET', `/v1/subscriptions/${sub.id}`)).json.failing_since === null,
    5000 * SLOW, 'the success clears failing_since');
  assert.match(relay.stderr, /sub_\d+: reading its settings after a change failed/);
  assert.match(relay.stderr, /sub_\d+: its settings are read again/);
}));

// The same failed read after a 410 has disabled the subscription: what the write did (it
// is disabled) holds even though its settings could not be read, so its other
// deliveries stay held rather than being sent to the endpoint that answered 410.
test('a failed read after a 410 still holds the disabled subscription\'s deliveries', withLogs(async () => {
  const flag = path.join(tmpDir(), 'faults-on');
  const relay = await startRelay({
    env: faultEnv({ FAULT_STEP_FLAG: flag, FAULT_STEP_SQL: 'SELECT url, headers, enabled@1' }),
  });
  const gone = await startReceiver({ behavior: { status: 410 } });
  const sub = await createSub(relay, gone, { event_types: ['gone.#'], max_in_flight: 1 });
  writeFileSync(flag, '');
  const batch = await api(relay, 'POST', '/v1/events/batch',
    Array.from({ length: 5 }, (_, i) => ({ type: 'gone.x', data: { i } })));
  assert.equal(batch.status, 202, batch.text);
  await waitUntil(() => /sub_\d+: reading its settings after a change failed/.test(relay.stderr),
    5000 * SLOW, 'the read after the 410 failed', 20);
  await sleep(1500); // claims run at least once a second
  assert.equal(gone.requests.length, 1, 'nothing more was sent to the endpoint that answered 410');
  const ds = await listAll(relay, `/v1/deliveries?subscription=${sub.id}`);
  assert.deepEqual(ds.map((d) => d.status).sort(), ['failed', 'pending', 'pending', 'pending', 'pending']);
  rmSync(flag);
  await waitUntil(() => /sub_\d+: its settings are read again/.test(relay.stderr), 5000 * SLOW,
    'the read tried again once the fault is gone', 50);
  assert.equal((await api(relay, 'GET', `/v1/subscriptions/${sub.id}`)).json.enabled, false);
  assert.equal(gone.requests.length, 1);
}));

// And after a PATCH that disables it: the operator's disable holds while the read fails.
test('a failed read after PATCH enabled:false still stops new deliveries', withLogs(async () => {
  const flag = path.join(tmpDir(), 'faults-on');
  const relay = await startRelay({
    env: faultEnv({ FAULT_STEP_FLAG: flag, FAULT_STEP_SQL: 'SELECT url, headers, enabled@1' }),
  });
  const r = await startReceiver();
  const sub = await createSub(relay, r, { event_types: ['off.#'] });
  writeFileSync(flag, '');
  const off = await api(relay, 'PATCH', `/v1/subscriptions/${sub.id}`, { enabled: false });
  assert.equal(off.status, 200, off.text);
  assert.equal(off.json.enabled, false);
  await waitUntil(() => /sub_\d+: reading its settings after a change failed/.test(relay.stderr),
    5000 * SLOW, 'the read after the PATCH failed', 20);
  const ev = await api(relay, 'POST', '/v1/events', { type: 'off.x' });
  assert.equal(ev.status, 202, ev.text);
  assert.equal(ev.json.deliveries, 0, 'a disabled subscription gets no new delivery');
  rmSync(flag);
  await sleep(300);
  assert.equal(r.requests.length, 0);
}));

// Every 503 tells the client when to come back (docs/api.md, "all with Retry-After"):
// the read routes did, but /metrics, which a monitor polls while the disk is failing,
// answered without it (as did /healthz, whose sqlite3_exec the shim cannot reach; the
// header is now added to every 503 in one place, http.c).
test('a store that does not answer: /healthz, /metrics and reads are 503 with Retry-After', withLogs(async () => {
  const flag = path.join(tmpDir(), 'faults-on');
  const relay = await startRelay({
    env: faultEnv({
      FAULT_STEP_FLAG: flag,
      FAULT_STEP_SQL: 'SELECT (SELECT count(*) FROM subscriptions@1|SELECT d.id, e.id@1|SELECT 1 FROM events@1',
    }),
  });
  assert.equal((await api(relay, 'GET', '/healthz')).status, 200);
  writeFileSync(flag, '');
  const health = await api(relay, 'GET', '/healthz');
  assertError(health, 503, 'storage_unavailable', '/healthz with reads failing');
  for (const route of ['/metrics', '/v1/deliveries']) {
    const r = await api(relay, 'GET', route);
    assert.equal(r.status, 503, `${route}: ${r.text}`);
    assert.equal(r.json?.error?.code, 'storage_unavailable', route);
    assert.match(r.headers.get('retry-after') ?? '', /^[1-9]\d*$/, `${route} says when to retry`);
  }
  rmSync(flag);
  assert.equal((await api(relay, 'GET', '/metrics')).status, 200, 'and it answers again');
  assert.equal((await api(relay, 'GET', '/healthz')).status, 200, 'healthy again');
}));

// A publish is answered after the fdatasync of its batch; the COMMIT comes before, and
// readers saw the event and its deliveries from then on. A power cut in between took
// back what a reader had been shown, and SQLite then gave its delivery id to another
// delivery. Reads now stop where the disk does, as claims always have.
test('reads show no event or delivery before its sync: nothing a power cut could take back', withLogs(async () => {
  const flag = path.join(tmpDir(), 'slow-disk');
  const relay = await startRelay({ env: faultEnv({ FAULT_STEP_FLAG: flag, FAULT_FSYNC_MS: '1500' }) });
  const r = await startReceiver();
  await createSub(relay, r, { event_types: ['seen.#'] });
  writeFileSync(flag, '');
  const publish = api(relay, 'POST', '/v1/events', { type: 'seen.a' });
  await sleep(500); // committed by now, its sync stalled for 1.5 s
  try {
    const events = await api(relay, 'GET', '/v1/events');
    assert.equal(events.status, 200, events.text);
    assert.deepEqual(events.json.data.map((e) => e.type), [], 'the event is not listed before its sync');
    const deliveries = await api(relay, 'GET', '/v1/deliveries');
    assert.deepEqual(deliveries.json.data, [], 'nor its delivery');
    assert.equal((await api(relay, 'GET', '/v1/deliveries/dlv_1')).status, 404, 'nor by id');
  } finally {
    rmSync(flag);
  }
  const res = await publish;
  assert.equal(res.status, 202, res.text);
  const shown = await api(relay, 'GET', `/v1/events/${res.json.id}`);
  assert.equal(shown.status, 200, 'once answered, it is there');
  assert.deepEqual(shown.json.deliveries.map((d) => d.id), ['dlv_1']);
  assert.deepEqual((await api(relay, 'GET', '/v1/events')).json.data.map((e) => e.id), [res.json.id]);
  assert.equal((await api(relay, 'GET', '/v1/deliveries/dlv_1')).status, 200);
}));

// GET /v1/deliveries/{id} read the row, then its attempts, each in a read of its own: a
// result committed between the two showed attempt_count 28 beside 29 attempts. The
// shim holds the reader between them while retries every 50 ms go on.
test('a delivery and its attempts are read from one snapshot', withLogs(async () => {
  const flag = path.join(tmpDir(), 'hold-reader');
  const relay = await startRelay({
    retrySchedule: Array(40).fill('50ms').join(','),
    env: faultEnv({
      FAULT_STEP_FLAG: flag, FAULT_STEP_SQL: 'SELECT attempt, started_at@1', FAULT_STEP_STALL_MS: '700',
    }),
  });
  const r = await startReceiver({ behavior: { status: 500 } });
  await createSub(relay, r, { event_types: ['snap.#'] });
  const ev = await api(relay, 'POST', '/v1/events', { type: 'snap.a' });
  assert.equal(ev.status, 202, ev.text);
  await waitUntil(async () => (await getDelivery(relay, 'dlv_1')).attempt_count >= 2, 5000 * SLOW,
    'failing attempts recorded', 20);
  writeFileSync(flag, '');
  let d;
  try {
    d = await getDelivery(relay, 'dlv_1');
  } finally {
    rmSync(flag);
  }
  assert.equal(d.attempts.length, d.attempt_count, 'as many attempts listed as counted');
  assert.deepEqual(d.attempts.map((a) => a.attempt), d.attempts.map((_, i) => i + 1));
  assert.ok(r.requests.length > d.attempts.length, 'attempts were made while the read was held');
}));

// A deleted subscription's pending deliveries are failed 1,000 per writer batch, so that
// one DELETE of a big backlog does not hold the write lock for seconds nor journal it
// all at once. The chunks ran milliseconds apart, too fast to see from outside; the
// shim now holds each chunk 400 ms before it runs, and a reader counts between them.
test('a deleted subscription\'s backlog is failed in chunks of 1,000', withLogs(async () => {
  const flag = path.join(tmpDir(), 'slow-sweep');
  const relay = await startRelay({
    retrySchedule: '1h',
    env: faultEnv({
      FAULT_STEP_FLAG: flag, FAULT_STEP_STALL_MS: '400',
      FAULT_STEP_SQL: "UPDATE deliveries SET state = 2, next_attempt_at = NULL, last_error = 'subscription deleted', updated_at = ?2 WHERE id IN@1",
    }),
  });
  const r = await startReceiver({ behavior: { hang: true } });
  const sub = await createSub(relay, r, { event_types: ['bulk.*'], max_in_flight: 1 });
  const batch = Array.from({ length: 100 }, (_, i) => ({ type: 'bulk.item', data: { i } }));
  for (let k = 0; k < 25; k++) assert.equal((await api(relay, 'POST', '/v1/events/batch', batch)).status, 202);
  await r.waitFor(1); // one in flight (not swept: its result ends it), 2,499 pending
  const n = Number(sub.id.replace('sub_', ''));
  const failed = () => Number(spawnSync('sqlite3', [relay.dbPath,
    `SELECT count(*) FROM deliveries WHERE subscription_id = ${n} AND state = 2`],
  { encoding: 'utf8', timeout: 5000 }).stdout.trim());
  writeFileSync(flag, '');
  const seen = new Set();
  try {
    const del = api(relay, 'DELETE', `/v1/subscriptions/${sub.id}`);
    const until = Date.now() + 8000 * SLOW;
    while (Date.now() < until) {
      seen.add(failed());
      if (seen.has(2499)) break;
      await sleep(50);
    }
    assert.equal((await del).status, 204);
  } finally {
    rmSync(flag);
  }
  const counts = [...seen].sort((a, b) => a - b);
  assert.ok(counts.includes(2499), `all 2,499 failed in the end: ${counts.join(' ')}`);
  assert.ok(counts.includes(1000) && counts.includes(2000),
    `chunks of 1,000 seen between the batches: ${counts.join(' ')}`);
  assert.equal(r.requests.length, 1, 'nothing more was sent');
}));

// Another process holding the write lock past the writer's 5 s wait: the publish is 503
// and says why. It said only "the store failed; nothing was kept", and the log nothing.
test('a write lock held elsewhere: 503 storage_unavailable naming the lock, then 202 again', withLogs(async () => {
  const relay = await startRelay();
  const lock = await holdWriteLock(relay.dbPath);
  let res;
  try {
    res = await api(relay, 'POST', '/v1/events', { type: 'locked.out' }, {}, { timeoutMs: 15_000 });
  } finally {
    await lock.release();
  }
  assert.equal(res.status, 503, res.text);
  assert.equal(res.json?.error?.code, 'storage_unavailable');
  assert.match(res.json.error.message, /database is locked/);
  assert.ok(res.headers.get('retry-after'));
  assert.equal((await api(relay, 'POST', '/v1/events', { type: 'locked.out' })).status, 202);
}));

// A batch failed by one of its calls fails the others too; each 503 must say why. The
// message was read after the ROLLBACK, which had turned SQLite's into "not an error".
test('publishes failed with their batch say why, never "not an error"', withLogs(async () => {
  const flag = path.join(tmpDir(), 'faults-on');
  const relay = await startRelay({ env: faultEnv({ FAULT_STEP_FLAG: flag, FAULT_STEP_SQL: 'INSERT INTO events@0.05' }) });
  writeFileSync(flag, '');
  const messages = {};
  try {
    for (let round = 0; round < 3; round++) {
      const answers = await Promise.all(Array.from({ length: 150 },
        (_, i) => api(relay, 'POST', '/v1/events', { type: 'why.x', data: { round, i } })));
      for (const a of answers) {
        if (a.status === 202) continue;
        assert.equal(a.status, 503, a.text);
        messages[a.json.error.message] = (messages[a.json.error.message] ?? 0) + 1;
      }
    }
  } finally {
    rmSync(flag);
  }
  console.log(`503 messages: ${JSON.stringify(messages)}`);
  assert.ok(Object.keys(messages).length > 0, 'some publishes failed');
  for (const m of Object.keys(messages)) {
    assert.ok(!/not an error/.test(m), `a 503 said: ${m}`);
    assert.match(m, /^storage (unavailable|error): /, m);
  }
}));

// An ingest call runs without a savepoint, and its events' delivery rows go in by
// statements of many rows each (INSERT OR FAIL, no statement journal): a statement that
// fails must fail its whole batch. Every event answered 202 has all its deliveries, and
// one answered 503 left nothing behind, in single publishes and batches alike.
test('a delivery row that fails to insert fails its batch whole: no event kept with some of its deliveries', withLogs(async () => {
  const flag = path.join(tmpDir(), 'faults-on');
  const relay = await startRelay({ env: faultEnv({ FAULT_STEP_FLAG: flag, FAULT_STEP_SQL: 'INSERT OR FAIL INTO deliveries@0.01' }) });
  const receivers = [];
  for (let i = 0; i < 3; i++) {
    receivers.push(await startReceiver());
    await createSub(relay, receivers[i], { event_types: ['part.#'] });
  }
  writeFileSync(flag, '');
  const accepted = [];
  let refused = 0;
  const take = (res, ids) => {
    if (res.status === 202) {
      accepted.push(...ids(res));
    } else {
      assertError(res, 503, 'storage_unavailable', 'a publish whose delivery rows failed');
      refused++;
    }
  };
  try {
    for (let round = 0; round < 4; round++) {
      const singles = Array.from({ length: 60 },
        (_, i) => api(relay, 'POST', '/v1/events', { type: 'part.one', data: { round, i } }));
      const batches = Array.from({ length: 4 }, (_, i) => api(relay, 'POST', '/v1/events/batch',
        Array.from({ length: 40 }, (_, j) => ({ type: 'part.many', data: { round, i, j } }))));
      for (const res of await Promise.all(singles)) take(res, (r) => [r.json.id]);
      for (const res of await Promise.all(batches)) take(res, (r) => r.json.ids);
    }
  } finally {
    rmSync(flag);
  }
  console.log(`${accepted.length} events accepted, ${refused} publishes refused`);
  assert.ok(refused > 0 && accepted.length > 0, `${refused} refused, ${accepted.length} accepted`);
  const stored = await listAll(relay, '/v1/events');
  assert.deepEqual(new Set(stored.map((e) => e.id)), new Set(accepted), 'exactly the accepted events are stored');
  for (const r of receivers) {
    await r.waitFor(accepted.length, 15_000);
    await assertNoMore(r, accepted.length);
    assert.deepEqual(new Set(r.requests.map((q) => q.headers['webhook-id'])), new Set(accepted));
  }
}));

// A damaged page that start-up does not read: a read through it gets a 503 whose "try
// again" can never succeed, so the operator must hear of it. SQLite reports the damage
// to its error log; the relay writes that to stderr (once a minute at most).
test('a damaged page found by a read is logged, once a minute at most', withLogs(async () => {
  const first = await startRelay();
  const batch = Array.from({ length: 1000 }, (_, i) => ({ type: 'dmg.x', data: { i, pad: 'p'.repeat(200) } }));
  for (let k = 0; k < 3; k++) assert.equal((await api(first, 'POST', '/v1/events/batch', batch)).status, 202);
  await first.stop();
  const q = spawnSync('sqlite3', [first.dbPath,
    "SELECT pageno FROM dbstat WHERE name = 'events' AND pagetype = 'leaf' ORDER BY pageno LIMIT 1 OFFSET 10; PRAGMA page_size;"],
    { encoding: 'utf8', timeout: 10_000 });
  assert.equal(q.status, 0, q.stderr);
  const [pgno, pageSize] = q.stdout.trim().split('\n').map(Number);
  assert.ok(pgno > 1 && pageSize > 0, q.stdout);
  const fd = openSync(first.dbPath, 'r+');
  writeSync(fd, Buffer.alloc(pageSize, 0xa5), 0, pageSize, (pgno - 1) * pageSize);
  closeSync(fd);

  const relay = await startRelay({ dbPath: first.dbPath });
  let status = 200;
  for (let after = '', pages = 0; status === 200 && pages < 100; pages++) {
    const res = await api(relay, 'GET', `/v1/events?limit=200${after}`);
    status = res.status;
    if (status === 200 && !res.json.next) break;
    if (status === 200) after = `&after=${encodeURIComponent(res.json.next)}`;
    else assertError(res, 503, 'storage_unavailable', 'a read through the damaged page');
  }
  assert.equal(status, 503, 'the damaged page was read');
  await waitUntil(() => /the database file is damaged: database disk image is malformed/.test(relay.stderr), 3000, 'the damage logged');
  for (let i = 0; i < 5; i++) await api(relay, 'GET', '/v1/events?limit=1000');
  await sleep(200);
  assert.equal(relay.stderr.match(/the database file is damaged/g).length, 1, 'once a minute at most');
}));
