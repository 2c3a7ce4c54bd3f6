// reliability-storage.test.mjs - issue #5, part 4: a full disk under a running relay.
//
// The relay runs inside a private mount namespace whose database directory is a 4 MiB
// tmpfs (reliability/storage-child.mjs does the steps and reports a summary): publishing
// until a POST answers 503 storage_unavailable must keep the relay up and every earlier
// 202 stored; freeing space must let the next POST answer 202 without a restart; SIGTERM
// exits 0 and the database passes PRAGMA integrity_check.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, rmdirSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { relayBin } from './harness.mjs';
import { SLOW } from './reliability/lib.mjs';

const CHILD = fileURLToPath(new URL('./reliability/storage-child.mjs', import.meta.url));

function canUnshare() {
  const r = spawnSync('unshare', ['-m', 'true'], { timeout: 5000 });
  return !r.error && r.status === 0;
}

test('disk full: 503 storage_unavailable, nothing accepted lost, recovers by itself once there is room', {
  skip: canUnshare() ? false : 'needs `unshare -m` (root or CAP_SYS_ADMIN) for a private tmpfs',
}, async () => {
  relayBin();
  const dir = mkdtempSync(path.join(os.tmpdir(), 'hookrelay-full-'));
  try {
    const child = spawn('unshare', ['-m', 'sh', '-c',
      'mount -t tmpfs -o size=4m tmpfs "$0" && exec node "$1" "$0"', dir, CHILD],
    { stdio: ['ignore', 'pipe', 'pipe'], env: process.env });
    let out = '';
    let err = '';
    child.stdout.on('data', (d) => { out += d; });
    child.stderr.on('data', (d) => { err += d; });
    let timer;
    const code = await new Promise((resolve) => {
      timer = setTimeout(() => { child.kill('SIGKILL'); resolve('timeout'); }, 90_000 * SLOW);
      child.on('exit', (c, s) => resolve(c ?? s));
    });
    clearTimeout(timer);
    const line = out.split('\n').find((l) => l.startsWith('SUMMARY '));
    const ctx = `child exit ${code}\nstdout: ${out.slice(-3000)}\nstderr: ${err.slice(-3000)}`;
    assert.equal(code, 0, ctx);
    assert.ok(line, `no SUMMARY line: ${ctx}`);
    const s = JSON.parse(line.slice('SUMMARY '.length));
    console.log(`reliability storage: ${s.accepted} accepted before the disk filled, then 503 `
      + `(Retry-After ${s.fullRetryAfter}: ${s.fullMessage}); recovered after ${s.recoveredAfterTries} `
      + `POST(s) / ${s.recoveredInMs} ms; lost ${s.lostAtEnd}; integrity ${s.integrity}`);

    assert.equal(s.error, undefined, `child failed: ${s.error}\nrelay stderr: ${s.relayStderrTail}`);
    assert.ok(s.accepted > 0, `some events accepted before the disk filled: ${line}`);
    assert.equal(s.got503, true, `no 503 storage_unavailable within 5000 POSTs: ${line}`);
    assert.deepEqual(s.otherAnswers, {}, 'only 202 until the 503 storage_unavailable');
    assert.ok(s.fullRetryAfter, 'the 503 carries Retry-After');
    assert.equal(s.relayAliveWhenFull, true, 'the relay is still running with the disk full');
    assert.equal(s.healthzWhenFull, 200, 'GET /healthz with the disk full (the process lives)');
    assert.equal(s.writeFailuresAtStart, 0, 'no write failures before the disk filled');
    assert.ok(s.writeFailuresWhenFull > 0, `hookrelay_store_write_failures_total counts the refused writes: ${line}`);
    assert.equal(s.lostWhenFull, 0, 'every 202 before the disk filled is in GET /v1/events');
    assert.ok(s.recoveredAfterTries !== null, `no 202 within 10 s of freeing space: ${line}`);
    assert.equal(s.writeFailuresGrewAfter, 0, 'no new write failures once there is room');
    assert.equal(s.lostAtEnd, 0, 'every accepted event is still stored at the end');
    assert.equal(s.undelivered, 0, 'every accepted event reached the receiver once there was room');
    assert.equal(s.stopExit, 0, `SIGTERM: ${s.stopExit}`);
    assert.equal(s.integrity, 'ok', 'PRAGMA integrity_check after the stop');
  } finally {
    try { rmdirSync(dir); } catch { /* the tmpfs lived only in the namespace */ }
  }
});
