/**
 * CoAP over DTLS (coaps, issue 7 item 6) against an in-process gateway, driven by Debian's
 * `coap-client` (libcoap3-bin, the OpenSSL or GnuTLS variant): PSK (identity = device id, key =
 * the last segment of the device token), X.509 with certificates from POST /v1/register (EC and
 * RSA), a rogue CA, revocation of a device with a live session, garbage on the port.
 *
 * coap-client exits 0 even when the handshake fails, so success and failure are read from its
 * output and from REST. It runs asynchronously (execFile): the gateway answers from this
 * process's event loop. Without the addon or the tool the tests skip locally and fail in CI.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { randomBytes, randomUUID } from 'node:crypto';
import { createSocket } from 'node:dgram';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { dtlsAddonPath } from '../../protocols/coap/dtls-native.js';
import { call, metric } from '../helpers/http.js';
import { suiteGateway, type TestGateway } from '../helpers/gateway.js';
import { registerDevice, type Device } from '../helpers/mqtt.js';
import { toolPath } from '../helpers/tools.js';
import type { TestContext } from 'node:test';

const ADDON = dtlsAddonPath();
const gateway = ADDON ? suiteGateway({ IOTGATE_COAPS_ENABLED: 'true', IOTGATE_COAPS_PORT: '0' }) : null;

/** Errors thrown to the top of this process (the gateway runs in it). */
const uncaught: unknown[] = [];
process.on('uncaughtExceptionMonitor', (err) => uncaught.push(err));

function unavailable(t: TestContext, message: string): false {
  if (process.env.CI === 'true') throw new Error(`${message}; CI=true makes this a failure`);
  t.skip(message);
  return false;
}

let dtlsClient: Promise<string | null> | undefined;
/** A coap-client variant with DTLS (the -notls one has none), OpenSSL preferred. */
function findDtlsClient(): Promise<string | null> {
  dtlsClient ??= (async () => {
    const candidates = ['coap-client-openssl', 'coap-client-gnutls', 'coap-client'].map((n) => toolPath(n)).filter((p): p is string => p !== null);
    for (const bin of candidates) {
      const { stdout, stderr } = await runFile(bin, ['-h'], 5000);
      if (/TLS Library: (OpenSSL|GnuTLS)/i.test(stdout + stderr)) return bin;
    }
    return null;
  })();
  return dtlsClient;
}

function runFile(bin: string, args: string[], timeoutMs: number): Promise<{ stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(bin, args, { timeout: timeoutMs, encoding: 'utf8' }, (_err, stdout, stderr) => resolve({ stdout, stderr }));
  });
}

/** The gateway and a DTLS coap-client, or a skip (locally) / failure (CI). */
async function ready(t: TestContext): Promise<{ gw: TestGateway; bin: string } | null> {
  if (!ADDON || !gateway) {
    unavailable(t, 'the DTLS addon is not built (native/dtls/build/Release/dtls_native.node); run `npm run build:dtls`');
    return null;
  }
  const bin = await findDtlsClient();
  if (!bin) {
    unavailable(t, 'no coap-client with DTLS (apt-get install libcoap3-bin for coap-client-openssl)');
    return null;
  }
  return { gw: gateway(), bin };
}

type Auth = { psk: { identity: string; key: string } } | { cert: { certPem: string; keyPem: string } };

/** Runs coap-client against the coaps port; the output is all there is to judge by. */
async function coaps(t: TestContext, bin: string, gw: TestGateway, auth: Auth, args: string[], timeoutMs = 15_000): Promise<string> {
  const extra: string[] = [];
  if ('psk' in auth) extra.push('-u', auth.psk.identity, '-k', auth.psk.key);
  else {
    const dir = await mkdtemp(join(tmpdir(), 'iotgate-coaps-'));
    t.after(() => rm(dir, { recursive: true, force: true }));
    await writeFile(join(dir, 'cert.pem'), auth.cert.certPem);
    await writeFile(join(dir, 'key.pem'), auth.cert.keyPem);
    extra.push('-c', join(dir, 'cert.pem'), '-j', join(dir, 'key.pem'));
  }
  const [method, path, ...rest] = args as [string, string, ...string[]];
  const { stdout, stderr } = await runFile(bin, ['-B', '5', '-m', method, ...extra, ...rest, `coaps://127.0.0.1:${gw.ports.coaps}${path}`], timeoutMs);
  return `${stdout}\n${stderr}`;
}

/** The PSK of a device: the last `.` segment of its token (docs/coap.md). */
const pskOf = (d: Device) => ({ identity: d.id, key: d.token.slice(d.token.lastIndexOf('.') + 1) });

const uid = (prefix: string) => `${prefix}-${randomUUID().slice(0, 8)}`;

async function rest(gw: TestGateway, method: string, path: string, scope: string, body?: unknown) {
  return call(gw.url, method, path, { token: await gw.token(scope), ...(body !== undefined && { body }) });
}

async function telemetryOf(gw: TestGateway, id: string): Promise<{ protocol: string; data: Record<string, unknown> }[]> {
  const res = await rest(gw, 'GET', `/v1/devices/${id}/telemetry`, 'telemetry:read');
  assert.equal(res.status, 200, res.text);
  return res.body.items as { protocol: string; data: Record<string, unknown> }[];
}

async function setDesired(gw: TestGateway, id: string, desired: Record<string, unknown>) {
  const res = await rest(gw, 'PATCH', `/v1/devices/${id}/shadow`, 'shadow:write', { state: { desired } });
  assert.equal(res.status, 200, res.text);
}

/** Log entries written from now on. */
function logsSince(gw: TestGateway): () => Record<string, unknown>[] {
  const from = gw.logs.lines.length;
  return () => gw.logs.lines.slice(from).map((l) => JSON.parse(l) as Record<string, unknown>);
}

/** Waits for a 'coaps session closed' line among `entries` (of this device, for this reason). */
async function sessionClosed(entries: () => Record<string, unknown>[], deviceId: string | undefined, reason: RegExp): Promise<Record<string, unknown>> {
  const deadline = Date.now() + 10_000;
  for (;;) {
    const hit = entries().find((e) => e.msg === 'coaps session closed' && (deviceId === undefined || e.deviceId === deviceId) && reason.test(String(e.reason)));
    if (hit) return hit;
    if (Date.now() > deadline) throw new Error(`no 'coaps session closed' line with reason ${String(reason)}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

test('the ready line and readiness name the coaps port', async (t) => {
  const env = await ready(t);
  if (!env) return;
  const { gw } = env;
  assert.ok(typeof gw.ports.coaps === 'number' && gw.ports.coaps > 0, `coaps port ${String(gw.ports.coaps)}`);
  assert.notEqual(gw.ports.coaps, gw.ports.coap);
  const line = gw.logs.entries().find((e) => e.msg === 'iotgate ready');
  assert.equal(line?.coaps, gw.ports.coaps);
  const readyz = await call(gw.url, 'GET', '/readyz');
  assert.deepEqual((readyz.body.components as Record<string, unknown>).coaps, { status: 'ok' });
});

test('PSK: POST /telemetry and GET /shadow over DTLS, visible over REST; no ?t= needed', async (t) => {
  const env = await ready(t);
  if (!env) return;
  const { gw, bin } = env;
  const d = await registerDevice(gw, uid('psk'));
  const marker = randomBytes(6).toString('hex');

  const post = await coaps(t, bin, gw, { psk: pskOf(d) }, ['post', '/telemetry', '-t', '50', '-e', JSON.stringify({ marker, temp: 21.5 })]);
  assert.doesNotMatch(post, /4\.\d\d|5\.\d\d|cannot|fail/i, post);
  const stored = await telemetryOf(gw, d.id);
  assert.deepEqual(
    stored.map((r) => [r.protocol, r.data]),
    [['coaps', { marker, temp: 21.5 }]],
    'stored once, as coaps',
  );

  await setDesired(gw, d.id, { led: marker });
  const get = await coaps(t, bin, gw, { psk: pskOf(d) }, ['get', '/shadow']);
  assert.match(get, new RegExp(`"led":"${marker}"`), get);
  const established = gw.logs.entries().find((e) => e.msg === 'coaps session established' && e.deviceId === d.id);
  assert.equal(established?.auth, 'psk');
  assert.ok(!gw.logs.lines.some((l) => l.includes(d.token) || l.includes(pskOf(d).key)), 'neither token nor key is logged');
});

test('PSK: a ?t= of another device is refused with 4.01; the own token is accepted', async (t) => {
  const env = await ready(t);
  if (!env) return;
  const { gw, bin } = env;
  const a = await registerDevice(gw, uid('psk-a'));
  const b = await registerDevice(gw, uid('psk-b'));
  await setDesired(gw, a.id, { who: 'a' });
  const other = await coaps(t, bin, gw, { psk: pskOf(a) }, ['get', `/shadow?t=${b.token}`]);
  assert.match(other, /4\.01/, other);
  assert.match(other, /another device/, other);
  const own = await coaps(t, bin, gw, { psk: pskOf(a) }, ['get', `/shadow?t=${a.token}`]);
  assert.match(own, /"who":"a"/, own);
});

test('PSK: a wrong key, an unknown identity and the whole token as key all fail the handshake', async (t) => {
  const env = await ready(t);
  if (!env) return;
  const { gw, bin } = env;
  const d = await registerDevice(gw, uid('psk-bad'));
  await setDesired(gw, d.id, { secret: 'x' });
  const wrongKey = pskOf(d).key.replace(/^./, (c) => (c === 'A' ? 'B' : 'A'));
  for (const [name, auth] of [
    ['wrong key', { psk: { identity: d.id, key: wrongKey } }],
    ['unknown identity', { psk: { identity: uid('nobody'), key: pskOf(d).key } }],
    ['the whole token (coap-client cuts keys at 64 bytes)', { psk: { identity: d.id, key: d.token } }],
  ] as const) {
    // DTLS drops records that fail to decrypt (RFC 6347 §4.1.2.7): a wrong key is not answered
    // with an alert, the client gives up and the half-open session expires on the server. An
    // unknown identity looks the same from outside (RFC 4279 §2), so ids cannot be enumerated.
    const since = logsSince(gw);
    const out = await coaps(t, bin, gw, auth, ['get', '/shadow']);
    assert.doesNotMatch(out, /"secret"/, `${name}: ${out}`);
    assert.ok(!since().some((e) => e.msg === 'coaps session established'), `${name}: no session`);
  }
});

test('X.509: EC and RSA device certificates from POST /v1/register authenticate without a token', async (t) => {
  const env = await ready(t);
  if (!env) return;
  const { gw, bin } = env;
  for (const kind of ['ec', 'rsa'] as const) {
    const d = await registerDevice(gw, uid(`x509-${kind}`), kind);
    const marker = randomBytes(6).toString('hex');
    const post = await coaps(t, bin, gw, { cert: d }, ['post', '/telemetry', '-t', '50', '-e', JSON.stringify({ marker })]);
    assert.doesNotMatch(post, /4\.\d\d|5\.\d\d/, `${kind}: ${post}`);
    assert.deepEqual((await telemetryOf(gw, d.id)).map((r) => [r.protocol, r.data]), [['coaps', { marker }]], kind);
    await setDesired(gw, d.id, { kind });
    const get = await coaps(t, bin, gw, { cert: d }, ['get', '/shadow']);
    assert.match(get, new RegExp(`"kind":"${kind}"`), `${kind}: ${get}`);
    const established = gw.logs.entries().find((e) => e.msg === 'coaps session established' && e.deviceId === d.id);
    assert.equal(established?.auth, 'x509', kind);
  }
});

test('X.509: a certificate from a rogue CA naming a real device fails the handshake', async (t) => {
  const env = await ready(t);
  if (!env) return;
  const { gw, bin } = env;
  const d = await registerDevice(gw, uid('rogue'));
  await setDesired(gw, d.id, { secret: 'rogue' });
  const dir = await mkdtemp(join(tmpdir(), 'iotgate-rogue-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const f = (n: string) => join(dir, n);
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes'];
  const openssl = async (args: string[]) => {
    await new Promise<void>((resolve, reject) => execFile('openssl', args, { timeout: 20_000 }, (err) => (err ? reject(err) : resolve())));
  };
  await openssl(['req', '-x509', ...ec, '-keyout', f('ca.key'), '-out', f('ca.crt'), '-subj', '/CN=iotgate dev CA', '-days', '30']);
  await openssl(['req', '-new', ...ec, '-keyout', f('d.key'), '-out', f('d.csr'), '-subj', `/CN=${d.id}`]);
  await writeFile(f('ext.cnf'), 'basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n');
  await openssl(['x509', '-req', '-in', f('d.csr'), '-CA', f('ca.crt'), '-CAkey', f('ca.key'), '-CAcreateserial', '-days', '30', '-extfile', f('ext.cnf'), '-out', f('d.crt')]);
  const rogue = { certPem: await readFile(f('d.crt'), 'utf8'), keyPem: await readFile(f('d.key'), 'utf8') };

  const since = logsSince(gw);
  const out = await coaps(t, bin, gw, { cert: rogue }, ['get', '/shadow']);
  assert.doesNotMatch(out, /"secret"/, out);
  const closed = await sessionClosed(since, undefined, /handshake failed/);
  assert.match(String(closed.reason), /issuer|unknown ca|not issued by the gateway CA/i, String(closed.reason));
  assert.ok(!gw.logs.entries().some((e) => e.msg === 'coaps session established' && e.deviceId === d.id), 'no session for the rogue certificate');
});

test('revocation: the live DTLS session of the device ends and its next handshakes (PSK, X.509) fail', async (t) => {
  const env = await ready(t);
  if (!env) return;
  const { gw, bin } = env;
  const d = await registerDevice(gw, uid('revoked'));
  await setDesired(gw, d.id, { v: 1 });

  // A live session: coap-client observing /shadow for up to 30 s.
  const dir = await mkdtemp(join(tmpdir(), 'iotgate-coaps-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  let output = '';
  const child = spawn(bin, ['-B', '30', '-s', '30', '-m', 'get', '-u', d.id, '-k', pskOf(d).key, `coaps://127.0.0.1:${gw.ports.coaps}/shadow`], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const exited = new Promise<void>((resolve) => child.on('close', () => resolve()));
  t.after(async () => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
    await exited;
  });
  child.stdout.on('data', (b: Buffer) => (output += b.toString('utf8')));
  child.stderr.on('data', (b: Buffer) => (output += b.toString('utf8')));
  await gw.logs.waitFor((e) => e.msg === 'coaps session established' && e.deviceId === d.id);
  const deadline = Date.now() + 10_000;
  while (!/"v":1/.test(output) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
  assert.match(output, /"v":1/, 'the first notification arrived');
  const sessionsBefore = await metric(gw, 'iotgate_coaps_sessions');
  assert.ok(sessionsBefore >= 1);

  const revoking = logsSince(gw);
  const del = await rest(gw, 'DELETE', `/v1/devices/${d.id}`, 'devices:write');
  assert.equal(del.status, 204, del.text);
  await sessionClosed(revoking, d.id, /revoked/);
  assert.equal(await metric(gw, 'iotgate_coaps_sessions'), sessionsBefore - 1, 'the session is gone');
  // The final Observe notification went out over the session before it closed.
  const until = Date.now() + 5000;
  while (!/revoked/.test(output) && Date.now() < until) await new Promise((r) => setTimeout(r, 50));
  assert.match(output, /revoked/, `the final 4.01 notification: ${output}`);

  const since = logsSince(gw);
  const again = await coaps(t, bin, gw, { psk: pskOf(d) }, ['get', '/shadow']);
  assert.doesNotMatch(again, /"v":1/, again);
  const withCert = await coaps(t, bin, gw, { cert: d }, ['get', '/shadow']);
  assert.doesNotMatch(withCert, /"v":1/, withCert);
  assert.ok(!since().some((e) => e.msg === 'coaps session established' && e.deviceId === d.id), 'no new session for the revoked device');
  assert.ok(since().some((e) => e.msg === 'coaps session closed' && /certificate revoked/.test(String(e.reason))), 'the certificate was refused as revoked');
});

test('garbage on the coaps port (half shaped like DTLS handshakes) leaves it serving', async (t) => {
  const env = await ready(t);
  if (!env) return;
  const { gw, bin } = env;
  const d = await registerDevice(gw, uid('garbage'));
  await setDesired(gw, d.id, { alive: true });
  const sock = createSocket('udp4');
  t.after(() => sock.close());
  await new Promise<void>((resolve) => sock.bind(0, '127.0.0.1', resolve));
  const send = (b: Buffer) => new Promise<void>((resolve) => sock.send(b, gw.ports.coaps ?? 0, '127.0.0.1', () => resolve()));
  for (let i = 0; i < 3000; i++) {
    const b = randomBytes(1 + (i % 300));
    if (i % 2 === 0 && b.length >= 25) {
      b[0] = 22; // handshake
      b[1] = 0xfe;
      b[2] = 0xfd; // DTLS 1.2
      if (i % 4 === 0) {
        b.fill(0, 3, 11); // epoch 0, sequence 0
        b[13] = 1; // ClientHello
      }
    }
    await send(b);
    if (i % 200 === 0) await new Promise((r) => setImmediate(r));
  }
  const out = await coaps(t, bin, gw, { psk: pskOf(d) }, ['get', '/shadow']);
  assert.match(out, /"alive":true/, out);
  assert.deepEqual(uncaught, [], 'nothing was thrown to the top');
  assert.ok((await metric(gw, 'iotgate_coaps_sessions')) < 100, 'garbage made no sessions');
});
