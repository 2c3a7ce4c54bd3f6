// dns.test.mjs - a receiver whose name server never answers must cost only its own
// deliveries their timeout, not hold up everyone else's. The lookups run in
// netns/dns-child.mjs inside fresh network and mount namespaces (`unshare -mn`), with
// /etc/resolv.conf bind-mounted to point at that script's silent name server on the
// namespace's own 127.0.0.1, so nothing is ever asked of a real resolver.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { runNamespaced, tail, tmpDir } from './harness.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const CHILD = path.join(here, 'netns', 'dns-child.mjs');
const IDN_CHILD = path.join(here, 'netns', 'idn-child.mjs');
const CHILD_TIMEOUT_MS = 60_000;

// Network and mount namespaces need CAP_SYS_ADMIN (root, or a user namespace), and the
// file to fake must be there to mount over (a bare chroot may have no /etc/hosts).
function namespacesWork(file) {
  const r = spawnSync('unshare', ['-mn', 'sh', '-c', `ip link set lo up && mount --bind /dev/null /dev/null && test -e ${file}`],
    { timeout: 10_000 });
  return r.status === 0;
}

// A child prints `<PREFIX> {json}` with ok and netns, and exits 0 when it passed.
function assertChildPassed(r, prefix) {
  const line = r.stdout.split('\n').find((l) => l.startsWith(`${prefix} `));
  const ctx = `child exit ${r.code} ${r.signal ?? ''}\nstdout: ${tail(r.stdout, 6000)}\nstderr: ${tail(r.stderr, 6000)}`;
  assert.ok(line, `no ${prefix} line\n${ctx}`);
  const s = JSON.parse(line.slice(prefix.length + 1));
  assert.equal(s.ok, true, ctx);
  assert.equal(r.code, 0, ctx);
  assert.equal(s.netns, true);
}

function runChild() {
  const conf = path.join(tmpDir(), 'resolv.conf');
  writeFileSync(conf, 'nameserver 127.0.0.1\noptions timeout:5 attempts:2\n');
  return runNamespaced({ flags: '-mn', setup: 'ip link set lo up && mount --bind "$2" /etc/resolv.conf',
    script: CHILD, extraArgs: [conf], env: { HOOKRELAY_DNS_NETNS: '1' },
    timeoutMs: CHILD_TIMEOUT_MS, label: 'dns.test' });
}

test('a name server that never answers costs only that delivery its timeout',
  { skip: namespacesWork('/etc/resolv.conf') ? false : 'unshare -mn is not permitted here, or there is no /etc/resolv.conf: cannot fake the name server' },
  async () => {
    assertChildPassed(await runChild(), 'DNS-SUMMARY');
  });

test('a receiver named in Unicode (an IDN) is delivered to, at its punycode name',
  { skip: namespacesWork('/etc/hosts') ? false : 'unshare -mn is not permitted here, or there is no /etc/hosts: cannot fake it' },
  async () => {
    const hosts = path.join(tmpDir(), 'hosts');
    writeFileSync(hosts, '127.0.0.1 localhost\n127.0.0.1 xn--bcher-kva.test\n');
    const r = await runNamespaced({ flags: '-mn', setup: 'ip link set lo up && mount --bind "$2" /etc/hosts',
      script: IDN_CHILD, extraArgs: [hosts], env: { HOOKRELAY_IDN_NETNS: '1' },
      timeoutMs: CHILD_TIMEOUT_MS, label: 'idn' });
    assertChildPassed(r, 'IDN-SUMMARY');
  });
