import assert from 'node:assert/strict';
import { readFile, readdir, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import type { CredentialRecord } from '../../src/core/model.js';
import {
  CA_FILES,
  FileCredentialLedger,
  LEDGER_DEVICES_DIR,
  LEDGER_SEQ_FILE,
  PkiAuthority,
} from '../../src/pki/index.js';
import { x509 } from '../../src/pki/x509.js';
import { needOpenssl, openssl, suiteCa, withDeadline } from '../helpers/pki.js';

const suite = suiteCa();

function record(id: string, over: Partial<CredentialRecord> = {}): CredentialRecord {
  return { id, type: 'generic', serial: null, notAfter: null, tokenId: 't0', issuedAt: 1000, revokedAt: null, revokedSerials: [], ...over };
}

const certsDir = (t: Parameters<typeof suite.certsDir>[0]): Promise<string> => suite.certsDir(t);

test('put, get and list; files are 0600 and the sequence file moves', async (t) => {
  const dir = await certsDir(t);
  const ledger = new FileCredentialLedger(dir, suite.material());
  assert.equal(await ledger.get('nobody'), null);
  assert.deepEqual(await ledger.list(), []);
  await ledger.put(record('b:2'));
  const seq1 = await readFile(join(dir, LEDGER_SEQ_FILE), 'utf8');
  await ledger.put(record('a-1', { serial: 'AB', tokenId: 't1' }));
  const seq2 = await readFile(join(dir, LEDGER_SEQ_FILE), 'utf8');
  assert.notEqual(seq1, seq2);
  assert.equal(Number.parseInt(seq2, 10), Number.parseInt(seq1, 10) + 1);
  assert.deepEqual(await ledger.get('a-1'), record('a-1', { serial: 'AB', tokenId: 't1' }));
  assert.deepEqual((await ledger.list()).map((r) => r.id), ['a-1', 'b:2']);
  const files = await readdir(join(dir, LEDGER_DEVICES_DIR));
  assert.deepEqual(files.sort(), ['a-1.json', 'b%3A2.json']);
  for (const f of files) assert.equal((await stat(join(dir, LEDGER_DEVICES_DIR, f))).mode & 0o777, 0o600);
  await assert.rejects(ledger.put({ ...record('x'), id: '../x' }), /not a valid credential record/);
  assert.equal(await ledger.revoke('unknown', 5), null);
});

test('revoke writes the CRL; openssl -crl_check reports the certificate revoked', async (t) => {
  const dir = await certsDir(t);
  const ledger = new FileCredentialLedger(dir, suite.material());
  const ca = new PkiAuthority(suite.material());
  const issued = await ca.issueWithKey({ id: 'dev-1', type: 'generic' }, { keyType: 'ec' });
  const keep = await ca.issueWithKey({ id: 'dev-2', type: 'generic' }, { keyType: 'ec' });
  await ledger.put(record('dev-1', { serial: issued.serial, notAfter: issued.notAfter }));
  await ledger.put(record('dev-2', { serial: keep.serial, notAfter: keep.notAfter }));

  const revoked = await ledger.revoke('dev-1', 123_000);
  assert.deepEqual(revoked, record('dev-1', { serial: issued.serial, notAfter: issued.notAfter, revokedAt: 123_000, revokedSerials: [issued.serial] }));
  assert.deepEqual(await ledger.get('dev-1'), revoked);
  // Revoking twice keeps the first date and lists the serial once.
  assert.deepEqual(await ledger.revoke('dev-1', 999_000), revoked);

  const crlPem = await readFile(join(dir, CA_FILES.crl), 'utf8');
  const crl = new x509.X509Crl(crlPem);
  assert.ok(await crl.verify({ publicKey: new x509.X509Certificate(suite.material().caCertPem) }));
  assert.equal(crl.entries.length, 1);
  assert.ok(crl.findRevoked(issued.serial.toLowerCase()));
  assert.equal(crl.findRevoked(keep.serial.toLowerCase()), null);

  // Re-provisioning keeps the old serial revoked.
  const again = await ca.issueWithKey({ id: 'dev-1', type: 'generic' }, { keyType: 'ec' });
  await ledger.put(record('dev-1', { serial: again.serial, tokenId: 't2' }));
  assert.deepEqual((await ledger.get('dev-1'))?.revokedSerials, [issued.serial]);

  if (!needOpenssl(t)) return;
  const caPath = join(dir, CA_FILES.caCert);
  const crlPath = join(dir, CA_FILES.crl);
  const check = openssl(['crl', '-in', crlPath, '-CAfile', caPath, '-noout']);
  assert.equal(check.status, 0, check.stderr);
  assert.match(check.stdout + check.stderr, /verify OK/);
  for (const [name, pem] of [['revoked.crt', issued.certificatePem], ['kept.crt', keep.certificatePem], ['again.crt', again.certificatePem]] as const) {
    await writeFile(join(dir, name), pem);
  }
  const bad = openssl(['verify', '-crl_check', '-CRLfile', crlPath, '-CAfile', caPath, join(dir, 'revoked.crt')]);
  assert.notEqual(bad.status, 0);
  assert.match(bad.stdout + bad.stderr, /certificate revoked/);
  for (const name of ['kept.crt', 'again.crt']) {
    const good = openssl(['verify', '-crl_check', '-CRLfile', crlPath, '-CAfile', caPath, join(dir, name)]);
    assert.equal(good.status, 0, good.stdout + good.stderr);
  }
});

test('watch delivers everything first, then what another process writes', async (t) => {
  const dir = await certsDir(t);
  const gateway = new FileCredentialLedger(dir, suite.material());
  const cli = new FileCredentialLedger(dir, suite.material());
  await cli.put(record('early'));

  const batches: CredentialRecord[][] = [];
  let notify: () => void = () => undefined;
  const next = (pred: (r: CredentialRecord) => boolean, what: string) =>
    withDeadline(
      new Promise<CredentialRecord>((resolve) => {
        const check = () => {
          const hit = batches.flat().find(pred);
          if (hit) resolve(hit);
        };
        notify = check;
        check();
      }),
      5000,
      what,
    );
  const stop = gateway.watch((changed) => {
    batches.push(changed);
    notify();
  }, 20);
  t.after(stop);

  await next((r) => r.id === 'early', 'the initial delivery');
  assert.deepEqual(batches[0]?.map((r) => r.id), ['early']);

  await cli.put(record('dev-9', { tokenId: 'tok-9' }));
  assert.equal((await next((r) => r.id === 'dev-9', 'the CLI write')).tokenId, 'tok-9');

  await cli.revoke('dev-9', 42);
  assert.equal((await next((r) => r.id === 'dev-9' && r.revokedAt === 42, 'the CLI revocation')).revokedAt, 42);
  // Each change is delivered once; untouched records are not delivered again.
  const delivered = batches.flat().map((r) => `${r.id}@${r.revokedAt}`);
  assert.deepEqual(delivered, ['early@null', 'dev-9@null', 'dev-9@42']);
});

test('watch survives unreadable files and a throwing callback', async (t) => {
  const dir = await certsDir(t);
  const ledger = new FileCredentialLedger(dir, suite.material());
  await ledger.put(record('ok-1'));
  await writeFile(join(dir, LEDGER_DEVICES_DIR, 'broken.json'), '{"id": "bro');

  const seen: string[] = [];
  const waiters: { id: string; resolve: () => void }[] = [];
  const seenId = (id: string) =>
    withDeadline(new Promise<void>((resolve) => (seen.includes(id) ? resolve() : waiters.push({ id, resolve }))), 5000, id);
  const stop = ledger.watch((changed) => {
    for (const r of changed) seen.push(r.id);
    for (const w of waiters) if (seen.includes(w.id)) w.resolve();
    throw new Error('callback bug');
  }, 20);
  t.after(stop);

  await seenId('ok-1');
  assert.deepEqual(seen, ['ok-1']);
  // The scan that met the broken file is retried on later ticks, with no new sequence bump.
  await writeFile(join(dir, LEDGER_DEVICES_DIR, 'broken.json'), JSON.stringify(record('broken')));
  await seenId('broken');
  // The callback threw every time, and the watcher kept going.
  await ledger.put(record('ok-2'));
  await seenId('ok-2');
  assert.deepEqual(seen, ['ok-1', 'broken', 'ok-2']);
});
