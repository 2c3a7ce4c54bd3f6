// tls.test.mjs - deliveries to https receivers: the certificate is checked (against the
// system's CAs, or only those of --ca-file), a failed check is an attempt whose error says
// why and nothing reaches the receiver, and TLS connections are kept alive and resumed.
//
// The certificates are made for each run with the openssl command (a test CA of our own,
// valid for two days); the receivers are Node https servers on 127.0.0.1.

import { test, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import {
  startRelay, startReceiver, api, createSub, postEvent, verifySigned, eventDeliveries,
  getDelivery, waitDelivery, waitUntil, tmpDir, cleanup, withLogs,
} from './harness.mjs';

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

test('TLS sessions are shared: a burst that opens new connections to a receiver resumes the first one', withLogs(async () => {
  const ca = makeCA('hookrelay test CA');
  const r = await startReceiver({ tls: makeServerCert(ca, 'IP:127.0.0.1'), behavior: { delayMs: 50 } });
  const relay = await startRelay({ args: ['--ca-file', ca.certPath] });
  await createSub(relay, r, { max_in_flight: 8 });
  await postEvent(relay, { type: 'warm.up' });
  await r.waitFor(1, 8000);
  await waitUntil(() => r.handshakes.full === 1, 4000, 'the first handshake');
  // Eight at a time against a receiver taking 50 ms: the one idle connection is reused
  // and new ones are opened, each by another easy handle than the first one's.
  const res = await api(relay, 'POST', '/v1/events/batch',
    Array.from({ length: 40 }, (_, i) => ({ type: 'order.updated', data: { i } })));
  assert.equal(res.status, 202, res.text);
  const reqs = await r.waitFor(41, 10_000);
  const connections = reqs.filter((q) => q.perConnection === 1).length;
  assert.ok(connections >= 4, `the burst opened connections: ${connections}`);
  await waitUntil(() => r.handshakes.full + r.handshakes.resumed === connections, 4000, 'every handshake counted');
  assert.deepEqual(r.handshakes, { full: 1, resumed: connections - 1 });
}));

test('--ca-file is checked at start: a missing file or one without a certificate exits 2', withLogs(async () => {
  const dir = tmpDir();
  const notPem = path.join(dir, 'not.pem');
  writeFileSync(notPem, 'hello\n');
  const keyOnly = makeCA('key only');
  for (const [file, why] of [
    [path.join(dir, 'missing.pem'), /--ca-file: cannot read .*missing\.pem: No such file or directory/],
    [notPem, /--ca-file: .*not\.pem holds no PEM certificate/],
    [keyOnly.keyPath, /--ca-file: .*key only\.key holds no PEM certificate/],
    [dir, /--ca-file: cannot read .*: Is a directory/],
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
