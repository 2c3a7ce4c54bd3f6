// dns-child.mjs - a name server that never answers, run by dns.test.mjs inside its own
// network and mount namespaces (`unshare -mn`): /etc/resolv.conf there points at this
// script's UDP socket on 127.0.0.1:53, which reads every query and answers none, so a
// lookup of a name not in /etc/hosts hangs for the resolver's full timeout (2 x 5 s).
//
// Not a test file on its own: it prints `DNS-SUMMARY {json}` and exits 0 when every
// assertion held. What it proves: a delivery whose host name cannot be resolved fails
// at --delivery-timeout (1 s) and does not hold up the other subscriptions' deliveries;
// before CURLOPT_QUICK_EXIT, curl joined the lookup thread at the timeout and froze the
// dispatcher for the rest of the resolver's 10 s.

import assert from 'node:assert/strict';
import dgram from 'node:dgram';
import {
  startRelay, startReceiver, createSub, postEvent, eventDeliveries, getDelivery, waitUntil,
  cleanup, reportChild,
} from '../harness.mjs';

const summary = { netns: process.env.HOOKRELAY_DNS_NETNS === '1' };
let queries = 0;

async function main() {
  const silent = dgram.createSocket('udp4');
  silent.on('message', () => { queries++; }); // read, never answer
  await new Promise((resolve, reject) => {
    silent.once('error', reject);
    silent.bind(53, '127.0.0.1', resolve);
  });
  try {
    const relay = await startRelay({ args: ['--delivery-timeout', '1s'], retrySchedule: '1h' });
    const ok = await startReceiver();
    const stallSub = await createSub(relay, { url: 'http://stall-dns.invalid:8080', secrets: [] },
      { event_types: ['dns.*'] });
    await createSub(relay, ok, { event_types: ['dns.*', 'ok.*'] });
    const stalled = await postEvent(relay, { type: 'dns.stall' });
    // The stalled lookup times out after 1 s; the resolver gives up at 10 s. A steady
    // stream of events from before to well after that timeout must each arrive at once:
    // a freeze of the dispatcher, whenever it begins, holds some of them for seconds.
    const sent = new Map(); // event id -> Date.now() at publish
    const t0 = Date.now();
    while (Date.now() - t0 < 3500) {
      const e = await postEvent(relay, { type: 'ok.after', data: { at: Date.now() - t0 } });
      sent.set(e.id, Date.now());
      await new Promise((r) => setTimeout(r, 200));
    }
    await ok.waitFor(sent.size + 1, 15_000); // + the stalled event's copy for this receiver
    const lags = ok.requests.filter((q) => sent.has(q.headers['webhook-id']))
      .map((q) => q.arrivedAt - sent.get(q.headers['webhook-id']));
    summary.events = sent.size;
    summary.maxLagMs = Math.max(...lags);
    assert.equal(lags.length, sent.size, 'every event of the stream arrived');
    assert.ok(summary.maxLagMs < 1000, `an event published after the stalled lookup waited ${summary.maxLagMs} ms`);
    const ds = await eventDeliveries(relay, stalled.id);
    const dead = ds.find((x) => x.subscription_id === stallSub.id);
    assert.ok(dead, `a delivery to the unresolvable name: ${JSON.stringify(ds)}`);
    const d = await waitUntil(async () => {
      const x = await getDelivery(relay, dead.id);
      return x.attempt_count >= 1 ? x : false;
    }, 5000, 'the stalled delivery logged its attempt');
    summary.stalledAttempt = d.attempts[0];
    assert.equal(d.attempts[0].http_status, 0);
    assert.ok(d.attempts[0].duration_ms < 3000, `attempt took ${d.attempts[0].duration_ms} ms`);
    summary.queries = queries;
    assert.ok(queries >= 1, 'the relay asked the silent name server');
    summary.ok = true;
  } finally {
    silent.close();
    await cleanup();
  }
}

reportChild('DNS-SUMMARY', summary, main);
