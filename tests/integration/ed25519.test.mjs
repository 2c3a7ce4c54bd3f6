// Standard Webhooks v1a (ed25519) subscriptions: the relay generates the key pair, shows
// only the whpk_ public key, and signs each request so that the public key verifies it.
// The standardwebhooks npm package (1.1.1) implements only v1 (HMAC), so v1a is verified
// here with Node's own ed25519 (crypto.verify), over the spec's signed content
// "<webhook-id>.<webhook-timestamp>.<body>".
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {
  startRelay, startReceiver, api, postEvent, cleanup, withLogs, sleep, relayBin,
} from './harness.mjs';

after(cleanup);

const SPKI_ED25519 = Buffer.from('302a300506032b6570032100', 'hex');

function publicKey(whpk) {
  assert.match(whpk, /^whpk_[A-Za-z0-9+/]+={0,2}$/);
  const raw = Buffer.from(whpk.slice(5), 'base64');
  assert.equal(raw.length, 32, 'an ed25519 public key is 32 bytes');
  return crypto.createPublicKey({ key: Buffer.concat([SPKI_ED25519, raw]), format: 'der', type: 'spki' });
}

/** The v1a signatures of one recorded request, in header order. */
function v1aSignatures(req) {
  return req.headers['webhook-signature'].split(' ').map((entry) => {
    const [version, sig] = entry.split(',');
    assert.equal(version, 'v1a', `only v1a signatures for an ed25519 subscription: ${entry}`);
    return Buffer.from(sig, 'base64');
  });
}

function verifies(req, key, sig) {
  const signed = Buffer.concat([
    Buffer.from(`${req.headers['webhook-id']}.${req.headers['webhook-timestamp']}.`), req.body,
  ]);
  return crypto.verify(null, signed, key, sig);
}

test('ed25519 subscription: only the public key is shown, and it verifies every delivery', withLogs(async () => {
  const relay = await startRelay();
  const r = await startReceiver();
  const created = await api(relay, 'POST', '/v1/subscriptions', {
    url: r.url + '/hook', event_types: ['signed.*'], signature_algorithm: 'ed25519',
  });
  assert.equal(created.status, 201, created.text);
  assert.equal(created.json.signature_algorithm, 'ed25519');
  assert.equal(created.json.secret, undefined, 'the private key is never returned');
  assert.doesNotMatch(created.text, /whsk_/, 'no private key anywhere in the answer');
  const key = publicKey(created.json.public_key);

  const got = await api(relay, 'GET', `/v1/subscriptions/${created.json.id}`);
  assert.equal(got.json.public_key, created.json.public_key, 'reads show the same public key');
  assert.doesNotMatch(got.text, /whsk_|"secret"/);

  const ev = await postEvent(relay, { type: 'signed.one', data: { n: 1 } });
  const [req] = await r.waitFor(1);
  assert.equal(req.headers['webhook-id'], ev.id);
  const sigs = v1aSignatures(req);
  assert.equal(sigs.length, 1);
  assert.ok(verifies(req, key, sigs[0]), 'the v1a signature verifies with the public key');
  // A tampered body must not verify (the test would be useless if it always did).
  const tampered = { ...req, body: Buffer.from(req.body.toString().replace('"n":1', '"n":2')) };
  assert.ok(!verifies(tampered, key, sigs[0]), 'a changed body does not verify');
  // and `hookrelay verify` checks it with the public key, as a receiver's operator would
  const dir = mkdtempSync(path.join(os.tmpdir(), 'hookrelay-ed-'));
  try {
    for (const [body, code, says] of [[req.body, 0, /^valid \(signature 1 of 1 matched, v1a\)/],
      [tampered.body, 1, /no v1a signature verified/]]) {
      writeFileSync(path.join(dir, 'body'), body);
      const v = spawnSync(relayBin(), ['verify', '--secret', created.json.public_key, '--body', path.join(dir, 'body'),
        '--id', req.headers['webhook-id'], '--timestamp', req.headers['webhook-timestamp'],
        '--signature', req.headers['webhook-signature']], { encoding: 'utf8', timeout: 30_000 });
      assert.equal(v.status, code, `${v.stdout}${v.stderr}`);
      assert.match(v.stdout, says);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }

  // A caller may not bring their own key material, nor switch algorithms later.
  const own = await api(relay, 'POST', '/v1/subscriptions', {
    url: r.url + '/x', event_types: ['#'], signature_algorithm: 'ed25519', secret: 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw',
  });
  assert.equal(own.status, 422);
  assert.equal(own.json.error.code, 'invalid_field');
  const bad = await api(relay, 'POST', '/v1/subscriptions', {
    url: r.url + '/x', event_types: ['#'], signature_algorithm: 'rsa',
  });
  assert.equal(bad.status, 422);
  const patch = await api(relay, 'PATCH', `/v1/subscriptions/${created.json.id}`, { signature_algorithm: 'hmac-sha256' });
  assert.equal(patch.status, 422);
}));

test('ed25519 rotation: both keys sign during the grace, newest first; then only the new one', withLogs(async () => {
  const relay = await startRelay();
  const r = await startReceiver();
  const created = await api(relay, 'POST', '/v1/subscriptions', {
    url: r.url + '/hook', event_types: ['rot.*'], signature_algorithm: 'ed25519',
  });
  assert.equal(created.status, 201, created.text);
  const oldKey = publicKey(created.json.public_key);

  const rotated = await api(relay, 'POST', `/v1/subscriptions/${created.json.id}/rotate-secret`, { grace_seconds: 60 });
  assert.equal(rotated.status, 200, rotated.text);
  assert.notEqual(rotated.json.public_key, created.json.public_key, 'a new key pair');
  assert.equal(rotated.json.secret, undefined);
  const newKey = publicKey(rotated.json.public_key);

  await postEvent(relay, { type: 'rot.during' });
  const [during] = await r.waitFor(1);
  const sigs = v1aSignatures(during);
  assert.equal(sigs.length, 2, 'two signatures during the grace');
  assert.ok(verifies(during, newKey, sigs[0]), 'the first is the new key');
  assert.ok(verifies(during, oldKey, sigs[1]), 'the second is the old key');
  assert.ok(!verifies(during, oldKey, sigs[0]), 'keys are not interchangeable');

  // A second rotation with no grace ends the grace of every older key: the one it replaces
  // (the second) and the first, which still had 60 s (an emergency rotation must stop
  // them all). Only the newest signs.
  const again = await api(relay, 'POST', `/v1/subscriptions/${created.json.id}/rotate-secret`, { grace_seconds: 0 });
  assert.equal(again.status, 200, again.text);
  const newest = publicKey(again.json.public_key);
  await sleep(20);
  await postEvent(relay, { type: 'rot.after' });
  const after2 = (await r.waitFor(2))[1];
  const sigs2 = v1aSignatures(after2);
  assert.equal(sigs2.length, 1, 'only the newest key signs');
  assert.ok(verifies(after2, newest, sigs2[0]), 'the newest key signs');
  assert.ok(!verifies(after2, oldKey, sigs2[0]) && !verifies(after2, newKey, sigs2[0]));
}));
