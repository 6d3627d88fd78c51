import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { PkiAuthority, initCa, loadCaMaterial, verifyDeviceCertificate, type CaMaterial } from '../../src/pki/index.js';
import { x509 } from '../../src/pki/x509.js';
import { newTempDir, removeDir } from '../helpers/pki.js';

const dirs: string[] = [];
let material: CaMaterial;
let foreign: CaMaterial;

async function newCa(): Promise<CaMaterial> {
  const dir = await newTempDir();
  dirs.push(dir);
  await initCa(dir);
  return loadCaMaterial(dir);
}

before(async () => {
  [material, foreign] = await Promise.all([newCa(), newCa()]);
});
after(() => Promise.all(dirs.map((d) => removeDir(d))));

test('accepts RSA and EC device certificates, PEM and DER', async () => {
  const ca = new PkiAuthority(material);
  for (const keyType of ['rsa', 'ec'] as const) {
    const issued = await ca.issueWithKey({ id: `dev-${keyType}`, type: 'meter' }, { keyType });
    const expected = { ok: true, deviceId: `dev-${keyType}`, type: 'meter', serial: issued.serial, notAfter: issued.notAfter };
    assert.deepEqual(verifyDeviceCertificate(issued.certificatePem, material), expected);
    const der = Buffer.from(x509.PemConverter.decodeFirst(issued.certificatePem));
    assert.deepEqual(verifyDeviceCertificate(der, material), expected);
  }
});

test('rejects a certificate from another CA', async () => {
  const issued = await new PkiAuthority(foreign).issueWithKey({ id: 'dev-1', type: 'generic' }, { keyType: 'ec' });
  const r = verifyDeviceCertificate(issued.certificatePem, material);
  assert.equal(r.ok, false);
  assert.match(r.ok ? '' : r.reason, /not issued by the gateway CA/);
});

test('rejects expired and not yet valid certificates', async () => {
  const issued = await new PkiAuthority(material, { deviceCertDays: 1 }).issueWithKey({ id: 'dev-1', type: 'generic' }, { keyType: 'ec' });
  assert.equal(verifyDeviceCertificate(issued.certificatePem, material).ok, true);
  assert.deepEqual(verifyDeviceCertificate(issued.certificatePem, material, Date.now() + 2 * 86_400_000), {
    ok: false,
    reason: 'certificate has expired',
  });
  assert.deepEqual(verifyDeviceCertificate(issued.certificatePem, material, Date.now() - 3_600_000), {
    ok: false,
    reason: 'certificate is not yet valid',
  });
  const dead = await new PkiAuthority(material, { deviceCertDays: -1 }).issueWithKey({ id: 'dev-2', type: 'generic' }, { keyType: 'ec' });
  assert.deepEqual(verifyDeviceCertificate(dead.certificatePem, material), { ok: false, reason: 'certificate has expired' });
});

test('rejects the CA itself, the server certificate and garbage', () => {
  assert.equal(verifyDeviceCertificate(material.caCertPem, material).ok, false);
  const server = verifyDeviceCertificate(material.serverCertPem, material);
  assert.deepEqual(server, { ok: false, reason: 'certificate is not valid for client authentication' });
  assert.deepEqual(verifyDeviceCertificate('nope', material), { ok: false, reason: 'certificate cannot be parsed' });
  assert.deepEqual(verifyDeviceCertificate(Buffer.alloc(10), material), { ok: false, reason: 'certificate cannot be parsed' });
});
