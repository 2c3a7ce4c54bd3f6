// errors.test.mjs - bad input gets the documented status and error code, stores nothing,
// and never takes the relay down or loses what was already accepted.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import net from 'node:net';
import {
  startRelay, api, assertError, listAll, postEvent, cleanup, withLogs, rawExchange as relayExchange,
} from './harness.mjs';

// One relay for the whole file: every bad request hits the same process, and the last
// test checks it is still up and still has what it accepted first.
let relay;
let accepted;
let subsBefore;

before(async () => {
  relay = await startRelay({ args: ['--max-body', '4KiB'] });
  accepted = await postEvent(relay, { type: 'good.event', data: { keep: true } });
  accepted.extra = []; // ids of events later tests accept on purpose
  const s = await api(relay, 'POST', '/v1/subscriptions', { url: 'http://127.0.0.1:9/h', event_types: ['nomatch.*'] });
  assert.equal(s.status, 201, s.text);
  subsBefore = await listAll(relay, '/v1/subscriptions');
});
after(cleanup);

async function assertNothingStored() {
  const events = await listAll(relay, '/v1/events');
  assert.deepEqual(new Set(events.map((e) => e.id)), new Set([accepted.id, ...accepted.extra]),
    'no event stored by a rejected request');
  assert.equal(events.length, 1 + accepted.extra.length);
  const subs = await listAll(relay, '/v1/subscriptions');
  assert.deepEqual(subs, subsBefore, 'no subscription stored or changed by a rejected request');
}

const SUB = { url: 'http://127.0.0.1:9/hook', event_types: ['a.*'] };

/** POSTs the parts to /v1/events as a chunked body (no Content-Length). Resolves
 * {status, text}; a hang-up mid-upload resolves {status: 'closed'} when closedOk. */
function postChunked(parts, { closedOk = false } = {}) {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port: relay.port, method: 'POST', path: '/v1/events',
      headers: { 'content-type': 'application/json', 'transfer-encoding': 'chunked' }, timeout: 5000 },
    (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (d) => { text += d; });
      res.on('end', () => resolve({ status: res.statusCode, text }));
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error('no answer within 5 s')));
    req.on('error', (err) => (closedOk && (err.code === 'EPIPE' || err.code === 'ECONNRESET')
      ? resolve({ status: 'closed', text: err.code }) : reject(err)));
    for (const part of parts.slice(0, -1)) req.write(part);
    req.end(parts[parts.length - 1]);
  });
}

/** harness's rawExchange with this file's relay. */
function rawExchange(raw, enough) {
  return relayExchange(relay, raw, enough);
}

// Request smuggling: a proxy in front that reads the other length would take the rest of
// the body for a second request. Refused before routing or auth, the connection closed.
test('an ambiguous body length or Host is 400 malformed_request and closes the connection', withLogs(async () => {
  const body = '{"type":"smuggle.x"}';
  for (const [what, headers] of [
    ['two different Content-Lengths', `Content-Length: ${body.length}\r\nContent-Length: ${body.length + 1}\r\n`],
    ['Content-Length and Transfer-Encoding', `Content-Length: ${body.length}\r\nTransfer-Encoding: chunked\r\n`],
    // RFC 9112 6.3: with a coding other than chunked, or chunked not last, the length is unknown
    ['Transfer-Encoding: identity', 'Transfer-Encoding: identity\r\n'],
    ['Transfer-Encoding: gzip, chunked', 'Transfer-Encoding: gzip, chunked\r\n'],
    ['two Transfer-Encoding headers', 'Transfer-Encoding: identity\r\nTransfer-Encoding: chunked\r\n'],
    // RFC 9112 5.1: white space before the colon; libmicrohttpd keeps it as another
    // header, so this one would go by its Content-Length and a proxy maybe by the other
    ['Content-Length with a space before its colon', `Content-Length : ${body.length}\r\n`],
    ['Transfer-Encoding with a space before its colon', `Content-Length: ${body.length}\r\nTransfer-Encoding : chunked\r\n`],
    // we read the first, a proxy may read the last: two keys, or two types, are no answer
    ['two Authorization headers', `Content-Length: ${body.length}\r\nAuthorization: Bearer a\r\nAuthorization: Bearer b\r\n`],
    ['two Content-Type headers', `Content-Length: ${body.length}\r\nContent-Type: text/plain\r\n`],
  ]) {
    const t0 = performance.now();
    const got = await rawExchange('POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n' +
      `${headers}\r\n${body}`, () => false);
    const took = performance.now() - t0;
    assert.match(got, /^HTTP\/1\.1 400 /, `${what}: ${got}`);
    assert.match(got, /"code":"malformed_request"/, `${what}: ${got}`);
    assert.match(got, /[Cc]onnection: close/, `${what}: ${got}`);
    assert.ok(took < 1500, `${what}: the relay kept the connection ${Math.round(took)} ms`);
  }
  // RFC 9112 3.2: an HTTP/1.1 request needs exactly one Host (HTTP/1.0 needs none).
  for (const [what, head] of [
    ['HTTP/1.1 without Host', 'GET /healthz HTTP/1.1\r\n'],
    ['two Host headers', 'GET /healthz HTTP/1.1\r\nHost: a\r\nHost: b\r\n'],
  ]) {
    const got = await rawExchange(`${head}\r\n`, () => false);
    assert.match(got, /^HTTP\/1\.1 400 /, `${what}: ${got}`);
    assert.match(got, /"code":"malformed_request"/, `${what}: ${got}`);
  }
  const chunked = await rawExchange('POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n' +
    `Transfer-Encoding: Chunked\r\nConnection: close\r\n\r\n${body.length.toString(16)}\r\n${body}\r\n0\r\n\r\n`, () => false);
  assert.match(chunked, /^HTTP\/1\.1 202 /, `chunked alone is fine: ${chunked}`);
  accepted.extra.push(JSON.parse(chunked.slice(chunked.indexOf('\r\n\r\n') + 4)).id);
  const http10 = await rawExchange('GET /healthz HTTP/1.0\r\n\r\n', () => false);
  assert.match(http10, /^HTTP\/1\.[01] 200 /, http10);
  // The same length twice is one length.
  const same = await rawExchange('POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n' +
    `Content-Length: ${body.length}\r\nContent-Length: ${body.length}\r\nConnection: close\r\n\r\n${body}`, () => false);
  assert.match(same, /^HTTP\/1\.1 202 /, same);
  accepted.extra.push(JSON.parse(same.slice(same.indexOf('\r\n\r\n') + 4)).id);
  await assertNothingStored();
}));

// RFC 9112 3.2.2: a server must accept a request target in absolute form, as some proxies
// and HTTP tools send it.
test('a request target in absolute form is routed by its path', withLogs(async () => {
  for (const [target, status, body] of [
    [`http://127.0.0.1:${relay.port}/healthz`, 200, /"status":"ok"/],
    [`HTTP://relay.internal/v1/events?limit=1`, 200, /^\{"data":\[/],
    ['https://relay.internal/v1/nope', 404, /no route for \/v1\/nope/],
  ]) {
    const got = await rawExchange(`GET ${target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`, () => false);
    assert.match(got, new RegExp(`^HTTP/1\\.1 ${status} `), `GET ${target}: ${got}`);
    assert.match(got.slice(got.indexOf('\r\n\r\n') + 4), body, `GET ${target}: ${got}`);
  }
}));

// The key is stored and shown as a JSON string: bytes that are not UTF-8 are refused.
test('an Idempotency-Key header that is not UTF-8 text is 422', withLogs(async () => {
  const body = '{"type":"idem.bytes"}';
  const head = 'POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n' +
    `Content-Length: ${body.length}\r\nConnection: close\r\nIdempotency-Key: `;
  for (const key of [Buffer.from([0x63, 0x61, 0x66, 0xe9]), Buffer.from([0x6b, 0xc3, 0x28]), Buffer.from('a\x01b')]) {
    const got = await rawExchange(Buffer.concat([Buffer.from(head), key, Buffer.from(`\r\n\r\n${body}`)]), () => false);
    assert.match(got, /^HTTP\/1\.1 422 /, `key ${key.toString('hex')}: ${got}`);
    assert.match(got, /Idempotency-Key must be UTF-8 text/, got);
  }
  for (const key of ['café', 'tab\there']) { // UTF-8 text, and a tab (HTTP allows it) are fine
    const ok = await api(relay, 'POST', '/v1/events', { type: 'idem.bytes' }, { 'Idempotency-Key': Buffer.from(key).toString('latin1') });
    assert.equal(ok.status, 202, `${JSON.stringify(key)}: ${ok.text}`);
    accepted.extra.push(ok.json.id);
    const shown = await api(relay, 'GET', `/v1/events/${ok.json.id}`);
    assert.equal(shown.json.idempotency_key, key);
  }
  await assertNothingStored();
}));

test('malformed JSON is 400 malformed_json', withLogs(async () => {
  for (const [route, body] of [
    ['/v1/events', '{"type": "a.b",'],
    ['/v1/events', '{type: a}'],
    ['/v1/events', ''],
    ['/v1/events', '{"type":"a.b"} trailing'],
    ['/v1/events/batch', '[{"type":"a.b"}'],
    ['/v1/subscriptions', '{"url": }'],
  ]) {
    const res = await api(relay, 'POST', route, body);
    assertError(res, 400, 'malformed_json', `POST ${route} ${JSON.stringify(body)}`);
  }
  const p = await api(relay, 'PATCH', `/v1/subscriptions/${subsBefore[0].id}`, '{"enabled": tru');
  assertError(p, 400, 'malformed_json', 'PATCH malformed');
  // \u0000 is valid JSON that no field may hold: 422 as the events route answers it, with
  // a message of ours rather than the JSON library's flag names.
  for (const [method, route, body] of [
    ['POST', '/v1/subscriptions', '{"url":"http://127.0.0.1:9/x","event_types":["a.\\u0000"]}'],
    ['POST', '/v1/subscriptions', '{"url":"http://127.0.0.1:9/x","event_types":["a.*"],"headers":{"X-\\u0000":"v"}}'],
    ['PATCH', `/v1/subscriptions/${subsBefore[0].id}`, '{"description":"a\\u0000b"}'],
  ]) {
    const res = await api(relay, method, route, body);
    assertError(res, 422, 'invalid_field', `${method} ${route} ${body}`);
    assert.match(res.json.error.message, /holds \\u0000/);
    assert.doesNotMatch(res.json.error.message, /JSON_ALLOW_NUL/);
  }
  // So is a number past what a field can hold: a wrong value, not broken JSON
  for (const [method, route, body] of [
    ['POST', '/v1/subscriptions', '{"url":"http://127.0.0.1:9/x","event_types":["a.*"],"max_in_flight":100000000000000000000000}'],
    ['PATCH', `/v1/subscriptions/${subsBefore[0].id}`, '{"rate_limit":1e400}'],
  ]) {
    const res = await api(relay, method, route, body);
    assertError(res, 422, 'invalid_field', `${method} ${route} ${body}`);
    assert.match(res.json.error.message, /too large for any field/);
  }
  await assertNothingStored();
}));

test('invalid UTF-8 is malformed; deep nesting is answered, never a crash', withLogs(async () => {
  const badUtf8 = Buffer.concat([Buffer.from('{"type":"utf.bad","data":"'), Buffer.from([0xff, 0xfe, 0xc3]), Buffer.from('"}')]);
  assertError(await api(relay, 'POST', '/v1/events', badUtf8), 400, 'malformed_json', 'invalid UTF-8');
  const depth = 1500;
  const deep = `{"type":"deep.data","id":"deep-1","data":${'['.repeat(depth)}${']'.repeat(depth)}}`;
  const res = await api(relay, 'POST', '/v1/events', deep);
  assertError(res, 422, 'invalid_field', 'data nested 1,500 deep');
  assert.match(res.json.error.message, /deeper than 64/);
  // 64 levels in all (the event object is the first) is the most that is taken.
  const edge = await api(relay, 'POST', '/v1/events',
    `{"type":"deep.edge","id":"deep-64","data":${'['.repeat(63)}${']'.repeat(63)}}`);
  assert.equal(edge.status, 202, `63 levels of data inside the event: ${edge.text}`);
  accepted.extra.push(edge.json.id);
  const h = await api(relay, 'GET', '/healthz');
  assert.equal(h.status, 200, 'relay still answers');
  await assertNothingStored();
}));

test('events: wrong types and invalid event types are 422 invalid_field', withLogs(async () => {
  const cases = [
    { type: 5 },
    {},
    { data: { x: 1 } },
    { type: null },
    { type: '' },
    { type: 'a..b' },
    { type: '.a' },
    { type: 'a.' },
    { type: 'a b' },
    { type: 'a.*' },
    { type: '*' },
    { type: 'a.#' },
    { type: 'ünï.code' },
    { type: 'x'.repeat(65) },
    { type: Array.from({ length: 17 }, () => 'w').join('.') },
    { type: 'ok.type', key: 7 },
    { type: 'ok.type', key: 'k'.repeat(256) },
    { type: 'ok.type', id: 12 },
    { type: 'ok.type', id: '' },
    { type: 'ok.type', id: 'i'.repeat(256) },
  ];
  for (const body of cases) {
    const res = await api(relay, 'POST', '/v1/events', body);
    assertError(res, 422, 'invalid_field', `POST /v1/events ${JSON.stringify(body).slice(0, 80)}`);
  }
  for (const body of ['[1,2]', '"just a string"', '42', 'null']) {
    const res = await api(relay, 'POST', '/v1/events', body);
    assertError(res, 422, 'invalid_field', `POST /v1/events ${body}`);
  }
  const named = await api(relay, 'POST', '/v1/events', { type: 5 });
  assert.match(named.json.error.message, /type/, 'message names the field');
  for (const body of [{ type: 'ok.type', key: 'a\u0000b' }, { type: 'ok.type', id: '\u0000' }]) {
    const nul = await api(relay, 'POST', '/v1/events', body);
    assertError(nul, 422, 'invalid_field', JSON.stringify(body));
    assert.match(nul.json.error.message, /without \\u0000/, `the message says why: ${nul.text}`);
  }
  // Limits are inclusive: 16 words of 64 chars would exceed 255 bytes, so test them apart.
  const edge = await api(relay, 'POST', '/v1/events', { type: Array.from({ length: 16 }, () => 'w').join('.'), id: 'edge-16-words' });
  assert.equal(edge.status, 202, `16 words is allowed: ${edge.text}`);
  const edge2 = await api(relay, 'POST', '/v1/events', { type: 'x'.repeat(64), id: 'edge-64-chars' });
  assert.equal(edge2.status, 202, `a 64-char word is allowed: ${edge2.text}`);
  accepted.extra.push(edge.json.id, edge2.json.id);
  // key, id and the Idempotency-Key header take up to 255 bytes: 256 is refused above.
  const k255 = 'k'.repeat(255);
  const edge3 = await api(relay, 'POST', '/v1/events', { type: 'ok.type', key: k255, id: 'i'.repeat(255) });
  assert.equal(edge3.status, 202, `a 255-byte key and id are allowed: ${edge3.text}`);
  const edge4 = await api(relay, 'POST', '/v1/events', { type: 'ok.type' }, { 'Idempotency-Key': 'h'.repeat(255) });
  assert.equal(edge4.status, 202, `a 255-byte Idempotency-Key is allowed: ${edge4.text}`);
  accepted.extra.push(edge3.json.id, edge4.json.id);
  const shown = (await api(relay, 'GET', `/v1/events/${edge3.json.id}`)).json;
  assert.equal(shown.key, k255);
  assert.equal(shown.idempotency_key, 'i'.repeat(255));
  assertError(await api(relay, 'POST', '/v1/events', { type: 'ok.type' }, { 'Idempotency-Key': 'h'.repeat(256) }),
    422, 'invalid_field', '256-byte Idempotency-Key');
  await assertNothingStored();
}));

test('subscriptions: wrong field types and bad values are 422 invalid_field', withLogs(async () => {
  const cases = [
    { ...SUB, event_types: 'x' },
    { ...SUB, event_types: [] },
    { ...SUB, event_types: [5] },
    { ...SUB, event_types: Array.from({ length: 65 }, (_, i) => `p${i}.*`) },
    { ...SUB, event_types: ['a*'] },
    { ...SUB, event_types: ['a..b'] },
    { ...SUB, event_types: ['a.b*'] },
    { ...SUB, event_types: ['a b'] },
    { ...SUB, headers: [] },
    { ...SUB, headers: 'X-A: b' },
    { ...SUB, headers: { 'X-A': 5 } },
    { ...SUB, headers: { 'X-A': 'ok\r\nX-Injected: 1' } },
    { ...SUB, headers: { 'X-A': 'line\nbreak' } },
    { ...SUB, headers: { 'X-A': 'carriage\rreturn' } },
    { ...SUB, headers: { 'webhook-signature': 'v1,forged' } },
    { ...SUB, headers: { 'Webhook-Id': 'x' } },
    { ...SUB, headers: { 'webhook-timestamp': '1' } },
    { ...SUB, headers: { 'Webhook-Version': '2' } }, // all of webhook-* is Standard Webhooks'
    { ...SUB, headers: { 'X-A': '   ' } }, // curl would drop it: stored must be what is sent
    { ...SUB, headers: { 'X-A': ' padded' } },
    { ...SUB, headers: { 'X-A': 'padded\t' } },
    { ...SUB, url: 'http://127.0.0.1:0/hook' }, // nothing listens on port 0
    { ...SUB, url: 'http://127.0.0.1.:9/hook' }, // libcurl would look the address up as a name
    { ...SUB, max_in_flight: 0 },
    { ...SUB, max_in_flight: 1001 },
    { ...SUB, max_in_flight: '16' },
    { ...SUB, rate_limit: 0 },
    { ...SUB, rate_limit: 100001 },
    { ...SUB, rate_limit: 2.5 },
    { ...SUB, rate_limit: '5' },
    { ...SUB, headers: { 'Content-Type': 'text/plain' } },
    { ...SUB, headers: { host: 'evil.example' } },
    ...['TE', 'Trailer', 'Upgrade', 'Keep-Alive', 'Proxy-Connection', 'Proxy-Authorization',
      'Connection', 'Expect', 'Transfer-Encoding', 'Content-Length', 'Content-Encoding']
      .map((name) => ({ ...SUB, headers: { [name]: 'x' } })), // hop-by-hop, framing, coding
    { ...SUB, headers: { 'bad name': 'x' } },
    { ...SUB, headers: { 'X-A:': 'x' } },
    { ...SUB, enabled: 'yes' },
    { ...SUB, enabled: 1 },
    { ...SUB, description: 5 },
    { ...SUB, secret: 'not-a-secret' },
    { ...SUB, secret: 'whsec_' + Buffer.alloc(8).toString('base64') },
    { ...SUB, url: 'ftp://x' },
    { ...SUB, url: 'not a url' },
    { ...SUB, url: 'http://user:pw@127.0.0.1/' },
    { ...SUB, url: 'http://127.0.0.1/' + 'p'.repeat(3 * 1024) },
    { ...SUB, url: '/relative/path' },
    { ...SUB, url: 'http://' },
    { ...SUB, url: 'http:///a' }, // libcurl reads host "a"
    { ...SUB, url: 42 },
    { event_types: ['a.*'] },
    { url: SUB.url },
  ];
  for (const body of cases) {
    const res = await api(relay, 'POST', '/v1/subscriptions', body);
    assertError(res, 422, 'invalid_field', `POST /v1/subscriptions ${JSON.stringify(body).slice(0, 120)}`);
  }
  const named = await api(relay, 'POST', '/v1/subscriptions', { ...SUB, url: 'ftp://x' });
  assert.match(named.json.error.message, /url/, 'message names the field');
  const dotted = await api(relay, 'POST', '/v1/subscriptions', { ...SUB, url: 'http://127.0.0.1.:9/hook' });
  assert.match(dotted.json.error.message, /trailing dot/, 'message says what to change');
  const id = subsBefore[0].id;
  for (const body of [{ enabled: 'yes' }, { event_types: 'x' }, { headers: [] }, { url: 'not a url' },
    { url: 'http://127.0.0.1.:9/hook' },
    { headers: { 'webhook-signature': 'x' } }, { rate_limit: 0 }, { rate_limit: false }]) {
    const res = await api(relay, 'PATCH', `/v1/subscriptions/${id}`, body);
    assertError(res, 422, 'invalid_field', `PATCH ${JSON.stringify(body)}`);
  }
  await assertNothingStored();
}));

test('list limits out of range, and cursors that no page gave, are 422 invalid_field', withLogs(async () => {
  for (const route of ['/v1/events', '/v1/subscriptions', '/v1/deliveries']) {
    for (const limit of ['0', '1001', 'abc', '-1', '1.5']) {
      const res = await api(relay, 'GET', `${route}?limit=${limit}`);
      assertError(res, 422, 'invalid_field', `GET ${route}?limit=${limit}`);
    }
    // a damaged cursor is the caller's mistake: taken for none, the first page would come
    // back, and a client walking pages would go round for ever
    for (const after of ['abc', '0', '-5', '1.5', '', '9223372036854775808']) {
      const res = await api(relay, 'GET', `${route}?after=${after}`);
      assertError(res, 422, 'invalid_field', `GET ${route}?after=${after}`);
      assert.match(res.json.error.message, /after must be a cursor/);
    }
    for (const limit of ['1', '1000']) {
      const res = await api(relay, 'GET', `${route}?limit=${limit}`);
      assert.equal(res.status, 200, `GET ${route}?limit=${limit}: ${res.text}`);
    }
  }
}));

// A misspelt filter must not widen the list: ?stauts=failed listing every delivery is how
// an operator bulk-retries the wrong ones.
test('list query parameters: unknown, repeated or without a value are 422 naming them', withLogs(async () => {
  for (const [route, filters] of [
    ['/v1/events', 'type=a.b'],
    ['/v1/subscriptions', ''],
    ['/v1/deliveries', 'status=failed&subscription=sub_1&event=evt_01M85DMB3V0000000000000000'],
  ]) {
    const sep = filters ? '&' : '';
    for (const [query, says] of [
      ['stauts=failed', /stauts: unknown query parameter \(known: limit, after/],
      ['limit=5&limit=6', /limit: given more than once/],
      ['limit', /limit: needs a value/],
      ['=5', /: unknown query parameter/],
      ['limit=5%00junk', /may not hold %00/], // a C string would read 5
      ['after=1%00', /may not hold %00/],
    ]) {
      const res = await api(relay, 'GET', `${route}?${filters}${sep}${query}`);
      assertError(res, 422, 'invalid_field', `GET ${route}?${filters}${sep}${query}`);
      assert.match(res.json.error.message, says);
    }
    // every filter the route documents, limit and after together, and empty segments
    // (leading, doubled, trailing), as URL builders leave them
    const ok = await api(relay, 'GET', `${route}?&${filters}${sep}limit=3&&after=5&`);
    assert.equal(ok.status, 200, `GET ${route}?&${filters}${sep}limit=3&&after=5&: ${ok.text}`);
  }
  // a NUL inside a filter would cut it short: type=a%00b listed type a
  assertError(await api(relay, 'GET', '/v1/events?type=a%00b'), 422, 'invalid_field', 'type with %00');
  // a type no event can have is the caller's mistake, not an empty page
  for (const type of ['a..b', 'a.*', 'order.%23', 'a%20b']) {
    const res = await api(relay, 'GET', `/v1/events?type=${type}`);
    assertError(res, 422, 'invalid_field', `GET /v1/events?type=${type}`);
    assert.match(res.json.error.message, /^type: /);
  }
  assertError(await api(relay, 'GET', '/v1/deliveries?status=pending%00x'), 422, 'invalid_field', 'status with %00');
  const typo = await api(relay, 'GET', '/v1/deliveries?stat=failed');
  assert.match(typo.json.error.message, /known: limit, after, subscription, event, status\)/);
}));

test('body over --max-body is 413 payload_too_large, promptly', withLogs(async () => {
  const big = JSON.stringify({ type: 'big.event', data: 'x'.repeat(64 * 1024) });
  const res = await api(relay, 'POST', '/v1/events', big, {}, { timeoutMs: 5000 });
  assertError(res, 413, 'payload_too_large', 'POST 64 KiB with --max-body 4KiB');
  // A declared length over the limit is answered at once, before any of the body, and the
  // connection is closed (docs/api.md).
  const t0 = performance.now();
  const head = await rawExchange('POST /v1/events HTTP/1.1\r\nHost: x\r\n' +
    'Content-Type: application/json\r\nContent-Length: 10000000\r\n\r\n', () => false);
  const took = performance.now() - t0;
  assert.match(head, /^HTTP\/1\.1 413 /, head);
  assert.match(head, /[Cc]onnection: close/, head);
  assert.ok(took < 1500, `413 for a declared 10 MB came ${Math.round(took)} ms after the headers (rawExchange waits 3 s if the relay keeps the connection)`);
  const subBig = await api(relay, 'POST', '/v1/subscriptions', { ...SUB, description: 'd'.repeat(8 * 1024) }, {}, { timeoutMs: 5000 });
  assertError(subBig, 413, 'payload_too_large', 'POST subscription 8 KiB');
  // Just under the limit is fine.
  const fits = await api(relay, 'POST', '/v1/events', { type: 'fits.event', data: 'y'.repeat(3000), id: 'fits' });
  assert.equal(fits.status, 202, fits.text);
  accepted.extra.push(fits.json.id);
}));

// The limit is inclusive: a body of exactly --max-body bytes is taken, declared or
// chunked; one byte more is 413 either way.
test('a body of exactly --max-body bytes is accepted, by Content-Length and chunked; one more is 413', withLogs(async () => {
  const sized = (n, id) => {
    const head = `{"type":"exact.size","id":"${id}","data":"`;
    return head + 'e'.repeat(n - head.length - 2) + '"}';
  };
  const chunked = (body) => postChunked([body.slice(0, 1000), body.slice(1000)]);
  const exact = sized(4096, 'exact-cl');
  assert.equal(Buffer.byteLength(exact), 4096);
  const byLength = await api(relay, 'POST', '/v1/events', exact);
  assert.equal(byLength.status, 202, `4096 bytes by Content-Length: ${byLength.text}`);
  accepted.extra.push(byLength.json.id);
  const byChunks = await chunked(sized(4096, 'exact-ch'));
  assert.equal(byChunks.status, 202, `4096 bytes chunked: ${byChunks.text}`);
  accepted.extra.push(JSON.parse(byChunks.text).id);
  assertError(await api(relay, 'POST', '/v1/events', sized(4097, 'over-cl')), 413, 'payload_too_large', '4097 bytes by Content-Length');
  const over = await chunked(sized(4097, 'over-ch'));
  assert.equal(over.status, 413, `4097 bytes chunked: ${over.text}`);
  await assertNothingStored();
}));

test('body over --max-body without Content-Length (chunked) is 413 too', withLogs(async () => {
  const result = await postChunked(['{"type":"chunked.big","data":"',
    ...Array.from({ length: 16 }, () => 'z'.repeat(4096)), '"}'], { closedOk: true });
  assert.equal(result.status, 413, `chunked oversize body: ${JSON.stringify(result)}`);
  assert.equal(JSON.parse(result.text).error.code, 'payload_too_large');
  // All of it sent (and dropped), the 413 still closes the connection, as docs/api.md says.
  const chunk = 'z'.repeat(5000);
  const t0 = performance.now();
  const text = await rawExchange('POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n' +
    `Transfer-Encoding: chunked\r\n\r\n${chunk.length.toString(16)}\r\n${chunk}\r\n0\r\n\r\n`, () => false);
  const took = performance.now() - t0;
  assert.match(text, /^HTTP\/1\.1 413 [\s\S]*"payload_too_large"/, text);
  assert.match(text, /\r\nConnection: close\r\n/i, text);
  assert.ok(took < 1500, `the relay closed the connection ${Math.round(took)} ms after the 413 (rawExchange waits 3 s if it stays open)`);
}));

test('wrong content type is 415 unsupported_media_type; charset parameter is fine', withLogs(async () => {
  const body = JSON.stringify({ type: 'ct.test' });
  for (const ct of ['text/plain', 'application/x-www-form-urlencoded', 'application/jsonx']) {
    const res = await api(relay, 'POST', '/v1/events', body, { 'content-type': ct });
    assertError(res, 415, 'unsupported_media_type', `content-type ${ct}`);
  }
  const none = await fetch(relay.url + '/v1/events', { method: 'POST', body: Buffer.from(body), signal: AbortSignal.timeout(5000) });
  assert.equal(none.status, 415, 'no content type at all');
  const sub = await api(relay, 'POST', '/v1/subscriptions', JSON.stringify(SUB), { 'content-type': 'text/plain' });
  assertError(sub, 415, 'unsupported_media_type', 'subscription as text/plain');
  // rotate-secret's body is optional, but one that is sent must be JSON
  const rotated = await api(relay, 'POST', `/v1/subscriptions/${subsBefore[0].id}/rotate-secret`, '{"grace_seconds":0}',
    { 'content-type': 'text/plain' });
  assertError(rotated, 415, 'unsupported_media_type', 'rotate-secret as text/plain');
  await assertNothingStored();
  // A route that takes no body ignores any body sent, whatever its type (docs/api.md).
  const made = await api(relay, 'POST', '/v1/subscriptions', SUB);
  assert.equal(made.status, 201, made.text);
  const deleted = await api(relay, 'DELETE', `/v1/subscriptions/${made.json.id}`, 'not json', { 'content-type': 'text/plain' });
  assert.equal(deleted.status, 204, `DELETE with a text/plain body: ${deleted.text}`);
  assertError(await api(relay, 'POST', '/v1/deliveries/dlv_999999/retry', 'x=1', { 'content-type': 'application/x-www-form-urlencoded' }),
    404, 'not_found', 'retry with a form body: the body is ignored, the id looked up');
  await assertNothingStored();
  const ok = await api(relay, 'POST', '/v1/events', JSON.stringify({ type: 'ct.ok', id: 'ct-ok' }), { 'content-type': 'application/json; charset=utf-8' });
  assert.equal(ok.status, 202, ok.text);
  accepted.extra.push(ok.json.id);
  // RFC 9110 8.3.1: white space may stand before a parameter's ';'
  const spaced = await api(relay, 'POST', '/v1/events', JSON.stringify({ type: 'ct.ok', id: 'ct-spaced' }), { 'content-type': 'application/json ; charset=utf-8' });
  assert.equal(spaced.status, 202, `application/json ; charset=utf-8: ${spaced.text}`);
  accepted.extra.push(spaced.json.id);
  // RFC 9110 8.3.1: the type and subtype are case-insensitive
  const upper = await api(relay, 'POST', '/v1/events', JSON.stringify({ type: 'ct.ok', id: 'ct-upper' }), { 'content-type': 'Application/JSON' });
  assert.equal(upper.status, 202, `Application/JSON: ${upper.text}`);
  accepted.extra.push(upper.json.id);
}));

test('unknown ids on every {id} route are 404 not_found; unknown routes too', withLogs(async () => {
  const calls = [
    ['GET', '/v1/events/evt_00000000000000000000000000'],
    ['GET', '/v1/events/nope'],
    ['GET', '/v1/subscriptions/sub_999999'],
    ['GET', '/v1/subscriptions/sub_abc'],
    ['PATCH', '/v1/subscriptions/sub_999999', { enabled: false }],
    ['DELETE', '/v1/subscriptions/sub_999999'],
    ['POST', '/v1/subscriptions/sub_999999/rotate-secret', { grace_seconds: 10 }],
    ['GET', '/v1/deliveries/dlv_999999'],
    ['GET', '/v1/deliveries/whatever'],
    ['POST', '/v1/deliveries/dlv_999999/retry'],
    ['GET', '/v1/nothing'],
    ['GET', '/'],
    ['POST', '/v2/events', { type: 'a.b' }],
    // the message quotes the path: bytes that are not UTF-8, or a character cut at the
    // message's length limit, must still give a JSON body
    ['GET', '/%ff'],
    ['GET', `/xy${'%C3%A9'.repeat(300)}`],
  ];
  for (const [method, p, body] of calls) {
    const res = await api(relay, method, p, body);
    assertError(res, 404, 'not_found', `${method} ${p}`);
  }
  await assertNothingStored();
}));

// libmicrohttpd decodes the path before routing, and a decoded %00 ended it: DELETE
// /v1/subscriptions/sub_4%00x deleted sub_4. A %2F split a segment in two.
test('an encoded NUL or slash in the path is 404, and the id in front of it is untouched', withLogs(async () => {
  const made = await api(relay, 'POST', '/v1/subscriptions', SUB);
  assert.equal(made.status, 201, made.text);
  const id = made.json.id;
  const calls = [
    ['DELETE', `/v1/subscriptions/${id}%00not-an-id`],
    ['PATCH', `/v1/subscriptions/${id}%2F`, { enabled: false }],
    ['PATCH', `/v1/subscriptions/${id}%00`, { enabled: false }],
    ['GET', `/v1/subscriptions/${id}%00/stats`],
    // a real route behind the escape, in both cases: decoded, these answer the stats
    ['GET', `/v1/subscriptions/${id}%2Fstats`],
    ['GET', `/v1/subscriptions/${id}%2fstats`],
    ['GET', `/v1/events/${accepted.id}%00x`],
    ['GET', '/v1/deliveries%00/dlv_1'],
    ['POST', '/v1/deliveries/dlv_1%2fretry'],
  ];
  for (const [method, p, body] of calls) {
    const res = await api(relay, method, p, body);
    assertError(res, 404, 'not_found', `${method} ${p}`);
  }
  // ... and in the absolute form's authority, which decodes into a path of its own
  for (const target of [`http://h%2Fv1%2Fsubscriptions%2F${id}%00x`, `http://h%2Fv1%2Fsubscriptions%2F${id}`,
    `http://h#/v1/subscriptions/${id}%00x`, `http://h#%2Fv1%2Fsubscriptions%2F${id}%00x`, `/v1/subscriptions/${id}#x`]) {
    const got = await rawExchange(`DELETE ${target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`, () => false);
    assert.match(got, /^HTTP\/1\.1 404 /, `DELETE ${target}: ${got}`);
    assert.match(got, /encoded NUL or slash/, got);
  }
  const kept = await api(relay, 'GET', `/v1/subscriptions/${id}`);
  assert.equal(kept.status, 200, kept.text);
  assert.equal(kept.json.enabled, true, 'no PATCH reached it');
  // other escapes in the path are decoded as before
  const escaped = await api(relay, 'GET', `/v1/subscriptions/%73ub_${id.slice(4)}`);
  assert.equal(escaped.status, 200, escaped.text);
  assert.equal((await api(relay, 'DELETE', `/v1/subscriptions/${id}`)).status, 204);
  await assertNothingStored();
}));

test('wrong method on a known path is 405 with Allow', withLogs(async () => {
  const calls = [
    ['PUT', '/v1/events', /POST/],
    ['DELETE', '/v1/events', /GET/],
    ['GET', '/v1/events/batch', /POST/],
    ['PUT', '/v1/subscriptions', /POST/],
    ['POST', `/v1/subscriptions/${subsBefore[0].id}`, /PATCH/],
    ['GET', `/v1/subscriptions/${subsBefore[0].id}/rotate-secret`, /POST/],
    ['DELETE', '/v1/deliveries', /GET/],
    ['POST', '/healthz', /^GET, HEAD$/],
    ['PUT', '/v1/events/%ff', /GET/],
  ];
  for (const [method, p, allow] of calls) {
    const res = await api(relay, method, p, method === 'GET' || method === 'DELETE' ? undefined : {});
    assertError(res, 405, 'method_not_allowed', `${method} ${p}`);
    assert.match(res.headers.get('allow') ?? '', allow, `Allow header of ${method} ${p}`);
  }
  // Allow lists exactly the methods the path takes, HEAD wherever GET is (RFC 9110
  // 10.2.1), on literal and {id} paths alike; OPTIONS is one more method no path takes.
  const sub = `/v1/subscriptions/${subsBefore[0].id}`;
  const paths = [
    ['/healthz', 'GET, HEAD'], ['/metrics', 'GET, HEAD'], ['/v1/events', 'GET, HEAD, POST'],
    ['/v1/events/batch', 'POST'], [`/v1/events/${accepted.id}`, 'GET, HEAD'],
    ['/v1/subscriptions', 'GET, HEAD, POST'], [sub, 'DELETE, GET, HEAD, PATCH'], [`${sub}/stats`, 'GET, HEAD'],
    [`${sub}/rotate-secret`, 'POST'], [`${sub}/recover`, 'POST'], [`${sub}/replay`, 'POST'],
    ['/v1/deliveries', 'GET, HEAD'], ['/v1/deliveries/dlv_1', 'GET, HEAD'], ['/v1/deliveries/dlv_1/retry', 'POST'],
  ];
  for (const [p, allow] of paths) {
    const sorted = (text) => (text ?? '').split(',').map((m) => m.trim()).sort().join(', ');
    const other = ['GET', 'POST', 'PATCH', 'DELETE'].find((m) => !allow.split(', ').includes(m));
    for (const method of ['OPTIONS', 'PUT', other]) {
      const res = await api(relay, method, p, method === 'GET' || method === 'OPTIONS' ? undefined : {});
      assertError(res, 405, 'method_not_allowed', `${method} ${p}`);
      assert.equal(sorted(res.headers.get('allow')), allow, `Allow header of ${method} ${p}`);
    }
  }
  await assertNothingStored();
}));

test('batch: a repeated item id, or an Idempotency-Key header, is 422 and stores nothing', withLogs(async () => {
  // Two items with one id: the second would be taken for a replay of the first and
  // dropped, in a call that answered 202 for both.
  let res = await api(relay, 'POST', '/v1/events/batch',
    [{ type: 'a.b', id: 'dup' }, { type: 'c.d' }, { type: 'e.f', id: 'dup' }]);
  assertError(res, 422, 'invalid_field', 'repeated id');
  assert.match(res.json.error.message, /items\[2\]\.id repeats items\[0\]\.id/);
  // the first repeat in batch order, whatever the ids sort as
  res = await api(relay, 'POST', '/v1/events/batch',
    [{ type: 'a.b', id: 'b' }, { type: 'a.b', id: 'a' }, { type: 'a.b', id: 'b' }, { type: 'a.b', id: 'a' }]);
  assertError(res, 422, 'invalid_field', 'repeated ids');
  assert.match(res.json.error.message, /items\[2\]\.id repeats items\[0\]\.id/);
  // One key cannot stand for many events; ignored, a retry would store the batch again.
  res = await api(relay, 'POST', '/v1/events/batch', [{ type: 'a.b' }], { 'idempotency-key': 'b1' });
  assertError(res, 422, 'invalid_field', 'Idempotency-Key on a batch');
  assert.match(res.json.error.message, /Idempotency-Key/);
  await assertNothingStored();
}));

test('a refusal decided before the body still reads it: the connection serves the next request', withLogs(async () => {
  const body = '{"type":"a.b"}';
  const raw = `POST /nope HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\n\r\n${body}` +
    'GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n';
  const text = await rawExchange(raw, (got) => /HTTP\/1\.1 200[\s\S]*\r\n\r\n/.test(got));
  assert.match(text, /^HTTP\/1\.1 404 /, text);
  assert.match(text, /"not_found"/);
  assert.match(text, /HTTP\/1\.1 200 /, `the second request on the connection is answered: ${text}`);
}));

/** Streams `total` bytes of chunked body after `head` on a fresh connection, as fast as
 * the relay reads them; resolves {answer, hungUp}: what came back, and whether the relay
 * closed the connection before answering. */
function streamChunked(head, total) {
  return new Promise((resolve) => {
    let answer = '';
    let sent = 0;
    let finished = false;
    const sock = net.connect(relay.port, '127.0.0.1');
    const done = (hungUp) => {
      if (finished) return;
      finished = true;
      clearTimeout(timer);
      sock.destroy();
      resolve({ answer, hungUp });
    };
    const timer = setTimeout(() => done(false), 60_000);
    sock.on('data', (d) => {
      answer += d;
      if (/\r\n\r\n[\s\S]*\}/.test(answer)) done(false);
    });
    sock.on('close', () => done(true));
    sock.on('error', () => done(true));
    const piece = Buffer.from(`10000\r\n${'p'.repeat(0x10000)}\r\n`);
    const pump = () => {
      while (sent < total && !finished) {
        sent += 0x10000;
        if (!sock.write(piece)) {
          sock.once('drain', pump);
          return;
        }
      }
      if (!finished) sock.write('0\r\n\r\n');
    };
    sock.on('connect', () => {
      sock.write(head);
      pump();
    });
  });
}

// A refusal held while its body is dropped, and a chunked body over --max-body, are read
// only so far (16 x --max-body, at least 8 MiB): a client streaming on past that, with no
// key or to no route, is hung up on rather than kept reading for ever.
test('a refused or oversize chunked body is dropped only up to the bound, then the connection is closed', withLogs(async () => {
  const total = 24 * 1024 * 1024;
  for (const [what, target] of [['no route (a held 404)', '/nope'], ['over --max-body (413)', '/v1/events']]) {
    const res = await streamChunked(`POST ${target} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n` +
      'Transfer-Encoding: chunked\r\n\r\n', total);
    assert.ok(res.hungUp, `${what}: 24 MiB were read and answered: ${res.answer.slice(0, 300)}`);
    assert.equal(res.answer, '', `${what}: hung up on without an answer`);
  }
  assert.equal((await api(relay, 'GET', '/healthz')).status, 200, 'and the relay goes on');
  await assertNothingStored();
}));

test('Expect: 100-continue to a refused request gets the refusal, not 100 Continue', withLogs(async () => {
  const raw = 'POST /nope HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n' +
    'Content-Length: 100000\r\nExpect: 100-continue\r\n\r\n';
  const text = await rawExchange(raw, (got) => /\r\n\r\n[\s\S]*\}/.test(got));
  assert.match(text, /^HTTP\/1\.1 404 /, `the body is not asked for: ${text}`);
}));

test('request headers over 24 KiB in all are refused with 431, and nothing is stored', withLogs(async () => {
  const body = '{"type":"big.headers"}';
  // Just under libmicrohttpd's 32 KiB pool the request used to be processed (the event
  // stored) and its answer then failed to build: the client got no answer at all.
  for (const pad of [25 * 1024, 32084, 32150, 40 * 1024]) {
    const raw = `POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n` +
      `Content-Length: ${body.length}\r\nX-Pad: ${'a'.repeat(pad)}\r\n\r\n${body}`;
    const text = await rawExchange(raw, (got) => /\r\n\r\n/.test(got));
    assert.match(text, /^HTTP\/1\.1 431 /, `${pad} bytes of X-Pad: ${text.slice(0, 200)}`);
    if (pad < 32 * 1024) assert.match(text, /"code":"headers_too_large"/, text.slice(0, 300));
  }
  // A Cookie header takes that room twice (libmicrohttpd copies it to split it into
  // cookies). Counted once, at these sizes the event was stored and then answered 202,
  // or not answered at all (so a retry stored it again). Now each is a 431, or, where
  // libmicrohttpd itself has no room left to split the cookies, a closed connection
  // before the request reaches us; never stored.
  let refused = 0;
  for (const cookie of [11000, 11024, 11048, 11064, 11096]) {
    const raw = `POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n` +
      `Content-Length: ${body.length}\r\nCookie: c=${'v'.repeat(cookie)}\r\n` +
      `X-O: ${'o'.repeat(10000)}\r\n\r\n${body}`;
    const text = await rawExchange(raw, (got) => /\r\n\r\n[\s\S]*\}/.test(got));
    if (text !== '') {
      assert.match(text, /^HTTP\/1\.1 431 [\s\S]*"code":"headers_too_large"/,
        `a ${cookie}-byte cookie: ${text.slice(0, 200)}`);
      refused++;
    }
  }
  assert.ok(refused > 0, 'some of them reach us and are answered 431');
  // the URL and its query arguments take the same room
  const query = Array.from({ length: 420 }, (_, i) => `a${i}=1`).join('&');
  for (const raw of [
    `POST /v1/events?${'q'.repeat(10 * 1024)} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n` +
      `Content-Length: ${body.length}\r\nX-Pad: ${'a'.repeat(16 * 1024)}\r\n\r\n${body}`,
    `GET /healthz?${query} HTTP/1.1\r\nHost: x\r\n\r\n`,
  ]) {
    const text = await rawExchange(raw, (got) => /\r\n\r\n[\s\S]*\}/.test(got));
    assert.match(text, /^HTTP\/1\.1 431 [\s\S]*"code":"headers_too_large"/, `${raw.slice(0, 60)}: ${text.slice(0, 300)}`);
  }
  // A chunked body's trailers take the same room, after the headers were checked: they
  // took headers and trailers past 24 KiB with a 202, and a band of sizes got the event
  // stored and no answer. Now a 431 (or, with no room left even for libmicrohttpd's
  // own parse, a closed connection), never stored.
  let trailersRefused = 0;
  for (const trailer of [9000, 16050, 16100, 16150]) {
    const raw = `POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n` +
      `Transfer-Encoding: chunked\r\nX-Pad: ${'p'.repeat(16000)}\r\n\r\n` +
      `${body.length.toString(16)}\r\n${body}\r\n0\r\nX-Trailer: ${'t'.repeat(trailer)}\r\n\r\n`;
    const text = await rawExchange(raw, (got) => /\r\n\r\n[\s\S]*\}/.test(got));
    if (text !== '') {
      assert.match(text, /^HTTP\/1\.1 431 [\s\S]*"code":"headers_too_large"/,
        `a ${trailer}-byte trailer after 16,000 bytes of headers: ${text.slice(0, 200)}`);
      trailersRefused++;
    }
  }
  assert.ok(trailersRefused > 0, 'some of them reach us and are answered 431');
  const under = await rawExchange(`GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: ${'a'.repeat(20 * 1024)}\r\n\r\n`,
    (got) => /\r\n\r\n/.test(got));
  assert.match(under, /^HTTP\/1\.1 200 /, 'headers under the limit are served');
  assert.equal((await api(relay, 'GET', '/healthz')).status, 200, 'and the relay goes on');
  await assertNothingStored();
}));

test('two Idempotency-Key headers are refused with 422', withLogs(async () => {
  const body = '{"type":"two.keys"}';
  const text = await rawExchange('POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n' +
    `Idempotency-Key: k1\r\nIdempotency-Key: k2\r\nContent-Length: ${body.length}\r\nConnection: close\r\n\r\n${body}`,
  () => false);
  assert.match(text, /^HTTP\/1\.1 422 /, text);
  assert.match(text, /one Idempotency-Key/, text);
  await assertNothingStored();
}));

test('white space after an Idempotency-Key is not part of it', withLogs(async () => {
  // RFC 9110 5.5; libmicrohttpd drops only the white space before a value. (fetch trims
  // values itself, so these go over raw sockets.)
  const body = '{"type":"spaced.key"}';
  const post = (key) => rawExchange('POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n' +
    `Idempotency-Key: ${key}\r\nContent-Length: ${body.length}\r\nConnection: close\r\n\r\n${body}`, () => false);
  const first = await post('spaced-key \t ');
  assert.match(first, /^HTTP\/1\.1 202 /, first);
  const id = JSON.parse(first.slice(first.indexOf('\r\n\r\n') + 4)).id;
  accepted.extra.push(id);
  const again = await post('spaced-key');
  assert.match(again, /^HTTP\/1\.1 200 /, `the same key without the space is a replay: ${again}`);
  assert.equal(JSON.parse(again.slice(again.indexOf('\r\n\r\n') + 4)).id, id);
  const stored = (await api(relay, 'GET', `/v1/events/${id}`)).json;
  assert.equal(stored.idempotency_key, 'spaced-key');
  await assertNothingStored();
}));

test('HEAD is answered like GET, without a body', withLogs(async () => {
  // On the wire: fetch never shows a HEAD response's body, so it could not tell.
  const head = (p) => rawExchange(`HEAD ${p} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`, () => false);
  const header = (text, name) => (text.match(new RegExp(`^${name}: *(.*?)\r$`, 'mi')) ?? [])[1];
  for (const p of ['/healthz', '/v1/events', `/v1/events/${accepted.id}`]) {
    const raw = await head(p);
    assert.match(raw, /^HTTP\/1\.1 200 /, `HEAD ${p}: ${raw}`);
    const end = raw.indexOf('\r\n\r\n');
    assert.ok(end > 0, `HEAD ${p}: headers end: ${raw}`);
    assert.equal(raw.slice(end + 4), '', `HEAD ${p} has no body`);
    const get = await api(relay, 'GET', p);
    assert.equal(header(raw, 'Content-Type'), get.headers.get('content-type'), `HEAD ${p}: the GET's type`);
    assert.equal(Number(header(raw, 'Content-Length')), Buffer.byteLength(get.text),
      `HEAD ${p}: the GET's length`);
  }
  assertError(await api(relay, 'GET', '/v1/events/nope'), 404, 'not_found');
  assert.equal((await api(relay, 'HEAD', '/v1/events/nope')).status, 404);
}));

// Each connection reset in the middle of a request makes libmicrohttpd write a line; a
// client doing that in a loop must not fill the operator's disk.
test('libmicrohttpd messages are written at most 20 a minute', withLogs(async () => {
  const own = await startRelay();
  const resets = 60;
  for (let i = 0; i < resets; i++) {
    await new Promise((resolve) => {
      const sock = net.connect(own.port, '127.0.0.1', () => {
        sock.write('POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"ty');
        setTimeout(() => sock.resetAndDestroy(), 5);
      });
      sock.on('close', resolve);
      sock.on('error', () => {});
    });
  }
  await new Promise((r) => setTimeout(r, 300));
  const lines = own.stderrText.split('\n').filter((l) => l.startsWith('hookrelay: http: '));
  assert.ok(lines.length >= 1, `the first resets are written:\n${own.stderrText}`);
  assert.ok(lines.length <= 20, `${lines.length} libmicrohttpd lines for ${resets} resets:\n${own.stderrText}`);
  assert.equal((await api(own, 'GET', '/healthz')).status, 200);
}));

test('after all the bad input the relay is up and still has what it accepted', withLogs(async () => {
  assert.equal(relay.exitCode, undefined, 'relay still running');
  const h = await api(relay, 'GET', '/healthz');
  assert.equal(h.status, 200);
  const got = await api(relay, 'GET', `/v1/events/${accepted.id}`);
  assert.equal(got.status, 200, got.text);
  assert.deepEqual(got.json.data, { keep: true });
  const events = await listAll(relay, '/v1/events');
  assert.deepEqual(new Set(events.map((e) => e.id)), new Set([accepted.id, ...accepted.extra]));
  const more = await postEvent(relay, { type: 'good.again' });
  assert.match(more.id, /^evt_/);
  relay.assertNoSanitizerReport();
}));
