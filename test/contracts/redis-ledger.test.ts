/**
 * The CredentialLedger contract on a real redis-server (one per file, a fresh key prefix per test;
 * "another instance" is another connection), plus what only the Redis ledger has: its key layout,
 * a bounded change log (a watcher whose position was trimmed lists everything again), the CRL it
 * signs into the local certs dir, the one-time import of a certs dir's file records, and Redis
 * going away under a watcher.
 */
import { after, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { access, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { pino } from 'pino';
import { isGatewayError } from '../../src/core/errors.js';
import { CA_FILES, FileCredentialLedger, initCa, loadCaMaterial, type CaMaterial } from '../../src/pki/index.js';
import { x509 } from '../../src/pki/x509.js';
import { RedisKeys, createRedisStores } from '../../src/stores/redis/index.js';
import { LEDGER_REDIS_MARKER, RedisCredentialLedger } from '../../src/stores/redis/ledger.js';
import { startRedis } from '../helpers/redis.js';
import { newTempDir, removeDir, tempDir, withDeadline } from '../helpers/pki.js';
import { credential, credentialLedgerContract, WatchLog } from './credential-ledger.js';
import { connect, redisForFile, silent } from './redis-harness.js';

const env = await redisForFile('redis credential ledger');
if (env) {
  const { redis, shared } = env;
  let n = 0;
  let material: CaMaterial;
  let caDir = '';
  after(() => removeDir(caDir || undefined));
  const certsCopy = async (t: Parameters<typeof tempDir>[0]) => {
    if (!caDir) {
      caDir = await newTempDir();
      await initCa(caDir);
      material = await loadCaMaterial(caDir);
    }
    const dir = await tempDir(t);
    for (const f of Object.values(CA_FILES)) await writeFile(join(dir, f), await readFile(join(caDir, f)));
    return dir;
  };

  credentialLedgerContract('redis', async (t) => {
    const prefix = `t${++n}:`;
    return {
      ledger: new RedisCredentialLedger(shared.client, new RedisKeys(prefix)),
      other: async () => {
        const stores = await connect(redis.url, prefix, t);
        return new RedisCredentialLedger(stores.client, stores.keys);
      },
    };
  });

  describe('RedisCredentialLedger', () => {
    it('keeps each record under its device hash tag, the index and the log apart', async () => {
      const prefix = `x${++n}:`;
      const ledger = new RedisCredentialLedger(shared.client, new RedisKeys(prefix));
      await ledger.put(credential('dev-1', { serial: 'AB' }));
      await ledger.revoke('dev-1', 9);
      assert.deepEqual((await shared.client.keys(`${prefix}*`)).sort(), [`${prefix}credentials`, `${prefix}credentials:log`, `${prefix}{dev-1}:credential`]);
      assert.equal(await shared.client.type(`${prefix}{dev-1}:credential`), 'hash');
      assert.equal(await shared.client.hget(`${prefix}{dev-1}:credential`, 'revokedSerials'), 'AB');
      assert.deepEqual(
        (await shared.client.xrange(`${prefix}credentials:log`, '-', '+')).map(([, kv]) => kv),
        [['id', 'dev-1'], ['id', 'dev-1']],
      );
    });

    it('bounds the change log; a watcher whose position was trimmed away lists everything again', async (t) => {
      const prefix = `x${++n}:`;
      const writer = new RedisCredentialLedger(shared.client, new RedisKeys(prefix), { logMaxLen: 5 });
      await writer.put(credential('first'));
      const log = new WatchLog(t, new RedisCredentialLedger(shared.client, new RedisKeys(prefix)), 200);
      await log.until((l) => l.batches.length === 1, 'the initial delivery');
      // Far more writes than the log keeps, between two polls.
      for (let i = 0; i < 300; i++) await writer.put(credential(`burst-${String(i).padStart(3, '0')}`));
      await writer.revoke('first', 77);
      assert.ok((await shared.client.xlen(`${prefix}credentials:log`)) < 300, 'the log is trimmed');
      await log.until((l) => l.batches.flat().filter((r) => r.id.startsWith('burst-')).length === 300 && l.delivered().includes('first@77'), 'every change after the trim');
      assert.equal(log.delivered().filter((d) => d === 'first@null').length, 1, 'an unchanged record is not delivered again');
    });

    it('rebuildCrl signs the local ca.crl from every serial revoked in Redis', async (t) => {
      const dir = await certsCopy(t);
      const prefix = `x${++n}:`;
      const ledger = new RedisCredentialLedger(shared.client, new RedisKeys(prefix), { certsDir: dir, material });
      await ledger.put(credential('dev-1', { serial: '0A1B' }));
      await ledger.put(credential('dev-2', { serial: '0C2D', revokedSerials: ['0E3F'] }));
      await ledger.put(credential('dev-3', { serial: '1234' }));
      // Revoked through another gateway: this one signs its own CRL from Redis.
      const stores = await connect(redis.url, prefix, t);
      await new RedisCredentialLedger(stores.client, stores.keys).revoke('dev-1', 5000);
      await Promise.all([ledger.rebuildCrl(), ledger.rebuildCrl(), ledger.rebuildCrl()]);
      const crl = new x509.X509Crl(await readFile(join(dir, CA_FILES.crl), 'utf8'));
      assert.ok(await crl.verify({ publicKey: new x509.X509Certificate(material.caCertPem) }));
      assert.deepEqual(crl.entries.map((e) => e.serialNumber.toUpperCase()).sort(), ['0A1B', '0E3F']);
      await assert.rejects(new RedisCredentialLedger(shared.client, new RedisKeys(prefix)).rebuildCrl(), /no certs dir/);
    });

    it('imports the certs dir’s file records once, never over a record Redis has, and marks the certs dir', async (t) => {
      const dir = await certsCopy(t);
      const files = new FileCredentialLedger(dir, material);
      await files.put(credential('old-1', { serial: 'AA', tokenId: 'file' }));
      await files.put(credential('old-2', { serial: 'BB' }));
      await files.revoke('old-2', 10);
      const prefix = `x${++n}:`;
      const ledger = new RedisCredentialLedger(shared.client, new RedisKeys(prefix), { certsDir: dir, material, log: silent });
      // Provisioned into Redis already (e.g. by the CLI): the import leaves it alone.
      await ledger.put(credential('old-1', { serial: 'CC', tokenId: 'redis' }));
      assert.equal(await ledger.importFileLedger('redis://:secret@127.0.0.1:1/0'), 1);
      assert.deepEqual(await ledger.get('old-2'), await files.get('old-2'));
      assert.equal((await ledger.get('old-1'))?.tokenId, 'redis');
      const marker = await readFile(join(dir, LEDGER_REDIS_MARKER), 'utf8');
      assert.match(marker, /"url":"redis:\/\/:\*\*\*@127\.0\.0\.1:1\/0"/);
      assert.doesNotMatch(marker, /secret/);
      // Once: a second gateway (or a restart) imports nothing, even with new file records.
      await files.put(credential('old-3'));
      assert.equal(await ledger.importFileLedger('redis://127.0.0.1:1/0'), null);
      assert.equal(await ledger.get('old-3'), null);
      // Nothing to import: no lock, no marker key in Redis.
      const empty = await certsCopy(t);
      const other = new RedisCredentialLedger(shared.client, new RedisKeys(`x${++n}:`), { certsDir: empty, material });
      assert.equal(await other.importFileLedger('redis://127.0.0.1:1/0'), null);
      await access(join(empty, LEDGER_REDIS_MARKER));
    });

    it('two gateways importing at the same moment import once', async (t) => {
      const dir = await certsCopy(t);
      const files = new FileCredentialLedger(dir, material);
      for (let i = 0; i < 20; i++) await files.put(credential(`m-${i}`));
      const prefix = `x${++n}:`;
      const b = await connect(redis.url, prefix, t);
      const results = await Promise.all([
        new RedisCredentialLedger(shared.client, new RedisKeys(prefix), { certsDir: dir, material }).importFileLedger(redis.url),
        new RedisCredentialLedger(b.client, b.keys, { certsDir: dir, material }).importFileLedger(redis.url),
      ]);
      assert.deepEqual(results.sort(), [20, null]);
      assert.equal((await new RedisCredentialLedger(shared.client, new RedisKeys(prefix)).list()).length, 20);
    });

    it('with Redis down calls fail as unavailable and the watcher retries; it catches up when Redis is back', async (t) => {
      const own = await startRedis(t);
      if (!own) return;
      const stores = createRedisStores(own.url, { historyMax: 10, telemetry: { retentionCount: 10, retentionMs: 60_000 }, log: silent });
      t.after(() => stores.close());
      await stores.ready();
      const lines: string[] = [];
      let onLine = () => undefined as void;
      const log = pino({ level: 'info' }, { write: (s: string) => void (lines.push(s), onLine()) });
      const logged = (text: string) =>
        withDeadline(new Promise<void>((resolve) => (onLine = () => void (lines.some((l) => l.includes(text)) && resolve()))), 5000, `"${text}" logged`);
      const ledger = new RedisCredentialLedger(stores.client, stores.keys, { log });
      await ledger.put(credential('d-1'));
      const watch = new WatchLog(t, ledger, 20);
      await watch.until((l) => l.batches.length === 1, 'the first delivery');
      const failed = logged('could not read the credential ledger from Redis; retrying');
      await own.stop();
      await failed;
      const down = await ledger.get('d-1').then(
        () => null,
        (e: unknown) => e,
      );
      assert.ok(isGatewayError(down) && down.code === 'unavailable', String(down));
      await assert.rejects(ledger.revoke('d-1', 5), (e: unknown) => isGatewayError(e) && e.code === 'unavailable');
      const back = logged('works again');
      await own.start();
      await stores.ready();
      const other = await connect(own.url, 'iotgate:', t);
      await new RedisCredentialLedger(other.client, other.keys).revoke('d-1', 6);
      await watch.record((r) => r.id === 'd-1' && r.revokedAt === 6, 'the revocation after Redis came back');
      await back;
    });
  });
}
