// tls-child.mjs - the system's CA bundle is read once, run by tls.test.mjs inside its own
// mount namespace (`unshare -m`) with /etc/ssl/certs/ca-certificates.crt bind-mounted to
// a file holding only the test's CA (the path is HOOKRELAY_TLS_BUNDLE, writable here).
//
// Not a test file on its own: it prints `TLS-SUMMARY {json}` and exits 0 when every
// assertion held. What it proves: without --ca-file the relay trusts libcurl's bundle
// file, and loads it once rather than for every connection. With Debian's CA directory
// left set, libcurl kept no store and parsed the whole bundle again at each new
// connection (~40 ms of the dispatcher each); emptying the file after the first delivery
// then failed every later connection with "error setting certificate file".

import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import {
  startRelay, startReceiver, createSub, postEvent, eventDeliveries, waitDelivery, waitUntil, cleanup,
} from '../harness.mjs';

const summary = { mountns: process.env.HOOKRELAY_TLS_MOUNTNS === '1' };

async function main() {
  const bundle = process.env.HOOKRELAY_TLS_BUNDLE;
  assert.equal(readFileSync('/etc/ssl/certs/ca-certificates.crt', 'utf8'), readFileSync(bundle, 'utf8'),
    'the bind mount is in place');
  try {
    // Every answer closes its connection: each delivery is a new TLS connection.
    const r = await startReceiver({
      tls: { key: readFileSync(process.env.HOOKRELAY_TLS_KEY), cert: readFileSync(process.env.HOOKRELAY_TLS_CERT) },
      behavior: { headers: { connection: 'close' } },
    });
    const relay = await startRelay({ retrySchedule: '1h' });
    assert.doesNotMatch(relay.stderr, /warning/);
    await createSub(relay, r, { max_in_flight: 1 });
    const first = await postEvent(relay, { type: 'order.updated', data: { n: 0 } });
    const [d0] = await eventDeliveries(relay, first.id);
    await waitDelivery(relay, d0.id, 'delivered');
    writeFileSync(bundle, ''); // what a broken package upgrade might leave
    for (let n = 1; n <= 3; n++) {
      const ev = await postEvent(relay, { type: 'order.updated', data: { n } });
      const [d] = await eventDeliveries(relay, ev.id);
      const done = await waitDelivery(relay, d.id, 'delivered');
      assert.equal(done.attempts.length, 1, JSON.stringify(done.attempts));
    }
    assert.equal(r.requests.length, 4);
    assert.equal(r.handshakes.full + r.handshakes.resumed, 4, 'a new connection each');
    summary.delivered = r.requests.length;
    // A relay started with the bundle empty says so (and still starts: http receivers work).
    const second = await startRelay({ retrySchedule: '1h' });
    await waitUntil(() => /warning/.test(second.stderr), 4000, 'the warning');
    assert.match(second.stderr, /hookrelay: warning: https receivers will fail: .*ca-certificates\.crt holds no PEM certificate.*\(install ca-certificates, or give --ca-file\)/);
    summary.warned = true;
    summary.ok = true;
  } finally {
    await cleanup();
  }
}

main().then(() => {
  console.log(`TLS-SUMMARY ${JSON.stringify(summary)}`);
  process.exit(0);
}, (err) => {
  console.log(`TLS-SUMMARY ${JSON.stringify({ ...summary, ok: false, error: String(err?.stack ?? err) })}`);
  process.exit(1);
});
