/**
 * MQTT CONNECT authentication against an in-process gateway (contract §2): device tokens and
 * service JWTs on the TCP port, mutual TLS with RSA and EC P-256 device certificates on the TLS
 * port, and revocation closing a live mTLS session and failing the next handshake.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { TestContext } from 'node:test';
import { connectAsync } from 'mqtt';
import { opensslCsr } from '../helpers/csr.js';
import { build, type TestGateway } from '../helpers/gateway.js';
import {
  assertRefused,
  assertTlsRefused,
  closeEvent,
  connect,
  mtlsOptions,
  registerDevice,
  tcpUrl,
  tls12Handshake,
  tlsUrl,
  withDeadline,
} from '../helpers/mqtt.js';
import { requireTool, run } from '../helpers/tools.js';

const REVOCATION_BOUND_MS = 5_000;

async function tempDir(t: TestContext): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'iotgate-mqtt-auth-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

function openssl(args: string[], cwd: string): string {
  const r = run('openssl', args, { cwd });
  assert.equal(r.status, 0, `openssl ${args.join(' ')}: ${r.stderr}`);
  return r.stdout;
}

async function healthy(gw: TestGateway): Promise<void> {
  assert.equal((await fetch(`${gw.url}/healthz`)).status, 200);
}

test('MQTT CONNECT authentication', async (t) => {
  if (!requireTool(t, 'openssl')) return;
  const gw = await build(t);
  const dir = await tempDir(t);
  const [rsa, ec, other] = await Promise.all([
    registerDevice(gw, 'auth-rsa-1', 'rsa'),
    registerDevice(gw, 'auth-ec-1', 'ec'),
    registerDevice(gw, 'auth-other', 'rsa'),
  ]);

  await t.test('TCP: username = id and the device token are accepted', async (t) => {
    for (const d of [rsa, ec]) {
      const client = await connect(t, tcpUrl(gw), { clientId: d.id, username: d.id, password: d.token });
      assert.equal(client.connected, true, d.id);
    }
  });

  await t.test('TCP: bad device credentials are refused with CONNACK 4/5', async () => {
    const url = tcpUrl(gw);
    await assertRefused(url, { clientId: rsa.id, username: rsa.id, password: `${rsa.token.slice(0, -2)}xx` }, 'wrong token');
    await assertRefused(url, { clientId: rsa.id, username: rsa.id, password: other.token }, "another device's token");
    await assertRefused(url, { clientId: other.id, username: rsa.id, password: rsa.token }, 'client id != username');
    await assertRefused(url, { clientId: rsa.id, username: rsa.id }, 'missing password');
    await assertRefused(url, { clientId: rsa.id }, 'no username, no password');
    await assertRefused(url, { clientId: 'nobody', username: 'nobody', password: 'garbage' }, 'unknown device');
    await healthy(gw);
    // A refused attempt does not lock the device out.
    const client = await connectAsync(url, { clientId: rsa.id, username: rsa.id, password: rsa.token, reconnectPeriod: 0 }, false);
    await client.endAsync();
  });

  await t.test('TCP: a service logs in with username service:<sub> and its JWT', async (t) => {
    const url = tcpUrl(gw);
    const jwt = await gw.token('admin', { sub: 'ops' });
    const client = await connect(t, url, { clientId: 'ops-console', username: 'service:ops', password: jwt });
    assert.equal(client.connected, true);
    await assertRefused(url, { clientId: 'ops-console-2', username: 'service:other', password: jwt }, 'sub mismatch');
    await assertRefused(url, { clientId: 'ops-console-3', username: 'service:ops', password: `${jwt}x` }, 'tampered JWT');
    await assertRefused(url, { clientId: 'ops-console-4', username: 'service:auth-rsa-1', password: rsa.token }, 'a device token as a service JWT');
    await assertRefused(url, { clientId: 'ops', username: 'ops', password: jwt }, 'a service JWT as a device token');
    await healthy(gw);
  });

  await t.test('mTLS: RSA and EC P-256 device certificates are accepted', async (t) => {
    for (const d of [rsa, ec]) {
      const client = await connect(t, tlsUrl(gw), mtlsOptions(d, d.id));
      assert.equal(client.connected, true, d.id);
    }
  });

  await t.test('mTLS: no client certificate is refused', async () => {
    await assertTlsRefused(tlsUrl(gw), { ca: rsa.caPem, rejectUnauthorized: true, servername: 'localhost', clientId: rsa.id }, 'no client cert');
    await healthy(gw);
  });

  await t.test('mTLS: a certificate from another CA is refused', async () => {
    openssl(['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'other-ca.key', '-out', 'other-ca.crt', '-subj', '/CN=not the gateway CA', '-days', '2'], dir);
    // Same CN as a real device, so only the issuer differs.
    const { keyPem, csrPem } = opensslCsr(rsa.id, 'rsa');
    await writeFile(join(dir, 'forged.csr'), csrPem);
    openssl(['x509', '-req', '-in', 'forged.csr', '-CA', 'other-ca.crt', '-CAkey', 'other-ca.key', '-CAcreateserial', '-days', '2', '-out', 'forged.crt'], dir);
    const forged = { keyPem, certPem: await readFile(join(dir, 'forged.crt'), 'utf8'), caPem: rsa.caPem };
    await assertTlsRefused(tlsUrl(gw), mtlsOptions(forged, rsa.id), 'cert from another CA');
    assert.notEqual(await tls12Handshake(gw.ports.mqtts, forged), 'ok', 'the handshake itself fails');
    await healthy(gw);
  });

  await t.test('mTLS: client id != certificate CN is refused', async () => {
    await assertRefused(tlsUrl(gw), mtlsOptions(rsa, other.id), 'client id of another device');
    await assertRefused(tlsUrl(gw), mtlsOptions(ec, 'someone-else'), 'client id of nobody');
  });

  await t.test('revocation closes the live mTLS session and fails the next handshake within 5 s', async (t) => {
    const victim = await registerDevice(gw, 'auth-revoked', 'ec');
    assert.equal(await tls12Handshake(gw.ports.mqtts, victim), 'ok', 'handshake works before the revocation');
    const client = await connect(t, tlsUrl(gw), mtlsOptions(victim, victim.id));
    assert.equal(client.connected, true);
    const bystander = await connect(t, tlsUrl(gw), mtlsOptions(rsa, rsa.id));

    const closed = closeEvent(client);
    const del = await fetch(`${gw.url}/v1/devices/${victim.id}`, {
      method: 'DELETE',
      headers: { authorization: `Bearer ${await gw.token('devices:write')}` },
    });
    assert.equal(del.status, 204);
    const revokedAt = Date.now();
    await withDeadline(closed, REVOCATION_BOUND_MS, 'the gateway closes the live mTLS session of the revoked device');

    // No event tells when the new CRL is in force: retry the handshake until it fails, for 5 s.
    let last = 'ok';
    while ((last = await tls12Handshake(gw.ports.mqtts, victim)) === 'ok') {
      assert.ok(Date.now() - revokedAt < REVOCATION_BOUND_MS, 'the handshake still succeeds 5 s after the revocation');
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    assert.notEqual(last, 'ok');
    await assertTlsRefused(tlsUrl(gw), mtlsOptions(victim, victim.id), 'MQTT over TLS after revocation');

    // Other devices are untouched.
    assert.equal(bystander.connected, true);
    assert.equal(await tls12Handshake(gw.ports.mqtts, rsa), 'ok');
    await healthy(gw);
  });
});
