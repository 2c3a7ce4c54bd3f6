// tls.test.mjs - deliveries to https receivers: the certificate is checked (against the
// system's CA bundle, loaded once, or only the CAs of --ca-file), a failed check is an
// attempt whose error says why and nothing reaches the receiver, TLS connections are kept
// alive, and an HTTP/2 receiver gets its deliveries as streams of one connection.
//
// The certificates are made for each run with the openssl command (a test CA of our own,
// valid for two days); the receivers are Node https servers on 127.0.0.1. The system
// bundle is replaced by one holding the test CA inside a mount namespace
// (netns/tls-child.mjs), never on the machine itself.

import { test, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  startRelay, startReceiver, api, createSub, postEvent, verifySigned, eventDeliveries,
  getDelivery, waitDelivery, waitUntil, tmpDir, cleanup, withLogs, runNamespaced, tail,
} from './harness.mjs';

const CHILD = path.join(path.dirname(fileURLToPath(import.meta.url)), 'netns', 'tls-child.mjs');
const SYSTEM_BUNDLE = '/etc/ssl/certs/ca-certificates.crt';

afterEach(cleanup);

function openssl(...args) {
  execFileSync('openssl', args, { stdio: ['ignore', 'ignore', 'pipe'] });
}

/** A CA of our own: {dir, name, keyPath, certPath, cert (PEM)}. */
function makeCA(name) {
  const dir = tmpDir();
  const keyPath = path.join(dir, `${name}.key`);
  const certPath = path.join(dir, `${name}.pem`);
  openssl('req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes',
    '-keyout', keyPath, '-out', certPath, '-days', '2', '-subj', `/CN=${name}`,
    '-addext', 'basicConstraints=critical,CA:TRUE',
    '-addext', 'keyUsage=critical,keyCertSign,cRLSign');
  return { dir, name, keyPath, certPath, cert: readFileSync(certPath, 'utf8') };
}

/** A server certificate signed by ca for subjectAltName san: {key, cert} (PEM). */
function makeServerCert(ca, san, name = 'receiver') {
  const key = path.join(ca.dir, `${name}.key`);
  const csr = path.join(ca.dir, `${name}.csr`);
  const cert = path.join(ca.dir, `${name}.pem`);
  const ext = path.join(ca.dir, `${name}.ext`);
  writeFileSync(ext, `subjectAltName=${san}\nextendedKeyUsage=serverAuth\n`);
  openssl('req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes',
    '-keyout', key, '-out', csr, '-subj', `/CN=${name}`);
  openssl('x509', '-req', '-in', csr, '-CA', ca.certPath, '-CAkey', ca.keyPath,
    '-CAcreateserial', '-out', cert, '-days', '2', '-extfile', ext);
  return { key: readFileSync(key, 'utf8'), cert: readFileSync(cert, 'utf8') };
}

async function firstAttempt(relay, eventId) {
  const ds = await eventDeliveries(relay, eventId);
  assert.equal(ds.length, 1);
  return waitUntil(async () => {
    const d = await getDelivery(relay, ds[0].id);
    return d.attempts.length >= 1 ? d.attempts[0] : false;
  }, 8000, 'a first attempt');
}

test('https receiver with a cert from --ca-file: delivered, signed, one TLS connection for many', withLogs(async () => {
  const ca = makeCA('hookrelay test CA');
  const r = await startReceiver({ tls: makeServerCert(ca, 'IP:127.0.0.1') });
  const relay = await startRelay({ args: ['--ca-file', ca.certPath] });
  const sub = await createSub(relay, r, { max_in_flight: 1 });
  assert.match(sub.url, /^https:\/\/127\.0\.0\.1:\d+\/hook$/);

  const ids = [];
  for (let i = 0; i < 20; i++) ids.push((await postEvent(relay, { type: 'order.updated', data: { i } })).id);
  const reqs = await r.waitFor(20, 10_000);
  assert.deepEqual(reqs.map((q) => q.headers['webhook-id']), ids, 'each event once, in order');
  for (const q of reqs) verifySigned(q, sub.secret);
  const ds = await eventDeliveries(relay, ids[19]);
  const d = await waitDelivery(relay, ds[0].id, 'delivered');
  assert.equal(d.attempts[0].http_status, 200);
  assert.equal(d.attempts[0].error, null);
  // kept alive: twenty deliveries, one handshake
  assert.deepEqual(r.handshakes, { full: 1, resumed: 0 });
  assert.equal(reqs.filter((q) => q.perConnection === 1).length, 1, 'one TLS connection');
}));

test('https receiver whose CA is not trusted: the attempt says why and nothing arrives', withLogs(async () => {
  const ca = makeCA('hookrelay test CA');
  const other = makeCA('some other CA');
  const r = await startReceiver({ tls: makeServerCert(ca, 'IP:127.0.0.1') });
  // The system's CAs (no --ca-file) do not know ours; --ca-file with another CA replaces them.
  for (const args of [[], ['--ca-file', other.certPath]]) {
    const relay = await startRelay({ args, retrySchedule: '10s' });
    await createSub(relay, r);
    const ev = await postEvent(relay, { type: 'order.updated' });
    const a = await firstAttempt(relay, ev.id);
    assert.equal(a.http_status, 0, JSON.stringify(a));
    assert.match(a.error, /SSL certificate problem: unable to get local issuer certificate/, JSON.stringify(a));
    const [d] = await eventDeliveries(relay, ev.id);
    assert.equal(d.status, 'pending', 'a certificate failure is retried like any other');
    await relay.stop();
  }
  assert.equal(r.requests.length, 0, 'no request went through an unverified connection');
}));

test('https receiver whose certificate names another host: refused even from a trusted CA', withLogs(async () => {
  const ca = makeCA('hookrelay test CA');
  const r = await startReceiver({ tls: makeServerCert(ca, 'DNS:receiver.example,IP:10.9.8.7') });
  const relay = await startRelay({ args: ['--ca-file', ca.certPath], retrySchedule: '10s' });
  await createSub(relay, r);
  const ev = await postEvent(relay, { type: 'order.updated' });
  const a = await firstAttempt(relay, ev.id);
  assert.equal(a.http_status, 0, JSON.stringify(a));
  assert.match(a.error, /SSL: no alternative certificate subject name matches target host name '127\.0\.0\.1'/,
    JSON.stringify(a));
  assert.equal(r.requests.length, 0);
}));

test('HTTP/2 receiver: deliveries go as concurrent streams on one connection, signed', withLogs(async () => {
  const ca = makeCA('hookrelay test CA');
  let now = 0;
  let most = 0;
  const r = await startReceiver({
    tls: { ...makeServerCert(ca, 'IP:127.0.0.1'), http2: true },
    behavior: () => {
      most = Math.max(most, ++now);
      setTimeout(() => { now--; }, 100);
      return { delayMs: 100 };
    },
  });
  const relay = await startRelay({ args: ['--ca-file', ca.certPath] });
  const sub = await createSub(relay, r, { max_in_flight: 8 });
  const res = await api(relay, 'POST', '/v1/events/batch',
    Array.from({ length: 24 }, (_, i) => ({ type: 'order.updated', data: { i } })));
  assert.equal(res.status, 202, res.text);
  const reqs = await r.waitFor(24, 10_000);
  assert.deepEqual([...new Set(reqs.map((q) => q.httpVersion))], ['2.0']);
  assert.deepEqual(new Set(reqs.map((q) => q.headers['webhook-id'])), new Set(res.json.ids));
  for (const q of reqs) verifySigned(q, sub.secret);
  assert.equal(r.handshakes.full + r.handshakes.resumed, 1, 'one connection');
  assert.ok(most >= 4, `streams at once on it: ${most}`);
  const last = (await eventDeliveries(relay, res.json.ids[23]))[0];
  const done = (await waitDelivery(relay, last.id, 'delivered')).attempts[0];
  assert.equal(done.http_status, 200);
  assert.equal(done.error, null, 'a whole HTTP/2 answer is not logged as odd');
}));

// A listener that takes TCP connections and never answers (a TLS handshake that
// stalls), a relay, and a subscription of every event to it over https.
async function stalledHttpsSubscription(timeout, maxInFlight) {
  const silent = net.createServer((socket) => { socket.on('data', () => {}); socket.on('error', () => {}); });
  await new Promise((resolve) => silent.listen(0, '127.0.0.1', resolve));
  const relay = await startRelay({ args: ['--delivery-timeout', timeout], retrySchedule: '1h' });
  const url = `https://127.0.0.1:${silent.address().port}/hook`;
  const res = await api(relay, 'POST', '/v1/subscriptions', { url, event_types: ['#'], max_in_flight: maxInFlight });
  assert.equal(res.status, 201, res.text);
  return { silent, relay, sub: res.json };
}

test('an https receiver whose handshake stalls: a burst ends at the timeout, and the waiting ones say what they waited for', withLogs(async () => {
  const { silent, relay, sub } = await stalledHttpsSubscription('1s', 8);
  try {
    const batch = await api(relay, 'POST', '/v1/events/batch',
      Array.from({ length: 8 }, (_, i) => ({ type: 'order.updated', data: { i } })));
    assert.equal(batch.status, 202, batch.text);
    const errors = await waitUntil(async () => {
      const l = await api(relay, 'GET', `/v1/deliveries?subscription=${sub.id}`);
      const e = l.json.data.map((d) => d.last_error);
      return e.every((x) => x) ? e : false;
    }, 8000, 'every delivery attempted');
    // One connection was made, and timed out; the other seven waited for it to learn
    // whether it could carry them as HTTP/2 streams. (On a slow run, one that waited may
    // start a connection of its own when the first fails; libcurl says "SSL connection
    // timeout" for one that ends in the TLS handshake.)
    const waited = errors.filter((e) => /^timed out waiting for a connection to 127\.0\.0\.1:\d+ \(another request's connection to it did not complete\)$/.test(e));
    const own = errors.filter((e) => /timed out after \d+ milliseconds|^SSL connection timeout$|^timed out connecting to 127\.0\.0\.1:\d+: \d+ ms waiting for another request's connection to it, then \d+ ms for its own/.test(e));
    assert.equal(waited.length + own.length, 8, JSON.stringify(errors));
    assert.ok(waited.length >= 4, JSON.stringify(errors));
    assert.ok(errors.every((e) => !/resolve/i.test(e)), JSON.stringify(errors));
  } finally {
    silent.close();
  }
}));

// A delivery that first waits on another request's connection to a stalled receiver and
// then makes its own said curl's "Connection timed out after 992 milliseconds" under a
// 3 s timeout: it read as a short connect timeout of ours. The text now gives both parts.
test('an attempt that waited on another connection, then timed out on its own, says both', withLogs(async () => {
  const { silent, relay, sub } = await stalledHttpsSubscription('2s', 4);
  try {
    for (let i = 0; i < 3; i++) {
      assert.equal((await api(relay, 'POST', '/v1/events', { type: 'order.updated', data: { i } })).status, 202);
      await new Promise((resolve) => setTimeout(resolve, 700));
    }
    const ds = await waitUntil(async () => {
      const l = await api(relay, 'GET', `/v1/deliveries?subscription=${sub.id}`);
      const all = await Promise.all(l.json.data.map((d) => getDelivery(relay, d.id)));
      return all.length === 3 && all.every((d) => d.attempts.length >= 1) ? all : false;
    }, 15_000, 'every delivery attempted');
    for (const d of ds) {
      const a = d.attempts[0];
      const curl = /^Connection timed out after (\d+) milliseconds$/.exec(a.error ?? '');
      assert.ok(!curl || Number(curl[1]) >= a.duration_ms - 150,
        `${d.id}: "${a.error}" after ${a.duration_ms} ms of attempt`);
    }
  } finally {
    silent.close();
  }
}));

test('an http receiver is not held by that wait: a burst of 8 is in flight at once from the start', withLogs(async () => {
  let now = 0;
  let most = 0;
  const r = await startReceiver({
    behavior: () => {
      most = Math.max(most, ++now);
      setTimeout(() => { now--; }, 300);
      return { delayMs: 300 };
    },
  });
  const relay = await startRelay();
  await createSub(relay, r, { max_in_flight: 8 });
  const res = await api(relay, 'POST', '/v1/events/batch',
    Array.from({ length: 8 }, (_, i) => ({ type: 'order.updated', data: { i } })));
  assert.equal(res.status, 202, res.text);
  const reqs = await r.waitFor(8, 8000);
  assert.deepEqual([...new Set(reqs.map((q) => q.httpVersion))], ['1.1']);
  assert.equal(most, 8, 'all eight at once, not one and then seven after its answer');
}));

test('--ca-file is checked at start: a missing file or one without a certificate exits 2', withLogs(async () => {
  const dir = tmpDir();
  const notPem = path.join(dir, 'not.pem');
  writeFileSync(notPem, 'hello\n');
  const keyOnly = makeCA('key only');
  const fifo = path.join(dir, 'fifo');
  execFileSync('mkfifo', [fifo]);
  for (const [file, why] of [
    [path.join(dir, 'missing.pem'), /--ca-file: cannot read .*missing\.pem: No such file or directory/],
    [notPem, /--ca-file: .*not\.pem holds no PEM certificate/],
    [keyOnly.keyPath, /--ca-file: .*key only\.key holds no PEM certificate/],
    [dir, /--ca-file: .* is not a regular file/],
    [fifo, /--ca-file: .*fifo is not a regular file/], // opening it would block the start
  ]) {
    const relay = await startRelay({ args: ['--ca-file', file] }).catch((e) => e);
    assert.ok(relay instanceof Error, `started with --ca-file ${file}`);
    assert.match(relay.message, /exited before listening \(code 2,/);
    assert.match(relay.message, why);
  }
  // and from the environment
  const relay = await startRelay({ env: { HOOKRELAY_CA_FILE: notPem } }).catch((e) => e);
  assert.ok(relay instanceof Error);
  assert.match(relay.message, /holds no PEM certificate.*\(from HOOKRELAY_CA_FILE\)/);
}));

// A mount namespace needs CAP_SYS_ADMIN (root, or a user namespace).
function canReplaceSystemBundle() {
  const r = spawnSync('unshare', ['-m', 'sh', '-c', `mount --bind /dev/null /dev/null && test -f ${SYSTEM_BUNDLE}`],
    { timeout: 10_000 });
  return r.status === 0;
}

test('without --ca-file the system bundle is trusted, loaded once (not per connection), and checked at start',
  { skip: canReplaceSystemBundle() ? false : `unshare -m is not permitted here, or there is no ${SYSTEM_BUNDLE}` },
  withLogs(async () => {
    const ca = makeCA('hookrelay test CA');
    const { key, cert } = makeServerCert(ca, 'IP:127.0.0.1');
    const keyPath = path.join(ca.dir, 'tls.key');
    const certPath = path.join(ca.dir, 'tls.pem');
    const bundle = path.join(ca.dir, 'bundle.crt');
    writeFileSync(keyPath, key);
    writeFileSync(certPath, cert);
    writeFileSync(bundle, ca.cert);
    const r = await runNamespaced({
      flags: '-m', setup: `mount --bind "$2" ${SYSTEM_BUNDLE}`, script: CHILD, extraArgs: [bundle],
      env: {
        HOOKRELAY_TLS_MOUNTNS: '1', HOOKRELAY_TLS_BUNDLE: bundle, HOOKRELAY_TLS_KEY: keyPath,
        HOOKRELAY_TLS_CERT: certPath,
      },
      timeoutMs: 60_000, label: 'tls.test',
    });
    const line = r.stdout.split('\n').find((l) => l.startsWith('TLS-SUMMARY '));
    const ctx = `child exit ${r.code} ${r.signal ?? ''}\nstdout: ${tail(r.stdout, 6000)}\nstderr: ${tail(r.stderr, 6000)}`;
    assert.ok(line, `no TLS-SUMMARY line\n${ctx}`);
    const summary = JSON.parse(line.slice('TLS-SUMMARY '.length));
    assert.equal(summary.ok, true, ctx);
    assert.deepEqual(summary, { mountns: true, delivered: 4, warned: true, ok: true });
    assert.equal(r.code, 0, ctx);
  }));
