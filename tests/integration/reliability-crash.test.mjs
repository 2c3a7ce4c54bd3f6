// reliability-crash.test.mjs - issue #5, part 1: kill -9 under load loses nothing accepted.
//
// 8 publishers POST continuously (each event carries a client id, so a request that got no
// answer is retried safely: a 200 replay means the relay had stored it before it died);
// the relay is killed with SIGKILL at random moments and restarted on the same database;
// after each kill `sqlite3 PRAGMA integrity_check` must say ok. Then publishing stops, the
// relay drains, and every event that was answered 202 (or 200 replay) must be in
// GET /v1/events and must have reached every one of the three receivers.
// RELIABILITY_SOAK=1 (make soak) runs more kills and longer stretches of load.

import { test, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import {
  startRelay, startReceiver, createSub, listAll, waitUntil, sleep, cleanup, withLogs,
} from './harness.mjs';
import { SOAK, SLOW, integrityCheck, tryPost, idsOf } from './reliability/lib.mjs';

afterEach(cleanup);

const KILLS = SOAK ? Number(process.env.RELIABILITY_KILLS || 20) : 3;
const PUBLISHERS = SOAK ? 16 : 8;
const RUN_MS = SOAK ? [1000, 5000] : [400, 1200]; // load between two kills, random in range
const MAX_IN_FLIGHT = 16; // the per-subscription default (docs/api.md)

test('kill -9 at random moments under load: no accepted event is lost, duplicates stay bounded', withLogs(async () => {
  const relayOpts = { args: ['--delivery-timeout', '5s'], retrySchedule: '200ms,200ms,400ms,800ms' };
  let relay = await startRelay(relayOpts);
  const dbPath = relay.dbPath;
  const receivers = [await startReceiver(), await startReceiver(), await startReceiver()];
  for (const r of receivers) await createSub(relay, r, { event_types: ['load.#'] });

  const accepted = new Map(); // event id -> client id; answered 202
  const replayed = new Map(); // event id -> client id; answered 200 after an unanswered try
  const badDeliveries = [];
  const otherAnswers = {}; // status -> count (503 while the relay starts, ...)
  let unknown = 0; // events whose first request got no answer
  let unresolved = 0; // ... and never got one before the publishers stopped
  let stopping = false;
  const cur = { relay };

  const publisher = async (w) => {
    const deadline = Date.now() + 600_000;
    for (let i = 0; !stopping && i < 1_000_000 && Date.now() < deadline; i++) {
      const clientId = `p${w}-${i}`;
      const body = { type: `load.w${w}`, id: clientId, data: { w, i, pad: 'x'.repeat(200) } };
      let noAnswer = false;
      // Retry this one event until it gets an answer (bounded), never another's.
      const giveUp = Date.now() + 20_000 * SLOW;
      for (;;) {
        const res = await tryPost(`${cur.relay.url}/v1/events`, body, { timeoutMs: 10_000 * SLOW });
        if (res.status === 202 || res.status === 200) {
          if (res.status === 200 && !noAnswer) {
            badDeliveries.push(`${clientId}: 200 replay on the first answered try: ${res.text}`);
          }
          (res.status === 202 ? accepted : replayed).set(res.json.id, clientId);
          if (res.json.deliveries !== 3) badDeliveries.push(`${clientId}: ${res.text}`);
          break;
        }
        if (res.status !== undefined) otherAnswers[res.status] = (otherAnswers[res.status] ?? 0) + 1;
        else if (!noAnswer) { noAnswer = true; unknown++; }
        if (Date.now() > giveUp) { unresolved++; break; }
        await sleep(20);
      }
    }
  };

  const workers = Array.from({ length: PUBLISHERS }, (_, w) => publisher(w));
  const integrity = [];
  try {
    for (let k = 0; k < KILLS; k++) {
      const before = accepted.size;
      await waitUntil(() => accepted.size >= before + 20, 10_000 * SLOW, `load before kill ${k + 1}`);
      await sleep(RUN_MS[0] + Math.random() * (RUN_MS[1] - RUN_MS[0]));
      await cur.relay.kill9();
      integrity.push(integrityCheck(dbPath));
      await sleep(Math.random() * 200);
      cur.relay = await startRelay({ ...relayOpts, dbPath });
    }
    const before = accepted.size;
    await waitUntil(() => accepted.size >= before + 20, 10_000 * SLOW, 'load after the last restart');
    await sleep(300);
  } finally {
    stopping = true;
    await Promise.all(workers);
  }
  relay = cur.relay;

  const mustHave = new Set([...accepted.keys(), ...replayed.keys()]);
  assert.deepEqual(badDeliveries, [], 'every accepted event matched the three subscriptions');
  assert.ok(accepted.size > 0);

  // Drain: every accepted event reaches every receiver (bounded).
  const missing = () => receivers.map((r) => {
    const { ids } = idsOf(r);
    return [...mustHave].filter((id) => !ids.has(id)).length;
  });
  await waitUntil(() => missing().every((n) => n === 0), 30_000 * SLOW,
    `every accepted event delivered to every receiver (missing per receiver: ${missing()})`, 100)
    .catch((err) => { err.message += `\nmissing per receiver: ${missing()}`; throw err; });

  const stored = await listAll(relay, '/v1/events');
  const storedIds = new Set(stored.map((e) => e.id));
  const lost = [...mustHave].filter((id) => !storedIds.has(id));
  // A client id stored twice would mean a retry after a crash was not recognised.
  const byKey = new Map();
  for (const e of stored) byKey.set(e.idempotency_key, (byKey.get(e.idempotency_key) ?? 0) + 1);
  const twice = [...byKey].filter(([, n]) => n > 1).map(([key]) => key);
  const phantom = receivers.flatMap((r) => [...idsOf(r).ids].filter((id) => !storedIds.has(id)));
  const duplicates = receivers.reduce((n, r) => n + idsOf(r).dups, 0);
  const okChecks = integrity.filter((s) => s === 'ok').length;

  console.log(`reliability crash summary: events published (202) ${accepted.size}, replayed after an `
    + `unanswered try (200) ${replayed.size}, unknown ${unknown} (unresolved ${unresolved}), `
    + `kills survived ${KILLS}, events lost ${lost.length}, duplicates ${duplicates}, `
    + `integrity checks passed ${okChecks}/${integrity.length}, stored ${stored.length}, `
    + `other answers ${JSON.stringify(otherAnswers)}`);

  assert.deepEqual(integrity, Array(KILLS).fill('ok'), 'PRAGMA integrity_check after every kill');
  assert.deepEqual(lost, [], `${lost.length} accepted event(s) missing from GET /v1/events`);
  assert.deepEqual(twice, [], 'no client id stored twice across crashes');
  assert.deepEqual(phantom, [], 'receivers only got stored events');
  assert.ok(duplicates <= KILLS * 3 * MAX_IN_FLIGHT,
    `${duplicates} duplicate deliveries after ${KILLS} kills: more than could have been in flight (${KILLS * 3 * MAX_IN_FLIGHT})`);
}));
