// metrics.test.mjs - GET /metrics: Prometheus text with what was published and attempted,
// what is pending and in flight, and the subscriptions by state; behind the admin key.

import { test, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync, rmSync } from 'node:fs';
import path from 'node:path';
import {
  startRelay, startReceiver, api, createSub, postEvent, assertError, waitUntil, cleanup, withLogs,
  listAll, tmpDir, faultEnv, holdWriteLock, sleep,
} from './harness.mjs';

afterEach(cleanup);

async function metrics(relay, headers = {}) {
  const res = await api(relay, 'GET', '/metrics', undefined, headers);
  assert.equal(res.status, 200, res.text);
  assert.match(res.headers.get('content-type'), /^text\/plain; version=0\.0\.4/);
  const values = {};
  for (const line of res.text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const m = line.match(/^([a-z_]+(?:\{[^}]*\})?) (\d+(?:\.\d+)?)$/);
    assert.ok(m, `not a Prometheus sample line: ${line}`);
    values[m[1]] = Number(m[2]);
  }
  return values;
}

test('/metrics counts events, attempts by outcome, pending, in flight and subscriptions', withLogs(async () => {
  // three attempts, then failed: two retries for one failure, so that a count of one
  // outcome under the other's name shows
  const relay = await startRelay({ retrySchedule: '100ms,100ms' });
  const ok = await startReceiver();
  const bad = await startReceiver({ behavior: { status: 500 } });
  const hang = await startReceiver({ behavior: { hang: true } });
  await createSub(relay, ok, { event_types: ['m.ok'] });
  await createSub(relay, bad, { event_types: ['m.bad'] });
  await createSub(relay, hang, { event_types: ['m.hang'] });
  const off = await createSub(relay, ok, { event_types: ['m.off'] });
  assert.equal((await api(relay, 'PATCH', `/v1/subscriptions/${off.id}`, { enabled: false })).status, 200);

  await postEvent(relay, { type: 'm.ok', data: 1 }, { 'Idempotency-Key': 'once' });
  const replay = await api(relay, 'POST', '/v1/events', { type: 'm.ok', data: 1 }, { 'Idempotency-Key': 'once' });
  assert.equal(replay.status, 200, 'an idempotent replay is not a new event');
  await postEvent(relay, { type: 'm.ok', data: 2 });
  await postEvent(relay, { type: 'm.bad' });
  await postEvent(relay, { type: 'm.hang' });
  await ok.waitFor(2);
  await hang.waitFor(1);
  await bad.waitFor(3);

  // A receiver has a request before its result is committed: wait for the whole picture.
  const want = {
    hookrelay_events_published_total: 4,
    'hookrelay_delivery_attempts_total{outcome="delivered"}': 2,
    'hookrelay_delivery_attempts_total{outcome="retry"}': 2,
    'hookrelay_delivery_attempts_total{outcome="failed"}': 1,
    hookrelay_deliveries_pending: 1, // the hanging one
    hookrelay_deliveries_in_flight: 1,
    'hookrelay_subscriptions{state="enabled"}': 3,
    'hookrelay_subscriptions{state="disabled"}': 1,
  };
  let m;
  await waitUntil(async () => {
    m = await metrics(relay);
    return Object.entries(want).every(([k, v]) => m[k] === v);
  }, 5000, 'the metrics to add up');
  assert.equal(typeof m.hookrelay_writer_queue, 'number'); // counted in its own test below

  // The hanging attempt fails when its receiver drops it, the retries get a 500: the
  // delivery has failed and nothing is in flight any more.
  hang.setBehavior({ status: 500 });
  hang.dropConnections();
  await waitUntil(async () => {
    m = await metrics(relay);
    return m.hookrelay_deliveries_in_flight === 0 && m.hookrelay_deliveries_pending === 0 &&
      m['hookrelay_delivery_attempts_total{outcome="retry"}'] === 4 &&
      m['hookrelay_delivery_attempts_total{outcome="failed"}'] === 2;
  }, 5000, 'in flight back to 0 after the hanging delivery failed');
}));

// Two histograms: how long each attempt took (a slow receiver shows), and how long each
// delivery took from its event being published to the 2xx, waiting out retries included
// (what a receiver's freshness is).
test('/metrics histograms: each attempt\'s duration, and each delivery\'s latency from its event to the 2xx', withLogs(async () => {
  const relay = await startRelay({ retrySchedule: '400ms' });
  const slow = await startReceiver({ behavior: { delayMs: 300 } });
  const flaky = await startReceiver({ behavior: [{ status: 500 }, { status: 200 }] });
  await createSub(relay, slow, { event_types: ['h.slow'] });
  await createSub(relay, flaky, { event_types: ['h.flaky'] });
  for (let i = 0; i < 3; i++) await postEvent(relay, { type: 'h.slow', data: i });
  await postEvent(relay, { type: 'h.flaky' });

  const dur = 'hookrelay_delivery_attempt_duration_seconds';
  const lat = 'hookrelay_delivery_latency_seconds';
  let m;
  await waitUntil(async () => {
    m = await metrics(relay);
    return m[`${dur}_count`] === 5 && m[`${lat}_count`] === 4;
  }, 10_000, 'five attempts and four deliveries in the histograms');
  for (const name of [dur, lat]) {
    assert.equal(m[`${name}_bucket{le="+Inf"}`], m[`${name}_count`], `${name}: +Inf is the count`);
    const buckets = Object.keys(m).filter((k) => k.startsWith(`${name}_bucket`)).map((k) => m[k]);
    assert.equal(buckets.length, 18, `${name}: 17 bounds and +Inf`);
    assert.deepEqual(buckets, [...buckets].sort((a, b) => a - b), `${name}: cumulative`);
    // The sum is in seconds, as the bounds are: each observation lies between its
    // bucket's lower and upper bound, so the sum does too (a sum in another unit, or
    // buckets that do not hold what was observed, falls outside).
    let lo = 0, hi = 0, prevBound = 0, prevCount = 0;
    for (const k of Object.keys(m).filter((key) => key.startsWith(`${name}_bucket`) && !key.includes('+Inf'))) {
      const bound = Number(k.match(/le="([^"]+)"/)[1]);
      const n = m[k] - prevCount;
      lo += n * prevBound;
      hi += n * bound;
      prevBound = bound;
      prevCount = m[k];
    }
    assert.equal(prevCount, m[`${name}_count`], `${name}: every observation under the last bound`);
    assert.ok(m[`${name}_sum`] >= lo && m[`${name}_sum`] <= hi, `${name}_sum ${m[`${name}_sum`]} s within [${lo}, ${hi}]`);
  }
  // The flaky receiver's two answers were quick; the slow one's three took 300 ms each.
  assert.equal(m[`${dur}_bucket{le="0.25"}`], 2, 'attempts under 250 ms');
  assert.equal(m[`${dur}_bucket{le="10"}`], 5);
  assert.ok(m[`${dur}_sum`] >= 0.85, `attempt time in all: ${m[`${dur}_sum`]} s`);
  // Every delivery took at least 300 ms: the slow receiver's answer, or the wait before
  // the flaky one's second attempt (400 ms with the schedule's +-20% jitter: >= 320 ms).
  assert.equal(m[`${lat}_bucket{le="0.25"}`], 0, 'no delivery under 250 ms');
  assert.equal(m[`${lat}_bucket{le="10"}`], 4);
  assert.ok(m[`${lat}_sum`] >= 1.2, `latency in all: ${m[`${lat}_sum`]} s`);
}));

// A durable publish is answered after the WAL's fdatasync; when the disk stalls, the
// publisher waits, and the operator should see why without a profiler. The stall is
// made by tests/faults/step_fault.c (LD_PRELOAD): each fdatasync sleeps 300 ms first
// while a flag file exists.
test('/metrics shows a disk that stalls on fdatasync, the wait every durable publish has', withLogs(async () => {
  const flag = path.join(tmpDir(), 'slow-disk');
  const relay = await startRelay({ env: faultEnv({ FAULT_STEP_FLAG: flag, FAULT_FSYNC_MS: '300' }) });
  const name = 'hookrelay_wal_sync_duration_seconds';
  const slowSyncs = (m) => m[`${name}_count`] - m[`${name}_bucket{le="0.25"}`];

  await postEvent(relay, { type: 'disk.fast' });
  const before = await metrics(relay);
  assert.ok(before[`${name}_count`] >= 1, 'the publish waited for a sync, and it was counted');
  const buckets = Object.keys(before).filter((k) => k.startsWith(`${name}_bucket`)).map((k) => before[k]);
  assert.equal(buckets.length, 17, '16 bounds, 100 µs to 10 s, and +Inf');
  assert.deepEqual(buckets, [...buckets].sort((a, b) => a - b), 'cumulative');
  assert.equal(before[`${name}_bucket{le="+Inf"}`], before[`${name}_count`]);
  assert.ok(before[`${name}_bucket{le="0.0001"}`] !== undefined, 'sub-millisecond buckets');

  writeFileSync(flag, '');
  const started = Date.now();
  await postEvent(relay, { type: 'disk.slow' });
  const waited = Date.now() - started;
  rmSync(flag);
  assert.ok(waited >= 300, `the 202 came after the stalled sync, not before it (${waited} ms)`);
  const after = await metrics(relay);
  assert.ok(after[`${name}_count`] > before[`${name}_count`]);
  assert.ok(slowSyncs(after) >= slowSyncs(before) + 1, 'the stalled sync is in the buckets past 250 ms');
  assert.ok(after[`${name}_sum`] - before[`${name}_sum`] >= 0.3, 'and in the sum');
}));

test('/metrics needs the admin key when keys are set', withLogs(async () => {
  const admin = 'metrics-admin-key-0123456789';
  const publisher = 'metrics-publish-key-0123456789';
  const relay = await startRelay({ args: ['--api-key', admin, '--publish-key', publisher] });
  assertError(await api(relay, 'GET', '/metrics'), 401, 'unauthorized', 'no key');
  assertError(await api(relay, 'GET', '/metrics', undefined, { authorization: `Bearer ${publisher}` }),
    403, 'forbidden', 'publish-only key');
  const m = await metrics(relay, { authorization: `Bearer ${admin}` });
  assert.equal(m.hookrelay_events_published_total, 0);
}));

// The pending gauge is a count the writer keeps (a /metrics scrape no longer walks the
// backlog): each way a delivery enters or leaves pending must move it, and a restart
// must find the same number. The truth it is checked against is the delivery log.
test('/metrics pending follows every way in and out of pending, and a restart', withLogs(async () => {
  const relay = await startRelay({ retrySchedule: '100ms' }); // two attempts, then failed
  const ok = await startReceiver();
  const bad = await startReceiver({ behavior: { status: 500 } });
  const hang = await startReceiver({ behavior: { hang: true } });
  await createSub(relay, ok, { event_types: ['p.ok'] });
  const badSub = await createSub(relay, bad, { event_types: ['p.bad'] });
  const slow = await createSub(relay, hang, { event_types: ['p.slow'], max_in_flight: 1 });

  const pendingInLog = async () => (await listAll(relay, '/v1/deliveries?status=pending')).length;
  const settlesAt = async (n, what) => {
    let m;
    await waitUntil(async () => {
      m = await metrics(relay);
      return m.hookrelay_deliveries_pending === n && (await pendingInLog()) === n;
    }, 8000, `${what}: pending ${n} in /metrics and in the log`);
  };

  // In: single and batch ingest. Out: delivered, failed after its retries.
  await postEvent(relay, { type: 'p.ok' });
  const batch = await api(relay, 'POST', '/v1/events/batch',
    [{ type: 'p.ok' }, { type: 'p.bad' }, { type: 'p.slow' }, { type: 'p.slow' }, { type: 'p.slow' }]);
  assert.equal(batch.status, 202, batch.text);
  await ok.waitFor(2);
  await bad.waitFor(2);
  await hang.waitFor(1);
  await settlesAt(3, 'delivered and failed left; three slow ones wait (one in flight)');

  // In: a manual retry of the failed delivery (and its failing again: out).
  const [failed] = await listAll(relay, `/v1/deliveries?subscription=${badSub.id}&status=failed`);
  assert.ok(failed, 'the p.bad delivery failed');
  assert.equal((await api(relay, 'POST', `/v1/deliveries/${failed.id}/retry`)).status, 202);
  await bad.waitFor(3);
  await settlesAt(3, 'the retried delivery failed again');

  // In: recover re-queues the failed one; the receiver now answers, so it leaves again.
  bad.setBehavior({ status: 200 });
  const rec = await api(relay, 'POST', `/v1/subscriptions/${badSub.id}/recover`,
    { since: new Date(Date.now() - 60_000).toISOString() });
  assert.equal(rec.status, 202, rec.text);
  assert.equal(rec.json.requeued, 1);
  await bad.waitFor(4);
  await settlesAt(3, 'the recovered delivery was delivered');

  // Out: deleting a subscription fails its waiting deliveries at once, and the one in
  // flight when its attempt ends.
  assert.equal((await api(relay, 'DELETE', `/v1/subscriptions/${slow.id}`)).status, 204);
  await settlesAt(1, 'the deleted subscription\'s two waiting deliveries failed');
  hang.dropConnections();
  await settlesAt(0, 'its delivery in flight failed when its attempt ended');

  // A backlog held across a restart is counted again at start.
  await createSub(relay, hang, { event_types: ['p.held'] });
  for (let i = 0; i < 4; i++) await postEvent(relay, { type: 'p.held' });
  await hang.waitFor(5);
  await settlesAt(4, 'four deliveries held by a receiver that does not answer');
  await relay.stop();
  const again = await startRelay({ dbPath: relay.dbPath, retrySchedule: '1h' });
  const m = await metrics(again);
  assert.equal(m.hookrelay_deliveries_pending, 4, 'counted at start');
  assert.equal((await listAll(again, '/v1/deliveries?status=pending')).length, 4);
}));

// A receiver that fails every other request flips its subscription between failing and
// delivering on nearly every result: five such gave 1,757 lines in 7 s. At most 4 such
// lines a minute per subscription now, the next one counting what went unlogged.
test('a flaky receiver: at most 4 failing/delivering lines a minute, then the state it settled in', { timeout: 120_000 }, withLogs(async () => {
  const relay = await startRelay({ retrySchedule: '50ms' });
  const r = await startReceiver({ behavior: (_q, i) => (i % 2 ? { status: 200 } : { status: 500 }) });
  const sub = await createSub(relay, r, { event_types: ['flaky.#'], max_in_flight: 1 });
  const n = sub.id.replace('sub_', '');
  const res = await api(relay, 'POST', '/v1/events/batch',
    Array.from({ length: 40 }, (_, i) => ({ type: 'flaky.tick', data: { i } })));
  assert.equal(res.status, 202, res.text);
  await r.waitFor(60, 10_000);
  await sleep(200);
  const flips = relay.stderrText.split('\n')
    .filter((l) => new RegExp(`sub_${n} (failing|delivering again)`).test(l));
  console.log(`${r.requests.length} attempts, ${flips.length} health lines`);
  assert.ok(flips.length <= 4, `${flips.length} lines:\n${flips.join('\n')}`);
  assert.ok(flips.length >= 2, 'the first changes are logged');
  // Then it goes down for good: once the minute is over, the log says so (it ended on
  // whichever flip was the fourth, with nothing after it).
  r.setBehavior({ status: 500 });
  await api(relay, 'POST', '/v1/events', { type: 'flaky.down' });
  const settled = await waitUntil(() => relay.stderrText.split('\n').find((l) =>
    new RegExp(`^hookrelay: sub_${n} failing since \\S+ \\[\\d+ changes between failing and delivering in the last minute not logged\\]$`).test(l)),
  75_000, 'a line with the state it settled in', 500);
  console.log(settled);
}));

// An operator alerts on the gauge and reads the log: each change of a subscription's
// health is one line on stderr, once, and hookrelay_subscriptions_failing follows it.
test('a subscription going failing, delivering again, disabled and enabled: one log line each and the failing gauge', withLogs(async () => {
  const relay = await startRelay({ retrySchedule: '150ms,150ms,150ms,150ms,150ms' });
  const r = await startReceiver({ behavior: { status: 500, body: 'down' } });
  const sub = await createSub(relay, r, { event_types: ['h.#'] });
  const n = sub.id.replace('sub_', '');
  const lines = (re) => relay.stderrText.split('\n').filter((l) => re.test(l));
  assert.equal((await metrics(relay)).hookrelay_subscriptions_failing, 0);

  // 1. Failing: three attempts fail; one line, and the gauge counts the subscription.
  await postEvent(relay, { type: 'h.one' });
  await r.waitFor(3, 5000);
  await waitUntil(() => lines(new RegExp(`sub_${n} failing`)).length === 1, 3000, 'the failing line');
  assert.match(lines(new RegExp(`sub_${n} failing`))[0],
    new RegExp(`^hookrelay: sub_${n} failing: an attempt failed at \\d{4}-\\d\\d-\\d\\dT`));
  assert.equal((await metrics(relay)).hookrelay_subscriptions_failing, 1);

  // 2. Delivering again: the next attempt gets 200.
  r.setBehavior({ status: 200 });
  await waitUntil(() => lines(new RegExp(`sub_${n} delivering again`)).length === 1, 3000, 'the recovery line');
  assert.match(lines(/delivering again/)[0],
    new RegExp(`^hookrelay: sub_${n} delivering again \\(failing since \\d{4}-`));
  assert.equal((await metrics(relay)).hookrelay_subscriptions_failing, 0);
  assert.equal(lines(new RegExp(`sub_${n} failing`)).length, 1, 'failing logged once, not per attempt');

  // 3. Disabled by a 410, with the reason; a disabled subscription is not counted failing.
  r.setBehavior({ status: 410 });
  await postEvent(relay, { type: 'h.two' });
  await waitUntil(() => lines(new RegExp(`sub_${n} disabled`)).length === 1, 3000, 'the disabled line');
  assert.equal(lines(new RegExp(`sub_${n} disabled`))[0],
    `hookrelay: sub_${n} disabled: the endpoint answered 410 Gone`);
  const m = await metrics(relay);
  assert.equal(m.hookrelay_subscriptions_failing, 0);
  assert.equal(m['hookrelay_subscriptions{state="disabled"}'], 1);

  // 4. Enabled again through the API.
  assert.equal((await api(relay, 'PATCH', `/v1/subscriptions/${sub.id}`, { enabled: true })).status, 200);
  await waitUntil(() => lines(new RegExp(`sub_${n} enabled again`)).length === 1, 3000, 'the enabled line');
  assert.equal(lines(/sub_\d+ (failing|delivering again|disabled|enabled again)/).length, 4,
    `one line per change:\n${relay.stderrText}`);
}));

// The writer queue gauge counts the writes waiting for the writer: while another process
// holds the database's write lock (up to the writer's 5 s lock wait), they pile up.
test('hookrelay_writer_queue counts writes waiting for the writer, and falls back to 0', withLogs(async () => {
  const relay = await startRelay();
  const sub = await createSub(relay, null, { url: 'http://127.0.0.1:9/q', enabled: false });
  // idle, 0 (a scrape can meet the dispatcher's once-a-second claim in the queue: a clean
  // CI run read 1 here once)
  await waitUntil(async () => (await metrics(relay)).hookrelay_writer_queue === 0, 3000,
    'the gauge at 0 while idle');
  const lock = await holdWriteLock(relay.dbPath);
  const patches = [];
  for (let i = 0; i < 5; i++) {
    patches.push(api(relay, 'PATCH', `/v1/subscriptions/${sub.id}`, { description: `q${i}` }));
  }
  const m = await waitUntil(async () => {
    const x = await metrics(relay);
    return x.hookrelay_writer_queue >= 3 ? x : false;
  }, 3000, 'the PATCHes waiting behind the held lock to show in the gauge');
  assert.ok(m.hookrelay_writer_queue <= 6, `writer_queue ${m.hookrelay_writer_queue}`);
  await lock.release();
  for (const res of await Promise.all(patches)) assert.equal(res.status, 200, res.text);
  await waitUntil(async () => (await metrics(relay)).hookrelay_writer_queue === 0, 3000,
    'the gauge back at 0');
}));

// What Prometheus reads: every family once, with one HELP and one TYPE before its samples,
// the type right (rate() of a gauge, or a counter read as a gauge, gives wrong graphs
// without an error), and no series twice. And a batch counts each of its events.
test('/metrics text: one HELP and TYPE per family, the right type, no series twice; a batch counts each event', withLogs(async () => {
  const relay = await startRelay();
  const ok = await startReceiver();
  await createSub(relay, ok, { event_types: ['f.#'] });
  const batch = await api(relay, 'POST', '/v1/events/batch', [{ type: 'f.a' }, { type: 'f.b' }, { type: 'f.c' }]);
  assert.equal(batch.status, 202, batch.text);
  await postEvent(relay, { type: 'f.d' });
  await ok.waitFor(4);
  await waitUntil(async () => (await metrics(relay))['hookrelay_delivery_attempts_total{outcome="delivered"}'] === 4,
    5000, 'four attempts counted');
  const m = await metrics(relay);
  assert.equal(m.hookrelay_events_published_total, 4, 'three in a batch and one alone');

  const text = (await api(relay, 'GET', '/metrics')).text;
  const histograms = ['hookrelay_delivery_attempt_duration_seconds', 'hookrelay_delivery_latency_seconds',
    'hookrelay_wal_sync_duration_seconds'];
  const help = new Map();
  const type = new Map();
  const series = new Set();
  for (const line of text.split('\n')) {
    if (line === '') continue;
    let g = line.match(/^# (HELP|TYPE) ([a-z_]+) (.+)$/);
    if (g) {
      const seen = g[1] === 'HELP' ? help : type;
      assert.ok(!seen.has(g[2]), `a second # ${g[1]} for ${g[2]}`);
      seen.set(g[2], g[3]);
      continue;
    }
    g = line.match(/^([a-z_]+)(\{[^}]*\})? \S+$/);
    assert.ok(g, `not a sample line: ${line}`);
    assert.ok(!series.has(g[1] + (g[2] ?? '')), `series twice: ${line}`);
    series.add(g[1] + (g[2] ?? ''));
    const family = histograms.find((h) => g[1].startsWith(h)) ?? g[1];
    assert.ok(type.has(family) && help.has(family), `${line}: no # HELP and # TYPE before it`);
  }
  assert.deepEqual([...help.keys()], [...type.keys()], 'each family has both, in the same order');
  for (const [family, t] of type) {
    const want = histograms.includes(family) ? 'histogram' : family.endsWith('_total') ? 'counter' : 'gauge';
    assert.equal(t, want, `# TYPE ${family}`);
  }
  for (const f of ['hookrelay_events_published_total', 'hookrelay_delivery_attempts_total', 'hookrelay_deliveries_pending',
    'hookrelay_deliveries_in_flight', 'hookrelay_subscriptions', 'hookrelay_subscriptions_failing',
    'hookrelay_writer_queue', 'hookrelay_store_write_failures_total', 'hookrelay_requests_refused_total', ...histograms]) {
    assert.ok(type.has(f), `${f} is written`);
  }
}));
