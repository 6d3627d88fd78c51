/**
 * The CA database in Redis (issue 8): two `iotgate start` processes on one real redis-server with
 * SEPARATE certs dirs that only share copies of the key material (B's dir is A's after A created
 * the CA, without A's file ledger). A device provisioned through A logs in on B; revoking it through
 * B's REST closes its session on A within a few seconds, A's REST no longer shows it, and A's TLS
 * listener refuses its certificate (A signed its own CRL from Redis); `iotgate device revoke` with
 * IOTGATE_REDIS_URL is seen by both; and a deployment switched to Redis imports its file records.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { cp, mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { runCli } from '../helpers/cli.js';
import { clusterNodes, type ClusterNode as Node } from '../helpers/cluster.js';
import { loopbackEnv } from '../helpers/gateway.js';
import { assertRefused, closeEvent, deviceLogin, openSession, registerDevice, tls12Handshake, withDeadline } from '../helpers/mqtt.js';
import { startRedis, type TestRedis } from '../helpers/redis.js';
import { CA_FILES } from '../../src/pki/index.js';
import { x509 } from '../../src/pki/x509.js';

let redis: TestRedis | null = null;
let dirA = '';
let dirB = '';
const cleanups: (() => unknown)[] = [];
const teardown = { after: (fn: () => unknown) => cleanups.push(fn) };
let a!: Node;
let b!: Node;
let skipped = false;

const nodesOn = (dir: () => string) => clusterNodes({ redisUrl: () => redis!.url, certsDir: dir, teardown });
const clusterA = nodesOn(() => dirA);
const clusterB = nodesOn(() => dirB);

let seq = 0;
const uid = (p: string) => `${p}-${process.pid}-${++seq}`;

/** Polls `check` (every 50 ms) until it resolves true, for at most `ms`. */
function eventually(check: () => Promise<boolean>, what: string, ms = 5000): Promise<void> {
  return withDeadline(
    (async () => {
      while (!(await check())) await new Promise((r) => setTimeout(r, 50));
    })(),
    ms,
    what,
  );
}

async function crlSerials(dir: string): Promise<string[]> {
  const crl = new x509.X509Crl(await readFile(join(dir, CA_FILES.crl), 'utf8'));
  return crl.entries.map((e) => e.serialNumber.toUpperCase().replace(/^0+/, ''));
}

const bare = (serial: string) => serial.toUpperCase().replace(/^0+/, '');

before(async () => {
  redis = await startRedis(null);
  if (!redis) {
    skipped = true;
    return;
  }
  dirA = await mkdtemp(join(tmpdir(), 'iotgate-ledger-a-'));
  dirB = await mkdtemp(join(tmpdir(), 'iotgate-ledger-b-'));
  a = await clusterA.startNode(); // creates the CA in A's certs dir
  // B's host gets copies of the key material only: not A's ledger files.
  await cp(dirA, dirB, { recursive: true, filter: (src) => !/[/\\](devices|ledger\.seq)$/.test(src) });
  b = await clusterB.startNode();
});

after(async () => {
  for (const fn of cleanups.reverse()) await fn();
  await redis?.dispose();
  for (const dir of [dirA, dirB]) if (dir) await rm(dir, { recursive: true, force: true });
});

describe('the credential ledger in Redis, gateways without a shared certs dir', () => {
  it('a device provisioned through A logs in on B; revoking it through B drops it on A (sessions, REST, TLS)', async (t) => {
    if (skipped) return t.skip('redis-server is not installed');
    const dev = await registerDevice(clusterA.asGateway(a), uid('dev'));
    assert.equal(await tls12Handshake(Number(a.proc.ready.mqtts), dev), 'ok', 'A accepts the certificate before the revocation');
    // B never saw the device being provisioned: it reads the record from Redis at the login.
    const onB = await openSession(teardown, b.mqtt, deviceLogin(dev));
    await onB.client.endAsync();
    const onA = await openSession(teardown, a.mqtt, deviceLogin(dev));
    const closedA = closeEvent(onA.client);
    const seenOnA = await clusterA.rest(a, 'GET', `/v1/devices/${dev.id}`, 'devices:read');
    assert.equal(seenOnA.status, 200, JSON.stringify(seenOnA.body));

    const del = await clusterB.rest(b, 'DELETE', `/v1/devices/${dev.id}`, 'devices:write');
    assert.equal(del.status, 204, JSON.stringify(del.body));
    await withDeadline(closedA, 5000, 'A to close the revoked device’s session');
    const goneOnA = await clusterA.rest(a, 'GET', `/v1/devices/${dev.id}`, 'devices:read');
    assert.equal(goneOnA.status, 404, JSON.stringify(goneOnA.body));
    await assertRefused(a.mqtt, deviceLogin(dev), 'the revoked token on A');
    await assertRefused(b.mqtt, deviceLogin(dev), 'the revoked token on B');
    // Each gateway signed its own CRL from Redis; A's TLS listener refuses the certificate.
    const serial = bare(new x509.X509Certificate(dev.certPem).serialNumber);
    await eventually(async () => (await crlSerials(dirA)).includes(serial), 'A’s ca.crl to list the serial');
    await eventually(async () => (await crlSerials(dirB)).includes(serial), 'B’s ca.crl to list the serial');
    await eventually(async () => (await tls12Handshake(Number(a.proc.ready.mqtts), dev)) !== 'ok', 'A’s TLS listener to refuse the revoked certificate');
  });

  it('a device revoked by `iotgate device revoke` with IOTGATE_REDIS_URL is dropped by both gateways', async (t) => {
    if (skipped) return t.skip('redis-server is not installed');
    const dev = await registerDevice(clusterB.asGateway(b), uid('cli'));
    const session = await openSession(teardown, a.mqtt, deviceLogin(dev));
    const closed = closeEvent(session.client);
    // Without the Redis URL the CLI refuses the certs dir whose CA database moved to Redis.
    const stale = await runCli(['device', 'revoke', dev.id], loopbackEnv(dirA));
    assert.equal(stale.status, 1, stale.stdout);
    assert.match(stale.stderr, /is in Redis .*IOTGATE_REDIS_URL/);
    // A third host: its own copy of the key material, the Redis URL.
    const cli = await runCli(['device', 'revoke', dev.id, '--json'], loopbackEnv(dirB, { IOTGATE_REDIS_URL: redis!.url }));
    assert.equal(cli.status, 0, cli.stderr);
    const out = JSON.parse(cli.stdout) as { id: string; revoked: boolean; serial: string };
    assert.equal(out.revoked, true);
    await withDeadline(closed, 5000, 'A to close the session of the device revoked by the CLI');
    // B learns of it at its own next poll of the change log (certs.syncIntervalMs).
    const refusedOnB = () =>
      assertRefused(b.mqtt, deviceLogin(dev), 'the revoked token on B').then(
        () => true,
        () => false,
      );
    await eventually(refusedOnB, 'B to refuse the revoked token');
    await eventually(async () => (await clusterB.rest(b, 'GET', `/v1/devices/${dev.id}`, 'devices:read')).status === 404, 'B to forget the device');
    const again = await runCli(['device', 'revoke', dev.id, '--json'], loopbackEnv(dirA, { IOTGATE_REDIS_URL: redis!.url }));
    assert.equal(again.status, 0, again.stderr);
    assert.equal((JSON.parse(again.stdout) as { already?: boolean }).already, true);
    // Provisioned by the CLI into Redis: B accepts the token at once.
    const prov = await runCli(['device', 'provision', uid('cli-prov'), '--out', join(dirB, 'out'), '--json'], loopbackEnv(dirB, { IOTGATE_REDIS_URL: redis!.url }));
    assert.equal(prov.status, 0, prov.stderr);
    const minted = JSON.parse(prov.stdout) as { id: string; token: string };
    await openSession(teardown, a.mqtt, deviceLogin(minted));
  });

  it('a deployment switched to Redis imports the file records of its certs dir once', async (t) => {
    if (skipped) return t.skip('redis-server is not installed');
    const fresh = await startRedis(null);
    assert.ok(fresh);
    cleanups.push(() => fresh.dispose());
    const dir = await mkdtemp(join(tmpdir(), 'iotgate-ledger-m-'));
    cleanups.push(() => rm(dir, { recursive: true, force: true }));
    // An existing deployment with files: two devices, one revoked.
    const kept = await runCli(['device', 'provision', 'mig-1', '--out', join(dir, 'out'), '--json'], loopbackEnv(dir));
    assert.equal(kept.status, 0, kept.stderr);
    const gone = await runCli(['device', 'provision', 'mig-2', '--out', join(dir, 'out'), '--json'], loopbackEnv(dir));
    assert.equal(gone.status, 0, gone.stderr);
    assert.equal((await runCli(['device', 'revoke', 'mig-2'], loopbackEnv(dir))).status, 0);
    const nodes = clusterNodes({ redisUrl: () => fresh.url, certsDir: () => dir, teardown });
    const gw = await nodes.startNode();
    const imported = gw.proc.lines.map((l) => JSON.parse(l) as { msg?: string; imported?: number }).find((l) => l.msg?.includes('imported the file credential ledger'));
    assert.equal(imported?.imported, 2, gw.proc.lines.join('\n'));
    await openSession(teardown, gw.mqtt, deviceLogin(JSON.parse(kept.stdout) as { id: string; token: string }));
    await assertRefused(gw.mqtt, deviceLogin(JSON.parse(gone.stdout) as { id: string; token: string }), 'the device revoked before the switch');
    // A restart imports nothing again.
    await nodes.stopNode(gw);
    const again = await nodes.startNode();
    assert.ok(!again.proc.lines.some((l) => l.includes('imported the file credential ledger')));
  });
});
