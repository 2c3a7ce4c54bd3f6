// idn-child.mjs - a receiver whose host is an internationalized name, run by
// dns.test.mjs inside its own network and mount namespaces (`unshare -mn`): /etc/hosts
// there maps the name's ASCII (punycode) form to 127.0.0.1, so nothing is asked of a
// real resolver and nothing leaves the namespace.
//
// Not a test file on its own: it prints `IDN-SUMMARY {json}` and exits 0 when every
// assertion held. What it proves: a subscription to http://bücher.test:PORT/ (accepted
// at registration) is delivered to xn--bcher-kva.test, as a browser would send it, and
// is kept as written. libcurl converts the name in the process's character set: in the
// C locale it could not, and every attempt failed "URL using bad/illegal format".

import assert from 'node:assert/strict';
import {
  startRelay, startReceiver, createSub, postEvent, eventDeliveries, getDelivery, waitUntil,
  cleanup, reportChild,
} from '../harness.mjs';

const summary = { netns: process.env.HOOKRELAY_IDN_NETNS === '1' };

async function main() {
  try {
    const relay = await startRelay({ retrySchedule: '1h' });
    const rcv = await startReceiver();
    const sub = await createSub(relay, { url: `http://bücher.test:${rcv.port}`, secrets: rcv.secrets },
      { event_types: ['idn.*'] });
    summary.storedUrl = sub.url;
    assert.equal(sub.url, `http://bücher.test:${rcv.port}/hook`, 'the url is kept as written');
    const e = await postEvent(relay, { type: 'idn.sent' });
    const [d] = await eventDeliveries(relay, e.id);
    const done = await waitUntil(async () => {
      const x = await getDelivery(relay, d.id);
      return x.attempt_count >= 1 ? x : false;
    }, 10_000, 'the delivery to the IDN host made its attempt');
    summary.attempt = done.attempts[0];
    assert.equal(done.status, 'delivered', JSON.stringify(done.attempts));
    await rcv.waitFor(1);
    summary.host = rcv.requests[0].headers.host;
    assert.equal(summary.host, `xn--bcher-kva.test:${rcv.port}`);
    summary.ok = true;
  } finally {
    await cleanup();
  }
}

reportChild('IDN-SUMMARY', summary, main);
