import assert from 'node:assert/strict';
import { X509Certificate, createHmac, createPrivateKey, randomBytes } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { isGatewayError } from '../../src/core/errors.js';
import { CA_FILES, PkiAuthority, initCa, loadCaMaterial, type CaMaterial } from '../../src/pki/index.js';
import { x509 } from '../../src/pki/x509.js';
import { needOpenssl, newTempDir, openssl, opensslSerial, removeDir, tempDir } from '../helpers/pki.js';

let dir = '';
let material: CaMaterial;
let ca: PkiAuthority;

after(() => removeDir(dir));

before(async () => {
  dir = await newTempDir();
  await initCa(dir);
  material = await loadCaMaterial(dir);
  ca = new PkiAuthority(material);
});

function isCsrInvalid(pattern: RegExp) {
  return (err: unknown) => {
    assert.ok(isGatewayError(err), String(err));
    assert.equal(err.code, 'csr_invalid');
    assert.match(err.message, pattern);
    return true;
  };
}

/** A CSR made with @peculiar/x509 (no openssl needed). */
async function libraryCsr(cn: string): Promise<string> {
  const alg = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' };
  const keys = await globalThis.crypto.subtle.generateKey(alg, true, ['sign', 'verify']);
  const csr = await x509.Pkcs10CertificateRequestGenerator.create({ name: `CN=${cn}`, keys, signingAlgorithm: alg });
  return csr.toString('pem');
}

for (const keyType of ['rsa', 'ec'] as const) {
  test(`issueWithKey ${keyType}: CN/OU, serial, validity, openssl verify`, async (t) => {
    const issued = await ca.issueWithKey({ id: `dev-${keyType}`, type: 'thermostat' }, { keyType });
    assert.match(issued.privateKeyPem, /^-----BEGIN PRIVATE[ ]KEY-----/);
    assert.match(issued.serial, /^[0-9A-F]{32}$/);
    const cert = new X509Certificate(issued.certificatePem);
    assert.equal(cert.subject, `CN=dev-${keyType}\nOU=thermostat`);
    assert.equal(cert.issuer, 'CN=iotgate dev CA');
    assert.equal(cert.serialNumber.toUpperCase(), issued.serial);
    assert.equal(cert.ca, false);
    assert.deepEqual(cert.keyUsage, ['1.3.6.1.5.5.7.3.2']);
    assert.equal(cert.publicKey.asymmetricKeyType, keyType);
    assert.ok(cert.checkPrivateKey(createPrivateKey(issued.privateKeyPem)));
    const days = (Date.parse(issued.notAfter) - Date.now()) / 86_400_000;
    assert.ok(days > 364 && days <= 365, `notAfter ${issued.notAfter}`);
    assert.equal(new Date(cert.validTo).toISOString(), issued.notAfter);

    if (!needOpenssl(t)) return;
    const path = join(dir, `dev-${keyType}.crt`);
    await writeFile(path, issued.certificatePem);
    const r = openssl(['verify', '-CAfile', join(dir, CA_FILES.caCert), path]);
    assert.equal(r.status, 0, r.stderr);
    assert.equal(opensslSerial(path), issued.serial);
    const text = openssl(['x509', '-in', path, '-noout', '-text']).stdout;
    assert.match(text, /CA:FALSE/);
    assert.match(text, /TLS Web Client Authentication/);
    assert.match(text, /X509v3 Authority Key Identifier/);
    assert.match(text, /X509v3 Subject Key Identifier/);
    assert.match(text, keyType === 'rsa' ? /Digital Signature, Key Encipherment/ : /Digital Signature\n/);
  });
}

for (const [keyType, newkey] of [
  ['RSA', ['-newkey', 'rsa:2048']],
  ['EC P-256', ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256']],
] as const) {
  test(`issueFromCsr accepts an openssl ${keyType} CSR`, async (t) => {
    if (!needOpenssl(t)) return;
    const work = await tempDir(t);
    const csrPath = join(work, 'dev.csr');
    const r = openssl(['req', '-new', ...newkey, '-nodes', '-keyout', join(work, 'dev.key'), '-subj', '/CN=sensor.42', '-out', csrPath]);
    assert.equal(r.status, 0, r.stderr);
    const issued = await ca.issueFromCsr(await readFile(csrPath, 'utf8'), { id: 'sensor.42', type: 'generic' });
    const certPath = join(work, 'dev.crt');
    await writeFile(certPath, issued.certificatePem);
    const v = openssl(['verify', '-CAfile', join(dir, CA_FILES.caCert), certPath]);
    assert.equal(v.status, 0, v.stderr);
    assert.equal(opensslSerial(certPath), issued.serial);
    const subject = openssl(['x509', '-in', certPath, '-noout', '-subject']).stdout;
    assert.match(subject, /CN = sensor\.42, OU = generic/);
    const match = openssl(['x509', '-in', certPath, '-noout', '-pubkey']).stdout;
    const keyPub = openssl(['pkey', '-in', join(work, 'dev.key'), '-pubout']).stdout;
    assert.equal(match, keyPub, 'certificate carries the CSR key');
  });
}

test('issueFromCsr rejects a CN that is not the id, naming both', async () => {
  await assert.rejects(
    ca.issueFromCsr(await libraryCsr('someone-else'), { id: 'dev-1', type: 'generic' }),
    isCsrInvalid(/CSR subject CN "someone-else" does not match id "dev-1"/),
  );
});

test('issueFromCsr rejects garbage, empty input and non-CSR PEM', async () => {
  const device = { id: 'dev-1', type: 'generic' };
  await assert.rejects(ca.issueFromCsr('hello world', device), isCsrInvalid(/not valid PEM\/DER/));
  await assert.rejects(ca.issueFromCsr('', device), isCsrInvalid(/empty/));
  const junkPem = `-----BEGIN CERTIFICATE REQUEST-----\n${randomBytes(300).toString('base64')}\n-----END CERTIFICATE REQUEST-----\n`;
  await assert.rejects(ca.issueFromCsr(junkPem, device), isCsrInvalid(/not valid PEM\/DER/));
  await assert.rejects(ca.issueFromCsr(material.caCertPem, device), isCsrInvalid(/not valid PEM\/DER/));
  await assert.rejects(ca.issueFromCsr('A'.repeat(100_000), device), isCsrInvalid(/larger than/));
});

test('issueFromCsr rejects a CSR whose signature was tampered with', async () => {
  const pem = await libraryCsr('dev-1');
  const der = Buffer.from(x509.PemConverter.decodeFirst(pem));
  der[der.length - 5] = (der[der.length - 5] ?? 0) ^ 0xff;
  const tampered = x509.PemConverter.encode(der, 'CERTIFICATE REQUEST');
  await assert.rejects(ca.issueFromCsr(tampered, { id: 'dev-1', type: 'generic' }), isCsrInvalid(/signature does not verify/));
});

test('issueFromCsr rejects unsupported keys', async () => {
  const alg = { name: 'ECDSA', namedCurve: 'P-384', hash: 'SHA-384' };
  const keys = await globalThis.crypto.subtle.generateKey(alg, true, ['sign', 'verify']);
  const csr = await x509.Pkcs10CertificateRequestGenerator.create({ name: 'CN=dev-1', keys, signingAlgorithm: alg });
  await assert.rejects(
    ca.issueFromCsr(csr.toString('pem'), { id: 'dev-1', type: 'generic' }),
    isCsrInvalid(/unsupported key type: EC curve secp384r1/),
  );
});

test('issue rejects invalid ids and types', async () => {
  await assert.rejects(ca.issueWithKey({ id: '-bad', type: 'generic' }), { code: 'invalid_device_id' });
  await assert.rejects(ca.issueWithKey({ id: 'ok', type: 'a,OU=admin' }), { code: 'validation_failed' });
});

test('device tokens round-trip; tampered, foreign and oversized tokens are null', () => {
  const { token, tokenId } = ca.mintDeviceToken('dev:1.a_b-c');
  assert.match(token, /^dt1\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]{22}\.[A-Za-z0-9_-]{43}$/);
  assert.deepEqual(ca.parseDeviceToken(token), { deviceId: 'dev:1.a_b-c', tokenId });
  assert.notEqual(ca.mintDeviceToken('dev:1.a_b-c').tokenId, tokenId);

  const [prefix, idPart, tid, mac] = token.split('.') as [string, string, string, string];
  const flip = (s: string) => (s[0] === 'A' ? 'B' : 'A') + s.slice(1);
  assert.equal(ca.parseDeviceToken(`${prefix}.${idPart}.${tid}.${flip(mac)}`), null);
  assert.equal(ca.parseDeviceToken(`${prefix}.${idPart}.${flip(tid)}.${mac}`), null);
  const otherId = Buffer.from('dev-2').toString('base64url');
  assert.equal(ca.parseDeviceToken(`${prefix}.${otherId}.${tid}.${mac}`), null);
  assert.equal(ca.parseDeviceToken(`dt2.${idPart}.${tid}.${mac}`), null);
  assert.equal(ca.parseDeviceToken(token.slice(0, -1)), null);
  assert.equal(ca.parseDeviceToken(`${token}.x`), null);
  assert.equal(ca.parseDeviceToken(''), null);
  assert.equal(ca.parseDeviceToken('x'.repeat(100_000)), null);

  const other = new PkiAuthority({ ...material, tokenSecret: randomBytes(32) });
  assert.equal(other.parseDeviceToken(token), null);

  // A correct MAC over an oversized body is still refused by length.
  const longId = Buffer.from('a'.repeat(400)).toString('base64url');
  const body = `dt1.${longId}.${tid}`;
  const forged = `${body}.${createHmac('sha256', material.tokenSecret).update(body).digest('base64url')}`;
  assert.ok(forged.length > 512);
  assert.equal(ca.parseDeviceToken(forged), null);
  // A correct MAC over an id that is not a device id is refused too.
  const badBody = `dt1.${Buffer.from('../etc').toString('base64url')}.${tid}`;
  assert.equal(ca.parseDeviceToken(`${badBody}.${createHmac('sha256', material.tokenSecret).update(badBody).digest('base64url')}`), null);
});

test('PkiAuthority works with a PKCS#1 CA key too', async () => {
  const pkcs1 = createPrivateKey(material.caKeyPem).export({ type: 'pkcs1', format: 'pem' }).toString();
  const issued = await new PkiAuthority({ ...material, caKeyPem: pkcs1 }).issueWithKey({ id: 'p1', type: 'generic' }, { keyType: 'ec' });
  const cert = new X509Certificate(issued.certificatePem);
  assert.ok(cert.verify(new X509Certificate(material.caCertPem).publicKey));
});
