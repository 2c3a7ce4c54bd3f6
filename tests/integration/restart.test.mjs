// restart.test.mjs - durability and lifecycle: kill -9 with deliveries in flight loses
// nothing that got a 202, graceful SIGTERM/SIGINT exits 0, restarts on the same database.
// Also the command line: --help, HOOKRELAY_* environment variables, --api-key.

import { test, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import net from 'node:net';
import path from 'node:path';
import { writeFileSync, statSync, symlinkSync, existsSync, readdirSync, readFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import {
  startRelay, startReceiver, api, createSub, postEvent, verifySigned, assertError, listAll,
  waitUntil, sleep, relayBin, tmpDir, cleanup, withLogs, eventDeliveries, rawExchange,
} from './harness.mjs';

afterEach(cleanup);

test('kill -9 with deliveries in flight: after restart every accepted event is delivered', withLogs(async () => {
  const relay = await startRelay({ args: ['--delivery-timeout', '30s'], retrySchedule: '200ms,200ms,200ms' });
  const r = await startReceiver({ behavior: { hang: true } });
  const sub = await createSub(relay, r, { event_types: ['crash.*'] });
  const ids = [];
  for (let i = 0; i < 10; i++) ids.push((await postEvent(relay, { type: 'crash.test', data: { i } })).id);
  await r.waitFor(10, 5000); // all ten are in flight, hanging
  await relay.kill9();
  r.dropConnections();
  r.setBehavior({ status: 200 });
  const before = r.requests.length;

  const again = await startRelay({ dbPath: relay.dbPath, args: ['--delivery-timeout', '30s'], retrySchedule: '200ms,200ms,200ms' });
  await waitUntil(() => new Set(r.requests.slice(before).map((q) => q.headers['webhook-id'])).size === 10,
    10_000, 'all ten events delivered after restart');
  const redelivered = new Set(r.requests.slice(before).map((q) => q.headers['webhook-id']));
  assert.deepEqual(redelivered, new Set(ids));
  for (const q of r.requests.slice(before)) assert.equal(verifySigned(q, sub.secret).id, q.headers['webhook-id']);

  const events = await listAll(again, '/v1/events');
  assert.deepEqual(new Set(events.map((e) => e.id)), new Set(ids));
  assert.equal(events.length, 10);
  await waitUntil(async () => (await listAll(again, '/v1/deliveries?status=delivered')).length === 10,
    5000, 'all ten deliveries marked delivered');
  const subs = await api(again, 'GET', `/v1/subscriptions/${sub.id}`);
  assert.equal(subs.status, 200, 'subscription survives the crash');
}));

// A DELETE fails its subscription's pending deliveries, but the ones in flight stay
// pending until their attempt ends. A crash then leaves them pending with nothing in
// flight: the start must find the deleted subscription and finish its sweep, or they
// stayed "pending" forever (and held their events past the retention).
test('kill -9 after a DELETE with deliveries in flight: the restart fails them, unsent', withLogs(async () => {
  const relay = await startRelay({ args: ['--delivery-timeout', '30s'], retrySchedule: '200ms' });
  const r = await startReceiver({ behavior: { hang: true } });
  const sub = await createSub(relay, r, { event_types: ['gone.*'] });
  const ids = [];
  for (let i = 0; i < 3; i++) ids.push((await postEvent(relay, { type: 'gone.test', data: { i } })).id);
  await r.waitFor(3, 5000); // all three in flight, hanging
  assert.equal((await api(relay, 'DELETE', `/v1/subscriptions/${sub.id}`)).status, 204);
  const held = await listAll(relay, `/v1/deliveries?subscription=${sub.id}`);
  assert.deepEqual(held.map((d) => d.status), ['pending', 'pending', 'pending'], 'in flight at the DELETE');
  await relay.kill9();
  r.dropConnections();
  r.setBehavior({ status: 200 });
  const before = r.requests.length;

  const again = await startRelay({ dbPath: relay.dbPath, retrySchedule: '200ms' });
  await waitUntil(async () => (await listAll(again, `/v1/deliveries?subscription=${sub.id}&status=failed`)).length === 3,
    5000, 'the deleted subscription\'s deliveries failed after the restart');
  for (const d of held) {
    const one = await api(again, 'GET', `/v1/deliveries/${d.id}`);
    assert.equal(one.status, 200, one.text);
    assert.equal(one.json.status, 'failed', one.text);
    assert.equal(one.json.last_error, 'subscription deleted', one.text);
  }
  assert.equal(r.requests.length, before, 'nothing sent for a deleted subscription');
}));

test('kill -9 during a burst of publishes: every 202 survives the restart', withLogs(async () => {
  const relay = await startRelay();
  const acceptedIds = [];
  let stop = false;
  const worker = async (w) => {
    for (let i = 0; !stop && i < 10_000; i++) {
      try {
        const res = await fetch(`${relay.url}/v1/events`, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ type: 'burst.event', data: { w, i } }),
          signal: AbortSignal.timeout(5000),
        });
        const text = await res.text();
        if (res.status === 202) acceptedIds.push(JSON.parse(text).id);
      } catch {
        return; // the relay is gone: this request's outcome is unknown, which is fine
      }
    }
  };
  const workers = Array.from({ length: 8 }, (_, w) => worker(w));
  await waitUntil(() => acceptedIds.length >= 60, 10_000, '60 events accepted');
  await relay.kill9();
  stop = true;
  await Promise.all(workers);
  assert.ok(acceptedIds.length >= 60);

  const again = await startRelay({ dbPath: relay.dbPath });
  const stored = new Set((await listAll(again, '/v1/events')).map((e) => e.id));
  const lost = acceptedIds.filter((id) => !stored.has(id));
  assert.deepEqual(lost, [], `${lost.length} of ${acceptedIds.length} accepted events lost by kill -9`);
}));

test('SIGTERM exits 0 promptly; restart on the same database keeps everything', withLogs(async () => {
  const relay = await startRelay();
  const r = await startReceiver();
  const sub = await createSub(relay, r, { event_types: ['life.*'] });
  const e1 = await postEvent(relay, { type: 'life.one', data: { n: 1 } });
  await r.waitFor(1);
  const t0 = performance.now();
  await relay.stop({ signal: 'SIGTERM', timeoutMs: 5000 });
  const took = performance.now() - t0;
  assert.ok(took < 1500, `nothing in flight, yet the stop took ${Math.round(took)} ms`);

  const again = await startRelay({ dbPath: relay.dbPath });
  const got = await api(again, 'GET', `/v1/events/${e1.id}`);
  assert.equal(got.status, 200);
  assert.deepEqual(got.json.data, { n: 1 });
  assert.equal(got.json.deliveries[0].status, 'delivered');
  const e2 = await postEvent(again, { type: 'life.two' });
  assert.equal(e2.deliveries, 1, 'subscriptions are loaded on start');
  const q = (await r.waitFor(2))[1];
  assert.equal(verifySigned(q, sub.secret).id, e2.id, 'same secret after restart');
  // The first event is not delivered again after a clean stop.
  await sleep(500);
  assert.equal(r.requests.filter((x) => x.headers['webhook-id'] === e1.id).length, 1);
  await again.stop({ signal: 'SIGINT', timeoutMs: 5000 });
}));

// At start the reads' horizon (the newest event and the newest delivery on disk) is
// read from the database. With fan-out there are more deliveries than events: each must
// be readable after a restart before anything new is published, not only those whose id
// is below the newest event's number (the test above has one of each, ids equal).
test('after a restart every stored delivery reads back before anything new is published', withLogs(async () => {
  const relay = await startRelay();
  const r = await startReceiver();
  for (let i = 0; i < 3; i++) await createSub(relay, r, { event_types: ['fan.*'] });
  const evs = [await postEvent(relay, { type: 'fan.one' }), await postEvent(relay, { type: 'fan.two' })];
  await r.waitFor(6);
  const before = await listAll(relay, '/v1/deliveries');
  assert.equal(before.length, 6);
  await relay.stop({ signal: 'SIGTERM', timeoutMs: 5000 });

  const again = await startRelay({ dbPath: relay.dbPath });
  const after = await listAll(again, '/v1/deliveries');
  assert.deepEqual(after.map((d) => d.id), before.map((d) => d.id), 'the delivery log after the restart');
  for (const d of before) {
    const one = await api(again, 'GET', `/v1/deliveries/${d.id}`);
    assert.equal(one.status, 200, `${d.id}: ${one.text}`);
    assert.equal(one.json.status, 'delivered');
  }
  for (const e of evs) assert.equal((await eventDeliveries(again, e.id)).length, 3, `${e.id}'s deliveries`);
}));

/** A raw connection to the relay; what comes back collects in sock.got. */
function openRaw(relay) {
  return new Promise((resolve, reject) => {
    const sock = net.connect(relay.port, '127.0.0.1', () => resolve(sock));
    sock.on('error', reject);
    sock.got = '';
    sock.on('data', (d) => { sock.got += d; });
  });
}

/** Resolves once a whole JSON answer is in sock.got. */
function answered(sock) {
  return waitUntil(() => sock.got.includes('\r\n\r\n') && /\}$/.test(sock.got), 3000, 'an answer');
}

// A load balancer's drain sends SIGTERM while requests are still arriving: a publish whose
// body was on its way gets its real answer (and is kept); one begun after the signal gets
// 503 shutting_down with Retry-After, never a reset; every reply then closes its connection.
test('SIGTERM while a publish is still uploading: it gets its 202; a publish begun after gets 503', withLogs(async () => {
  const relay = await startRelay();
  const body = JSON.stringify({ type: 'drain.one', data: { n: 1 } });
  const uploading = await openRaw(relay);
  const idle = await openRaw(relay); // a keep-alive connection with no request yet
  uploading.write(`POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\n\r\n${body.slice(0, 10)}`);
  await sleep(100);
  relay.proc.kill('SIGTERM');
  await sleep(200);
  idle.write(`POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\n\r\n${body}`);
  await answered(idle);
  assert.match(idle.got, /^HTTP\/1\.1 503 /, idle.got);
  assert.match(idle.got, /"code":"shutting_down"/, idle.got);
  assert.match(idle.got, /Retry-After: 5/i, idle.got);
  assert.match(idle.got, /Connection: close/i, idle.got);
  // New connections are refused at once, not queued for a reset.
  const refused = await new Promise((resolve) => {
    const sock = net.connect(relay.port, '127.0.0.1', () => { sock.destroy(); resolve('connected'); });
    sock.on('error', (e) => resolve(e.code));
  });
  assert.equal(refused, 'ECONNREFUSED', 'a new connection during the drain');
  uploading.write(body.slice(10));
  await answered(uploading);
  assert.match(uploading.got, /^HTTP\/1\.1 202 /, uploading.got);
  assert.match(uploading.got, /Connection: close/i, uploading.got);
  const { id } = JSON.parse(uploading.got.slice(uploading.got.indexOf('\r\n\r\n') + 4));
  await relay.stop({ timeoutMs: 5000 });

  const again = await startRelay({ dbPath: relay.dbPath });
  const events = await listAll(again, '/v1/events');
  assert.deepEqual(events.map((e) => e.id), [id], 'the drained publish is kept, the refused one is not');
}));

test('SIGTERM: a publish begun after it, body still arriving, gets 503 rather than a cut; held refusals close', withLogs(async () => {
  const relay = await startRelay();
  const body = JSON.stringify({ type: 'drain.two', data: { n: 2 } });
  const head = (path) => `POST ${path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\n\r\n`;
  const early = await openRaw(relay);
  const late = await openRaw(relay);
  const nope = await openRaw(relay);
  early.write(head('/v1/events') + body.slice(0, 5));
  nope.write(head('/v1/nope') + body.slice(0, 5)); // refused at its headers, held while its body comes
  await sleep(100);
  relay.proc.kill('SIGTERM');
  await sleep(150);
  late.write(head('/v1/events') + body.slice(0, 5));
  await sleep(150);
  early.write(body.slice(5)); // the request that kept the drain open ends first
  await answered(early);
  assert.match(early.got, /^HTTP\/1\.1 202 /, early.got);
  late.write(body.slice(5));
  await answered(late);
  assert.match(late.got, /^HTTP\/1\.1 503 /, `begun after the signal: ${late.got}`);
  assert.match(late.got, /"code":"shutting_down"/, late.got);
  nope.write(body.slice(5));
  await answered(nope);
  assert.match(nope.got, /^HTTP\/1\.1 404 /, nope.got);
  assert.match(nope.got, /Connection: close/i, `a held refusal sent during the drain: ${nope.got}`);
  await relay.stop({ timeoutMs: 5000 });
}));

test('SIGTERM with a delivery hanging in flight exits 0 and the delivery resumes after restart', withLogs(async () => {
  const relay = await startRelay({ args: ['--delivery-timeout', '60s'] });
  const r = await startReceiver({ behavior: { hang: true } });
  await createSub(relay, r);
  const ev = await postEvent(relay, { type: 'inflight.stop' });
  await r.waitFor(1);
  await relay.stop({ signal: 'SIGTERM', timeoutMs: 10_000 });
  r.dropConnections();
  r.setBehavior({ status: 200 });
  const again = await startRelay({ dbPath: relay.dbPath });
  await r.waitFor(2, 8000);
  assert.equal(r.requests[1].headers['webhook-id'], ev.id);
  const d = await waitUntil(async () => {
    const ds = (await api(again, 'GET', `/v1/events/${ev.id}`)).json.deliveries;
    return ds[0].status === 'delivered' ? ds[0] : false;
  }, 5000, 'delivered after restart');
  assert.ok(d.attempt_count >= 1);
}));

// The stop gives deliveries in flight 5 s; the operator is told, and a second signal puts
// them back at once instead of waiting out the 5 s. The HTTP side stops first: nothing
// checked that it did (stopping it after the deliveries went unseen).
test('a second SIGTERM while deliveries finish stops at once; they are sent after restart', withLogs(async () => {
  const relay = await startRelay({ args: ['--delivery-timeout', '60s'] });
  const r = await startReceiver({ behavior: { hang: true } });
  await createSub(relay, r);
  const ev = await postEvent(relay, { type: 'inflight.twice' });
  await r.waitFor(1);
  const t0 = Date.now();
  relay.proc.kill('SIGTERM');
  await waitUntil(() => /send SIGINT or SIGTERM again to stop now/.test(relay.stderrText), 3000,
    'the stop says it is waiting for deliveries in flight');
  // While they finish, the address is already given up: new connections are refused at
  // once (a load balancer moves on), not served for the 5 s of the wait.
  const connect = await new Promise((resolve) => {
    const sock = net.connect(relay.port, '127.0.0.1');
    sock.once('connect', () => { sock.destroy(); resolve('connected'); });
    sock.once('error', (err) => resolve(err.code));
  });
  assert.equal(connect, 'ECONNREFUSED', 'a new connection while deliveries finish');
  relay.proc.kill('SIGTERM');
  await relay.exited;
  const took = Date.now() - t0;
  assert.equal(relay.exitCode, 0, relay.stderrText);
  assert.ok(took < 2500, `stopped ${took} ms after the first signal (the grace is 5 s)`);
  assert.match(relay.stderrText, /stopping now/);
  relay.stopped = true;
  r.dropConnections();
  r.setBehavior({ status: 200 });
  await startRelay({ dbPath: relay.dbPath });
  await r.waitFor(2, 8000);
  assert.equal(r.requests[1].headers['webhook-id'], ev.id, 'the put-back delivery is sent again');
}));

// Versions before in-memory leases marked a delivery in flight in its row (leased = 1);
// one killed mid-attempt left such rows, which no claim takes. Opening the db clears them.
test('deliveries an older version left marked in flight are sent again after start', withLogs(async () => {
  const relay = await startRelay({ retrySchedule: '1h' });
  const r = await startReceiver({ behavior: { status: 500 } });
  await createSub(relay, r);
  const ev = await postEvent(relay, { type: 'legacy.lease' });
  await waitUntil(async () => (await eventDeliveries(relay, ev.id))[0]?.attempt_count === 1, 5000,
    'first attempt logged');
  await relay.stop({ signal: 'SIGTERM', timeoutMs: 10_000 });
  const res = spawnSync('sqlite3', [relay.dbPath,
    'UPDATE deliveries SET leased = 1, next_attempt_at = 0 WHERE state = 0'], { encoding: 'utf8', timeout: 10_000 });
  assert.equal(res.status, 0, res.stderr);
  r.setBehavior({ status: 200 });
  await startRelay({ dbPath: relay.dbPath, retrySchedule: '1h' });
  await r.waitFor(2, 5000);
  assert.equal(r.requests[1].headers['webhook-id'], ev.id);
}));

// Versions before cf3ad8d held a disabled subscription's pending deliveries with
// next_attempt_at NULL; claims take only rows with a due time, so after an upgrade they
// never went out, even once enabled (migration 006 gives them one).
test('deliveries an older version held with no due time go out once enabled after an upgrade', withLogs(async () => {
  const relay = await startRelay({ retrySchedule: '1h' });
  const r = await startReceiver({ behavior: { status: 500 } });
  const sub = await createSub(relay, r);
  for (let i = 0; i < 3; i++) await postEvent(relay, { type: 'legacy.held', data: i });
  await r.waitFor(3, 5000); // each failed once: pending, next try in an hour
  const off = await api(relay, 'PATCH', `/v1/subscriptions/${sub.id}`, { enabled: false });
  assert.equal(off.status, 200, off.text);
  await relay.stop({ signal: 'SIGTERM', timeoutMs: 10_000 });
  // the old build's held rows, and its schema version, so that 006 runs on them
  const res = spawnSync('sqlite3', [relay.dbPath,
    'UPDATE deliveries SET next_attempt_at = NULL WHERE state = 0; PRAGMA user_version = 5;'],
  { encoding: 'utf8', timeout: 10_000 });
  assert.equal(res.status, 0, res.stderr);
  r.setBehavior({ status: 200 });
  const again = await startRelay({ dbPath: relay.dbPath, retrySchedule: '1h' });
  const on = await api(again, 'PATCH', `/v1/subscriptions/${sub.id}`, { enabled: true });
  assert.equal(on.status, 200, on.text);
  await r.waitFor(6, 5000);
}));

// A database made by the first release (schema 001 alone, user_version 1), with a
// subscription and a pending delivery in it: every migration runs on it in order, and
// what it held reads and sends as if made today. The other upgrade tests start from
// the current schema with a version put back, so a migration's defaults for rows that
// existed before it (002's max_in_flight, 005's rate_limit) went unchecked.
test('a database of schema version 1 is migrated: its subscription and pending delivery work', withLogs(async () => {
  const schemaDir = fileURLToPath(new URL('../../schema/', import.meta.url));
  const migrations = readdirSync(schemaDir).filter((f) => /^\d{3}_.*\.sql$/.test(f)).sort();
  assert.ok(migrations.length > 1);
  const r = await startReceiver();
  const secret = 'whsec_' + randomBytes(32).toString('base64');
  r.secrets.push(secret);
  const now = Date.now();
  const evId = 'evt_' + '01JOLDSCHEMA'.padEnd(26, '0');
  const envelope = JSON.stringify({ id: evId, type: 'legacy.v1', key: null,
    timestamp: new Date(now).toISOString(), data: { n: 1 } });
  const q = (t) => `'${t.replaceAll("'", "''")}'`;
  const dbPath = path.join(tmpDir(), 'v1.db');
  const made = spawnSync('sqlite3', [dbPath], { encoding: 'utf8', timeout: 10_000, input:
    readFileSync(path.join(schemaDir, migrations[0]), 'utf8') + `;
    PRAGMA user_version = 1;
    INSERT INTO subscriptions (id, url, event_types, headers, created_at, updated_at)
      VALUES (1, ${q(r.url + '/old')}, '["legacy.#"]', '{"X-Old":"yes"}', ${now}, ${now});
    INSERT INTO subscription_secrets (subscription_id, secret, created_at) VALUES (1, ${q(secret)}, ${now});
    INSERT INTO events (seq, id, type, created_at, envelope) VALUES (1, ${q(evId)}, 'legacy.v1', ${now}, CAST(${q(envelope)} AS BLOB));
    INSERT INTO deliveries (id, event_seq, subscription_id, next_attempt_at, created_at, updated_at)
      VALUES (1, 1, 1, ${now}, ${now}, ${now});
  ` });
  assert.equal(made.status, 0, made.stderr);

  const relay = await startRelay({ dbPath });
  const [req] = await r.waitFor(1, 8000);
  assert.equal(req.url, '/old');
  assert.equal(req.body.toString(), envelope, 'the stored bytes are sent');
  assert.equal(req.headers['x-old'], 'yes');
  assert.deepEqual(verifySigned(req, secret).data, { n: 1 });
  const sub = await api(relay, 'GET', '/v1/subscriptions/sub_1');
  assert.equal(sub.status, 200, sub.text);
  assert.equal(sub.json.max_in_flight, 16, 'the default of migration 002');
  assert.equal(sub.json.rate_limit, null, 'no limit (migration 005)');
  assert.equal(sub.json.failing_since, null);
  assert.equal(sub.json.enabled, true);
  assert.equal(sub.json.signature_algorithm, 'hmac-sha256');
  await waitUntil(async () => (await api(relay, 'GET', '/v1/deliveries/dlv_1')).json?.status === 'delivered',
    5000, 'the old pending delivery is delivered');
  // and new work goes on beside it
  const ev = await postEvent(relay, { type: 'legacy.after' });
  const [, fresh] = await r.waitFor(2, 5000);
  assert.equal(fresh.headers['webhook-id'], ev.id);
  await relay.stop();
  const v = spawnSync('sqlite3', [dbPath, 'PRAGMA user_version'], { encoding: 'utf8', timeout: 10_000 });
  assert.equal(v.stdout.trim(), String(migrations.length), 'every migration applied');
}));

test('--help lists every flag', withLogs(async () => {
  const res = spawnSync(relayBin(), ['--help'], { encoding: 'utf8', timeout: 10_000 });
  assert.equal(res.status, 0, `--help exit ${res.status}: ${res.stderr}`);
  const out = res.stdout + res.stderr;
  for (const flag of ['--listen', '--db', '--http-threads', '--max-body', '--delivery-timeout',
    '--max-in-flight', '--max-per-host', '--retry-schedule', '--api-key', '--allow-private-targets',
    '--disable-after', '--retention']) {
    assert.ok(out.includes(flag), `--help mentions ${flag}`);
  }
}));

test('starts with one HTTP thread (the default below 4 cores) and with two print no library warnings', withLogs(async () => {
  for (const args of [['--http-threads', '1'], ['--http-threads', '2']]) {
    const relay = await startRelay({ args });
    assert.equal((await api(relay, 'GET', '/healthz')).status, 200);
    await relay.stop({ signal: 'SIGTERM', timeoutMs: 10_000 });
    // libmicrohttpd printed "Warning: "1", specified for thread pool size, is ignored"
    // at every default start; what is left is ours and starts with "hookrelay".
    const foreign = relay.stderr.split('\n').filter((l) => l && !l.startsWith('hookrelay'));
    assert.deepEqual(foreign, [], `serve ${args.join(' ')}: stderr lines not from hookrelay`);
  }
}));

test('bad flags are refused at start with a non-zero exit', withLogs(async () => {
  const db = path.join(tmpDir(), 'flags.db');
  for (const args of [['--no-such-flag'], ['--retry-schedule', 'soon'], ['--max-body', 'lots'],
    ['--delivery-timeout', '-5s'], ['--listen', 'nowhere'], ['--retention', '500ms'],
    ['--retention', 'forever'], ['--disable-after', '-1d'],
    // out of range: a relay with no room to deliver, or a timeout no receiver can meet
    ['--max-in-flight', '0'], ['--max-per-host', '0'], ['--max-queue', '0'],
    ['--http-threads', '0'], ['--http-threads', '257'], ['--delivery-timeout', '99ms'],
    ['--delivery-timeout', '301s'], ['--synchronous', 'off']]) {
    const res = spawnSync(relayBin(), ['serve', '--listen', '127.0.0.1:0', '--db', db, ...args],
      { encoding: 'utf8', timeout: 5000, killSignal: 'SIGKILL' });
    assert.ok(!res.error, `serve ${args.join(' ')} started anyway (${res.error?.code}); stdout: ${res.stdout}`);
    assert.equal(res.signal, null, `serve ${args.join(' ')} crashed: ${res.stderr}`);
    assert.notEqual(res.status, 0, `serve ${args.join(' ')} should fail`);
    assert.ok(res.stderr.includes(args[0]), `serve ${args.join(' ')} names the flag: ${res.stderr}`);
    assert.ok(!/AddressSanitizer|runtime error:/.test(res.stderr), res.stderr);
  }
  // An unknown flag is named as one, even last, where it has no value after it (it was
  // "--bogus needs a value").
  const last = spawnSync(relayBin(), ['serve', '--listen', '127.0.0.1:0', '--db', db, '--bogus'],
    { encoding: 'utf8', timeout: 5000, killSignal: 'SIGKILL' });
  assert.equal(last.status, 2);
  assert.match(last.stderr, /unknown flag --bogus/);
}));

// "0 for ever" / "0 for never": any spelling of zero the durations take means off, as
// 0 does (0s was refused with exit 2).
test('--retention and --disable-after take 0 in any duration spelling', withLogs(async () => {
  const relay = await startRelay({ args: ['--retention', '0s', '--disable-after', '0d'] });
  assert.equal((await api(relay, 'GET', '/healthz')).status, 200);
  // 0 is "keep for ever", not "keep nothing": delivered events stay past a prune's turn
  // (the prune looks once a second; the newest event is always kept, so two older ones)
  const r = await startReceiver();
  await createSub(relay, r, { event_types: ['keep.#'] });
  const evs = [];
  for (let i = 0; i < 3; i++) evs.push(await postEvent(relay, { type: 'keep.me', data: { i } }));
  await r.waitFor(3);
  await sleep(2500);
  for (const ev of evs) {
    const got = await api(relay, 'GET', `/v1/events/${ev.id}`);
    assert.equal(got.status, 200, `${ev.id} kept under --retention 0: ${got.text}`);
    assert.equal(got.json.deliveries.length, 1);
  }
  const half = spawnSync(relayBin(), ['serve', '--listen', '127.0.0.1:0', '--db', path.join(tmpDir(), 'h.db'), '--retention', '500ms'],
    { encoding: 'utf8', timeout: 5000, killSignal: 'SIGKILL' });
  assert.equal(half.status, 2, 'under a second, not zero: still refused');
  assert.match(half.stderr, /--retention wants a duration from 1s to 365d \(or 0 for ever\)/);
}));

test('HOOKRELAY_* environment variables configure the server like flags', withLogs(async () => {
  const relay = await startRelay({ env: { HOOKRELAY_MAX_BODY: '4KiB', HOOKRELAY_API_KEY: 'env-key-0123456789abcdef' } });
  const auth = { authorization: 'Bearer env-key-0123456789abcdef' };
  const big = await api(relay, 'POST', '/v1/events', { type: 'env.big', data: 'x'.repeat(16 * 1024) }, auth);
  assertError(big, 413, 'payload_too_large', 'HOOKRELAY_MAX_BODY=4KiB');
  assertError(await api(relay, 'GET', '/v1/events'), 401, 'unauthorized', 'HOOKRELAY_API_KEY set, no key');
}));

test('--publish-key: publishes, single and batch; every other /v1 route is 403', withLogs(async () => {
  const admin = { authorization: 'Bearer admin-key-0123456789abcdef' };
  const pub = { authorization: 'Bearer publish-key-0123456789abcdef' };
  const relay = await startRelay({ args: ['--api-key', 'admin-key-0123456789abcdef',
    '--publish-key', 'publish-key-0123456789abcdef'] });
  assert.equal((await api(relay, 'POST', '/v1/events', { type: 'pub.one' }, pub)).status, 202);
  assert.equal((await api(relay, 'POST', '/v1/events/batch', [{ type: 'pub.two' }], pub)).status, 202);
  // a subscription the admin made: no method but publishing may reach it with a publish key
  const made = await api(relay, 'POST', '/v1/subscriptions', { url: 'http://127.0.0.1:9/hook', event_types: ['other.*'] }, admin);
  assert.equal(made.status, 201, made.text);
  const sub = `/v1/subscriptions/${made.json.id}`;
  const since = { since: '1970-01-01T00:00:00Z' };
  for (const [method, route, body] of [
    ['GET', '/v1/events'], ['GET', '/v1/subscriptions'], ['GET', '/v1/deliveries'],
    ['POST', '/v1/subscriptions', { url: 'http://127.0.0.1:9/hook', event_types: ['#'] }],
    ['POST', '/v1/deliveries/dlv_1/retry'], ['GET', '/metrics'],
    ['GET', sub], ['GET', `${sub}/stats`], ['HEAD', sub], ['PATCH', sub, { enabled: false }], ['DELETE', sub],
    ['POST', `${sub}/rotate-secret`, { grace_seconds: 0 }], ['POST', `${sub}/recover`, since],
    ['POST', `${sub}/replay`, since], ['GET', '/v1/deliveries/dlv_1'],
  ]) {
    const res = await api(relay, method, route, body, pub);
    if (method === 'HEAD') assert.equal(res.status, 403, `${method} ${route} with a publish key`);
    else assertError(res, 403, 'forbidden', `${method} ${route} with a publish key`);
  }
  const kept = await api(relay, 'GET', sub, undefined, admin);
  assert.equal(kept.status, 200, `the publish key deleted nothing: ${kept.text}`);
  assert.equal(kept.json.enabled, true, 'the publish key changed nothing');
  assert.equal(kept.json.updated_at, made.json.updated_at, 'the publish key changed nothing');
  assert.deepEqual((await api(relay, 'GET', '/v1/subscriptions', undefined, admin)).json.data.map((s) => s.id),
    [made.json.id], 'the publish key created nothing');
  assert.equal((await api(relay, 'GET', '/v1/events', undefined, admin)).json.data.length, 2);
}));

test('--api-key: 401 without or with a wrong bearer, works with it; healthz needs none', withLogs(async () => {
  const relay = await startRelay({ args: ['--api-key', 's3cret-key-0123456789abcdef', '--max-body', '4KiB'] });
  const good = { authorization: 'Bearer s3cret-key-0123456789abcdef' };
  assertError(await api(relay, 'GET', '/v1/events'), 401, 'unauthorized', 'no key');
  assertError(await api(relay, 'GET', '/v1/events', undefined, { authorization: 'Bearer wrong' }), 401, 'unauthorized', 'wrong key');
  assertError(await api(relay, 'GET', '/v1/events', undefined, { authorization: 's3cret-key-0123456789abcdef' }), 401, 'unauthorized', 'no Bearer');
  assertError(await api(relay, 'POST', '/v1/events', { type: 'auth.x' }), 401, 'unauthorized', 'publish without key');
  assertError(await api(relay, 'POST', '/v1/subscriptions', { url: 'http://127.0.0.1:9/', event_types: ['#'] }), 401, 'unauthorized', 'subscribe without key');
  // RFC 9110 11.6.1: a 401 names the scheme to use, whatever was wrong with the key,
  // and also when the refusal was held while the body was read
  for (const [what, method, headers, body] of [
    ['no key', 'GET', {}], ['a wrong key', 'GET', { authorization: 'Bearer wrong-key-0123456789abcdef' }],
    ['another scheme', 'GET', { authorization: 'Basic czNjcmV0' }],
    ['no key, with a body', 'POST', {}, { type: 'auth.x' }],
    ['a wrong key, with a body', 'POST', { authorization: 'Bearer wrong-key-0123456789abcdef' }, { type: 'auth.x' }],
  ]) {
    const res = await api(relay, method, '/v1/events', body, headers);
    assertError(res, 401, 'unauthorized', what);
    assert.equal(res.headers.get('www-authenticate'), 'Bearer', `WWW-Authenticate of a 401 for ${what}`);
  }
  const h = await api(relay, 'GET', '/healthz');
  assert.equal(h.status, 200);
  // RFC 9110 11.1: the scheme is case-insensitive; some clients send "bearer".
  assert.equal((await api(relay, 'GET', '/v1/events', undefined, { authorization: 'bearer s3cret-key-0123456789abcdef' })).status, 200,
    'a lower-case "bearer" scheme');
  // RFC 9110 5.5: white space after a value is not part of it (fetch would trim it
  // itself, so this goes over a raw socket)
  const spaced = await rawExchange(relay, 'GET /v1/events HTTP/1.1\r\nHost: x\r\n' +
    'Authorization: Bearer s3cret-key-0123456789abcdef \t \r\nConnection: close\r\n\r\n');
  assert.match(spaced, /^HTTP\/1\.1 200 /, `a key followed by white space: ${spaced.slice(0, 200)}`);
  const ev = await api(relay, 'POST', '/v1/events', { type: 'auth.ok' }, good);
  assert.equal(ev.status, 202, ev.text);
  const list = await api(relay, 'GET', '/v1/events', undefined, good);
  assert.equal(list.status, 200);
  assert.deepEqual(list.json.data.map((e) => e.id), [ev.json.id], 'only the authorised publish was stored');
  // The key is checked before the body: without one, an oversized body or a wrong
  // Content-Type is 401 too (not 413/415, which would answer for an unknown caller).
  const big = 'x'.repeat(64 * 1024);
  assertError(await api(relay, 'POST', '/v1/events', big), 401, 'unauthorized', 'body over --max-body without key');
  assertError(await api(relay, 'POST', '/v1/events', '{"type":"a.b"}', { 'content-type': 'text/plain' }), 401, 'unauthorized', 'text/plain without key');
  assertError(await api(relay, 'POST', '/v1/events', 'y'.repeat(3000)), 401, 'unauthorized', 'body within the limit without key');
  assertError(await api(relay, 'POST', '/v1/events', big, good), 413, 'payload_too_large', 'body over --max-body with key');
  assertError(await api(relay, 'POST', '/v1/events', '{"type":"a.b"}', { ...good, 'content-type': 'text/plain' }), 415, 'unsupported_media_type', 'text/plain with key');
}));

// A client that hangs up while its write waits for the commit: the relay must still free
// that request (under ASan a leak is a LeakSanitizer report, which fails the test) and
// must not wait for it forever when stopping (it did: SIGTERM hung, or MHD aborted).
test('clients that hang up while their event is being committed: nothing leaks, SIGTERM exits 0', withLogs(async () => {
  const net = await import('node:net');
  const relay = await startRelay();
  const body = JSON.stringify({ type: 'hangup.test', data: { pad: 'x'.repeat(500) } });
  const raw = `POST /v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n` +
    `Content-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`;
  const hangUp = () => new Promise((resolve) => {
    const sock = net.connect(relay.port, '127.0.0.1', () => {
      sock.write(raw, () => { sock.destroy(); resolve(); });
    });
    sock.on('error', resolve);
  });
  for (let round = 0; round < 5; round++)
    await Promise.all(Array.from({ length: 60 }, hangUp));
  // Still serving, and what it committed is readable.
  const ok = await postEvent(relay, { type: 'hangup.after' });
  assert.ok(ok.id.startsWith('evt_'));
  const listed = await listAll(relay, '/v1/events?type=hangup.test');
  assert.ok(listed.length <= 300, `at most the 300 sent are stored, got ${listed.length}`);
  await relay.stop({ signal: 'SIGTERM', timeoutMs: 5000 });
}));

// Second read of the command line (helper): each of these started, silently doing
// something else than the operator asked.
test('serve --help, -h and --version answer instead of failing', withLogs(async () => {
  for (const flag of ['--help', '-h']) {
    const res = spawnSync(relayBin(), ['serve', flag], { encoding: 'utf8', timeout: 10_000 });
    assert.equal(res.status, 0, `serve ${flag}: ${res.stderr}`);
    assert.match(res.stdout, /--listen ADDR:PORT/);
  }
  const v = spawnSync(relayBin(), ['serve', '--version'], { encoding: 'utf8', timeout: 10_000 });
  assert.equal(v.status, 0, v.stderr);
  assert.match(v.stdout, /^hookrelay \d/);
}));

// The command itself, before serve: only `serve --help/--version` were run, so the bare
// command's exit status (a script's `hookrelay || ...`), the top-level --version and an
// unknown command's refusal could change unseen.
test('hookrelay alone, help, --version and an unknown command: usage, version, exit codes', withLogs(async () => {
  const run = (args) => spawnSync(relayBin(), args, { encoding: 'utf8', timeout: 10_000 });
  const bare = run([]);
  assert.equal(bare.status, 2, 'no command is a usage error');
  assert.equal(bare.stdout, '', 'its usage goes to stderr');
  assert.match(bare.stderr, /^usage: hookrelay serve/);
  for (const args of [['help'], ['--help'], ['-h']]) {
    const h = run(args);
    assert.equal(h.status, 0, `${args}: ${h.stderr}`);
    assert.match(h.stdout, /^usage: hookrelay serve[\s\S]*--listen ADDR:PORT/, `${args} prints the usage`);
    assert.equal(h.stderr, '');
  }
  const v = run(['--version']);
  assert.equal(v.status, 0, v.stderr);
  assert.match(v.stdout, /^hookrelay \d+\.\d+\.\d+\n$/);
  assert.equal(run(['serve', '--version']).stdout, v.stdout, 'serve --version says the same');
  const unknown = run(['frobnicate']);
  assert.equal(unknown.status, 2, `an unknown command: exit ${unknown.status}`);
  assert.equal(unknown.stdout, '');
  assert.match(unknown.stderr, /^hookrelay: unknown command 'frobnicate'\n\nusage: hookrelay serve/);
}));

test('refused at start: a switch that is not a boolean, a key file with no key, a publish key alone, a non-numeric address', withLogs(async () => {
  const dir = tmpDir();
  const db = path.join(dir, 'refused.db');
  const noKeys = path.join(dir, 'keys-empty');
  writeFileSync(noKeys, '# the secret mount failed\n\n   \n');
  const commented = path.join(dir, 'keys-commented');
  writeFileSync(commented, 'admin-key-0123456789abcdef  # ops team\n');
  const tooLong = path.join(dir, 'keys-long');
  writeFileSync(tooLong, 'k'.repeat(1024) + '\n');
  const tooLongBom = path.join(dir, 'keys-long-bom'); // not two keys of 1,020 and 20
  writeFileSync(tooLongBom, '\ufeff' + 'k'.repeat(1040) + '\n');
  for (const [args, env, says] of [
    [['--allow-private-targets=maybe'], {}, /--allow-private-targets wants true or false/],
    [[], { HOOKRELAY_ALLOW_PRIVATE_TARGETS: 'maybe' }, /\(from HOOKRELAY_ALLOW_PRIVATE_TARGETS\)/],
    [['--api-key-file', noKeys], {}, /holds no key/],
    [['--api-key-file', commented], {}, /may not contain white space/],
    [['--api-key-file', tooLong], {}, /over 1,023 bytes/],
    [['--api-key-file', tooLongBom], {}, /over 1,023 bytes/],
    [['--publish-key', 'publish-0123456789abcdef'], {}, /--publish-key needs an admin key/],
    [['--listen', '127.1:0'], {}, /not a numeric IPv4 or IPv6 address/],
    [[], { HOOKRELAY_MAX_BODY: 'lots' }, /--max-body wants .* \(from HOOKRELAY_MAX_BODY\)/],
    [['--max-idle-connections', '-1'], {}, /--max-idle-connections wants 0\.\.100000, not '-1'/],
    [[], { HOOKRELAY_MAX_IDLE_CONNECTIONS: 'many' }, /\(from HOOKRELAY_MAX_IDLE_CONNECTIONS\)/],
    [['--delivery-nice', '20'], {}, /--delivery-nice wants 0\.\.19, not '20'/],
    // a guessable key: 15 characters is one short of the least taken
    [['--api-key', 'fifteen-chars-k'], {}, /--api-key: a key must be at least 16 characters/],
    // reachable from other hosts with no key at all
    [['--listen', '0.0.0.0:0'], {}, /refusing to listen on 0\.0\.0\.0 without an API key/],
    [['--listen', '[::]:0'], {}, /refusing to listen on :: without an API key/],
  ]) {
    const res = spawnSync(relayBin(), ['serve', '--listen', '127.0.0.1:0', '--db', db, ...args],
      { encoding: 'utf8', timeout: 5000, killSignal: 'SIGKILL', env: { ...process.env, ...env } });
    const what = `serve ${args.join(' ')} ${JSON.stringify(env)}`;
    assert.ok(!res.error, `${what} started anyway; stdout: ${res.stdout}`);
    assert.equal(res.status, 2, `${what}: ${res.stderr}`);
    assert.match(res.stderr, says, what);
  }
}));

// The delivery thread runs at a lower CPU priority than the threads that take events
// (top -H shows it in NI), so that on a machine with no CPU to spare a publisher's
// answer does not wait behind deliveries; --delivery-nice 0 puts them level.
test('the delivery thread runs --delivery-nice (default 10) below the others', withLogs(async () => {
  // The thread is named by the one that creates it, and lowers its own priority once it
  // runs: on a busy machine the name shows first (nice 0 read 5 times in 8 beside three
  // CPU hogs), so wait up to 5 s for the nice value looked for. A dispatcher that never
  // lowers it still shows 0 then.
  // "name nice" of each thread: /proc/PID/task/TID/stat, field 19 (the 17th after the
  // ") " that ends the name)
  const threadNices = async (pid, want) => {
    let nices;
    for (let i = 0; i < 250; i++) {
      nices = {};
      for (const tid of readdirSync(`/proc/${pid}/task`)) {
        const stat = readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8');
        const name = stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')'));
        nices[name] = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[16]);
      }
      if (nices['hr-dispatch'] === want) return nices;
      await sleep(20);
    }
    assert.ok('hr-dispatch' in nices, `no hr-dispatch thread: ${JSON.stringify(nices)}`);
    return nices;
  };
  const level = Number(readFileSync('/proc/self/stat', 'utf8').split(') ')[1].split(' ')[16]);
  const byDefault = await startRelay();
  const even = await startRelay({ args: ['--delivery-nice', '0'] });
  const fromEnv = await startRelay({ env: { HOOKRELAY_DELIVERY_NICE: '3' } });
  for (const [relay, lower] of [[byDefault, 10], [even, 0], [fromEnv, 3]]) {
    const nices = await threadNices(relay.proc.pid, Math.min(19, level + lower));
    assert.equal(nices['hr-dispatch'], Math.min(19, level + lower), JSON.stringify(nices));
    assert.equal(nices['hr-writer'], level, JSON.stringify(nices));
  }
  // and it still delivers
  const r = await startReceiver();
  await createSub(byDefault, r, { event_types: ['nice.*'] });
  await postEvent(byDefault, { type: 'nice.x' });
  await r.waitFor(1, 5000);
}));

test('HOOKRELAY_ALLOW_PRIVATE_TARGETS=false keeps the guard; a flag replaces its variable', withLogs(async () => {
  const dir = tmpDir();
  const off = await startRelay({ bare: true, args: ['--listen', '127.0.0.1:0', '--db', path.join(dir, 'off.db')],
    env: { HOOKRELAY_ALLOW_PRIVATE_TARGETS: 'false' } });
  assertError(await api(off, 'POST', '/v1/subscriptions', { url: 'http://127.0.0.1:9/hook', event_types: ['#'] }),
    422, 'invalid_field', 'loopback target with the guard on');
  await off.stop();
  // A bad value in the environment is overridden by the flag, and a key given by flag
  // replaces the environment's (rotating a key by flag must retire the old one).
  const keys = await startRelay({
    args: ['--api-key=flag-key-0123456789abcdef', '--max-body', '4KiB'], // both spellings of a flag
    env: { HOOKRELAY_API_KEY: 'env-key-0123456789abcdef', HOOKRELAY_MAX_BODY: 'lots' },
  });
  assertError(await api(keys, 'GET', '/v1/events', undefined, { authorization: 'Bearer env-key-0123456789abcdef' }),
    401, 'unauthorized', 'the environment key, replaced by the flag');
  assert.equal((await api(keys, 'GET', '/v1/events', undefined, { authorization: 'Bearer flag-key-0123456789abcdef' })).status, 200);
}));

test('--api-key-file: white space around a key is not part of it', withLogs(async () => {
  const file = path.join(tmpDir(), 'keys');
  writeFileSync(file, '# admin\n  spaced-key-0123456789abcdef \t\r\n');
  const longest = path.join(tmpDir(), 'keys-longest');
  writeFileSync(longest, 'L'.repeat(1023)); // the longest line read, with no end of line
  const relay = await startRelay({ args: ['--api-key-file', file, '--api-key-file', longest] });
  assert.equal((await api(relay, 'GET', '/v1/events', undefined, { authorization: 'Bearer spaced-key-0123456789abcdef' })).status, 200);
  assert.equal((await api(relay, 'GET', '/v1/events', undefined, { authorization: `Bearer ${'L'.repeat(1023)}` })).status, 200);
}));

test('--listen localhost:PORT listens on 127.0.0.1; a key of exactly 16 characters is taken', withLogs(async () => {
  const relay = await startRelay({ bare: true, args: ['--listen', 'localhost:0', '--db', path.join(tmpDir(), 'lh.db'),
    '--api-key', 'sixteen-chars-ky'] });
  // startRelay waited for "listening on http://127.0.0.1:PORT"
  assert.equal((await api(relay, 'GET', '/v1/events', undefined, { authorization: 'Bearer sixteen-chars-ky' })).status, 200);
}));

// --help and the error text give [::1]:8080 as the IPv6 form: the brackets are dropped
// to bind, and put back in the printed URL (which a script pastes into curl). No test
// listened on IPv6, so either could break unseen.
test('--listen [::1]:0 listens on IPv6 loopback and prints a URL with brackets', withLogs(async (t) => {
  const v6 = await new Promise((resolve) => {
    const probe = net.createServer().once('error', () => resolve(false));
    probe.listen(0, '::1', () => probe.close(() => resolve(true)));
  });
  if (!v6) return t.skip('no IPv6 loopback here');
  const proc = spawn(relayBin(), ['serve', '--listen', '[::1]:0', '--db', path.join(tmpDir(), 'v6.db')],
    { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  proc.stdout.on('data', (d) => { out += d; });
  proc.stderr.on('data', (d) => { err += d; });
  const exited = new Promise((resolve) => proc.on('exit', (code) => resolve(code)));
  try {
    await waitUntil(() => /\n/.test(out) || proc.exitCode !== null, 10_000, 'the listening line');
    const m = out.match(/^hookrelay listening on http:\/\/\[::1\]:(\d+)\n$/);
    assert.ok(m, `stdout: ${JSON.stringify(out)}; stderr: ${err}`);
    const res = await fetch(`http://[::1]:${m[1]}/healthz`);
    assert.equal(res.status, 200);
  } finally {
    proc.kill('SIGTERM');
  }
  assert.equal(await exited, 0, err);
}));

// Checking a restored backup with `serve --db backup.db` while production holds the port
// must not send the backup's pending deliveries to the real receivers.
test('a relay that cannot listen sends nothing, and exits 1', withLogs(async () => {
  const r = await startReceiver({ behavior: { status: 500 } });
  const a = await startRelay({ retrySchedule: '300ms,300ms,300ms' });
  await createSub(a, r, { event_types: ['held.#'] });
  const batch = await api(a, 'POST', '/v1/events/batch', Array.from({ length: 200 }, () => ({ type: 'held.one' })));
  assert.equal(batch.status, 202, batch.text);
  await r.waitFor(200, 10_000);
  await a.stop(); // 200 deliveries pending, due again 300 ms after their 500
  await sleep(600);
  const before = r.requests.length;
  const holder = net.createServer();
  await new Promise((resolve) => holder.listen(0, '127.0.0.1', resolve));
  const child = spawn(relayBin(), ['serve', '--listen', `127.0.0.1:${holder.address().port}`, '--db', a.dbPath,
    '--allow-private-targets'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (d) => { stderr += d; });
  const code = await new Promise((resolve) => {
    const t = setTimeout(() => child.kill('SIGKILL'), 10_000);
    child.on('exit', (c) => { clearTimeout(t); resolve(c); });
  });
  holder.close();
  assert.equal(code, 1, stderr);
  assert.match(stderr, /cannot listen on 127\.0\.0\.1:\d+/);
  await sleep(300);
  assert.equal(r.requests.length, before, `the relay that could not listen sent deliveries:\n${stderr}`);
  // They were due: a relay that can listen sends them.
  await startRelay({ dbPath: a.dbPath, retrySchedule: '300ms' });
  await r.waitFor(before + 1, 5000);
}));

test('SIGHUP stops the relay cleanly', withLogs(async () => {
  const relay = await startRelay();
  await relay.stop({ signal: 'SIGHUP' }); // exit 0 asserted by stop()
  assert.match(relay.stderrText, /SIGHUP received, stopping[\s\S]*stopped cleanly/);
}));

test('--db :memory: is refused: nothing would be kept', withLogs(async () => {
  const dir = tmpDir();
  for (const db of [':memory:', '', 'file::memory:']) {
    const res = spawnSync(relayBin(), ['serve', '--listen', '127.0.0.1:0', '--db', db],
      { encoding: 'utf8', timeout: 5000, killSignal: 'SIGKILL', cwd: dir });
    assert.ok(!res.error, `--db '${db}' started anyway: ${res.stdout}`);
    assert.equal(res.status, 2, res.stderr);
    assert.match(res.stderr, /--db wants the path of a database file/);
  }
  assert.ok(!existsSync(path.join(dir, ':memory:')), 'no file named :memory: left behind');
}));

// Moving from HOOKRELAY_API_KEY to a key file (or back) by flag must retire the old key.
test('admin keys given by flag replace both key variables; a key file may start with a BOM', withLogs(async () => {
  const file = path.join(tmpDir(), 'keys');
  writeFileSync(file, '\ufefffile-key-0123456789abcdef\r\n'); // as a Windows editor saves it
  const get = (relay, key) => api(relay, 'GET', '/v1/events', undefined, { authorization: `Bearer ${key}` });
  const byFile = await startRelay({ args: ['--api-key-file', file], env: { HOOKRELAY_API_KEY: 'env-key-0123456789abcdef' } });
  assert.equal((await get(byFile, 'file-key-0123456789abcdef')).status, 200, 'the file key, BOM dropped');
  assertError(await get(byFile, 'env-key-0123456789abcdef'), 401, 'unauthorized', 'the variable, replaced by --api-key-file');
  await byFile.stop();
  const byFlag = await startRelay({ args: ['--api-key', 'flag-key-0123456789abcdef'], env: { HOOKRELAY_API_KEY_FILE: file } });
  assert.equal((await get(byFlag, 'flag-key-0123456789abcdef')).status, 200);
  assertError(await get(byFlag, 'file-key-0123456789abcdef'), 401, 'unauthorized', 'the file variable, replaced by --api-key');
}));

test('one relay per database and per port; the database is the owner\'s alone', withLogs(async () => {
  const relay = await startRelay();
  const mode = statSync(relay.dbPath).mode & 0o777;
  assert.equal(mode, 0o600, `database mode ${mode.toString(8)}: it holds the secrets`);
  // Same database, another port: the second would send the first one's deliveries again.
  const sameDb = spawnSync(relayBin(), ['serve', '--listen', '127.0.0.1:0', '--db', relay.dbPath],
    { encoding: 'utf8', timeout: 5000, killSignal: 'SIGKILL' });
  assert.ok(!sameDb.error, `a second relay on the same database started: ${sameDb.stdout}`);
  assert.notEqual(sameDb.status, 0);
  assert.match(sameDb.stderr, /in use by another hookrelay/);
  // ... whatever name it goes by.
  const alias = path.join(tmpDir(), 'alias.db');
  symlinkSync(relay.dbPath, alias);
  const viaLink = spawnSync(relayBin(), ['serve', '--listen', '127.0.0.1:0', '--db', alias],
    { encoding: 'utf8', timeout: 5000, killSignal: 'SIGKILL' });
  assert.ok(!viaLink.error, `a second relay through a symlink started: ${viaLink.stdout}`);
  assert.match(viaLink.stderr, /in use by another hookrelay/);
  // Same port, another database: the kernel must not split the traffic between the two.
  const port = new URL(relay.url).port;
  const samePort = spawnSync(relayBin(), ['serve', '--listen', `127.0.0.1:${port}`, '--db', path.join(tmpDir(), 'other.db')],
    { encoding: 'utf8', timeout: 5000, killSignal: 'SIGKILL' });
  assert.ok(!samePort.error, `a second relay on the same port started: ${samePort.stdout}`);
  assert.notEqual(samePort.status, 0);
  assert.match(samePort.stderr, /cannot listen on 127\.0\.0\.1:\d+/);
  assert.equal((await api(relay, 'GET', '/healthz')).status, 200, 'the first one is unharmed');
}));

// A typo in --db must not turn another program's SQLite file into hookrelay's: it is
// refused before anything is written (the switch to WAL is a write). A database another
// process has open (a hookrelay from before the flock, which takes none) is refused too:
// starting beside it would send what it is sending again. And a database others can read
// (made before the owner-only umask) gets a warning: it holds the signing secrets.
test('refused at start, unchanged: another program\'s database, one open in another process', withLogs(async () => {
  const dir = tmpDir();
  const serve = (db) => spawnSync(relayBin(), ['serve', '--listen', '127.0.0.1:0', '--db', db],
    { encoding: 'utf8', timeout: 5000, killSignal: 'SIGKILL' });
  const sql = (db, text) => {
    const r = spawnSync('sqlite3', [db, text], { encoding: 'utf8', timeout: 10_000 });
    assert.equal(r.status, 0, r.stderr);
    return r.stdout.trim();
  };
  for (const [name, setup, why] of [
    ['theirs.db', 'CREATE TABLE invoices(id INTEGER PRIMARY KEY, total REAL)', /no hookrelay schema version/],
    ['versioned.db', 'CREATE TABLE events(x); PRAGMA user_version = 3', /not hookrelay's tables/],
  ]) {
    const db = path.join(dir, name);
    sql(db, setup);
    const res = serve(db);
    assert.ok(!res.error, `started on ${name}: ${res.stdout}`);
    assert.equal(res.status, 1, res.stderr);
    assert.match(res.stderr, /not a hookrelay database/);
    assert.match(res.stderr, why);
    assert.doesNotMatch(res.stderr, /damaged|can be read by other users/, 'no word of ours about a file that is not ours');
    assert.equal(sql(db, 'PRAGMA journal_mode'), 'delete', `${name} was switched to WAL`);
    assert.equal(sql(db, "SELECT group_concat(name) FROM sqlite_schema WHERE type = 'table'"),
      name === 'theirs.db' ? 'invoices' : 'events', `${name} was given hookrelay's tables`);
  }

  // A database a newer hookrelay has migrated: refused (this build cannot know what its
  // migrations changed), named as newer, and left as it was. One version ahead is
  // enough to be refused.
  {
    const made = await startRelay();
    await made.stop();
    const version = Number(sql(made.dbPath, 'PRAGMA user_version'));
    assert.ok(version >= 1, `a relay's database has a schema version: ${version}`);
    sql(made.dbPath, `PRAGMA user_version = ${version + 1}`);
    const res = serve(made.dbPath);
    assert.ok(!res.error, `started on a newer database: ${res.stdout}`);
    assert.equal(res.status, 1, res.stderr);
    assert.match(res.stderr, new RegExp(`database schema version ${version + 1} is newer than this hookrelay knows \\(${version}\\)`));
    assert.equal(sql(made.dbPath, 'PRAGMA user_version'), String(version + 1), 'its version was left as it was');
  }

  // Not a database at all: refused, and not called damaged.
  const text = path.join(dir, 'notes.db');
  writeFileSync(text, 'hello\n'.repeat(100));
  const notDb = serve(text);
  assert.equal(notDb.status, 1, notDb.stderr);
  assert.match(notDb.stderr, /file is not a database/);
  assert.doesNotMatch(notDb.stderr, /damaged/);

  // A database made by a relay, then held open by another process (sqlite3 here; a
  // hookrelay from before the flock looks the same), whatever path names it.
  const first = await startRelay();
  await first.stop();
  // sqlite3's .dump keeps no schema version: such a restore is named, not taken for
  // another program's file.
  const dump = spawnSync('sqlite3', [first.dbPath, '.dump'], { encoding: 'utf8', timeout: 10_000 });
  assert.equal(dump.status, 0, dump.stderr);
  const restored = path.join(dir, 'restored.db');
  assert.equal(spawnSync('sqlite3', [restored], { input: dump.stdout, encoding: 'utf8', timeout: 10_000 }).status, 0);
  const fromDump = serve(restored);
  assert.equal(fromDump.status, 1, fromDump.stderr);
  assert.match(fromDump.stderr, /has hookrelay's tables but no schema version \(restored from sqlite3's \.dump/);
  const link = path.join(dir, 'link.db');
  symlinkSync(first.dbPath, link);
  const holder = spawn('sqlite3', [first.dbPath], { stdio: ['pipe', 'pipe', 'pipe'] });
  try {
    let out = '';
    holder.stdout.on('data', (d) => { out += d; });
    holder.stdin.write('SELECT count(*) FROM events;\nSELECT 42;\n');
    await waitUntil(() => out.includes('42'), 5000, 'sqlite3 has the database open');
    for (const db of [first.dbPath, link]) {
      const res = serve(db);
      assert.ok(!res.error, `started beside another process through ${db}: ${res.stdout}`);
      assert.equal(res.status, 1, res.stderr);
      assert.match(res.stderr, new RegExp(`is open in process ${holder.pid} `));
    }
  } finally {
    holder.stdin.end();
    await new Promise((resolve) => (holder.exitCode !== null ? resolve() : holder.on('exit', resolve)));
  }

  // Readable by others: it starts, with a warning.
  const open = path.join(dir, 'open.db');
  writeFileSync(open, '', { mode: 0o644 });
  const relay = await startRelay({ dbPath: open });
  await waitUntil(() => /can be read by other users \(mode 644/.test(relay.stderr), 3000, 'the warning');
  assert.equal((await api(relay, 'GET', '/healthz')).status, 200);
}));

// A delivery put back at a stop keeps its place: at max_in_flight 1 the events still
// arrive in the order they were published (the README's promise while no attempt fails).
test('a delivery put back at a stop keeps its place: order holds at max_in_flight 1', withLogs(async () => {
  const relay = await startRelay({ args: ['--delivery-timeout', '60s'] });
  const r = await startReceiver({ behavior: { hang: true } });
  await createSub(relay, r, { max_in_flight: 1 });
  const evs = [];
  for (let i = 0; i < 4; i++) evs.push(await postEvent(relay, { type: 'order.kept', data: { i } }));
  await r.waitFor(1);
  relay.proc.kill('SIGTERM');
  await waitUntil(() => /send SIGINT or SIGTERM again to stop now/.test(relay.stderrText), 3000,
    'the stop says it is waiting for deliveries in flight');
  relay.proc.kill('SIGTERM');
  await relay.exited;
  assert.equal(relay.exitCode, 0, relay.stderrText);
  relay.stopped = true;
  r.dropConnections();
  r.setBehavior({ status: 200 });
  await startRelay({ dbPath: relay.dbPath });
  await r.waitFor(5, 8000);
  assert.deepEqual(r.requests.slice(1).map((q) => q.headers['webhook-id']), evs.map((e) => e.id),
    'after the restart, in the order published');
}));
