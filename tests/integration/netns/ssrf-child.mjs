// ssrf-child.mjs - the SSRF attacks, run by ssrf.test.mjs inside a network namespace
// that has only loopback (`unshare -n`), so that even a guard that failed could not
// send a packet anywhere but this namespace's 127.0.0.1 / ::1.
//
// Not a test file on its own (the runner only picks up *.test.mjs): it is a plain
// script. It starts the relay WITHOUT --allow-private-targets, throws every attack at
// it, and prints one line `SSRF-SUMMARY {json}` on stdout; exit code 0 means every
// assertion held. Order matters for safety: no event is published on a relay until
// the subscription list has been shown to hold only what the script meant to store.
//
// What it proves:
// 1. registration: every blocked address, in every spelling (Unicode ones included,
//    as libcurl's IDNA reads them), is 422 invalid_field with a message naming the
//    rule, on create and on PATCH, and nothing is stored;
// 2. delivery: a host NAME (from /etc/hosts, not a localhost name, so registration
//    accepts it) that resolves to loopback is refused at connect time: the attempt
//    says "blocked: 127.0.0.1 is a loopback address (127.0.0.0/8)" and the receiver
//    it points at gets nothing;
// 3. --allow-targets 127.0.0.1/32 (flag or HOOKRELAY_ALLOW_TARGETS) lets exactly that
//    through, at registration and at delivery; a bad CIDR list stops start-up.

import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import dns from 'node:dns/promises';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import {
  startRelay, startReceiver, api, createSub, postEvent, assertError, waitDelivery,
  eventDeliveries, assertNoMore, cleanup, relayBin, tmpDir, waitUntil,
} from '../harness.mjs';

const HINT = /use --allow-private-targets or --allow-targets for local testing/;
const summary = { netns: process.env.HOOKRELAY_SSRF_NETNS === '1', steps: [] };

function step(name, detail = {}) {
  summary.steps.push({ name, ...detail });
}

function bareRelay(extraArgs = [], env = {}) {
  return startRelay({
    bare: true,
    env,
    args: ['--listen', '127.0.0.1:0', '--db', path.join(tmpDir(), 'hr.db'),
      '--retry-schedule', '100ms', ...extraArgs],
  });
}

async function subscriptionUrls(relay) {
  const res = await api(relay, 'GET', '/v1/subscriptions?limit=1000');
  assert.equal(res.status, 200, res.text);
  return res.json.data.map((s) => s.url).sort();
}

function isLoopback(address) {
  return /^127\./.test(address) || address === '::1';
}

// A name from /etc/hosts that is not localhost / *.localhost and resolves only to
// loopback here. Registration cannot know where a name points; only the connect-time
// guard can stop it.
async function loopbackName() {
  let text = '';
  try { text = readFileSync('/etc/hosts', 'utf8'); } catch { return null; }
  for (const line of text.split('\n')) {
    const fields = line.replace(/#.*/, '').trim().split(/\s+/);
    if (fields.length < 2 || !isLoopback(fields[0])) continue;
    for (const name of fields.slice(1)) {
      const lower = name.toLowerCase().replace(/\.+$/, '');
      if (lower === 'localhost' || lower.endsWith('.localhost') || !/^[a-z0-9.-]+$/.test(lower)) continue;
      try {
        const addrs = await dns.lookup(name, { all: true });
        if (addrs.length && addrs.every((a) => isLoopback(a.address))) return { name, addrs: addrs.map((a) => a.address) };
      } catch { /* not resolvable here */ }
    }
  }
  return null;
}

async function registrationAttacks(rcv) {
  const P = rcv.port;
  const lo4 = /url points at a loopback address \(127\.0\.0\.0\/8\)/;
  const attacks = [
    [`http://127.0.0.1:${P}/hook`, lo4],
    [`https://127.0.0.1:${P}/hook`, lo4],
    [`http://127.0.0.2:${P}/hook`, lo4],
    [`http://2130706433:${P}/hook`, lo4],
    [`http://0x7f000001:${P}/hook`, lo4],
    [`http://0177.0.0.1:${P}/hook`, lo4],
    [`http://127.1:${P}/hook`, lo4],
    [`http://127.0.0.1.:${P}/hook`, lo4],
    [`http://0x7f.1.:${P}/hook`, lo4],
    [`http://0:${P}/hook`, /an unspecified address \(0\.0\.0\.0\/8\)/],
    [`http://0.0.0.0:${P}/hook`, /\(0\.0\.0\.0\/8\)/],
    [`http://localhost:${P}/hook`, /url points at localhost/],
    [`http://LOCALHOST.:${P}/hook`, /url points at localhost/],
    [`http://api.localhost:${P}/hook`, /url points at localhost/],
    [`http://%6cocalhost:${P}/hook`, /url points at localhost/],
    [`http://[::1]:${P}/hook`, /url points at a loopback address \(::1\)/],
    [`http://[0:0:0:0:0:0:0:1]:${P}/hook`, /\(::1\)/],
    [`http://[::]:${P}/hook`, /an unspecified address \(::\)/],
    [`http://[::ffff:127.0.0.1]:${P}/hook`, /IPv4-mapped address \(::ffff:0:0\/96\)/],
    [`http://[::ffff:7f00:1]:${P}/hook`, /\(::ffff:0:0\/96\)/],
    [`http://[::127.0.0.1]:${P}/hook`, /IPv4-compatible address \(::\/96\)/],
    [`http://[64:ff9b::7f00:1]:${P}/hook`, /a NAT64 address \(64:ff9b::\/96\)/],
    [`http://[64:ff9b:1::808:808]:${P}/hook`, /local-use NAT64 address \(64:ff9b:1::\/48\)/],
    [`http://[2002:7f00:1::]:${P}/hook`, /a 6to4 address \(2002::\/16\)/],
    [`http://[2001::1]:${P}/hook`, /a Teredo address \(2001::\/32\)/],
    [`http://[fe80::1%25lo]:${P}/hook`, /a link-local address \(fe80::\/10\)/],
    ['http://[fd00::1]/hook', /a private address \(fc00::\/7\)/],
    ['http://[ff02::1]/hook', /a multicast address \(ff00::\/8\)/],
    ['http://10.0.0.1/hook', /a private address \(10\.0\.0\.0\/8\)/],
    ['http://167772161/hook', /\(10\.0\.0\.0\/8\)/],
    ['http://172.16.5.4/hook', /a private address \(172\.16\.0\.0\/12\)/],
    ['http://192.168.1.1/hook', /a private address \(192\.168\.0\.0\/16\)/],
    ['http://3232235777/hook', /\(192\.168\.0\.0\/16\)/],
    ['http://169.254.169.254/latest/meta-data/', /a link-local address \(169\.254\.0\.0\/16\)/],
    ['http://0xa9fea9fe/latest/meta-data/', /\(169\.254\.0\.0\/16\)/],
    ['http://100.64.0.1/hook', /a carrier-grade NAT address \(100\.64\.0\.0\/10\)/],
    ['http://224.0.0.1/hook', /a multicast address \(224\.0\.0\.0\/4\)/],
    ['http://255.255.255.255/hook', /a reserved or broadcast address \(240\.0\.0\.0\/4\)/],
    ['http://192.0.0.192/opc/v2/instance/', /an IETF protocol assignment address \(192\.0\.0\.0\/24\)/],
    ['http://198.18.0.1/hook', /a benchmarking address \(198\.18\.0\.0\/15\)/],
    ['http://[2001:db8::1]/hook', /a documentation address \(2001:db8::\/32\)/],
    [`http://[::ffff:0:7f00:1]:${P}/hook`, /an IPv4-translated address \(::ffff:0:0:0\/96\)/],
    // Unicode spellings: checked as the name libcurl's IDNA makes of them (in the
    // relay's UTF-8 character set), which is the address or localhost itself
    [`http://127\u30020\u30020\u30021:${P}/hook`, lo4],
    [`http://\uff11\uff12\uff17.\uff10.\uff10.\uff11:${P}/hook`, lo4],
    [`http://\uff11\uff10.0.0.1:${P}/hook`, /a private address \(10\.0\.0\.0\/8\)/],
    [`http://\u24db\u24de\u24d2\u24d0\u24db\u24d7\u24de\u24e2\u24e3:${P}/hook`, /url points at localhost/],
  ];
  const relay = await bareRelay();
  assert.deepEqual(await subscriptionUrls(relay), [], 'fresh relay has no subscriptions');

  // One subscription we mean to keep (disabled: it never gets a delivery), for PATCH.
  const keep = await createSub(relay, null, { url: 'https://hooks.example.com/in', enabled: false });
  const before = await subscriptionUrls(relay);

  for (const [url, rule] of attacks) {
    const res = await api(relay, 'POST', '/v1/subscriptions', { url, event_types: ['#'] });
    assertError(res, 422, 'invalid_field', `POST ${url}`);
    assert.match(res.json.error.message, rule, `POST ${url}: ${res.text}`);
    assert.match(res.json.error.message, HINT, `POST ${url}: ${res.text}`);
  }
  const patches = attacks.filter((_, i) => i % 4 === 0);
  for (const [url, rule] of patches) {
    const res = await api(relay, 'PATCH', `/v1/subscriptions/${keep.id}`, { url });
    assertError(res, 422, 'invalid_field', `PATCH ${url}`);
    assert.match(res.json.error.message, rule, `PATCH ${url}: ${res.text}`);
  }
  // Nothing stored, nothing changed: checked before any event is published.
  assert.deepEqual(await subscriptionUrls(relay), before, 'no attack stored or patched in');
  const one = await api(relay, 'GET', `/v1/subscriptions/${keep.id}`);
  assert.equal(one.json.url, 'https://hooks.example.com/in');

  // Publishing now fans out to nobody (the kept one is disabled): no traffic at all.
  const evt = await postEvent(relay, { type: 'ssrf.probe', data: { n: 1 } });
  assert.equal(evt.deliveries, 0, 'no delivery was created for any attack');
  await assertNoMore(rcv, 0, 500);
  await relay.stop();
  step('registration', { attacks: attacks.length, patches: patches.length, stored: before.length });
  return attacks.length + patches.length;
}

async function deliveryTimeGuard(rcv, host) {
  const relay = await bareRelay();
  const url = `http://${host.name}:${rcv.port}/hook`;
  // A plain name: registration cannot tell where it points, so it is accepted...
  const sub = await createSub(relay, rcv, { url });
  assert.deepEqual(await subscriptionUrls(relay), [url]);
  const evt = await postEvent(relay, { type: 'ssrf.rebind', data: { n: 2 } });
  assert.equal(evt.deliveries, 1);
  const [d] = await eventDeliveries(relay, evt.id);
  // ...and every attempt is refused at connect time (schedule 100ms: 2 attempts).
  const done = await waitDelivery(relay, d.id, 'failed', 15_000);
  assert.equal(done.attempts.length, 2, JSON.stringify(done));
  for (const a of done.attempts) {
    assert.equal(a.http_status, 0, JSON.stringify(a));
    assert.match(a.error, /^blocked: (127\.\d+\.\d+\.\d+|::1) is a loopback address \((127\.0\.0\.0\/8|::1)\)$/,
      JSON.stringify(a));
  }
  assert.match(done.last_error, /^blocked: /);
  await assertNoMore(rcv, 0, 300);
  await relay.stop();
  step('delivery-time', { host: host.name, resolves: host.addrs, subscription: sub.id, error: done.attempts[0].error });
  return done.attempts[0].error;
}

async function allowList(rcv, host) {
  let delivered = 0;
  for (const how of ['flag', 'env']) {
    const relay = how === 'flag'
      ? await bareRelay(['--allow-targets', '127.0.0.1/32'])
      : await bareRelay([], { HOOKRELAY_ALLOW_TARGETS: '127.0.0.1/32' });
    await waitUntil(() => /targets allowed in 127\.0\.0\.1\/32/.test(relay.stderr), 5000,
      'the start-up line to name the allow-list');
    const lo2 = await api(relay, 'POST', '/v1/subscriptions', { url: `http://127.0.0.2:${rcv.port}/`, event_types: ['#'] });
    assertError(lo2, 422, 'invalid_field', '127.0.0.2 is not on the allow-list');
    assert.match(lo2.json.error.message, /\(127\.0\.0\.0\/8\)/);
    const v6 = await api(relay, 'POST', '/v1/subscriptions', { url: `http://[::1]:${rcv.port}/`, event_types: ['#'] });
    assertError(v6, 422, 'invalid_field', '::1 is not on the allow-list');
    const meta = await api(relay, 'POST', '/v1/subscriptions', { url: 'http://169.254.169.254/', event_types: ['#'] });
    assertError(meta, 422, 'invalid_field', 'the allow-list lifts nothing else');
    await createSub(relay, rcv, { url: `http://127.0.0.1:${rcv.port}/hook` });
    if (host) await createSub(relay, rcv, { url: `http://${host.name}:${rcv.port}/hook` });
    const want = host ? 2 : 1;
    assert.equal((await subscriptionUrls(relay)).length, want);
    const evt = await postEvent(relay, { type: 'ssrf.allowed', data: { how } });
    assert.equal(evt.deliveries, want);
    for (const d of await eventDeliveries(relay, evt.id)) {
      const ok = await waitDelivery(relay, d.id, 'delivered', 10_000);
      assert.equal(ok.attempts.at(-1).http_status, 200);
    }
    delivered += want;
    await rcv.waitFor(delivered, 5000);
    await relay.stop();
  }
  await assertNoMore(rcv, delivered, 300);
  step('allow-list', { delivered });
  return delivered;
}

function configErrors() {
  const cases = [
    ['10.0.0.1/8', /--allow-targets: '10\.0\.0\.1\/8' has bits set past its \/8 prefix/],
    ['banana', /--allow-targets: 'banana' is not an IPv4 or IPv6 address/],
    ['10.0.0.0/33', /--allow-targets: '10\.0\.0\.0\/33'/],
    ['127.0.0.1/32,,', /--allow-targets: empty entry/],
  ];
  for (const [list, message] of cases) {
    const r = spawnSync(relayBin(), ['serve', '--listen', '127.0.0.1:0', '--db', path.join(tmpDir(), 'x.db'),
      '--allow-targets', list], { encoding: 'utf8', timeout: 10_000, env: { PATH: process.env.PATH } });
    assert.equal(r.status, 2, `--allow-targets ${list}: exit ${r.status}\n${r.stderr}`);
    assert.match(r.stderr, message, r.stderr);
    assert.equal(r.stdout, '', 'never started listening');
  }
  step('config-errors', { cases: cases.length });
}

async function privateStillWorks() {
  // --allow-private-targets (what `make run` and the other suites use) lifts the rules.
  const relay = await startRelay(); // the harness passes --allow-private-targets
  for (const url of ['http://127.0.0.1:9/', 'http://localhost:9/', 'http://[::1]:9/', 'http://2130706433:9/']) {
    const res = await api(relay, 'POST', '/v1/subscriptions', { url, event_types: ['#'], enabled: false });
    assert.equal(res.status, 201, `${url}: ${res.text}`);
  }
  await relay.stop();
  step('allow-private', { accepted: 4 });
}

async function main() {
  const rcv = await startReceiver({ behavior: { status: 200 } });
  summary.refused = await registrationAttacks(rcv);
  const host = await loopbackName();
  summary.loopbackName = host ? host.name : null;
  if (host) summary.blockedError = await deliveryTimeGuard(rcv, host);
  // The allow-list step lifts 127.0.0.1/32 only and the receiver listens there: a name
  // for ::1 (ip6-localhost) or 127.0.1.1 (Debian's hostname line) stays blocked there.
  const allowHost = host && host.addrs.every((a) => a === '127.0.0.1') ? host : null;
  summary.allowListName = allowHost ? allowHost.name : null;
  summary.allowListDelivered = await allowList(rcv, allowHost);
  configErrors();
  await privateStillWorks();
  summary.receiverRequests = rcv.requests.length;
  await cleanup(); // relays stopped with exit 0, no sanitizer report, signatures verify
}

try {
  await main();
  summary.ok = true;
  process.stdout.write(`SSRF-SUMMARY ${JSON.stringify(summary)}\n`);
  process.exitCode = 0;
} catch (err) {
  summary.ok = false;
  summary.error = String(err && err.stack || err);
  process.stderr.write(`ssrf-child: ${summary.error}\n`);
  process.stdout.write(`SSRF-SUMMARY ${JSON.stringify(summary)}\n`);
  try { await cleanup(); } catch { /* already failing */ }
  process.exitCode = 1;
}
