// replay.test.mjs - POST /v1/subscriptions/{id}/replay: a subscription gets the stored
// events it matches and has no delivery of (published before it existed, or while it was
// disabled), in order, signed like any delivery, once however often it is called; `until`
// bounds the range and `next` continues a long one.

import { test, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import {
  startRelay, startReceiver, api, createSub, postEvent, verifySigned, assertNoMore, assertError,
  listAll, cleanup, withLogs, sleep,
} from './harness.mjs';
import { SLOW } from './reliability/lib.mjs';

afterEach(cleanup);

const ids = (receiver) => receiver.requests.map((q) => q.headers['webhook-id']);
// a time strictly between two publishes (the relay stamps events to the millisecond)
async function instant() {
  await sleep(5);
  const t = new Date().toISOString();
  await sleep(5);
  return t;
}

test('a new subscription gets the matching events published before it, in order, once', withLogs(async () => {
  const relay = await startRelay();
  const r = await startReceiver();
  const early = await postEvent(relay, { type: 'order.created', data: { n: 0 } });
  const since = await instant();
  const old = [];
  for (let n = 1; n <= 3; n++) old.push(await postEvent(relay, { type: 'order.created', data: { n } }));
  const other = await postEvent(relay, { type: 'invoice.paid', data: {} });
  assert.deepEqual([early, ...old, other].map((e) => e.deliveries), [0, 0, 0, 0, 0]);

  const sub = await createSub(relay, r, { event_types: ['order.*'] });
  const live = await postEvent(relay, { type: 'order.created', data: { n: 4 } });
  assert.equal(live.deliveries, 1);
  await r.waitFor(1, 5000 * SLOW);

  const res = await api(relay, 'POST', `/v1/subscriptions/${sub.id}/replay`, { since });
  assert.equal(res.status, 202, res.text);
  assert.deepEqual(res.json, { replayed: 3, next: null });
  await r.waitFor(4, 5000 * SLOW);
  assert.deepEqual(ids(r).slice(1), old.map((e) => e.id), 'the replayed events, oldest first');
  for (const [i, q] of r.requests.slice(1).entries()) {
    const env = verifySigned(q, sub.secret); // the standardwebhooks package
    assert.equal(env.id, old[i].id);
    assert.equal(env.type, 'order.created');
    assert.deepEqual(env.data, { n: i + 1 });
  }

  // Again: every event in range has its delivery now, so nothing is made or sent.
  const again = await api(relay, 'POST', `/v1/subscriptions/${sub.id}/replay`, { since });
  assert.deepEqual([again.status, again.json], [202, { replayed: 0, next: null }], again.text);
  await assertNoMore(r, 4);

  // `until` (exclusive) bounds the range: only the event before `since` is left.
  const before = new Date(Date.now() - 60_000).toISOString();
  const bounded = await api(relay, 'POST', `/v1/subscriptions/${sub.id}/replay`, { since: before, until: since });
  assert.deepEqual([bounded.status, bounded.json], [202, { replayed: 1, next: null }], bounded.text);
  await r.waitFor(5, 5000 * SLOW);
  assert.equal(ids(r)[4], early.id);
  await assertNoMore(r, 5);

  // The log shows them as ordinary deliveries, each event delivered to it once.
  const log = await listAll(relay, `/v1/deliveries?subscription=${sub.id}`);
  assert.equal(log.length, 5);
  assert.ok(log.every((d) => d.status === 'delivered'), JSON.stringify(log));
  assert.deepEqual(new Set(log.map((d) => d.event_id)), new Set([early, ...old, live].map((e) => e.id)));
  assert.ok(!ids(r).includes(other.id), 'an event its patterns do not match is not replayed');
}));

// A batch's events share one millisecond, and ids are random within one: replay puts
// them back in the order they were stored, as live delivery sends them.
test('a replayed batch arrives in its publish order', withLogs(async () => {
  const relay = await startRelay();
  const r = await startReceiver();
  const since = await instant();
  const batch = await api(relay, 'POST', '/v1/events/batch',
    Array.from({ length: 300 }, (_, i) => ({ type: 'row.changed', data: { i } })));
  assert.equal(batch.status, 202, batch.text);
  const single = await postEvent(relay, { type: 'row.changed', data: { i: 300 } });
  const sub = await createSub(relay, r, { event_types: ['row.#'], max_in_flight: 1 });
  const res = await api(relay, 'POST', `/v1/subscriptions/${sub.id}/replay`, { since });
  assert.deepEqual([res.status, res.json], [202, { replayed: 301, next: null }], res.text);
  await r.waitFor(301, 20_000 * SLOW);
  assert.deepEqual(ids(r), [...batch.json.ids, single.id]);
}));

test('events published while a subscription was disabled are replayed after it is enabled, not before', withLogs(async () => {
  const relay = await startRelay();
  const r = await startReceiver();
  const sub = await createSub(relay, r, { event_types: ['stock.#'] });
  const since = await instant();
  assert.equal((await api(relay, 'PATCH', `/v1/subscriptions/${sub.id}`, { enabled: false })).status, 200);
  const missed = [];
  for (let n = 0; n < 2; n++) missed.push(await postEvent(relay, { type: 'stock.level.low', data: { n } }));
  assert.deepEqual(missed.map((e) => e.deliveries), [0, 0]);

  // Replayed while still disabled: made, and held like any pending delivery of it.
  const held = await api(relay, 'POST', `/v1/subscriptions/${sub.id}/replay`, { since });
  assert.deepEqual([held.status, held.json], [202, { replayed: 2, next: null }], held.text);
  await assertNoMore(r, 0);
  const pending = await listAll(relay, `/v1/deliveries?subscription=${sub.id}&status=pending`);
  assert.equal(pending.length, 2);

  assert.equal((await api(relay, 'PATCH', `/v1/subscriptions/${sub.id}`, { enabled: true })).status, 200);
  await r.waitFor(2, 5000 * SLOW);
  assert.deepEqual(ids(r), missed.map((e) => e.id));
  await assertNoMore(r, 2);
}));

test('a long range is replayed in calls of about 2,000 events, following next', { timeout: 120_000 }, withLogs(async () => {
  const relay = await startRelay();
  const r = await startReceiver();
  const since = await instant();
  // Three batches of 1,000, each stamped with one millisecond, a few milliseconds apart:
  // the first call looks at two batches (2,000 events, the end of a millisecond), the
  // next at the third.
  const published = [];
  for (let b = 0; b < 3; b++) {
    const items = Array.from({ length: 1000 }, (_, i) => ({ type: i % 2 ? 'log.line' : 'job.done', data: { b, i } }));
    const res = await api(relay, 'POST', '/v1/events/batch', items);
    assert.equal(res.status, 202, res.text);
    published.push(...res.json.ids.filter((_, i) => i % 2 === 0));
    await sleep(5);
  }
  const sub = await createSub(relay, r, { event_types: ['job.done'], max_in_flight: 64 });

  const first = await api(relay, 'POST', `/v1/subscriptions/${sub.id}/replay`, { since });
  assert.equal(first.status, 202, first.text);
  assert.equal(first.json.replayed, 1000, first.text);
  assert.equal(typeof first.json.next, 'string', first.text);
  const second = await api(relay, 'POST', `/v1/subscriptions/${sub.id}/replay`, { since: first.json.next });
  assert.deepEqual([second.status, second.json], [202, { replayed: 500, next: null }], second.text);
  assert.ok(Date.parse(first.json.next) > Date.parse(since), first.json.next);

  await r.waitFor(1500, 30_000 * SLOW);
  await assertNoMore(r, 1500);
  assert.deepEqual(new Set(ids(r)), new Set(published), 'each matching event exactly once');
}));

test('replay refuses what it cannot do, with the documented errors', withLogs(async () => {
  const relay = await startRelay();
  const sub = await createSub(relay, null, { url: 'http://127.0.0.1:9/hook' });
  const path = `/v1/subscriptions/${sub.id}/replay`;
  const since = '2026-01-01T00:00:00Z';
  assertError(await api(relay, 'POST', '/v1/subscriptions/sub_999999/replay', { since }), 404, 'not_found', 'unknown id');
  assertError(await api(relay, 'POST', path, {}), 422, 'invalid_field', 'no since');
  assertError(await api(relay, 'POST', path, { since: 'yesterday' }), 422, 'invalid_field', 'since not a time');
  assertError(await api(relay, 'POST', path, { since, until: 5 }), 422, 'invalid_field', 'until not a time');
  const backwards = await api(relay, 'POST', path, { since, until: '2025-12-31T00:00:00Z' });
  assertError(backwards, 422, 'invalid_field', 'until before since');
  assert.match(backwards.json.error.message, /until must be after since/);
  // an empty range is a mistake too: `until` is exclusive, so since = until names nothing
  const empty = await api(relay, 'POST', path, { since, until: since });
  assertError(empty, 422, 'invalid_field', 'until equal to since');
  assert.match(empty.json.error.message, /until must be after since/);
  const typo = await api(relay, 'POST', path, { since, untill: '2026-02-01T00:00:00Z' });
  assertError(typo, 422, 'invalid_field', 'a misspelt field');
  assert.match(typo.json.error.message, /^untill: unknown field/);
  assertError(await api(relay, 'POST', path, [since]), 422, 'invalid_field', 'not an object');
  assertError(await api(relay, 'POST', path, '{"since":', { 'content-type': 'application/json' }), 400, 'malformed_json', 'cut JSON');
  assert.equal((await api(relay, 'DELETE', `/v1/subscriptions/${sub.id}`)).status, 204);
  assertError(await api(relay, 'POST', path, { since }), 404, 'not_found', 'a deleted subscription');
}));

// `until` must hold back what comes at and after it, even events the subscription has no
// delivery of yet (in the first test every later event already had one, so a replay
// that ignored `until` made the same count).
test('replay with until sends only the events before it; the rest wait for their own call', withLogs(async () => {
  const relay = await startRelay();
  const r = await startReceiver();
  const since = await instant();
  const first = await postEvent(relay, { type: 'stock.moved', data: { n: 1 } });
  const until = await instant();
  const later = [];
  for (let n = 2; n <= 3; n++) later.push(await postEvent(relay, { type: 'stock.moved', data: { n } }));
  const sub = await createSub(relay, r, { event_types: ['stock.*'] });

  const bounded = await api(relay, 'POST', `/v1/subscriptions/${sub.id}/replay`, { since, until });
  assert.deepEqual([bounded.status, bounded.json], [202, { replayed: 1, next: null }], bounded.text);
  await r.waitFor(1, 5000 * SLOW);
  await assertNoMore(r, 1, 500);
  assert.deepEqual(ids(r), [first.id]);

  const rest = await api(relay, 'POST', `/v1/subscriptions/${sub.id}/replay`, { since: until });
  assert.deepEqual([rest.status, rest.json], [202, { replayed: 2, next: null }], rest.text);
  await r.waitFor(3, 5000 * SLOW);
  assert.deepEqual(ids(r), [first.id, ...later.map((e) => e.id)]);
}));

// The range's ends at an event's own millisecond: a client replaying "from this event
// on" or "up to that one" passes the timestamps the relay showed. since takes the event
// stamped with it, until does not (the test above only used instants between events).
test('replay since an event\'s timestamp includes it; until another\'s excludes it', withLogs(async () => {
  const relay = await startRelay();
  const r = await startReceiver();
  const evs = [];
  for (let n = 1; n <= 3; n++) {
    evs.push(await postEvent(relay, { type: 'edge.hit', data: { n } }));
    await sleep(5);
  }
  const stamp = async (e) => (await api(relay, 'GET', `/v1/events/${e.id}`)).json.timestamp;
  const [t1, t2] = [await stamp(evs[0]), await stamp(evs[1])];
  assert.notEqual(t1, t2);
  const sub = await createSub(relay, r, { event_types: ['edge.*'] });

  const bounded = await api(relay, 'POST', `/v1/subscriptions/${sub.id}/replay`, { since: t1, until: t2 });
  assert.deepEqual([bounded.status, bounded.json], [202, { replayed: 1, next: null }], bounded.text);
  await r.waitFor(1, 5000 * SLOW);
  await assertNoMore(r, 1, 300);
  assert.deepEqual(ids(r), [evs[0].id]);

  const rest = await api(relay, 'POST', `/v1/subscriptions/${sub.id}/replay`, { since: t2 });
  assert.deepEqual([rest.status, rest.json], [202, { replayed: 2, next: null }], rest.text);
  await r.waitFor(3, 5000 * SLOW);
  assert.deepEqual(ids(r), evs.map((e) => e.id));
}));
