// reliability/storage-child.mjs - run by reliability-storage.test.mjs inside a private mount
// namespace where argv[2] is a 4 MiB tmpfs. Fills the disk under a running relay and
// reports what happened as one line `SUMMARY {json}` on stdout; the parent asserts on it.
// It asserts nothing itself, so one run yields every figure; it exits 0 unless it could
// not run its steps (then the summary carries `error`).

import { writeFileSync, unlinkSync, statfsSync } from 'node:fs';
import path from 'node:path';
import {
  startRelay, startReceiver, api, createSub, listAll, waitUntil, sleep, cleanup,
} from '../harness.mjs';
import { SLOW, integrityCheck, tryPost, idsOf } from './lib.mjs';

const dir = process.argv[2];
const summary = { steps: [] };
const freeKiB = () => { const s = statfsSync(dir); return Math.round((s.bavail * s.bsize) / 1024); };

// A hard stop of its own, so a hang still ends with the relay killed (harness exit hook).
const deadline = setTimeout(() => {
  summary.error = `child deadline passed during step ${summary.steps.at(-1)}`;
  console.log(`SUMMARY ${JSON.stringify(summary)}`);
  process.exit(3);
}, 50_000 * SLOW);

let relay;
try {
  summary.steps.push('filler');
  const filler = path.join(dir, 'filler');
  writeFileSync(filler, Buffer.alloc(1024 * 1024, 1));
  summary.freeKiBAtStart = freeKiB();

  summary.steps.push('start');
  const dbPath = path.join(dir, 'hr.db');
  relay = await startRelay({ dbPath, retrySchedule: '200ms,400ms' });
  const r = await startReceiver();
  await createSub(relay, r, { event_types: ['disk.#'] });
  const writeFailures = async () => Number(
    (await api(relay, 'GET', '/metrics')).text.match(/^hookrelay_store_write_failures_total (\d+)$/m)?.[1]);
  summary.writeFailuresAtStart = await writeFailures();

  summary.steps.push('fill');
  const accepted = [];
  const others = {};
  const pad = 'd'.repeat(2048);
  let full;
  for (let i = 0; i < 5000 && !full; i++) {
    const res = await tryPost(`${relay.url}/v1/events`, { type: 'disk.fill', data: { i, pad } }, { timeoutMs: 10_000 * SLOW });
    if (res.status === 202) accepted.push(res.json.id);
    else if (res.status === 503 && res.json?.error?.code === 'storage_unavailable') full = res;
    else {
      const k = res.status ?? `no answer: ${res.error?.message}`;
      others[k] = (others[k] ?? 0) + 1;
      if (res.status === undefined) break; // the relay is gone; report it
    }
  }
  summary.accepted = accepted.length;
  summary.otherAnswers = others;
  summary.freeKiBWhenFull = freeKiB();
  summary.got503 = !!full;
  if (full) {
    summary.fullRetryAfter = full.headers.get('retry-after');
    summary.fullMessage = full.json.error.message;
  }
  summary.relayAliveWhenFull = relay.exitCode === undefined;

  summary.steps.push('inspect');
  const hz = await api(relay, 'GET', '/healthz');
  summary.healthzWhenFull = hz.status;
  summary.writeFailuresWhenFull = await writeFailures();
  const stored = new Set((await listAll(relay, '/v1/events')).map((e) => e.id));
  summary.lostWhenFull = accepted.filter((id) => !stored.has(id)).length;
  const again = await tryPost(`${relay.url}/v1/events`, { type: 'disk.again', data: { pad } });
  summary.stillFullAnswer = again.status ?? String(again.error);

  summary.steps.push('free');
  unlinkSync(filler);
  summary.freeKiBAfterDelete = freeKiB();
  const t0 = Date.now();
  let tries = 0;
  let recovered;
  while (Date.now() - t0 < 10_000 * SLOW && tries < 100) {
    tries++;
    const res = await tryPost(`${relay.url}/v1/events`, { type: 'disk.after', data: { small: true } });
    if (res.status === 202) { recovered = res.json.id; break; }
    await sleep(200);
  }
  summary.recoveredAfterTries = recovered ? tries : null;
  // With room again the count stops growing (results held back by the full disk go
  // through in the first batches after it).
  await sleep(1000);
  const settled = await writeFailures();
  await sleep(1000);
  summary.writeFailuresGrewAfter = (await writeFailures()) - settled;
  summary.recoveredInMs = recovered ? Date.now() - t0 : null;
  if (recovered) accepted.push(recovered);

  summary.steps.push('deliver');
  // Everything accepted, before and after the disk filled, reaches the receiver.
  const missing = () => { const { ids } = idsOf(r); return accepted.filter((id) => !ids.has(id)).length; };
  await waitUntil(() => missing() === 0, 15_000 * SLOW, 'deliveries after the disk had room again', 100).catch(() => {});
  summary.undelivered = missing();
  const storedAfter = new Set((await listAll(relay, '/v1/events')).map((e) => e.id));
  summary.lostAtEnd = accepted.filter((id) => !storedAfter.has(id)).length;

  summary.steps.push('stop');
  try {
    await relay.stop({ signal: 'SIGTERM' });
    summary.stopExit = 0;
  } catch (err) {
    summary.stopExit = `${relay.exitCode}/${relay.exitSignal}: ${err.message.slice(0, 300)}`;
  }
  summary.integrity = integrityCheck(dbPath);
  summary.relayStderrTail = relay.stderrText.slice(-1500);
  await cleanup();
} catch (err) {
  summary.error = `${err.stack ?? err}`.slice(0, 3000);
  if (relay) summary.relayStderrTail = relay.stderrText.slice(-1500);
}
clearTimeout(deadline);
console.log(`SUMMARY ${JSON.stringify(summary)}`);
process.exit(0);
