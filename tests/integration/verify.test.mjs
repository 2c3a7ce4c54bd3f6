// verify.test.mjs - `hookrelay verify`, the receivers' signature debugger: the DESIGN.md
// test vector and a standardwebhooks-made signature verify; every failure mode exits 1
// and names its cause (secret form, header form, timestamp, and on a mismatch the signed
// content, the expected signature and the mistake that reproduces the received one).
//
// Runs the real binary ($HOOKRELAY_BIN) as a one-shot command; no relay, no network.

import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createHmac, generateKeyPairSync, sign as cryptoSign } from 'node:crypto';
import { Webhook } from 'standardwebhooks';

const BIN = process.env.HOOKRELAY_BIN;
const SECRET = 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw';
const ID = 'msg_p5jXN8AQM9LWM0D4loKWxJek';
const TS = 1614265330;
const BODY = '{"test": 2432232314}';
const SIG = 'v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=';
const SANITIZER_MARKERS = ['ERROR: AddressSanitizer', 'runtime error:', 'ERROR: LeakSanitizer'];

const dir = mkdtempSync(path.join(os.tmpdir(), 'hookrelay-verify-'));
after(() => rmSync(dir, { recursive: true, force: true }));

let files = 0;
function file(content) {
  const p = path.join(dir, `f${files++}`);
  writeFileSync(p, content);
  return p;
}

// Runs `hookrelay verify` with the vector's values unless overridden; flags set to null
// are left out. Returns { code, out } with stdout and stderr together.
function verify(overrides = {}) {
  const flags = {
    '--secret': SECRET, '--id': ID, '--timestamp': String(TS), '--signature': SIG,
    '--body': file(BODY), '--now': String(TS), ...overrides,
  };
  const args = ['verify'];
  for (const [k, v] of Object.entries(flags)) if (v !== null) args.push(k, v);
  const r = spawnSync(BIN, args, { encoding: 'utf8', timeout: 30_000 });
  const out = `${r.stdout}${r.stderr}`;
  for (const m of SANITIZER_MARKERS) assert.ok(!out.includes(m), `sanitizer report:\n${out}`);
  return { code: r.status, out };
}

function assertInvalid(r, ...patterns) {
  assert.equal(r.code, 1, r.out);
  assert.match(r.out, /^invalid: /, r.out);
  for (const p of patterns) assert.match(r.out, p, r.out);
}

// The key a careless sender uses instead of base64-decode(secret without whsec_).
function hmacWithKey(key, body = BODY) {
  return `v1,${createHmac('sha256', key).update(`${ID}.${TS}.${body}`).digest('base64')}`;
}

test('the DESIGN.md vector is valid', () => {
  const r = verify();
  assert.equal(r.code, 0, r.out);
  assert.equal(r.out.trim(), 'valid (signature 1 of 1 matched, v1)');
});

test('during a rotation the matching entry is named: signature N of M', () => {
  const other = hmacWithKey(Buffer.alloc(32, 7));
  const r = verify({ '--signature': `${other} ${SIG}` });
  assert.equal(r.code, 0, r.out);
  assert.match(r.out, /^valid \(signature 2 of 2 matched, v1\)/);
});

test('a signature made by the standardwebhooks package verifies', () => {
  const ts = Math.floor(Date.now() / 1000);
  const body = JSON.stringify({ type: 'order.updated', data: { id: 42, note: 'ünïcode' } });
  const sig = new Webhook(SECRET).sign(ID, new Date(ts * 1000), body);
  // Real clock this time: no --now, default tolerance.
  const r = verify({ '--timestamp': String(ts), '--signature': sig, '--body': file(body), '--now': null });
  assert.equal(r.code, 0, r.out);
  assert.match(r.out, /^valid \(signature 1 of 1 matched, v1\)/);
});

test('--headers reads raw "name: value" lines instead of the three flags', () => {
  const headers = file(`POST /hooks HTTP/1.1\r\nContent-Type: application/json\r\n` +
    `Webhook-Id: ${ID}\r\nwebhook-timestamp: ${TS}\r\nWEBHOOK-SIGNATURE: ${SIG}\r\n\r\n`);
  const r = verify({ '--id': null, '--timestamp': null, '--signature': null, '--headers': headers });
  assert.equal(r.code, 0, r.out);
  assert.match(r.out, /^valid/);
});

// --help: "flags given as well win". A receiver checks a captured request's headers
// file against a corrected value by adding its flag; the file's line must not replace it.
test('--headers with a flag given as well: the flag wins, for each of the three', () => {
  const raw = (id, ts, sig) => file(`webhook-id: ${id}\nwebhook-timestamp: ${ts}\nwebhook-signature: ${sig}\n`);
  const bad = hmacWithKey(Buffer.alloc(32, 7));
  for (const [headers, flags, what] of [
    [raw(ID, TS, bad), { '--signature': SIG }, 'signature'],
    [raw('msg_other', TS, SIG), { '--id': ID }, 'id'],
    [raw(ID, TS + 1, SIG), { '--timestamp': String(TS) }, 'timestamp'],
  ]) {
    const r = verify({ '--id': null, '--timestamp': null, '--signature': null, '--headers': headers, ...flags });
    assert.equal(r.code, 0, `--${what} given beside a file holding another: ${r.out}`);
    assert.match(r.out, /^valid/);
  }
  // and the other way: a good file does not save a bad flag
  const r = verify({ '--id': null, '--timestamp': null, '--signature': bad, '--headers': raw(ID, TS, SIG) });
  assertInvalid(r, /signature mismatch/);
});

test('a missing header value is a usage error naming it', () => {
  const r = verify({ '--signature': null });
  assert.equal(r.code, 2, r.out);
  assert.match(r.out, /missing webhook-signature/);
  // empty is missing, as in the standardwebhooks libraries
  for (const [flag, name] of [['--id', 'webhook-id'], ['--timestamp', 'webhook-timestamp'], ['--signature', 'webhook-signature']]) {
    const e = verify({ [flag]: '' });
    assert.equal(e.code, 2, `${flag} '': ${e.out}`);
    assert.match(e.out, new RegExp(`missing ${name}`), e.out);
  }
});

test('secret without the whsec_ prefix', () => {
  const r = verify({ '--secret': SECRET.slice('whsec_'.length) });
  assertInvalid(r, /secret must start with whsec_/, /pass it with its prefix: --secret 'whsec_MfKQ/);
});

// v1a: an ed25519 subscription's deliveries are checked with its whpk_ public key.
test('v1a (ed25519): whpk_ verifies; a changed body, a missing v1a entry or a bad key do not', () => {
  const { publicKey, privateKey } = generateKeyPairSync('ed25519');
  const whpk = 'whpk_' + publicKey.export({ format: 'der', type: 'spki' }).subarray(-32).toString('base64');
  const v1a = (body) => `v1a,${cryptoSign(null, Buffer.from(`${ID}.${TS}.${body}`), privateKey).toString('base64')}`;

  const ok = verify({ '--secret': whpk, '--signature': `v1,${'A'.repeat(43)}= ${v1a(BODY)}` });
  assert.equal(ok.code, 0, ok.out);
  assert.match(ok.out, /^valid \(signature 1 of 1 matched, v1a\)/); // v1a entries are counted, not the v1 one
  assertInvalid(verify({ '--secret': whpk, '--signature': v1a(BODY), '--body': file(BODY + '\n') }),
    /no v1a signature verified \(1 in the header\)/);
  assertInvalid(verify({ '--secret': whpk, '--signature': SIG }), /has no 'v1a,<base64>' entry/);
  assertInvalid(verify({ '--secret': 'whpk_' + Buffer.alloc(16, 7).toString('base64'), '--signature': v1a(BODY) }),
    /not a Standard Webhooks ed25519 key/);
  assertInvalid(verify({ '--secret': whpk, '--signature': v1a(BODY), '--now': String(TS + 3600) }),
    /3600 seconds in the past/, /the signature itself is valid/);
  assertInvalid(verify({ '--secret': whpk, '--signature': 'v1a,' }), /no v1a signature verified \(1 in the header\)/);
  assertInvalid(verify({ '--secret': 'whpk_xx', '--signature': v1a(BODY), '--now': String(TS + 3600) }),
    /not a Standard Webhooks ed25519 key/); // the key is checked before the timestamp
  // the signed text is the header's: a timestamp with a leading zero is not the same one
  assertInvalid(verify({ '--secret': whpk, '--signature': v1a(BODY), '--timestamp': `0${TS}` }),
    /not written as a plain number \(1614265330\)/);
  // another key's signature does not verify
  const other = generateKeyPairSync('ed25519').privateKey;
  const foreign = `v1a,${cryptoSign(null, Buffer.from(`${ID}.${TS}.${BODY}`), other).toString('base64')}`;
  assertInvalid(verify({ '--secret': whpk, '--signature': foreign }), /no v1a signature verified/);
  // during a rotation the matching entry is named: the second of two here, after another
  // key's; and the first of two that both verify (the newest key signs first)
  const second = verify({ '--secret': whpk, '--signature': `${foreign} ${v1a(BODY)}` });
  assert.equal(second.code, 0, second.out);
  assert.match(second.out, /^valid \(signature 2 of 2 matched, v1a\)/);
  const twice = verify({ '--secret': whpk, '--signature': `${v1a(BODY)} ${v1a(BODY)}` });
  assert.equal(twice.code, 0, twice.out);
  assert.match(twice.out, /^valid \(signature 1 of 2 matched, v1a\)/);
});

test('the private key whsk_ is a usage error pointing at the public key', () => {
  const r = verify({ '--secret': 'whsk_' + Buffer.alloc(64, 7).toString('base64') });
  assert.equal(r.code, 2, r.out);
  assert.match(r.out, /whsk_ is an ed25519 private key; v1a signatures are checked with the subscription's whpk_ public key/);
});

test('secret that is not base64', () => {
  assertInvalid(verify({ '--secret': 'whsec_MfKQ9r8G!YqrTwjUPD8ILPZIo2LaLaSw' }),
    /secret is not valid base64/);
  assertInvalid(verify({ '--secret': 'whsec_MfKQ9r8G-YqrTwjUPD8_LPZIo2LaLaSw' }),
    /not valid base64/, /URL-safe base64/);
});

test('secret of the wrong length', () => {
  assertInvalid(verify({ '--secret': 'whsec_MfKQ9r8GKYqrTwjU' }),
    /secret must decode to 24-64 bytes/, /decodes to 12 bytes/);
});

test('signature header without v1 entries', () => {
  assertInvalid(verify({ '--signature': SIG.slice(3) }),
    /webhook-signature header is malformed: it has no 'v1,<base64>' entries/, /bare signature/);
  assertInvalid(verify({ '--signature': 'sha256=abcdef' }), /malformed/, /another provider/);
  // ed25519 entries, alone or after another: checked with the public key, not a whsec_
  for (const sig of [`v1a,${'A'.repeat(86)}==`, `v2,xyz v1a,${'A'.repeat(86)}==`])
    assertInvalid(verify({ '--signature': sig }), /v1a entries are ed25519 signatures: check them with the subscription's\s+public key, --secret whpk_/);
});

test('timestamp that is not a number, or not written as one', () => {
  assertInvalid(verify({ '--timestamp': '2021-02-25T15:02:10Z' }), /is not a number/, /unix\s+seconds/);
  // a receiver signs the header's text: 01614265330 is not 1614265330
  assertInvalid(verify({ '--timestamp': `0${TS}` }), /not written as a plain number/);
  assertInvalid(verify({ '--timestamp': '9223372036854775807' }), /'9223372036854775807' is out of range/);
});

test('timestamp outside the tolerance says how far off and why the window exists', () => {
  const r = verify({ '--now': String(TS + 1000) });
  assertInvalid(r, /1000 seconds in the past \(tolerance 300 s\)/, /protects against replays/,
    /signature itself is valid/);
  assertInvalid(verify({ '--now': String(TS - 301) }), /301 seconds in the future/);
  assertInvalid(verify({ '--now': String(TS + 1000), '--tolerance': '999' }), /1000 seconds in the past \(tolerance 999 s\)/);
  assert.equal(verify({ '--now': String(TS + 1000), '--tolerance': '1000' }).code, 0);
});

test('mismatch shows the signed content, the expected signature and the raw-bytes hint', () => {
  const r = verify({ '--id': 'msg_other' });
  assertInvalid(r, /signature mismatch/,
    /id: +"msg_other" \(9 bytes\)/,
    /timestamp: 1614265330/,
    /body: +20 bytes: "\{\\"test\\": 2432232314\}"/,
    /verify against the raw\s+request bytes, not a parsed-and-re-serialized body/,
    /check you have the current one/);
  const exp = createHmac('sha256', Buffer.from(SECRET.slice(6), 'base64'))
    .update(`msg_other.${TS}.${BODY}`).digest('base64');
  assert.ok(r.out.includes(`expected signature: v1,${exp}\n`), r.out);
});

test('mismatch from a re-serialized body is found', () => {
  const r = verify({ '--body': file('{"test":2432232314}') });
  assertInvalid(r, /FOUND: the signature matches this body re-serialized/,
    /verify against the raw\s+request bytes/);
});

test('mismatch from a trailing newline in the body file is found', () => {
  const r = verify({ '--body': file(`${BODY}\n`) });
  assertInvalid(r, /21 bytes: .*\\n"/, /FOUND: the signature matches without the body file's trailing newline/);
});

test('mismatch from a sender keying HMAC with the secret text is found', () => {
  assertInvalid(verify({ '--signature': hmacWithKey(SECRET) }),
    /FOUND: the signature was made with the secret's text, 'whsec_' included/);
  assertInvalid(verify({ '--signature': hmacWithKey(SECRET.slice(6)) }),
    /FOUND: the signature was made with the secret's base64 text \(without 'whsec_'\)/);
});

// The relay signs keys of 24 to 64 bytes; the careless sender's key is the text, of
// any length (with a 64-byte key the text is 94 bytes, and was not tried).
test('the secret-text mistake is found for a 64-byte secret too', () => {
  const secret = `whsec_${Buffer.alloc(64, 9).toString('base64')}`;
  assertInvalid(verify({ '--secret': secret, '--signature': hmacWithKey(secret) }),
    /FOUND: the signature was made with the secret's text, 'whsec_' included/);
  assertInvalid(verify({ '--secret': secret, '--signature': hmacWithKey(secret.slice(6)) }),
    /FOUND: the signature was made with the secret's base64 text/);
});

// Event data may hold \u0000 (the relay takes it); a body that cannot be re-serialized
// here (an integer past 64 bits) says so rather than leaving the hint out silently.
test('a re-serialized body holding \\u0000 is found; one that cannot be parsed here says so', () => {
  const sent = '{"a": "x\\u0000y"}';
  const signedForm = '{"a":"x\\u0000y"}';
  const r = verify({ '--body': file(sent), '--signature': hmacWithKey(Buffer.from(SECRET.slice(6), 'base64'), signedForm) });
  assertInvalid(r, /FOUND: the signature matches this body re-serialized compact/);
  const big = verify({ '--body': file('{"n": 123456789012345678901234567890}') });
  assertInvalid(big, /the body was not compared with its re-serialized forms: .*integer/);
});

test('the body is shown escaped and cut at 200 bytes', () => {
  const body = `${'x'.repeat(250)}\u0001`;
  const r = verify({ '--body': file(body) });
  assertInvalid(r, /body: +251 bytes: "x{200}" \.\.\. \(51 more bytes\)/);
  const r2 = verify({ '--body': file(Buffer.from([0x7b, 0x0d, 0x0a, 0xc3, 0xa9, 0x00, 0x7d])) });
  assertInvalid(r2, /7 bytes: "\{\\r\\n\\xc3\\xa9\\x00\}"/);
});

// The relay sends envelopes of up to --max-body (64 MiB) of data plus the envelope's own
// fields: such a delivery must be checkable (files from 64 MiB less 4 KiB up were refused
// as "over 64 MiB").
test('an envelope around 64 MiB of data verifies', () => {
  const body = `{"id":"evt_big","type":"a.b","key":null,"timestamp":"2021-02-25T15:02:10.000Z","data":"${'a'.repeat(64 * 1024 * 1024 - 2)}"}`;
  const sig = hmacWithKey(Buffer.from(SECRET.slice(6), 'base64'), body);
  const r = verify({ '--body': file(body), '--signature': sig });
  assert.equal(r.code, 0, r.out.slice(0, 500));
  assert.match(r.out, /^valid/);
});

// A secret given on the command line shows in ps and the shell's history: --secret-file
// reads it from the first line of a file (white space around it dropped).
test('--secret-file reads the secret from a file; with --secret too it is a usage error', () => {
  const ok = verify({ '--secret': null, '--secret-file': file(`  ${SECRET} \r\nsecond line\n`) });
  assert.equal(ok.code, 0, ok.out);
  assert.match(ok.out, /^valid/);
  const bom = verify({ '--secret': null, '--secret-file': file(`\ufeff${SECRET}\n`) }); // as editors save it
  assert.equal(bom.code, 0, bom.out);
  const wrong = verify({ '--secret': null, '--secret-file': file('whsec_' + Buffer.alloc(32, 1).toString('base64')) });
  assertInvalid(wrong, /signature mismatch/);
  const both = verify({ '--secret-file': file(SECRET) });
  assert.equal(both.code, 2, both.out);
  assert.match(both.out, /--secret and --secret-file: give one/);
  const missing = verify({ '--secret': null, '--secret-file': path.join(dir, 'no-such-file') });
  assert.equal(missing.code, 2, missing.out);
  assert.match(missing.out, /cannot read secret file/);
  // a secret is short: not 64 MiB of /dev/zero read first; and a NUL does not cut it
  const endless = verify({ '--secret': null, '--secret-file': '/dev/zero' });
  assert.equal(endless.code, 2, endless.out);
  assert.match(endless.out, /secret file \/dev\/zero is over 4096 bytes/);
  const nul = verify({ '--secret': null, '--secret-file': file(`${SECRET}\0junk\n`) });
  assert.equal(nul.code, 2, nul.out);
  assert.match(nul.out, /holds a NUL byte/);
});
