// reliability-disable.test.mjs - issue #5, part 6: a receiver that always fails gets its
// subscription disabled by --disable-after; while disabled its deliveries are held and new
// events create none; re-enabling resumes the held ones; once the receiver is fixed,
// POST /v1/subscriptions/{id}/recover re-queues exactly the failed ones and they arrive.

import { test, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import {
  startRelay, startReceiver, api, createSub, postEvent, listAll, waitUntil, sleep, cleanup,
  withLogs, holdWriteLock, eventDeliveries, waitDelivery,
} from './harness.mjs';
import { SLOW, idsOf } from './reliability/lib.mjs';

afterEach(cleanup);

test('--disable-after: disabled with a reason, held, resumed by PATCH, recovered after the fix', withLogs(async () => {
  const relay = await startRelay({
    args: ['--disable-after', '1s'],
    retrySchedule: '200ms,200ms,200ms,200ms,200ms,200ms,200ms,200ms',
  });
  const r = await startReceiver({ behavior: { status: 500, body: 'still broken' } });
  const sub = await createSub(relay, r, { event_types: ['dis.#'] });
  const since = new Date(Date.now() - 1000).toISOString();
  const evs = [];
  for (let i = 0; i < 3; i++) evs.push(await postEvent(relay, { type: 'dis.event', data: { i } }));
  assert.deepEqual(evs.map((e) => e.deliveries), [1, 1, 1]);
  const getSub = async () => (await api(relay, 'GET', `/v1/subscriptions/${sub.id}`)).json;

  // 1. Disabled after a second of nothing but failures, with a reason saying so.
  const disabled = await waitUntil(async () => {
    const s = await getSub();
    return s.enabled === false ? s : false;
  }, 6000 * SLOW, 'subscription disabled by --disable-after 1s', 50);
  assert.match(disabled.disabled_reason ?? '', /fail/i, `disabled_reason: ${disabled.disabled_reason}`);
  assert.ok(disabled.failing_since, 'failing_since is set');
  const pendingHeld = (await listAll(relay, `/v1/deliveries?subscription=${sub.id}&status=pending`)).length;

  // 2. Held: no attempt while disabled (several schedule steps of quiet), and a new event
  // creates no delivery.
  const atDisable = r.requests.length;
  const late = await postEvent(relay, { type: 'dis.while_disabled' });
  assert.equal(late.deliveries, 0, 'a disabled subscription gets no new deliveries');
  await sleep(800);
  assert.equal(r.requests.length, atDisable, 'no attempt while the subscription is disabled');
  assert.ok(!idsOf(r).ids.has(late.id));

  // 3. PATCH enabled:true releases the held deliveries (they fail again: still broken).
  // (9 attempts 200 ms apart outlast a 1 s --disable-after, so some are still pending)
  assert.ok(pendingHeld > 0, 'deliveries with attempts left are held, not failed');
  const re = await api(relay, 'PATCH', `/v1/subscriptions/${sub.id}`, { enabled: true });
  assert.equal(re.status, 200, re.text);
  assert.equal(re.json.enabled, true);
  assert.equal(re.json.disabled_reason, null);
  await waitUntil(() => r.requests.length > atDisable, 3000 * SLOW, 'held deliveries resume after PATCH enabled:true');
  // Let every delivery run out of attempts (re-enabling again if it trips once more).
  let reenabled = 0;
  await waitUntil(async () => {
    const s = await getSub();
    if (s.enabled === false && reenabled < 3) {
      reenabled++;
      await api(relay, 'PATCH', `/v1/subscriptions/${sub.id}`, { enabled: true });
    }
    const ds = await listAll(relay, `/v1/deliveries?subscription=${sub.id}`);
    return ds.length === 3 && ds.every((d) => d.status === 'failed');
  }, 10_000 * SLOW, 'all three deliveries failed', 100);
  assert.equal((await getSub()).enabled, true);

  // 4. Fixed receiver + recover: exactly the failed ones come back and arrive.
  r.setBehavior({ status: 200, body: 'fixed' });
  const failed = await listAll(relay, `/v1/deliveries?subscription=${sub.id}&status=failed`);
  const beforeRecover = r.requests.length;
  const rec = await api(relay, 'POST', `/v1/subscriptions/${sub.id}/recover`, { since });
  assert.equal(rec.status, 202, rec.text);
  assert.deepEqual(rec.json, { requeued: failed.length });
  assert.equal(failed.length, 3);
  await waitUntil(async () => {
    const ds = await listAll(relay, `/v1/deliveries?subscription=${sub.id}`);
    return ds.every((d) => d.status === 'delivered');
  }, 5000 * SLOW, 'recovered deliveries delivered', 50);
  const after = r.requests.slice(beforeRecover);
  assert.equal(after.length, 3, 'one request per recovered delivery');
  const delivered = new Set(after.map((q) => q.headers['webhook-id']));
  assert.deepEqual(delivered, new Set(evs.map((e) => e.id)), 'the three events arrive after recover');
  assert.equal((await getSub()).failing_since, null, 'a success clears failing_since');

  // 5. Nothing left to recover.
  const again = await api(relay, 'POST', `/v1/subscriptions/${sub.id}/recover`, { since });
  assert.equal(again.status, 202, again.text);
  assert.deepEqual(again.json, { requeued: 0 });
  const n = r.requests.length;
  await sleep(500);
  assert.equal(r.requests.length, n, 'a second recover sends nothing');
}));

// recover's since bounds what it re-sends: a failed delivery from before it stays failed
// (re-sending every failure the subscription ever had would flood a receiver just fixed).
test('recover re-queues only the failed deliveries created since its since', withLogs(async () => {
  const relay = await startRelay({ retrySchedule: '100ms' });
  const r = await startReceiver({ behavior: { status: 500 } });
  const sub = await createSub(relay, r, { event_types: ['rec.#'] });
  const failedCount = (n) => waitUntil(async () => {
    const ds = await listAll(relay, `/v1/deliveries?subscription=${sub.id}&status=failed`);
    return ds.length >= n ? ds : false;
  }, 5000 * SLOW, `${n} deliveries failed`, 50);
  const old = await postEvent(relay, { type: 'rec.old' });
  await failedCount(1);
  await sleep(20);
  const since = new Date().toISOString();
  await sleep(20);
  const recent = [await postEvent(relay, { type: 'rec.new' }), await postEvent(relay, { type: 'rec.new' })];
  await failedCount(3);

  r.setBehavior({ status: 200 });
  const before = r.requests.length;
  const rec = await api(relay, 'POST', `/v1/subscriptions/${sub.id}/recover`, { since });
  assert.equal(rec.status, 202, rec.text);
  assert.deepEqual(rec.json, { requeued: 2 });
  await r.waitFor(before + 2);
  await sleep(300);
  const sent = r.requests.slice(before).map((q) => q.headers['webhook-id']);
  assert.equal(sent.length, 2, `only the two since then: ${sent}`);
  assert.deepEqual(new Set(sent), new Set(recent.map((e) => e.id)));
  const [dOld] = await eventDeliveries(relay, old.id);
  assert.equal(dOld.status, 'failed', 'the failure from before since stays failed');
}));

// since is inclusive: a client recovering "from this failure on" passes the created_at
// the delivery log shows, and that delivery must come back with the later ones (the test
// above only used an instant between two deliveries).
test('recover since a failed delivery\'s created_at re-queues that delivery too', withLogs(async () => {
  const relay = await startRelay({ retrySchedule: '100ms' });
  const r = await startReceiver({ behavior: { status: 500 } });
  const sub = await createSub(relay, r, { event_types: ['edge.#'] });
  const evs = [];
  for (let i = 0; i < 3; i++) {
    evs.push(await postEvent(relay, { type: 'edge.fail', data: { i } }));
    await sleep(5);
  }
  const failed = await waitUntil(async () => {
    const ds = await listAll(relay, `/v1/deliveries?subscription=${sub.id}&status=failed`);
    return ds.length === 3 ? ds : false;
  }, 5000 * SLOW, '3 deliveries failed', 50);
  const second = failed.find((d) => d.event_id === evs[1].id);
  const first = failed.find((d) => d.event_id === evs[0].id);
  assert.ok(second.created_at > first.created_at, `${first.created_at} ${second.created_at}`);

  r.setBehavior({ status: 200 });
  const before = r.requests.length;
  const rec = await api(relay, 'POST', `/v1/subscriptions/${sub.id}/recover`, { since: second.created_at });
  assert.equal(rec.status, 202, rec.text);
  assert.deepEqual(rec.json, { requeued: 2 });
  await r.waitFor(before + 2);
  await sleep(300);
  const sent = r.requests.slice(before).map((q) => q.headers['webhook-id']);
  assert.deepEqual(new Set(sent), new Set([evs[1].id, evs[2].id]), `sent ${sent}`);
  assert.equal(sent.length, 2);
}));

// A client that re-applies a whole subscription sends "enabled": true to one that is
// already enabled: that must not restart the --disable-after clock of a failing receiver.
test('PATCH enabled:true on an enabled subscription keeps failing_since', withLogs(async () => {
  const relay = await startRelay({ retrySchedule: '1h' });
  const r = await startReceiver({ behavior: { status: 500 } });
  const sub = await createSub(relay, r, { event_types: ['keep.#'] });
  await postEvent(relay, { type: 'keep.me' });
  await r.waitFor(1);
  const failing = await waitUntil(async () => {
    const s = (await api(relay, 'GET', `/v1/subscriptions/${sub.id}`)).json;
    return s.failing_since ? s : false;
  }, 5000 * SLOW, 'failing_since set after the failed attempt');
  const res = await api(relay, 'PATCH', `/v1/subscriptions/${sub.id}`,
    { enabled: true, description: 're-applied' });
  assert.equal(res.status, 200, res.text);
  assert.equal(res.json.description, 're-applied');
  assert.equal(res.json.failing_since, failing.failing_since, 'the failing clock runs on');
}));

// A new url is a new receiver: the failures of the old one must not count toward
// --disable-after. failing_since ran on through the PATCH, so the new receiver's first
// 503 (one event, 2 s after the old one's last failure) disabled the subscription.
test('PATCH url starts the failing clock afresh: one blip of the new receiver does not disable', withLogs(async () => {
  const relay = await startRelay({ args: ['--disable-after', '2s'], retrySchedule: '100ms' });
  const old = await startReceiver({ behavior: { status: 500 } });
  const sub = await createSub(relay, old, { event_types: ['moved.#'] });
  const first = await postEvent(relay, { type: 'moved.a' });
  const [d1] = await eventDeliveries(relay, first.id);
  await waitUntil(async () => (await api(relay, 'GET', `/v1/deliveries/${d1.id}`)).json.status === 'failed',
    5000 * SLOW, 'the old receiver\'s delivery failed for good', 20);
  const failingSince = (await api(relay, 'GET', `/v1/subscriptions/${sub.id}`)).json.failing_since;
  assert.ok(failingSince, 'failing since the old receiver\'s first failure');
  // The same url again is no new receiver: its clock runs on.
  const same = await api(relay, 'PATCH', `/v1/subscriptions/${sub.id}`, { url: sub.url });
  assert.equal(same.json.failing_since, failingSince);
  await sleep(2500); // past --disable-after since its failures began, and quiet since
  const fixed = await startReceiver({ behavior: [{ status: 503 }, { status: 200 }] });
  const moved = await api(relay, 'PATCH', `/v1/subscriptions/${sub.id}`, { url: `${fixed.url}/hook` });
  assert.equal(moved.status, 200, moved.text);
  assert.equal(moved.json.failing_since, null, 'a new url has no failures yet');
  const second = await postEvent(relay, { type: 'moved.b' });
  await fixed.waitFor(2, 5000 * SLOW);
  const [d2] = await eventDeliveries(relay, second.id);
  await waitUntil(async () => (await api(relay, 'GET', `/v1/deliveries/${d2.id}`)).json.status === 'delivered',
    5000 * SLOW, 'the second attempt delivered', 20);
  const after = (await api(relay, 'GET', `/v1/subscriptions/${sub.id}`)).json;
  assert.equal(after.enabled, true, `still enabled: ${after.disabled_reason}`);
}));

// An answer from the old url that comes after the PATCH is the old receiver's: its 410
// disabled the subscription under its new url (and its failures set failing_since).
test('a 410 from the old url, after a PATCH of the url, does not disable the subscription', withLogs(async () => {
  const relay = await startRelay({ retrySchedule: '1h' });
  const old = await startReceiver({ behavior: { delayMs: 800, status: 410 } });
  const fresh = await startReceiver();
  const sub = await createSub(relay, old, { event_types: ['gone.#'] });
  await postEvent(relay, { type: 'gone.a' });
  await old.waitFor(1, 3000);
  const moved = await api(relay, 'PATCH', `/v1/subscriptions/${sub.id}`, { url: `${fresh.url}/hook` });
  assert.equal(moved.status, 200, moved.text);
  await sleep(1200); // the old receiver's 410 has come back and been written
  const after = (await api(relay, 'GET', `/v1/subscriptions/${sub.id}`)).json;
  assert.equal(after.enabled, true, `disabled: ${after.disabled_reason}`);
  assert.equal(after.failing_since, null);
  await postEvent(relay, { type: 'gone.b' });
  await fresh.waitFor(1, 3000);
}));

// Nor does it decide the delivery: a 410 failed it for good (the subscription enabled,
// the new url never tried), a Retry-After of an hour put off the new url's first try.
// The delivery goes on by the plain schedule, to the new url.
test('a 410 or a Retry-After from the old url, after a PATCH of the url, leaves the delivery to the plain schedule', withLogs(async () => {
  const relay = await startRelay({ retrySchedule: '300ms' });
  for (const [type, what, answer] of [['moved.gone', '410', { delayMs: 800, status: 410 }],
    ['moved.later', '429 with Retry-After: 3600', { delayMs: 800, status: 429, retryAfter: 3600 }]]) {
    const old = await startReceiver({ behavior: answer });
    const fresh = await startReceiver();
    const sub = await createSub(relay, old, { event_types: [type] });
    const ev = await postEvent(relay, { type, data: what });
    await old.waitFor(1, 3000);
    const moved = await api(relay, 'PATCH', `/v1/subscriptions/${sub.id}`, { url: `${fresh.url}/hook` });
    assert.equal(moved.status, 200, moved.text);
    const [d] = await eventDeliveries(relay, ev.id);
    const done = await waitDelivery(relay, d.id, 'delivered', 5000);
    assert.deepEqual(done.attempts.map((a) => a.http_status), [answer.status, 200], `${what}: ${JSON.stringify(done)}`);
    assert.equal(fresh.requests.length, 1, `${what}: the new url got it`);
    const after = (await api(relay, 'GET', `/v1/subscriptions/${sub.id}`)).json;
    assert.equal(after.enabled, true, `${what}: disabled: ${after.disabled_reason}`);
    assert.equal(old.requests.length, 1, `${what}: nothing more went to the old url`);
  }
}));

// The results that disable a subscription (a 410) and the dispatcher's next claim can
// share one writer transaction; the claim must not lease the just-disabled subscription
// another delivery. To make them share it, an sqlite3 session holds the database's write
// lock with a publish already waiting on it in the writer; meanwhile the 410 comes back
// (its results queue) and then the dispatcher's once-a-second claim (queued behind them).
test('a 410 disables the subscription even for a claim in the same writer transaction', { timeout: 30_000 }, withLogs(async () => {
  const relay = await startRelay({ args: ['--delivery-timeout', '10s'] });
  const gone = await startReceiver({ behavior: { status: 410, delayMs: 600 } });
  const sub = await createSub(relay, gone, { event_types: ['gone.#'], max_in_flight: 1 });
  for (let i = 0; i < 3; i++) await postEvent(relay, { type: 'gone.x', data: i });
  await gone.waitFor(1, 5000);

  // Take the write lock while the first request is still waiting for its 410.
  const lock = await holdWriteLock(relay.dbPath);
  const blocked = api(relay, 'POST', '/v1/events', { type: 'other.x' }); // the writer waits on the lock
  // the 410 comes 600 ms after the request arrived; the next claim within a second of
  // the last one, which went out with that request
  await sleep(gone.requests[0].arrivedMono + 1600 - performance.now());
  // an event published now lands in the same transaction as the 410's results
  const late = api(relay, 'POST', '/v1/events', { type: 'gone.late' });
  await sleep(gone.requests[0].arrivedMono + 1800 - performance.now());
  await lock.release();
  assert.equal((await blocked).status, 202);
  const lateRes = await late;
  assert.equal(lateRes.status, 202, lateRes.text);
  assert.equal(lateRes.json.deliveries, 0, 'a subscription disabled in the same transaction gets no new delivery');

  await waitUntil(async () => (await api(relay, 'GET', `/v1/subscriptions/${sub.id}`)).json.enabled === false,
    3000, 'subscription disabled by the 410');
  await sleep(500);
  assert.equal(gone.requests.length, 1, 'nothing more was sent to the endpoint that answered 410');
  const pending = await listAll(relay, `/v1/deliveries?subscription=${sub.id}&status=pending`);
  assert.equal(pending.length, 2, 'the other two are held');
}));

// A failure and then a success of the same subscription can be applied in one writer
// transaction. The success must clear failing_since (the subscription is healthy), so
// that the next failure, later than --disable-after, starts the clock again rather than
// disabling the subscription as if it had failed all along. To put both results in one
// transaction, an sqlite3 session holds the write lock with a publish waiting on it in
// the writer while both answers come back.
test('a failure then a success in one writer transaction leaves the subscription healthy', { timeout: 30_000 }, withLogs(async () => {
  const relay = await startRelay({ args: ['--disable-after', '2s'], retrySchedule: '1h' });
  const r = await startReceiver({
    behavior: (req, i) => (i === 0 ? { status: 500, delayMs: 600 } : i === 1 ? { status: 200, delayMs: 900 } : { status: 500 }),
  });
  const sub = await createSub(relay, r, { event_types: ['flaky.#'] });
  const getSub = async () => (await api(relay, 'GET', `/v1/subscriptions/${sub.id}`)).json;
  await postEvent(relay, { type: 'flaky.a' });
  await postEvent(relay, { type: 'flaky.b' });
  await r.waitFor(2, 5000);

  const lock = await holdWriteLock(relay.dbPath);
  const blocked = api(relay, 'POST', '/v1/events', { type: 'other.x' }); // the writer waits on the lock
  await sleep(r.requests[1].arrivedMono + 1300 - performance.now()); // both answers are back
  await lock.release();
  assert.equal((await blocked).status, 202);
  await waitUntil(async () => {
    const ds = await listAll(relay, `/v1/deliveries?subscription=${sub.id}`);
    return ds.length === 2 && ds.every((d) => d.attempt_count === 1) ? ds : false;
  }, 5000 * SLOW, 'both attempts recorded', 50);
  assert.equal((await getSub()).failing_since, null, 'the last attempt succeeded: not failing');

  // Past --disable-after, one more failure starts the clock; it does not disable.
  await sleep(2200);
  await postEvent(relay, { type: 'flaky.c' });
  await r.waitFor(3, 5000);
  const after = await waitUntil(async () => {
    const s = await getSub();
    return s.failing_since ? s : false;
  }, 5000 * SLOW, 'failing_since set by the new failure', 50);
  assert.equal(after.enabled, true, `disabled: ${after.disabled_reason}`);
  assert.ok(Date.parse(after.failing_since) >= Date.now() - 2000, `failing since ${after.failing_since}: the new failure`);
}));
