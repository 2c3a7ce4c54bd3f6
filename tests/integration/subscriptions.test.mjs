// subscriptions.test.mjs - managing subscriptions (create, list, get, patch, delete,
// rotate-secret) and reading the delivery log with its filters; healthz.

import { test, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { Webhook } from 'standardwebhooks';
import {
  startRelay, startReceiver, api, createSub, postEvent, verifySigned, assertNoMore,
  assertError, waitUntil, eventDeliveries, getDelivery, waitDelivery, listAll, cleanup, withLogs,
  holdWriteLock, sleep,
} from './harness.mjs';
import { SLOW } from './reliability/lib.mjs';

afterEach(cleanup);

// Every documented field must be there. Extra fields are tolerated (adding a field does
// not break a client), but docs/api.md should list them.
/** The signatures of event `id` under each secret, in that order, as the Standard
 * Webhooks package makes them at the timestamp request q was sent with. */
function signatures(q, id, ...secrets) {
  const at = new Date(Number(q.headers['webhook-timestamp']) * 1000);
  return secrets.map((secret) => new Webhook(secret).sign(id, at, q.body));
}

function assertHasKeys(obj, keys) {
  const missing = keys.filter((k) => !(k in obj));
  assert.deepEqual(missing, [], `missing documented fields in ${JSON.stringify(obj)}`);
}

const SUB_KEYS = ['created_at', 'description', 'disabled_reason', 'enabled', 'event_types', 'headers',
  'id', 'updated_at', 'url'];

test('create returns the subscription and its secret; reads never show a secret', withLogs(async () => {
  const relay = await startRelay();
  const res = await api(relay, 'POST', '/v1/subscriptions', {
    url: 'http://127.0.0.1:9/hook', event_types: ['order.*', 'invoice.#'], description: 'billing',
    headers: { 'X-Api-Key': 'abc' },
  });
  assert.equal(res.status, 201, res.text);
  const sub = res.json;
  assertHasKeys(sub, [...SUB_KEYS, 'secret']);
  assert.match(sub.id, /^sub_\d+$/);
  assert.equal(sub.url, 'http://127.0.0.1:9/hook');
  assert.deepEqual(sub.event_types, ['order.*', 'invoice.#']);
  assert.equal(sub.description, 'billing');
  assert.deepEqual(sub.headers, { 'X-Api-Key': 'abc' });
  assert.equal(sub.enabled, true);
  assert.equal(sub.disabled_reason, null);
  assert.match(sub.created_at, /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/);
  assert.match(sub.secret, /^whsec_[A-Za-z0-9+/]+={0,2}$/);
  const keyLen = Buffer.from(sub.secret.slice(6), 'base64').length;
  assert.ok(keyLen >= 24 && keyLen <= 64, `secret key is ${keyLen} bytes`);

  const own = 'whsec_' + Buffer.alloc(32, 9).toString('base64');
  const mine = await api(relay, 'POST', '/v1/subscriptions', { url: 'https://127.0.0.1:9/x', event_types: ['#'], secret: own, enabled: false });
  assert.equal(mine.status, 201, mine.text);
  assert.equal(mine.json.secret, own, 'a given secret is kept');
  assert.equal(mine.json.enabled, false);
  assert.notEqual(mine.json.id, sub.id);
  const other = await api(relay, 'POST', '/v1/subscriptions', { url: 'http://127.0.0.1:9/y', event_types: ['#'] });
  assert.notEqual(other.json.secret, sub.secret, 'generated secrets differ');

  const list = await api(relay, 'GET', '/v1/subscriptions');
  assert.equal(list.status, 200);
  assert.equal(list.json.data.length, 3);
  assert.equal(list.json.next, null);
  const one = await api(relay, 'GET', `/v1/subscriptions/${sub.id}`);
  assert.equal(one.status, 200);
  assertHasKeys(one.json, SUB_KEYS);
  assert.equal(one.json.description, 'billing');
  for (const r of [list, one]) {
    assert.ok(!r.text.includes('"secret"'), `secret key in ${r.text}`);
    assert.ok(!r.text.includes(sub.secret.slice(6)), 'secret value leaked');
    assert.ok(!r.text.includes(own.slice(6)), 'secret value leaked');
  }
  // newest first (docs/api.md), in one page and across pages
  const newestFirst = [other.json.id, mine.json.id, sub.id];
  assert.deepEqual(list.json.data.map((s) => s.id), newestFirst, 'the list is newest first');
  const page = await api(relay, 'GET', '/v1/subscriptions?limit=2');
  assert.deepEqual(page.json.data.map((s) => s.id), newestFirst.slice(0, 2), 'the first page has the newest two');
  assert.equal(typeof page.json.next, 'string');
  const all = await listAll(relay, '/v1/subscriptions', 1);
  assert.deepEqual(all.map((s) => s.id), newestFirst, 'one a page: newest first, each once');
}));

test('PATCH: disabling stops new deliveries, re-enabling resumes them; other fields update', withLogs(async () => {
  const relay = await startRelay();
  const r = await startReceiver();
  const sub = await createSub(relay, r, { event_types: ['ord.*'] });
  const e1 = await postEvent(relay, { type: 'ord.one' });
  assert.equal(e1.deliveries, 1);
  await r.waitFor(1);

  const off = await api(relay, 'PATCH', `/v1/subscriptions/${sub.id}`, { enabled: false });
  assert.equal(off.status, 200, off.text);
  assert.equal(off.json.enabled, false);
  assert.ok(!off.text.includes('"secret"'));
  const e2 = await postEvent(relay, { type: 'ord.two' });
  assert.equal(e2.deliveries, 0);
  await assertNoMore(r, 1, 600);

  const on = await api(relay, 'PATCH', `/v1/subscriptions/${sub.id}`, { enabled: true });
  assert.equal(on.status, 200);
  assert.equal(on.json.enabled, true);
  const e3 = await postEvent(relay, { type: 'ord.three' });
  assert.equal(e3.deliveries, 1);
  await r.waitFor(2);
  assert.equal(r.requests[1].headers['webhook-id'], e3.id);

  // Change patterns, URL, headers and description in one go.
  const r2 = await startReceiver();
  r2.secrets.push(sub.secret);
  const ch = await api(relay, 'PATCH', `/v1/subscriptions/${sub.id}`, {
    url: r2.url + '/moved', event_types: ['inv.#'], headers: { 'X-New': 'yes' }, description: 'moved',
  });
  assert.equal(ch.status, 200, ch.text);
  assert.equal(ch.json.url, r2.url + '/moved');
  assert.deepEqual(ch.json.event_types, ['inv.#']);
  assert.deepEqual(ch.json.headers, { 'X-New': 'yes' });
  assert.equal(ch.json.description, 'moved');
  assert.ok(Date.parse(ch.json.updated_at) >= Date.parse(ch.json.created_at));
  assert.equal((await postEvent(relay, { type: 'ord.four' })).deliveries, 0, 'old pattern no longer matches');
  const e5 = await postEvent(relay, { type: 'inv.paid.late' });
  assert.equal(e5.deliveries, 1);
  const [q] = await r2.waitFor(1);
  assert.equal(q.url, '/moved');
  assert.equal(q.headers['x-new'], 'yes');
  assert.equal(verifySigned(q, sub.secret).id, e5.id, 'secret unchanged by PATCH');
  await assertNoMore(r, 2, 300);

  const got = await api(relay, 'GET', `/v1/subscriptions/${sub.id}`);
  assert.deepEqual(got.json.event_types, ['inv.#']);
  const bad = await api(relay, 'PATCH', `/v1/subscriptions/${sub.id}`, { event_types: [] });
  assertError(bad, 422, 'invalid_field', 'empty event_types');
  const bad2 = await api(relay, 'PATCH', `/v1/subscriptions/${sub.id}`, { url: 'ftp://127.0.0.1/' });
  assertError(bad2, 422, 'invalid_field', 'PATCH bad url');
  const after = await api(relay, 'GET', `/v1/subscriptions/${sub.id}`);
  assert.equal(after.json.url, r2.url + '/moved', 'rejected PATCH changed nothing');
}));

// A PATCH and the dispatcher's next claim queued behind it must not share a writer
// transaction: the claim would read the subscription as it was (its old URL, old
// secret, still enabled). An sqlite3 session holds the write lock so that the PATCH, the
// results of the request in flight and the next claim all queue up behind a publish.
test('PATCH url: the next delivery goes to the new URL even when the writer ran behind', { timeout: 30_000 }, withLogs(async () => {
  const relay = await startRelay({ args: ['--delivery-timeout', '10s'] });
  const before = await startReceiver({ behavior: { status: 200, delayMs: 600 } });
  const after = await startReceiver();
  const sub = await createSub(relay, before, { event_types: ['move.#'], max_in_flight: 1 });
  after.secrets.push(...before.secrets);
  for (let i = 0; i < 3; i++) await postEvent(relay, { type: 'move.x', data: i });
  await before.waitFor(1, 5000);

  const lock = await holdWriteLock(relay.dbPath);
  const blocked = api(relay, 'POST', '/v1/events', { type: 'other.x' }); // the writer waits
  await sleep(50);
  const patched = api(relay, 'PATCH', `/v1/subscriptions/${sub.id}`, { url: after.url + '/hook' });
  // the answer to the request in flight comes 600 ms after it arrived; the next claim
  // within a second of the last one
  await sleep(before.requests[0].arrivedMono + 1800 - performance.now());
  await lock.release();
  assert.equal((await blocked).status, 202);
  assert.equal((await patched).status, 200);

  await after.waitFor(2, 5000);
  await assertNoMore(before, 1);
  assert.equal(after.requests.length, 2, 'the two deliveries not in flight at the PATCH go to the new URL');
}));

// A PATCH of max_in_flight or rate_limit changes the subscription's settings version, as
// one of its url does: the jobs taken ahead under the old limits (up to max_in_flight
// more, waiting in hookrelay) are put back unsent. Before, after a PATCH from 8 to 2 was
// answered, requests went on starting with 8 at once for ~400 ms, and after one setting
// rate_limit 5, 12-17 started in the first second.
test('PATCH max_in_flight or rate_limit: no request goes out past the new limit once answered', withLogs(async () => {
  const relay = await startRelay({ args: ['--delivery-timeout', '10s'] });
  const DELAY = 400;
  const capped = await startReceiver({ behavior: { delayMs: DELAY } });
  const limited = await startReceiver({ behavior: { delayMs: 100 } });
  const c = await createSub(relay, capped, { event_types: ['cap.#'], max_in_flight: 8 });
  const l = await createSub(relay, limited, { event_types: ['rate.#'], max_in_flight: 16 });
  for (const type of ['cap.x', 'rate.x']) {
    const res = await api(relay, 'POST', '/v1/events/batch', Array.from({ length: 300 }, (_, i) => ({ type, data: { i } })));
    assert.equal(res.status, 202, res.text);
  }
  await capped.waitFor(24, 10_000); // draining, answered 2xx: taking jobs ahead
  await limited.waitFor(64, 10_000);
  const [toCap, toRate] = await Promise.all([
    api(relay, 'PATCH', `/v1/subscriptions/${c.id}`, { max_in_flight: 2 }),
    api(relay, 'PATCH', `/v1/subscriptions/${l.id}`, { rate_limit: 5 })]);
  assert.equal(toCap.status, 200, toCap.text);
  assert.equal(toRate.status, 200, toRate.text);
  const answered = performance.now();
  await sleep(2000);
  const at = capped.requests.map((q) => q.arrivedMono).sort((a, b) => a - b);
  const late = at.filter((t) => t > answered + 5);
  assert.ok(late.length >= 4, `${late.length} requests in the 2 s after the PATCH to 2`);
  // each holds its place for DELAY ms: those it overlaps arrived within DELAY before it
  const most = Math.max(...late.map((t) => at.filter((u) => u <= t && u > t - (DELAY - 50)).length));
  assert.ok(most <= 2, `a request started with ${most} at once after the PATCH to max_in_flight 2 was answered`);
  const firstSecond = limited.requests.filter((q) => q.arrivedMono > answered + 5 && q.arrivedMono < answered + 1000).length;
  assert.ok(firstSecond <= 6, `${firstSecond} requests in the first second after the PATCH to rate_limit 5 was answered`);
}));

// A new url's receiver has answered nothing: the subscription takes no jobs ahead for it
// until it does, so the requests still running at the old url and those to the new one
// together stay within max_in_flight (there were 15 at once at max_in_flight 8: 7 old, 8 new).
test('PATCH url to another receiver: old and new together stay within max_in_flight', withLogs(async () => {
  const relay = await startRelay({ args: ['--delivery-timeout', '10s'] });
  let now = 0;
  let most = 0;
  let n = 0;
  // staggered answers (400-700 ms), counted across both receivers as they arrive
  const behavior = () => {
    const delayMs = 400 + ((n++ * 37) % 300);
    most = Math.max(most, ++now);
    setTimeout(() => { now--; }, delayMs);
    return { delayMs };
  };
  const before = await startReceiver({ behavior });
  const after = await startReceiver({ behavior });
  after.secrets.push(...before.secrets);
  const sub = await createSub(relay, before, { event_types: ['moving.#'], max_in_flight: 8 });
  const res = await api(relay, 'POST', '/v1/events/batch', Array.from({ length: 200 }, (_, i) => ({ type: 'moving.x', data: { i } })));
  assert.equal(res.status, 202, res.text);
  await before.waitFor(30, 10_000); // answering 2xx: taking jobs ahead
  const p = await api(relay, 'PATCH', `/v1/subscriptions/${sub.id}`, { url: after.url + '/hook' });
  assert.equal(p.status, 200, p.text);
  await after.waitFor(16, 10_000);
  assert.ok(most <= 8, `${most} requests at once across the old and the new url`);
}));

// At max_in_flight 1 deliveries arrive in order while none fails, PATCHes or not. A job
// taken ahead and put back by a PATCH stayed leased until its batch committed, and a claim
// in that batch took the next delivery first (~14 of 300 out of order per run).
test('max_in_flight 1: PATCHes during a drain do not reorder deliveries', withLogs(async () => {
  const relay = await startRelay();
  const r = await startReceiver();
  const sub = await createSub(relay, r, { event_types: ['order.#'], max_in_flight: 1 });
  const N = 300;
  const res = await api(relay, 'POST', '/v1/events/batch', Array.from({ length: N }, (_, i) => ({ type: 'order.x', data: { i } })));
  assert.equal(res.status, 202, res.text);
  let k = 0;
  const deadline = performance.now() + 20_000 * SLOW;
  while (r.requests.length < N && performance.now() < deadline) {
    const p = await api(relay, 'PATCH', `/v1/subscriptions/${sub.id}`, { headers: { 'X-K': String(k++) } });
    assert.equal(p.status, 200, p.text);
  }
  await r.waitFor(N, 5000);
  const seq = r.requests.map((q) => JSON.parse(q.body).data.i);
  const late = seq.filter((v, i) => i > 0 && v < Math.max(...seq.slice(0, i)));
  assert.deepEqual(late, [], `${k} PATCHes; out of order: ${late.slice(0, 10).join(', ')}`);
  assert.equal(new Set(seq).size, N);
}));

// While another process holds the write lock, each subscription write is its own
// batch; the first waits the writer's 5 s for the lock, the ones queued behind it must
// not wait 5 s more each (they got their 503 at 5, 10, 15 and 20 s).
test('writes queued behind a stalled database get their 503 soon after the first', { timeout: 30_000 }, withLogs(async () => {
  const relay = await startRelay();
  const subs = [];
  for (let i = 0; i < 4; i++) subs.push(await createSub(relay, null, { url: 'http://127.0.0.1:9/x' }));
  const lock = await holdWriteLock(relay.dbPath);
  const t0 = performance.now();
  const answers = await Promise.all(subs.map(async (sub, i) => {
    await sleep(20 * i); // in this order into the writer's queue
    const res = await api(relay, 'PATCH', `/v1/subscriptions/${sub.id}`, { description: `d${i}` },
      {}, { timeoutMs: 25_000 });
    return { res, ms: performance.now() - t0 };
  }));
  await lock.release();
  for (const { res } of answers) assertError(res, 503, 'storage_unavailable', 'PATCH while locked');
  const last = Math.max(...answers.map((a) => a.ms));
  console.log(`4 queued writes while locked: 503s at ${answers.map((a) => (a.ms / 1000).toFixed(1)).join(', ')} s`);
  assert.ok(last < 7500, `the last queued write got its 503 after ${(last / 1000).toFixed(1)} s`);
  const ok = await api(relay, 'PATCH', `/v1/subscriptions/${subs[0].id}`, { description: 'after' });
  assert.equal(ok.status, 200, 'writes go through again once the lock is gone');
}));

test('DELETE: 204, then 404; no new deliveries; pending deliveries become failed', withLogs(async () => {
  const relay = await startRelay({ retrySchedule: '100ms' });
  // 503 + Retry-After: 3600 keeps the first delivery pending for an hour.
  const r = await startReceiver({ behavior: { status: 503, retryAfter: 3600 } });
  const sub = await createSub(relay, r);
  const ev = await postEvent(relay, { type: 'del.me' });
  await r.waitFor(1);
  const id = (await eventDeliveries(relay, ev.id))[0].id;
  await waitUntil(async () => (await getDelivery(relay, id)).attempt_count === 1, 5000, 'attempt logged');
  assert.equal((await getDelivery(relay, id)).status, 'pending');

  const del = await api(relay, 'DELETE', `/v1/subscriptions/${sub.id}`);
  assert.equal(del.status, 204, del.text);
  assert.equal(del.text, '');
  assertError(await api(relay, 'GET', `/v1/subscriptions/${sub.id}`), 404, 'not_found', 'GET deleted');
  assertError(await api(relay, 'DELETE', `/v1/subscriptions/${sub.id}`), 404, 'not_found', 'DELETE twice');
  assertError(await api(relay, 'PATCH', `/v1/subscriptions/${sub.id}`, { enabled: true }), 404, 'not_found', 'PATCH deleted');
  assert.equal((await postEvent(relay, { type: 'del.after' })).deliveries, 0);
  const d = await waitDelivery(relay, id, 'failed', 3000);
  assert.equal(d.next_attempt_at, null);
  assertError(await api(relay, 'POST', `/v1/deliveries/${id}/retry`), 409, 'conflict',
    'retry of a deleted subscription\'s delivery');
  assert.equal((await getDelivery(relay, id)).status, 'failed');
  const list = await api(relay, 'GET', '/v1/subscriptions');
  assert.deepEqual(list.json.data, []);
  // The delivery log keeps the history.
  const ev2 = await api(relay, 'GET', `/v1/events/${ev.id}`);
  assert.equal(ev2.status, 200);
  await assertNoMore(r, 1, 300);
}));

// The list's first page and the pages after a cursor are two queries: a deleted
// subscription must stay out of both (the DELETE test above reads one page only).
test('the subscription list leaves deleted ones out on every page', withLogs(async () => {
  const relay = await startRelay();
  const subs = [];
  for (let i = 0; i < 6; i++) subs.push(await createSub(relay, null, { url: `http://127.0.0.1:9/h${i}` }));
  for (const i of [0, 2, 5]) assert.equal((await api(relay, 'DELETE', `/v1/subscriptions/${subs[i].id}`)).status, 204);
  const live = [4, 3, 1].map((i) => subs[i].id);
  assert.deepEqual((await listAll(relay, '/v1/subscriptions')).map((x) => x.id), live, 'one page');
  assert.deepEqual((await listAll(relay, '/v1/subscriptions', 1)).map((x) => x.id), live, 'pages of one');
  assert.deepEqual((await listAll(relay, '/v1/subscriptions', 2)).map((x) => x.id), live, 'pages of two');
}));

test('DELETE with a backlog of 2,500 pending: all become failed in chunks, and a restart finishes a cut-short sweep', withLogs(async () => {
  // One delivery hangs in flight (max_in_flight 1); the other 2,499 wait in the queue.
  // Retries an hour apart: the hung one is sent once, whenever it times out.
  const relay = await startRelay({ args: ['--delivery-timeout', '5s'], retrySchedule: '1h' });
  const r = await startReceiver({ behavior: { hang: true } });
  const sub = await createSub(relay, r, { event_types: ['bulk.*'], max_in_flight: 1 });
  const batch = Array.from({ length: 100 }, (_, i) => ({ type: 'bulk.item', data: { i } }));
  for (let k = 0; k < 25; k++) {
    const res = await api(relay, 'POST', '/v1/events/batch', batch);
    assert.equal(res.status, 202, res.text);
  }
  await r.waitFor(1);
  const del = await api(relay, 'DELETE', `/v1/subscriptions/${sub.id}`);
  assert.equal(del.status, 204, del.text);
  // More than one chunk: the writer keeps taking other work between chunks.
  assert.equal((await postEvent(relay, { type: 'other.event' })).deliveries, 0);
  const failedAll = async (rel) => {
    const failed = await listAll(rel, `/v1/deliveries?subscription=${sub.id}&status=failed`);
    return failed.length === 2500 && failed.every((d) => d.last_error === 'subscription deleted' &&
      d.next_attempt_at === null);
  };
  await waitUntil(() => failedAll(relay), 15_000, 'all 2,500 deliveries failed', 100);
  assert.deepEqual(await listAll(relay, `/v1/deliveries?subscription=${sub.id}&status=pending`), []);
  await relay.stop();

  // A stop in the middle of a sweep leaves pending rows of a deleted subscription; the
  // next start must fail them (all 2,500: more than two chunks), or they would stay
  // pending (and held) forever.
  const n = Number(sub.id.replace('sub_', ''));
  const res = spawnSync('sqlite3', [relay.dbPath, `UPDATE deliveries SET state = 0, last_error = NULL,
    next_attempt_at = id WHERE subscription_id = ${n}`], { encoding: 'utf8', timeout: 10_000 });
  assert.equal(res.status, 0, res.stderr);
  const again = await startRelay({ dbPath: relay.dbPath });
  await waitUntil(() => failedAll(again), 10_000, 'the sweep finished after restart', 100);
  assert.equal(r.requests.length, 1, 'nothing of a deleted subscription was sent');
}));

test('rotate-secret with grace: deliveries carry new and old signatures, both verify', withLogs(async () => {
  const relay = await startRelay();
  const r = await startReceiver();
  const sub = await createSub(relay, r, { event_types: ['rot.*'] });
  const old = sub.secret;
  const e1 = await postEvent(relay, { type: 'rot.before' });
  const [q1] = await r.waitFor(1);
  assert.equal(q1.headers['webhook-signature'].split(' ').length, 1);

  const rot = await api(relay, 'POST', `/v1/subscriptions/${sub.id}/rotate-secret`, { grace_seconds: 3600 });
  assert.equal(rot.status, 200, rot.text);
  assert.equal(rot.json.id, sub.id);
  assert.match(rot.json.secret, /^whsec_[A-Za-z0-9+/]+={0,2}$/);
  assert.notEqual(rot.json.secret, old);
  r.secrets.push(rot.json.secret);
  const got = await api(relay, 'GET', `/v1/subscriptions/${sub.id}`);
  assert.ok(!got.text.includes('"secret"'));

  const e2 = await postEvent(relay, { type: 'rot.after', data: { x: 1 } });
  const reqs = await r.waitFor(2);
  const q2 = reqs[1];
  assert.equal(q2.headers['webhook-id'], e2.id);
  const sigs = q2.headers['webhook-signature'].split(' ');
  assert.equal(sigs.length, 2, `two signatures in grace: ${q2.headers['webhook-signature']}`);
  assert.equal(verifySigned(q2, rot.json.secret).id, e2.id, 'verifies with the new secret');
  assert.equal(verifySigned(q2, old).id, e2.id, 'verifies with the old secret');
  const [byNew, byOld] = signatures(q2, e2.id, rot.json.secret, old);
  assert.equal(sigs[0], byNew, 'new signature first');
  assert.equal(sigs[1], byOld, 'old signature second');
  assert.throws(() => verifySigned(q2, 'whsec_' + Buffer.alloc(32, 1).toString('base64')));
  assert.ok(e1.id);

  // Rotating with no grace and a chosen secret: only the new one signs.
  const mine = 'whsec_' + Buffer.alloc(40, 3).toString('base64');
  const rot2 = await api(relay, 'POST', `/v1/subscriptions/${sub.id}/rotate-secret`, { grace_seconds: 0, secret: mine });
  assert.equal(rot2.status, 200, rot2.text);
  assert.equal(rot2.json.secret, mine);
  r.secrets.push(mine);
  const e3 = await postEvent(relay, { type: 'rot.nograce' });
  const q3 = (await r.waitFor(3))[2];
  assert.equal(q3.headers['webhook-id'], e3.id);
  assert.equal(verifySigned(q3, mine).id, e3.id);
  assert.throws(() => verifySigned(q3, rot.json.secret), 'previous secret no longer signs');
  // `old` was still inside its own 1 h grace: a rotation with no grace stops it too.
  assert.equal(q3.headers['webhook-signature'].split(' ').length, 1, q3.headers['webhook-signature']);
  assert.throws(() => verifySigned(q3, old), 'the oldest secret no longer signs either');

  const badSecret = await api(relay, 'POST', `/v1/subscriptions/${sub.id}/rotate-secret`, { secret: 'not-a-secret' });
  assertError(badSecret, 422, 'invalid_field', 'rotate with a malformed secret');
  const badGrace = await api(relay, 'POST', `/v1/subscriptions/${sub.id}/rotate-secret`, { grace_seconds: -5 });
  assertError(badGrace, 422, 'invalid_field', 'negative grace');

  // "Rotating" to the secret in use, or to one still in its grace, would change nothing:
  // a leaked secret would stay current with no end (and sign twice). A 409 says so.
  const same = await api(relay, 'POST', `/v1/subscriptions/${sub.id}/rotate-secret`, { secret: mine });
  assertError(same, 409, 'conflict', 'rotate to the current secret');
  // The same key spelled another way (base64's unused low bits set) is the same secret.
  const respelled = mine.replace(/w==$/, 'x==');
  assert.notEqual(respelled, mine);
  assert.deepEqual(Buffer.from(respelled.slice(6), 'base64'), Buffer.from(mine.slice(6), 'base64'));
  const sameKey = await api(relay, 'POST', `/v1/subscriptions/${sub.id}/rotate-secret`, { secret: respelled });
  assertError(sameKey, 409, 'conflict', 'rotate to the current key spelled another way');
  const fresh = 'whsec_' + Buffer.alloc(32, 9).toString('base64');
  const rot3 = await api(relay, 'POST', `/v1/subscriptions/${sub.id}/rotate-secret`, { grace_seconds: 3600, secret: fresh });
  assert.equal(rot3.status, 200, rot3.text);
  r.secrets.push(fresh);
  const inGrace = await api(relay, 'POST', `/v1/subscriptions/${sub.id}/rotate-secret`, { secret: mine });
  assertError(inGrace, 409, 'conflict', 'rotate back to a secret still in its grace');
  const e4 = await postEvent(relay, { type: 'rot.refused' });
  const q4 = (await r.waitFor(4))[3];
  assert.equal(q4.headers['webhook-id'], e4.id);
  assert.deepEqual(q4.headers['webhook-signature'].split(' '), signatures(q4, e4.id, fresh, mine),
    'the refused rotations changed nothing');

  // A deleted subscription's secrets are not kept in the file.
  const del = await api(relay, 'DELETE', `/v1/subscriptions/${sub.id}`);
  assert.equal(del.status, 204, del.text);
  const left = spawnSync('sqlite3', ['-cmd', '.timeout 5000', relay.dbPath,
    `SELECT count(*) FROM subscription_secrets WHERE subscription_id = ${sub.id.slice(4)}`], { encoding: 'utf8', timeout: 10_000 });
  assert.equal(left.status, 0, left.stderr);
  assert.equal(left.stdout.trim(), '0', 'secrets of the deleted subscription left in the database');

  // Secrets that sign nothing are deleted at start too: a deleted subscription's, kept by
  // a version before the delete took them along, and ones past their grace (a rotation
  // deletes those, but none may come for a long time).
  const live = await createSub(relay, r, { event_types: ['rot.live'] });
  await relay.stop();
  const plant = spawnSync('sqlite3', [relay.dbPath,
    `INSERT INTO subscription_secrets(subscription_id, secret, created_at, expires_at) VALUES
     (${sub.id.slice(4)}, '${mine}', 0, NULL), (${live.id.slice(4)}, '${fresh}', 0, 1)`], { encoding: 'utf8', timeout: 10_000 });
  assert.equal(plant.status, 0, plant.stderr);
  const again = await startRelay({ dbPath: relay.dbPath });
  await again.stop();
  const kept = spawnSync('sqlite3', [relay.dbPath,
    'SELECT subscription_id, secret FROM subscription_secrets ORDER BY id'], { encoding: 'utf8', timeout: 10_000 });
  assert.equal(kept.status, 0, kept.stderr);
  assert.equal(kept.stdout.trim(), `${live.id.slice(4)}|${live.secret}`, 'only the live subscription\'s current secret is left');
}));

// docs/api.md: rotate-secret's body may be left out (then with no Content-Type): a new
// secret and a day's grace for the old one; grace_seconds runs from 0 to 2,592,000 (30
// days), both ends taken. A route whose body is optional must not answer 415 for none.
test('rotate-secret with no body rotates with a grace; grace_seconds is taken up to 30 days', withLogs(async () => {
  const relay = await startRelay();
  const r = await startReceiver();
  const sub = await createSub(relay, r, { event_types: ['nobody.*'] });
  const path = `/v1/subscriptions/${sub.id}/rotate-secret`;
  const rot = await api(relay, 'POST', path);
  assert.equal(rot.status, 200, `rotate-secret with no body: ${rot.text}`);
  assert.equal(rot.json.id, sub.id);
  assert.match(rot.json.secret, /^whsec_[A-Za-z0-9+/]+={0,2}$/);
  assert.notEqual(rot.json.secret, sub.secret);
  r.secrets.push(rot.json.secret);
  const ev = await postEvent(relay, { type: 'nobody.x' });
  const [q] = await r.waitFor(1);
  assert.equal(q.headers['webhook-id'], ev.id);
  assert.deepEqual(q.headers['webhook-signature'].split(' '), signatures(q, ev.id, rot.json.secret, sub.secret),
    'the new secret signs, and the old one beside it in its grace');

  const most = await api(relay, 'POST', path, { grace_seconds: 30 * 86400 });
  assert.equal(most.status, 200, `grace_seconds of 30 days: ${most.text}`);
  r.secrets.push(most.json.secret);
  const none = await api(relay, 'POST', path, { grace_seconds: 0 });
  assert.equal(none.status, 200, `grace_seconds 0: ${none.text}`);
  r.secrets.push(none.json.secret);
  for (const grace of [30 * 86400 + 1, -1, 1.5, '60', null]) {
    const res = await api(relay, 'POST', path, { grace_seconds: grace });
    assertError(res, 422, 'invalid_field', `grace_seconds ${JSON.stringify(grace)}`);
    assert.match(res.json.error.message, /grace_seconds must be an integer from 0 to 2592000/);
  }
  const ev2 = await postEvent(relay, { type: 'nobody.y' });
  const q2 = (await r.waitFor(2))[1];
  assert.equal(q2.headers['webhook-id'], ev2.id);
  assert.equal(q2.headers['webhook-signature'], signatures(q2, ev2.id, none.json.secret)[0],
    'grace 0 stopped every older secret; the refused calls rotated nothing');
}));

// An operator's typo must not be a silent success: {"grace": 0} used to rotate with the
// default day of grace, leaving a leaked secret valid; {"event_type": [...]} changed nothing.
// docs/api.md: at most 10 old secrets sign beside the current one; an 11th rotation
// within a grace retires the oldest early. Fewer, and a receiver still holding a secret
// a few rotations back (well inside its grace) starts rejecting; more, and the header
// grows without end.
test('rotate-secret: the current secret and the 10 newest old ones sign, newest first', withLogs(async () => {
  const relay = await startRelay();
  const r = await startReceiver();
  const secret = (i) => 'whsec_' + Buffer.alloc(32, i + 1).toString('base64');
  const sub = await createSub(relay, r, { event_types: ['many.*'], secret: secret(0) });
  const expect = async (n, newest) => {
    const ev = await postEvent(relay, { type: 'many.x' });
    const q = (await r.waitFor(n))[n - 1];
    assert.equal(q.headers['webhook-id'], ev.id);
    const signing = []; // the current secret, then the 10 newest old ones
    for (let i = newest; i >= Math.max(0, newest - 10); i--) signing.push(secret(i));
    const want = signatures(q, ev.id, ...signing);
    assert.deepEqual(q.headers['webhook-signature'].split(' '), want, `after ${newest} rotations`);
  };
  for (let i = 1; i <= 3; i++) {
    const rot = await api(relay, 'POST', `/v1/subscriptions/${sub.id}/rotate-secret`, { grace_seconds: 3600, secret: secret(i) });
    assert.equal(rot.status, 200, rot.text);
    r.secrets.push(secret(i));
  }
  await expect(1, 3);
  for (let i = 4; i <= 11; i++) {
    const rot = await api(relay, 'POST', `/v1/subscriptions/${sub.id}/rotate-secret`, { grace_seconds: 3600, secret: secret(i) });
    assert.equal(rot.status, 200, rot.text);
    r.secrets.push(secret(i));
  }
  await expect(2, 11); // secret(0), the 11th back, no longer signs
  // A longer key that starts with the current one's bytes is another secret, not the
  // same one respelled: the rotation to it is taken, not refused as a 409.
  const longer = 'whsec_' + Buffer.concat([Buffer.alloc(32, 12), Buffer.alloc(16, 99)]).toString('base64');
  const rot = await api(relay, 'POST', `/v1/subscriptions/${sub.id}/rotate-secret`, { grace_seconds: 0, secret: longer });
  assert.equal(rot.status, 200, rot.text);
  r.secrets.push(longer);
  const ev = await postEvent(relay, { type: 'many.x' });
  const q = (await r.waitFor(3))[2];
  assert.equal(q.headers['webhook-signature'], signatures(q, ev.id, longer)[0]);
}));

// docs/api.md: the old secret signs beside the new one "until the grace ends", and not
// after, with no other rotation or restart to end it: the cache keeps an old secret with
// its expiry, and each attempt leaves out the ones past it. Every other rotation test
// ended a grace with a second rotation (which deletes the secret), so an old secret that
// went on signing after its grace was not seen.
test('rotate-secret: the old secret stops signing when its grace ends, with nothing else happening', withLogs(async () => {
  const relay = await startRelay();
  const r = await startReceiver();
  const sub = await createSub(relay, r, { event_types: ['graced.*'] });
  const grace = 2 * SLOW; // seconds: the first delivery must go out well inside it
  const rot = await api(relay, 'POST', `/v1/subscriptions/${sub.id}/rotate-secret`, { grace_seconds: grace });
  assert.equal(rot.status, 200, rot.text);
  const rotatedBy = Date.now(); // the grace ends at most `grace` seconds after this
  r.secrets.push(rot.json.secret);

  const e1 = await postEvent(relay, { type: 'graced.in' });
  const [q1] = await r.waitFor(1);
  assert.equal(q1.headers['webhook-id'], e1.id);
  assert.deepEqual(q1.headers['webhook-signature'].split(' '), signatures(q1, e1.id, rot.json.secret, sub.secret),
    'inside the grace: the new secret and the old one');

  await sleep(rotatedBy + grace * 1000 + 100 - Date.now());
  const e2 = await postEvent(relay, { type: 'graced.out' });
  const q2 = (await r.waitFor(2))[1];
  assert.equal(q2.headers['webhook-id'], e2.id);
  assert.equal(q2.headers['webhook-signature'], signatures(q2, e2.id, rot.json.secret)[0],
    'past the grace: the new secret alone');
  assert.throws(() => verifySigned(q2, sub.secret), 'the old secret no longer signs');
  // Nor is it this subscription's any more: a rotation back to it is taken, not a 409.
  const back = await api(relay, 'POST', `/v1/subscriptions/${sub.id}/rotate-secret`, { grace_seconds: 0, secret: sub.secret });
  assert.equal(back.status, 200, `rotating back to a secret past its grace: ${back.text}`);
}));

test('misspelt fields are refused with 422 by create, PATCH, rotate-secret and recover', withLogs(async () => {
  const relay = await startRelay();
  const r = await startReceiver();
  const created = await api(relay, 'POST', '/v1/subscriptions',
    { url: `${r.url}/hook`, event_types: ['t.#'], desciption: 'typo' });
  assertError(created, 422, 'invalid_field', 'create with desciption');
  assert.match(created.json.error.message, /^desciption: unknown field \(known: url, event_types/);
  const sub = await createSub(relay, r, { event_types: ['t.#'] });
  const patched = await api(relay, 'PATCH', `/v1/subscriptions/${sub.id}`, { event_type: ['other.#'] });
  assertError(patched, 422, 'invalid_field', 'PATCH event_type');
  assert.deepEqual((await api(relay, 'GET', `/v1/subscriptions/${sub.id}`)).json.event_types, ['t.#']);
  // secret is a field of create, not of PATCH: a 200 would say it changed while the old
  // one went on signing
  const newSecret = await api(relay, 'PATCH', `/v1/subscriptions/${sub.id}`,
    { secret: 'whsec_' + Buffer.alloc(32, 7).toString('base64'), enabled: true });
  assertError(newSecret, 422, 'invalid_field', 'PATCH secret');
  assert.match(newSecret.json.error.message, /rotate-secret/);
  const rotated = await api(relay, 'POST', `/v1/subscriptions/${sub.id}/rotate-secret`, { grace: 0 });
  assertError(rotated, 422, 'invalid_field', 'rotate-secret with grace');
  assert.match(rotated.json.error.message, /^grace: unknown field \(known: grace_seconds, secret\)/);
  assertError(await api(relay, 'POST', `/v1/subscriptions/${sub.id}/recover`,
    { since: '2026-01-01T00:00:00Z', until: '2026-02-01T00:00:00Z' }), 422, 'invalid_field', 'recover with until');
  // The secret was not rotated: deliveries carry one signature, by the original secret.
  await postEvent(relay, { type: 't.x' });
  const [req] = await r.waitFor(1);
  assert.equal(req.headers['webhook-signature'].split(' ').length, 1);
  verifySigned(req, sub.secret);
}));

// The documented maxima are inclusive (64 patterns, max_in_flight 1000), and a
// description can be cleared again with null.
test('64 event_types and max_in_flight 1000 are taken; PATCH description null clears it', withLogs(async () => {
  const relay = await startRelay();
  const patterns = Array.from({ length: 64 }, (_, i) => `p${i}.*`);
  const created = await api(relay, 'POST', '/v1/subscriptions',
    { url: 'http://127.0.0.1:9/hook', event_types: patterns, max_in_flight: 1000, description: 'to clear' });
  assert.equal(created.status, 201, created.text);
  assert.equal(created.json.event_types.length, 64);
  assert.equal(created.json.max_in_flight, 1000);
  const cleared = await api(relay, 'PATCH', `/v1/subscriptions/${created.json.id}`, { description: null });
  assert.equal(cleared.status, 200, cleared.text);
  assert.equal(cleared.json.description, null);
  assert.equal((await api(relay, 'GET', `/v1/subscriptions/${created.json.id}`)).json.description, null);
}));

test('custom headers and description: the limits are inclusive, one more is 422, control characters are refused', withLogs(async () => {
  const relay = await startRelay();
  const r = await startReceiver();
  const headers = Object.fromEntries(Array.from({ length: 32 }, (_, i) => [`X-H${i}`, `v${i}`]));
  headers['X-H0'] = 'v'.repeat(4096);
  headers['X-H1'] = 'tab\tinside';
  const sub = await createSub(relay, r, { headers, description: 'd'.repeat(1024) });
  assert.equal(sub.description.length, 1024);
  await postEvent(relay, { type: 'lim.x' });
  const [req] = await r.waitFor(1);
  for (const [name, value] of Object.entries(headers)) {
    assert.equal(req.headers[name.toLowerCase()], value, `custom header ${name} is sent as stored`);
  }
  const base = { url: `${r.url}/hook`, event_types: ['#'] };
  const refused = [
    ['33 headers', { headers: { ...headers, 'X-H32': 'v' } }],
    ['a 4097-byte value', { headers: { 'X-A': 'v'.repeat(4097) } }],
    ['a 257-byte name', { headers: { ['N'.repeat(257)]: 'v' } }],
    ['a 1025-byte description', { description: 'd'.repeat(1025) }],
    ['a control character in a value', { headers: { 'X-A': 'a\u0001b' } }],
    ['DEL in a value', { headers: { 'X-A': 'a\u007fb' } }],
  ];
  for (const [what, body] of refused) {
    assertError(await api(relay, 'POST', '/v1/subscriptions', { ...base, ...body }), 422, 'invalid_field', `create with ${what}`);
    assertError(await api(relay, 'PATCH', `/v1/subscriptions/${sub.id}`, body), 422, 'invalid_field', `PATCH with ${what}`);
  }
  assert.equal((await listAll(relay, '/v1/subscriptions')).length, 1, 'no refused subscription was stored');
  const after = (await api(relay, 'GET', `/v1/subscriptions/${sub.id}`)).json;
  assert.deepEqual(after.headers, headers, 'no refused PATCH changed the headers');
  assert.equal(after.description, 'd'.repeat(1024));
  const named = await api(relay, 'POST', '/v1/subscriptions', { ...base, headers: { ['N'.repeat(256)]: 'v' } });
  assert.equal(named.status, 201, `a 256-byte header name is allowed: ${named.text}`);
}));

test('stats: pending (in flight included), failed, and since when the oldest is due', withLogs(async () => {
  const relay = await startRelay({ retrySchedule: '100ms' });
  const hang = await startReceiver({ behavior: { hang: true } });
  const bad = await startReceiver({ behavior: { status: 500 } });
  const slow = await createSub(relay, hang, { event_types: ['st.slow'], max_in_flight: 1 });
  const failing = await createSub(relay, bad, { event_types: ['st.bad'] });
  const stats = async (id) => {
    const res = await api(relay, 'GET', `/v1/subscriptions/${id}/stats`);
    assert.equal(res.status, 200, res.text);
    return res.json;
  };
  assert.deepEqual(await stats(slow.id), { id: slow.id, pending: 0, failed: 0, oldest_due_at: null });

  const t0 = Date.now();
  await postEvent(relay, { type: 'st.slow', data: 0 });
  const t1 = Date.now();
  await sleep(100); // the others are due later: oldest_due_at is the first's
  for (let i = 1; i < 5; i++) await postEvent(relay, { type: 'st.slow', data: i });
  for (let i = 0; i < 3; i++) await postEvent(relay, { type: 'st.bad', data: i });
  await hang.waitFor(1, 5000 * SLOW); // one in flight (it hangs), four waiting behind it
  const s = await stats(slow.id);
  assert.deepEqual([s.pending, s.failed], [5, 0], JSON.stringify(s));
  const due = Date.parse(s.oldest_due_at);
  assert.ok(due >= t0 - 5 && due <= t1 + 5, `oldest_due_at ${s.oldest_due_at} is when the first was published`);
  await waitUntil(async () => (await stats(failing.id)).failed === 3, 5000 * SLOW, 'three deliveries failed', 50);
  assert.deepEqual(await stats(failing.id), { id: failing.id, pending: 0, failed: 3, oldest_due_at: null });

  assertError(await api(relay, 'GET', '/v1/subscriptions/sub_999999/stats'), 404, 'not_found', 'unknown id');
  assertError(await api(relay, 'POST', `/v1/subscriptions/${slow.id}/stats`, {}), 405, 'method_not_allowed', 'POST');
  assert.equal((await api(relay, 'DELETE', `/v1/subscriptions/${failing.id}`)).status, 204);
  assertError(await api(relay, 'GET', `/v1/subscriptions/${failing.id}/stats`), 404, 'not_found', 'deleted');
}));

test('delivery log: filters by subscription, event and status', withLogs(async () => {
  const relay = await startRelay({ retrySchedule: '100ms' });
  const ok = await startReceiver();
  const bad = await startReceiver({ behavior: { status: 500 } });
  const later = await startReceiver({ behavior: { status: 503, retryAfter: 3600 } });
  const sOk = await createSub(relay, ok, { event_types: ['f.*'] });
  const sBad = await createSub(relay, bad, { event_types: ['f.*'] });
  const sLater = await createSub(relay, later, { event_types: ['f.b'] });
  const ea = await postEvent(relay, { type: 'f.a' });
  const eb = await postEvent(relay, { type: 'f.b' });
  assert.equal(ea.deliveries, 2);
  assert.equal(eb.deliveries, 3);
  await ok.waitFor(2);
  await later.waitFor(1);
  await waitUntil(async () => {
    const f = await listAll(relay, '/v1/deliveries?status=failed');
    return f.length === 2;
  }, 6000, 'both deliveries to the 500 receiver failed');
  await waitUntil(async () => {
    const dl = await api(relay, 'GET', `/v1/deliveries?subscription=${sLater.id}`);
    return dl.json.data[0]?.attempt_count === 1;
  }, 5000, 'the 503 attempt logged');

  const all = await listAll(relay, '/v1/deliveries');
  assert.equal(all.length, 5);
  const bySub = await listAll(relay, `/v1/deliveries?subscription=${sOk.id}`);
  assert.equal(bySub.length, 2);
  assert.ok(bySub.every((d) => d.subscription_id === sOk.id && d.status === 'delivered'));
  const byEvent = await listAll(relay, `/v1/deliveries?event=${eb.id}`);
  assert.deepEqual(new Set(byEvent.map((d) => d.subscription_id)), new Set([sOk.id, sBad.id, sLater.id]));
  assert.ok(byEvent.every((d) => d.event_id === eb.id));
  const delivered = await listAll(relay, '/v1/deliveries?status=delivered');
  assert.deepEqual(new Set(delivered.map((d) => d.subscription_id)), new Set([sOk.id]));
  const failed = await listAll(relay, '/v1/deliveries?status=failed');
  assert.ok(failed.every((d) => d.subscription_id === sBad.id && d.next_attempt_at === null));
  const pending = await listAll(relay, '/v1/deliveries?status=pending');
  assert.equal(pending.length, 1);
  assert.equal(pending[0].subscription_id, sLater.id);
  assert.equal(pending[0].last_http_status, 503);
  assert.ok(pending[0].next_attempt_at);
  const combo = await listAll(relay, `/v1/deliveries?event=${ea.id}&status=failed&subscription=${sBad.id}`);
  assert.equal(combo.length, 1);
  assert.equal(combo[0].event_id, ea.id);
  const none = await api(relay, 'GET', `/v1/deliveries?subscription=${sLater.id}&event=${ea.id}`);
  assert.deepEqual(none.json, { data: [], next: null });
  const paged = await listAll(relay, '/v1/deliveries', 2);
  assert.deepEqual(paged.map((d) => d.id), all.map((d) => d.id), 'pagination matches the full list');
  assert.equal(new Set(paged.map((d) => d.id)).size, 5);
  assertError(await api(relay, 'GET', '/v1/deliveries?status=bogus'), 422, 'invalid_field', 'status=bogus');
  // A malformed id is a mistake to say, not an empty log; a well-formed unknown one is empty.
  for (const q of ['subscription=1', 'subscription=foo', 'subscription=sub_x', 'event=1234', 'event=evt_',
    'event=evt_nosuchevent', `event=${ea.id.toLowerCase()}`]) {
    assertError(await api(relay, 'GET', `/v1/deliveries?${q}`), 422, 'invalid_field', q);
  }
  for (const q of ['subscription=sub_999999', 'event=evt_01M85DMB3V0000000000000000']) {
    const res = await api(relay, 'GET', `/v1/deliveries?${q}`);
    assert.equal(res.status, 200, `${q}: ${res.text}`);
    assert.deepEqual(res.json, { data: [], next: null }, q);
  }

  const d = await getDelivery(relay, bySub[0].id);
  for (const k of ['id', 'event_id', 'subscription_id', 'event_type', 'status', 'attempt_count',
    'next_attempt_at', 'last_http_status', 'last_error', 'created_at', 'updated_at', 'attempts']) {
    assert.ok(k in d, `delivery has ${k}: ${JSON.stringify(d)}`);
  }
  assert.equal(d.attempts.length, 1);
}));

// docs/api.md: last_http_status is "null if none", and 0 means an attempt got no
// response. A delivery not attempted yet (its first attempt still in flight here) must
// say null, in the log and by id, not claim the receiver never answered.
test('delivery log: a delivery with no attempt ended yet has last_http_status and last_error null', withLogs(async () => {
  const relay = await startRelay();
  const r = await startReceiver({ behavior: { hang: true } });
  const sub = await createSub(relay, r, { event_types: ['slow.#'] });
  const ev = await postEvent(relay, { type: 'slow.one' });
  await r.waitFor(1);
  const [listed] = await listAll(relay, `/v1/deliveries?subscription=${sub.id}`);
  const one = await getDelivery(relay, listed.id);
  for (const d of [listed, one, (await eventDeliveries(relay, ev.id))[0]]) {
    assert.equal(d.status, 'pending', JSON.stringify(d));
    assert.equal(d.attempt_count, 0, JSON.stringify(d));
    assert.equal(d.last_http_status, null, JSON.stringify(d));
    assert.equal(d.last_error, null, JSON.stringify(d));
  }
  assert.deepEqual(one.attempts, []);
}));

test('healthz answers 200 ok', withLogs(async () => {
  const relay = await startRelay();
  const res = await api(relay, 'GET', '/healthz');
  assert.equal(res.status, 200);
  assert.deepEqual(res.json, { status: 'ok' });
}));
