import assert from 'node:assert/strict';
import { X509Certificate } from 'node:crypto';
import { readFile, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import {
  CA_FILES,
  CaExistsError,
  CaFileMissingError,
  caExists,
  ensureCa,
  initCa,
  loadCaMaterial,
} from '../../src/pki/index.js';
import { needOpenssl, openssl, tempDir } from '../helpers/pki.js';

const SECRET_FILES = [CA_FILES.caKey, CA_FILES.serverKey, CA_FILES.tokenSecret, CA_FILES.jwtKey];

async function mode(path: string): Promise<number> {
  return (await stat(path)).mode & 0o777;
}

test('initCa creates every file, private ones mode 0600', async (t) => {
  const dir = await tempDir(t);
  const { created } = await initCa(dir, { hostnames: ['gw.example.test', '10.1.2.3'] });
  assert.deepEqual(new Set(created), new Set(Object.values(CA_FILES).map((f) => join(dir, f))));
  for (const f of SECRET_FILES) assert.equal(await mode(join(dir, f)), 0o600, f);
  for (const f of [CA_FILES.caCert, CA_FILES.serverCert, CA_FILES.jwtPub, CA_FILES.crl]) {
    assert.equal(await mode(join(dir, f)), 0o644, f);
  }
  assert.equal(caExists(dir), true);

  const m = await loadCaMaterial(dir);
  assert.equal(m.tokenSecret.length, 32);
  assert.match(m.jwtPrivateKeyPem, /^-----BEGIN PRIVATE[ ]KEY-----/);
  assert.match(m.jwtPublicKeyPem, /^-----BEGIN PUBLIC KEY-----/);
  assert.match(m.crlPem, /^-----BEGIN X509 CRL-----/);

  const ca = new X509Certificate(m.caCertPem);
  assert.equal(ca.subject, 'CN=iotgate dev CA');
  assert.equal(ca.ca, true);
  const server = new X509Certificate(m.serverCertPem);
  assert.equal(server.subject, 'CN=localhost');
  assert.ok(server.checkIssued(ca) && server.verify(ca.publicKey));
  const san = server.subjectAltName ?? '';
  for (const want of ['DNS:localhost', 'DNS:gw.example.test', 'IP Address:127.0.0.1', 'IP Address:10.1.2.3']) {
    assert.ok(san.includes(want), `SAN ${san} lacks ${want}`);
  }
  assert.deepEqual(server.keyUsage, ['1.3.6.1.5.5.7.3.1']);
});

test('initCa refuses to overwrite without force and overwrites with force', async (t) => {
  const dir = await tempDir(t);
  await initCa(dir);
  const before = await readFile(join(dir, CA_FILES.caCert), 'utf8');
  await assert.rejects(initCa(dir), (err: unknown) => {
    assert.ok(err instanceof CaExistsError);
    assert.match(err.message, /ca\.key/);
    assert.match(err.message, /--force/);
    return true;
  });
  assert.equal(await readFile(join(dir, CA_FILES.caCert), 'utf8'), before);

  // One leftover file is enough to refuse.
  const other = await tempDir(t);
  await writeFile(join(other, CA_FILES.tokenSecret), 'x');
  await assert.rejects(initCa(other), CaExistsError);

  await initCa(dir, { force: true });
  assert.notEqual(await readFile(join(dir, CA_FILES.caCert), 'utf8'), before);
  for (const f of SECRET_FILES) assert.equal(await mode(join(dir, f)), 0o600, f);
});

test('openssl accepts the server certificate, its SANs and the empty CRL', async (t) => {
  if (!needOpenssl(t)) return;
  const dir = await tempDir(t);
  await initCa(dir);
  const ca = join(dir, CA_FILES.caCert);
  const verify = openssl(['verify', '-CAfile', ca, join(dir, CA_FILES.serverCert)]);
  assert.equal(verify.status, 0, verify.stderr);
  assert.match(verify.stdout, /server\.crt: OK/);
  const san = openssl(['x509', '-in', join(dir, CA_FILES.serverCert), '-noout', '-ext', 'subjectAltName']);
  assert.equal(san.status, 0, san.stderr);
  assert.match(san.stdout, /DNS:localhost/);
  assert.match(san.stdout, /IP Address:127\.0\.0\.1/);
  const crl = openssl(['crl', '-in', join(dir, CA_FILES.crl), '-CAfile', ca, '-noout']);
  assert.equal(crl.status, 0, crl.stderr);
  assert.match(crl.stdout + crl.stderr, /verify OK/);
  const caText = openssl(['x509', '-in', ca, '-noout', '-text']);
  assert.match(caText.stdout, /CA:TRUE/);
  assert.match(caText.stdout, /Certificate Sign, CRL Sign/);
});

test('ensureCa creates a CA only when missing and fills in missing secrets', async (t) => {
  const dir = await tempDir(t);
  const first = await ensureCa(dir);
  assert.equal(first.created, true);
  const caPem = await readFile(join(dir, CA_FILES.caCert), 'utf8');
  const secret = await readFile(join(dir, CA_FILES.tokenSecret), 'utf8');

  const again = await ensureCa(dir);
  assert.deepEqual(again, { created: false, files: [] });

  await rm(join(dir, CA_FILES.jwtKey));
  await rm(join(dir, CA_FILES.jwtPub));
  const repaired = await ensureCa(dir);
  assert.equal(repaired.created, false);
  assert.deepEqual(new Set(repaired.files), new Set([join(dir, CA_FILES.jwtKey), join(dir, CA_FILES.jwtPub)]));
  assert.equal(await mode(join(dir, CA_FILES.jwtKey)), 0o600);
  assert.equal(await readFile(join(dir, CA_FILES.caCert), 'utf8'), caPem);
  assert.equal(await readFile(join(dir, CA_FILES.tokenSecret), 'utf8'), secret);

  await rm(join(dir, CA_FILES.jwtPub));
  const keyBefore = await readFile(join(dir, CA_FILES.jwtKey), 'utf8');
  assert.deepEqual((await ensureCa(dir)).files, [join(dir, CA_FILES.jwtPub)]);
  assert.equal(await readFile(join(dir, CA_FILES.jwtKey), 'utf8'), keyBefore);

  await rm(join(dir, CA_FILES.caKey));
  await assert.rejects(ensureCa(dir), /incomplete/);
});

test('loadCaMaterial names the missing file', async (t) => {
  const dir = await tempDir(t);
  await initCa(dir);
  await rm(join(dir, CA_FILES.jwtKey));
  await assert.rejects(loadCaMaterial(dir), (err: unknown) => {
    assert.ok(err instanceof CaFileMissingError);
    assert.equal(err.file, join(dir, CA_FILES.jwtKey));
    assert.match(err.message, /jwt\.key/);
    return true;
  });
});
