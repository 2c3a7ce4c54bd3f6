// reliability/lib.mjs - helpers shared by tests/integration/reliability*.test.mjs (issue #5).
//
// Not a test file itself (node --test only picks *.test.mjs and friends). Everything here is
// bounded in time and talks to 127.0.0.1 only.

import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import assert from 'node:assert/strict';

/** RELIABILITY_SOAK=1 (make soak) scales counts and durations up. */
export const SOAK = process.env.RELIABILITY_SOAK === '1';

/** The sanitizer build is ~3x slower, and the relay under valgrind (make valgrind) more:
 * waits (never counts of things that must hold) scale. */
export const SLOW = /\/san\//.test(process.env.HOOKRELAY_BIN ?? '') || !!process.env.ASAN_OPTIONS
  || !!process.env.VALGRIND_LOG_DIR ? 3 : 1;

/** `sqlite3 -readonly <db> 'PRAGMA integrity_check'` -> its trimmed stdout ("ok" when sound).
 * Read-only so the check does not checkpoint the WAL: the relay itself must recover it. */
export function integrityCheck(dbPath) {
  const res = spawnSync('sqlite3', ['-readonly', dbPath, 'PRAGMA integrity_check'],
    { encoding: 'utf8', timeout: 30_000, killSignal: 'SIGKILL' });
  assert.ok(!res.error, `sqlite3 could not run (scripts/install-deps.sh installs it): ${res.error?.message}`);
  return `${res.stdout.trim()}${res.status === 0 ? '' : ` [exit ${res.status}: ${res.stderr.trim()}]`}`;
}

/** VmRSS of a live process in MiB (from /proc/<pid>/status), or NaN once it is gone. */
export function rssMiB(pid) {
  try {
    const m = readFileSync(`/proc/${pid}/status`, 'utf8').match(/^VmRSS:\s+(\d+)\s+kB/m);
    return m ? Number(m[1]) / 1024 : NaN;
  } catch {
    return NaN;
  }
}

/** Nearest-rank percentile of an array of numbers (p in 0..100). */
export function percentile(values, p) {
  assert.ok(values.length > 0, 'percentile of nothing');
  const s = [...values].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))];
}

/**
 * One POST with a hard deadline (a ref'd timer, so a stuck request keeps the loop alive
 * and fails the test). Returns {status, headers, json, text} or {error} when no answer
 * came (connection refused/reset, timeout): the caller decides what "unknown" means.
 */
export async function tryPost(url, body, { timeoutMs = 10_000, headers = {} } = {}) {
  const ac = new AbortController();
  const timer = setTimeout(() => ac.abort(new Error(`no answer within ${timeoutMs} ms`)), timeoutMs);
  try {
    const res = await fetch(url, {
      method: 'POST',
      headers: { 'content-type': 'application/json', ...headers },
      body: typeof body === 'string' ? body : JSON.stringify(body),
      signal: ac.signal,
    });
    const text = await res.text();
    let json;
    try { json = JSON.parse(text); } catch { json = undefined; }
    return { status: res.status, headers: res.headers, json, text };
  } catch (err) {
    return { error: err };
  } finally {
    clearTimeout(timer);
  }
}

/** Distinct webhook-ids a receiver got, and how many requests repeated one. */
export function idsOf(receiver) {
  const ids = new Set();
  let dups = 0;
  for (const q of receiver.requests) {
    const id = q.headers['webhook-id'];
    if (ids.has(id)) dups++;
    else ids.add(id);
  }
  return { ids, dups };
}
