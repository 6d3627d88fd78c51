/**
 * The MQTT device edge against an in-process gateway (contract §2 and §4, issue 3 "Done when"),
 * with mqtt.js over TCP (device tokens, service JWTs), mutual TLS and WebSocket: topic isolation
 * and the errors topic, service scopes, presence and the retained status topic, QoS 0/1/2,
 * retained messages, wills, persistent sessions, expired certificates and metrics.
 *
 * "X does not arrive" is always shown after a positive control message that the same connection
 * received later than X would have been, followed by a short bounded wait (SETTLE_MS).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { connect as netConnect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import mqttPacket from 'mqtt-packet';
import { opensslCsr } from '../helpers/csr.js';
import { call } from '../helpers/http.js';
import { suiteGateway, type TestGateway, type Teardown } from '../helpers/gateway.js';
import {
  assertRefused,
  assertTlsRefused,
  closeEvent,
  deviceLogin,
  mtlsOptions,
  onTopic,
  openSession,
  registerDevice,
  subscribeGranted,
  tcpUrl,
  tls12Handshake,
  tlsUrl,
  withDeadline,
  wsUrl,
  type Device,
  type Inbox,
  type Message,
  type Session,
} from '../helpers/mqtt.js';
import { requireTool, run } from '../helpers/tools.js';

const gateway = suiteGateway();

/** How long "nothing else arrives" is watched for, after the control message proved ordering. */
const SETTLE_MS = 150;
const NOT_AUTHORIZED = 0x87; // MQTT 5 reason code named in the error documents (135)
const REFUSED = 0x80; // MQTT 3.1.1 SUBACK failure

let seq = 0;
/** A device id unique within this file. */
const uid = (name: string): string => `edge-${name}-${++seq}`;

interface Status {
  online: boolean;
  reason: string;
  at: number;
  version: number;
}

const json = <T>(m: Message): T => JSON.parse(m.text) as T;
const statusTopic = (id: string) => `devices/${id}/status`;
const errorsTopic = (id: string) => `devices/${id}/errors`;

/** An MQTT session of a service: username service:<sub>, password a JWT with `scope`. */
async function serviceSession(t: Teardown, gw: TestGateway, scope: string, sub: string): Promise<Session> {
  const jwt = await gw.token(scope, { sub });
  return openSession(t, tcpUrl(gw), { clientId: `${sub}-${++seq}`, username: `service:${sub}`, password: jwt });
}

const adminSession = (t: Teardown, gw: TestGateway) => serviceSession(t, gw, 'admin', 'ops');

/** A device's token session over TCP. */
const deviceSession = (t: Teardown, gw: TestGateway, d: Device, extra: Parameters<typeof openSession>[2] = {}) =>
  openSession(t, tcpUrl(gw), { ...deviceLogin(d), ...extra });

/** The next status of `id` whose version is above `after` (statuses arrive in version order). */
async function nextStatus(inbox: Inbox, id: string, after: number, what: string, ms = 5000): Promise<Status> {
  const m = await inbox.waitFor((x) => x.topic === statusTopic(id) && json<Status>(x).version > after, what, ms);
  return json<Status>(m);
}

/** The error documents received so far on `id`'s errors topic. */
function errorDocs(inbox: Inbox, id: string): { code: number; message: string; topic: string; limit?: string }[] {
  return inbox.all(onTopic(errorsTopic(id))).map((m) => json(m));
}

async function getDevice(gw: TestGateway, id: string) {
  return call(gw.url, 'GET', `/v1/devices/${id}`, { token: await gw.token('devices:read') });
}

test('topic isolation: refused publishes (QoS 0, 1, 2) are dropped and reported on the errors topic; the connection stays up', async (t) => {
  const gw = gateway();
  const [a, b] = await Promise.all([registerDevice(gw, uid('iso-a')), registerDevice(gw, uid('iso-b'))]);
  const refused = [
    `devices/${b.id}/telemetry`,
    `devices/${a.id}/status`,
    `devices/${a.id}/errors`,
    `devices/${a.id}/commands/c1`,
    `devices/${a.id}/shadow/update/accepted`,
  ];
  const control = `devices/${a.id}/telemetry`;
  const watcher = await adminSession(t, gw);
  assert.deepEqual(await subscribeGranted(watcher.client, [...refused, control], 2), [2, 2, 2, 2, 2, 2]);

  const dev = await deviceSession(t, gw, a);
  // The device hears its own errors and its own control message on one connection, in order.
  assert.deepEqual(await subscribeGranted(dev.client, [errorsTopic(a.id), control], 1), [1, 1]);

  for (const qos of [0, 1, 2] as const) {
    for (const topic of refused) await dev.client.publishAsync(topic, `FORGED q${qos} ${topic}`, { qos });
    const marker = JSON.stringify({ control: qos });
    await dev.client.publishAsync(control, marker, { qos });
    await watcher.inbox.waitFor((m) => m.topic === control && m.text === marker, `control message after the refused QoS ${qos} publishes`);
    await dev.inbox.waitFor((m) => m.topic === control && m.text === marker, `the device's own control message (QoS ${qos})`);
  }
  await delay(SETTLE_MS);

  assert.deepEqual(
    watcher.inbox.all((m) => m.text.startsWith('FORGED')).map((m) => m.topic),
    [],
    'no refused publish reached a subscriber',
  );
  assert.deepEqual(dev.inbox.all((m) => m.text.startsWith('FORGED')).map((m) => m.topic), [], 'the forged errors message did not come back either');

  const docs = errorDocs(dev.inbox, a.id);
  for (const doc of docs) {
    assert.deepEqual(Object.keys(doc).sort(), ['code', 'message', 'topic'], JSON.stringify(doc));
    assert.equal(doc.code, NOT_AUTHORIZED);
    assert.equal(typeof doc.message, 'string');
    assert.ok(doc.message.length > 0);
  }
  for (const topic of refused) {
    assert.equal(docs.filter((d) => d.topic === topic).length, 3, `one error per refused publish to ${topic} (QoS 0, 1, 2)`);
  }
  assert.equal(dev.client.connected, true, 'the connection stayed up');
});

test('a refused retained publish is not stored', async (t) => {
  const gw = gateway();
  const [a, b] = await Promise.all([registerDevice(gw, uid('ret-a')), registerDevice(gw, uid('ret-b'))]);
  const observer = await adminSession(t, gw);
  await subscribeGranted(observer.client, [statusTopic(a.id)], 1);
  const dev = await deviceSession(t, gw, a);
  const online = await nextStatus(observer.inbox, a.id, 0, 'online status of the device');
  await subscribeGranted(dev.client, [errorsTopic(a.id)], 1);

  await dev.client.publishAsync(`devices/${b.id}/telemetry`, 'FORGED retained', { qos: 1, retain: true });
  await dev.client.publishAsync(statusTopic(a.id), JSON.stringify({ online: false, reason: 'FORGED', at: 1, version: 999 }), { qos: 1, retain: true });
  await dev.inbox.waitFor((m) => m.topic === errorsTopic(a.id) && json<{ topic: string }>(m).topic === statusTopic(a.id), 'error for the forged status');

  // A new subscriber gets the real retained status (the positive control) and nothing on B's topic.
  const late = await adminSession(t, gw);
  assert.deepEqual(await subscribeGranted(late.client, [`devices/${b.id}/telemetry`, statusTopic(a.id)], 1), [1, 1]);
  const retained = await late.inbox.waitFor(onTopic(statusTopic(a.id)), 'retained status');
  await delay(SETTLE_MS);
  assert.equal(retained.packet.retain, true);
  assert.deepEqual(json<Status>(retained), online, 'the retained status is the gateway\'s, not the forged one');
  assert.deepEqual(late.inbox.all(onTopic(`devices/${b.id}/telemetry`)), [], 'nothing retained on the other device\'s topic');
  assert.equal(late.inbox.all(onTopic(statusTopic(a.id))).length, 1);
});

test('topic isolation: refused subscriptions get SUBACK 0x80 and an error; own-subtree wildcards work', async (t) => {
  const gw = gateway();
  const [a, b] = await Promise.all([registerDevice(gw, uid('sub-a')), registerDevice(gw, uid('sub-b'))]);
  const dev = await deviceSession(t, gw, a);
  assert.deepEqual(await subscribeGranted(dev.client, [errorsTopic(a.id)], 1), [1]);

  const filters = [`devices/${b.id}/#`, 'devices/+/telemetry', '#', '$SYS/#'];
  assert.deepEqual(await subscribeGranted(dev.client, filters, 1), [REFUSED, REFUSED, REFUSED, REFUSED]);
  for (const filter of filters) {
    const m = await dev.inbox.waitFor((x) => x.topic === errorsTopic(a.id) && json<{ topic: string }>(x).topic === filter, `error for ${filter}`);
    const doc = json<{ code: number; message: string; topic: string }>(m);
    assert.equal(doc.code, NOT_AUTHORIZED);
    assert.ok(doc.message.length > 0);
  }
  assert.equal(dev.client.connected, true, 'a refused subscription never disconnects');

  // The refused filters match nothing: B's QoS 2 publish is forwarded (if at all) before its PUBREC,
  // so before A's own control message below.
  const other = await deviceSession(t, gw, b);
  await other.client.publishAsync(`devices/${b.id}/telemetry`, 'B-private', { qos: 2 });

  assert.deepEqual(await subscribeGranted(dev.client, [`devices/${a.id}/#`], 1), [1]);
  await dev.client.publishAsync(`devices/${a.id}/telemetry`, '{"own":"A"}', { qos: 1 });
  await dev.inbox.waitFor((m) => m.topic === `devices/${a.id}/telemetry` && m.text === '{"own":"A"}', 'own telemetry through devices/A/#');
  await delay(SETTLE_MS);
  assert.deepEqual(dev.inbox.all((m) => m.text === 'B-private'), []);
  assert.deepEqual(dev.inbox.all((m) => m.topic.startsWith('$SYS')), []);
});

test('services: telemetry:read reads telemetry/status/errors only and cannot publish; admin commands a device; other scopes are refused', async (t) => {
  const gw = gateway();
  const d = await registerDevice(gw, uid('svc'));
  const reader = await serviceSession(t, gw, 'telemetry:read', 'reader');
  assert.deepEqual(await subscribeGranted(reader.client, ['devices/+/telemetry', 'devices/+/status', 'devices/+/errors'], 1), [1, 1, 1]);
  assert.deepEqual(await subscribeGranted(reader.client, ['devices/+/commands/+', '#'], 1), [REFUSED, REFUSED]);
  assert.equal(reader.client.connected, true);

  const dev = await deviceSession(t, gw, d);
  await dev.client.publishAsync(`devices/${d.id}/telemetry`, JSON.stringify({ t: 21 }), { qos: 1 });
  const got = await reader.inbox.waitFor(onTopic(`devices/${d.id}/telemetry`), 'telemetry at the reader');
  assert.deepEqual(json(got), { t: 21 });

  // The reader's publishes are dropped; QoS 2 completes only after the broker handled it.
  assert.deepEqual(await subscribeGranted(dev.client, [`devices/${d.id}/commands/+`], 2), [2]);
  await reader.client.publishAsync(`devices/${d.id}/commands/x`, 'FORGED by reader q0', { qos: 0 });
  await reader.client.publishAsync(`devices/${d.id}/commands/x`, 'FORGED by reader q2', { qos: 2 });
  await gw.logs.waitFor((e) => e.msg === 'service publish dropped' && e.topic === `devices/${d.id}/commands/x`, 2000);

  const admin = await adminSession(t, gw);
  await admin.client.publishAsync(`devices/${d.id}/commands/x`, JSON.stringify({ id: 'x', name: 'reboot' }), { qos: 1 });
  const cmd = await dev.inbox.waitFor((m) => m.topic === `devices/${d.id}/commands/x` && !m.text.startsWith('FORGED'), 'admin command at the device');
  assert.deepEqual(json(cmd), { id: 'x', name: 'reboot' });
  await delay(SETTLE_MS);
  assert.deepEqual(dev.inbox.all((m) => m.text.startsWith('FORGED')).map((m) => m.text), []);
  assert.equal(reader.client.connected, true, 'a dropped service publish does not disconnect');

  const weak = await gw.token('devices:read shadow:read', { sub: 'weak' });
  await assertRefused(tcpUrl(gw), { clientId: 'weak-1', username: 'service:weak', password: weak }, 'a JWT without admin or telemetry:read', [5]);
});

test('presence: retained status and registry on connect, clean disconnect, socket loss and takeover', async (t) => {
  const gw = gateway();
  const d = await registerDevice(gw, uid('presence'));
  const observer = await adminSession(t, gw);
  await subscribeGranted(observer.client, [statusTopic(d.id)], 1);

  // connect
  const first = await deviceSession(t, gw, d);
  const s1 = await nextStatus(observer.inbox, d.id, 0, 'online after connect');
  assert.deepEqual(Object.keys(s1).sort(), ['at', 'online', 'reason', 'version']);
  assert.equal(s1.online, true);
  assert.equal(s1.reason, 'connected');
  assert.equal(typeof s1.at, 'number');
  assert.ok(Math.abs(Date.now() - s1.at) < 10_000);
  let rec = await getDevice(gw, d.id);
  assert.equal(rec.status, 200);
  assert.equal(rec.body.online, true);
  assert.equal(rec.body.protocol, 'mqtt');
  assert.equal(typeof rec.body.connectedAt, 'number');
  assert.equal(typeof rec.body.lastSeen, 'number');

  // the status is retained: a new subscriber gets the current one
  const late = await adminSession(t, gw);
  await subscribeGranted(late.client, [statusTopic(d.id)], 1);
  const retained = await late.inbox.waitFor(onTopic(statusTopic(d.id)), 'retained status');
  assert.equal(retained.packet.retain, true);
  assert.deepEqual(json(retained), s1);

  // clean disconnect
  await first.client.endAsync();
  const s2 = await nextStatus(observer.inbox, d.id, s1.version, 'offline after DISCONNECT');
  assert.equal(s2.online, false);
  assert.equal(s2.reason, 'client_disconnect');
  assert.ok(s2.version > s1.version);
  rec = await getDevice(gw, d.id);
  assert.equal(rec.body.online, false);
  assert.equal(rec.body.protocol, null);
  assert.equal(typeof rec.body.lastSeen, 'number');

  // socket destroyed
  const second = await deviceSession(t, gw, d);
  const s3 = await nextStatus(observer.inbox, d.id, s2.version, 'online again');
  assert.equal(s3.online, true);
  second.client.stream.destroy();
  const s4 = await nextStatus(observer.inbox, d.id, s3.version, 'offline after the socket was destroyed');
  assert.equal(s4.online, false);
  assert.equal(s4.reason, 'connection_lost');

  // takeover: a second connection with the same client id closes the first
  const older = await deviceSession(t, gw, d);
  const s5 = await nextStatus(observer.inbox, d.id, s4.version, 'online before the takeover');
  assert.equal(s5.online, true);
  const olderClosed = closeEvent(older.client);
  const newer = await deviceSession(t, gw, d);
  await withDeadline(olderClosed, 5000, 'the first connection is closed by the takeover');
  const s6 = await nextStatus(observer.inbox, d.id, s5.version, 'status after the takeover');
  assert.deepEqual([s6.online, s6.reason], [false, 'takeover']);
  const s7 = await nextStatus(observer.inbox, d.id, s6.version, 'online after the takeover');
  assert.deepEqual([s7.online, s7.reason], [true, 'connected']);
  assert.equal(newer.client.connected, true);
  await gw.logs.waitFor((e) => e.deviceId === d.id && typeof e.msg === 'string' && /took over/.test(e.msg), 2000);

  const versions = observer.inbox.all(onTopic(statusTopic(d.id))).map((m) => json<Status>(m).version);
  assert.deepEqual(versions, [...versions].sort((x, y) => x - y), 'statuses arrive in version order');
  assert.equal(new Set(versions).size, versions.length, 'versions strictly increase');
  rec = await getDevice(gw, d.id);
  assert.equal(rec.body.online, true);
});

test('revocation: DELETE /v1/devices/{id} closes the live session within 5 s', async (t) => {
  const gw = gateway();
  const d = await registerDevice(gw, uid('revoke'));
  const dev = await deviceSession(t, gw, d);
  const closed = closeEvent(dev.client);
  const del = await call(gw.url, 'DELETE', `/v1/devices/${d.id}`, { token: await gw.token('devices:write') });
  assert.equal(del.status, 204);
  await withDeadline(closed, 5000, 'the revoked device is disconnected');
  await assertRefused(tcpUrl(gw), deviceLogin(d), 'the revoked token', [4]);
  assert.equal((await getDevice(gw, d.id)).status, 404);
});

test(
  'revocation: the retained status goes offline with reason revoked',
  async (t) => {
    const gw = gateway();
    const d = await registerDevice(gw, uid('revoke-status'));
    const observer = await adminSession(t, gw);
    await subscribeGranted(observer.client, [statusTopic(d.id)], 1);
    await deviceSession(t, gw, d);
    const online = await nextStatus(observer.inbox, d.id, 0, 'online');
    const del = await call(gw.url, 'DELETE', `/v1/devices/${d.id}`, { token: await gw.token('devices:write') });
    assert.equal(del.status, 204);
    const offline = await nextStatus(observer.inbox, d.id, online.version, 'offline after revocation', 5000);
    assert.deepEqual([offline.online, offline.reason], [false, 'revoked']);
  },
);

test('presence: a client that stops sending PINGREQ goes offline with reason keepalive_timeout', async (t) => {
  const gw = gateway();
  const d = await registerDevice(gw, uid('keepalive'));
  const observer = await adminSession(t, gw);
  await subscribeGranted(observer.client, [statusTopic(d.id)], 1);

  // A raw socket: CONNECT with keepalive 1 s, then silence (mqtt.js would ping).
  const socket = netConnect({ host: '127.0.0.1', port: gw.ports.mqtt });
  t.after(() => socket.destroy());
  const socketClosed = new Promise<void>((resolve) => socket.once('close', () => resolve()));
  const connack = new Promise<Buffer>((resolve) => socket.once('data', resolve));
  await new Promise<void>((resolve, reject) => socket.once('connect', resolve).once('error', reject));
  socket.write(
    mqttPacket.generate({
      cmd: 'connect',
      protocolId: 'MQTT',
      protocolVersion: 4,
      clean: true,
      clientId: d.id,
      keepalive: 1,
      username: d.id,
      password: Buffer.from(d.token),
    }),
  );
  const ack = await withDeadline(connack, 5000, 'CONNACK');
  assert.deepEqual([...ack.subarray(0, 4)], [0x20, 0x02, 0x00, 0x00], 'CONNACK accepted');
  const online = await nextStatus(observer.inbox, d.id, 0, 'online');
  const since = Date.now();
  const offline = await nextStatus(observer.inbox, d.id, online.version, 'offline after the keepalive ran out', 4000);
  assert.deepEqual([offline.online, offline.reason], [false, 'keepalive_timeout']);
  const elapsed = Date.now() - since;
  assert.ok(elapsed < 3000, `offline after ${elapsed} ms`);
  await withDeadline(socketClosed, 2000, 'the broker closes the silent socket');
});

test('QoS 0, 1 and 2 round trips device → service and service → device', async (t) => {
  const gw = gateway();
  const d = await registerDevice(gw, uid('qos'));
  const admin = await adminSession(t, gw);
  const dev = await deviceSession(t, gw, d);
  assert.deepEqual(await subscribeGranted(admin.client, [`devices/${d.id}/telemetry`], 2), [2]);
  assert.deepEqual(await subscribeGranted(dev.client, [`devices/${d.id}/commands/+`], 2), [2]);

  for (const qos of [0, 1, 2] as const) {
    const up = JSON.stringify({ qos, dir: 'up' });
    await dev.client.publishAsync(`devices/${d.id}/telemetry`, up, { qos });
    const m = await admin.inbox.waitFor((x) => x.text === up, `device → service QoS ${qos}`);
    assert.equal(m.packet.qos, qos);

    const down = JSON.stringify({ qos, dir: 'down' });
    await admin.client.publishAsync(`devices/${d.id}/commands/c${qos}`, down, { qos });
    const c = await dev.inbox.waitFor((x) => x.text === down, `service → device QoS ${qos}`);
    assert.equal(c.topic, `devices/${d.id}/commands/c${qos}`);
    assert.equal(c.packet.qos, qos);
  }
  assert.equal(dev.inbox.all((x) => x.text.includes('"up"')).length, 0, 'the device did not subscribe to its telemetry');
});

test('retained messages: a later subscriber gets the device\'s retained message with the retain flag', async (t) => {
  const gw = gateway();
  const d = await registerDevice(gw, uid('retained'));
  const dev = await deviceSession(t, gw, d);
  await dev.client.publishAsync(`devices/${d.id}/data`, 'retained-1', { qos: 1, retain: true });
  await dev.client.endAsync();

  const later = await adminSession(t, gw);
  await subscribeGranted(later.client, [`devices/${d.id}/data`], 1);
  const m = await later.inbox.waitFor(onTopic(`devices/${d.id}/data`), 'retained message');
  assert.equal(m.text, 'retained-1');
  assert.equal(m.packet.retain, true);

  // The device itself, on a new connection, gets it as well.
  const again = await deviceSession(t, gw, d);
  await subscribeGranted(again.client, [`devices/${d.id}/data`], 1);
  const own = await again.inbox.waitFor(onTopic(`devices/${d.id}/data`), 'retained message at the device');
  assert.equal(own.packet.retain, true);
});

test('will messages: published when the socket is lost; a will on another device\'s topic refuses the CONNECT', async (t) => {
  const gw = gateway();
  const [d, other] = await Promise.all([registerDevice(gw, uid('will')), registerDevice(gw, uid('will-other'))]);
  const admin = await adminSession(t, gw);
  await subscribeGranted(admin.client, [`devices/${d.id}/will`], 1);

  const dev = await deviceSession(t, gw, d, { will: { topic: `devices/${d.id}/will`, payload: Buffer.from('gone'), qos: 1, retain: false } });
  dev.client.stream.destroy();
  const will = await admin.inbox.waitFor(onTopic(`devices/${d.id}/will`), 'the will message');
  assert.equal(will.text, 'gone');

  await assertRefused(
    tcpUrl(gw),
    { ...deviceLogin(d), will: { topic: `devices/${other.id}/telemetry`, payload: Buffer.from('x'), qos: 0, retain: false } },
    'a will on another device\'s topic',
    [5],
  );
  await assertRefused(
    tcpUrl(gw),
    { ...deviceLogin(d), will: { topic: statusTopic(d.id), payload: Buffer.from('x'), qos: 0, retain: true } },
    'a will on the gateway-owned status topic',
    [5],
  );
});

test('persistent sessions: clean=false keeps subscriptions and queues QoS 1 messages while offline', async (t) => {
  const gw = gateway();
  const d = await registerDevice(gw, uid('persist'));
  const observer = await adminSession(t, gw);
  await subscribeGranted(observer.client, [statusTopic(d.id)], 1);
  const inboxTopic = `devices/${d.id}/inbox`;

  const first = await deviceSession(t, gw, d, { clean: false });
  assert.equal(first.connack.sessionPresent, false);
  const online = await nextStatus(observer.inbox, d.id, 0, 'online');
  assert.deepEqual(await subscribeGranted(first.client, [inboxTopic], 1), [1]);
  await first.client.endAsync();
  await nextStatus(observer.inbox, d.id, online.version, 'offline (the broker let the session go)');

  await observer.client.publishAsync(inboxTopic, 'while-offline', { qos: 1 });

  const second = await deviceSession(t, gw, d, { clean: false });
  assert.equal(second.connack.sessionPresent, true);
  const m = await second.inbox.waitFor(onTopic(inboxTopic), 'the queued message');
  assert.equal(m.text, 'while-offline');
  assert.equal(m.packet.qos, 1);
});

/** A minimal `openssl ca` config in `dir` that signs client certificates for any CN. */
function caConfig(dir: string): string {
  return [
    '[ca]',
    'default_ca = expired_ca',
    '[expired_ca]',
    `database = ${join(dir, 'index.txt')}`,
    `new_certs_dir = ${dir}`,
    'rand_serial = yes',
    'default_md = sha256',
    'policy = any_cn',
    'x509_extensions = client_ext',
    'unique_subject = no',
    '[any_cn]',
    'commonName = supplied',
    '[client_ext]',
    'basicConstraints = critical,CA:FALSE',
    'keyUsage = critical,digitalSignature,keyEncipherment',
    'extendedKeyUsage = clientAuth',
    '',
  ].join('\n');
}

test('mTLS: RSA and EC P-256 device certificates publish telemetry; an expired certificate is refused', async (t) => {
  if (!requireTool(t, 'openssl')) return;
  const gw = gateway();
  const [rsa, ec] = await Promise.all([registerDevice(gw, uid('tls-rsa'), 'rsa'), registerDevice(gw, uid('tls-ec'), 'ec')]);
  const reader = await serviceSession(t, gw, 'telemetry:read', 'tls-reader');
  await subscribeGranted(reader.client, ['devices/+/telemetry'], 1);

  for (const [kind, d] of [['rsa', rsa], ['ec', ec]] as const) {
    const s = await openSession(t, tlsUrl(gw), mtlsOptions(d, d.id));
    await s.client.publishAsync(`devices/${d.id}/telemetry`, JSON.stringify({ kind }), { qos: 1 });
    const m = await reader.inbox.waitFor(onTopic(`devices/${d.id}/telemetry`), `${kind} telemetry over mTLS`);
    assert.deepEqual(json(m), { kind });
    const rec = await getDevice(gw, d.id);
    assert.equal(rec.body.protocol, 'mqtts', kind);
  }

  // Two certificates for the same key and CN, signed by the gateway CA with the same `openssl ca`
  // config, differing only in validity: one current, one that ended in 2020. (openssl 3.0's
  // `x509 -req` has no -not_before/-not_after; `openssl ca -startdate/-enddate` has.)
  const dir = await mkdtemp(join(tmpdir(), 'iotgate-expired-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  await writeFile(join(dir, 'index.txt'), '');
  await writeFile(join(dir, 'ca.cnf'), caConfig(dir));
  const csr = opensslCsr(ec.id, 'ec');
  await writeFile(join(dir, 'd.csr'), csr.csrPem);
  const sign = async (out: string, validity: string[]) => {
    const ca = ['-cert', join(gw.certsDir, 'ca.crt'), '-keyfile', join(gw.certsDir, 'ca.key')];
    const r = run('openssl', ['ca', '-batch', '-config', 'ca.cnf', ...ca, '-in', 'd.csr', '-out', out, '-notext', ...validity], { cwd: dir });
    assert.equal(r.status, 0, r.stderr);
    return { keyPem: csr.keyPem, certPem: await readFile(join(dir, out), 'utf8'), caPem: ec.caPem };
  };
  const current = await sign('current.crt', ['-days', '1']);
  const expired = await sign('expired.crt', ['-startdate', '20200101000000Z', '-enddate', '20200102000000Z']);
  const verify = run('openssl', ['verify', '-CAfile', join(gw.certsDir, 'ca.crt'), '-purpose', 'sslclient', join(dir, 'expired.crt')]);
  assert.notEqual(verify.status, 0);
  assert.match(verify.stdout + verify.stderr, /certificate has expired/, 'openssl finds exactly the expiry wrong');

  // The control passes the TLS handshake (its CONNECT is refused: it is not the device's
  // current certificate); the expired twin fails the handshake itself.
  assert.equal(await tls12Handshake(gw.ports.mqtts, current), 'ok', 'the same certificate within its validity passes TLS');
  await assertRefused(tlsUrl(gw), mtlsOptions(current, ec.id), 'a CA-signed certificate that is not the current one', [5]);
  assert.notEqual(await tls12Handshake(gw.ports.mqtts, expired), 'ok', 'the expired certificate fails the TLS handshake');
  await assertTlsRefused(tlsUrl(gw), mtlsOptions(expired, ec.id), 'MQTT over TLS with an expired certificate');
  assert.equal((await fetch(`${gw.url}/healthz`)).status, 200);
});

test('WebSocket at /mqtt: a device connects with its token, publishes and subscribes its own topics; a bad token is refused', async (t) => {
  const gw = gateway();
  const d = await registerDevice(gw, uid('ws'));
  const admin = await adminSession(t, gw);
  await subscribeGranted(admin.client, [`devices/${d.id}/telemetry`], 1);

  const dev = await openSession(t, wsUrl(gw), deviceLogin(d));
  assert.deepEqual(await subscribeGranted(dev.client, [`devices/${d.id}/#`], 1), [1]);
  await dev.client.publishAsync(`devices/${d.id}/telemetry`, JSON.stringify({ ws: true }), { qos: 1 });
  await admin.inbox.waitFor(onTopic(`devices/${d.id}/telemetry`), 'WebSocket telemetry at the service');
  await dev.inbox.waitFor((m) => m.topic === `devices/${d.id}/telemetry` && m.text === '{"ws":true}', 'own telemetry back over WebSocket');
  assert.equal((await getDevice(gw, d.id)).body.protocol, 'mqtt-ws');
  assert.deepEqual(await subscribeGranted(dev.client, ['devices/+/telemetry'], 1), [REFUSED]);

  await assertRefused(wsUrl(gw), { ...deviceLogin(d), password: `${d.token.slice(0, -2)}xx` }, 'a wrong token over WebSocket');
});

test('metrics: connections by listener, messages in, rejections by reason', async (t) => {
  const gw = gateway();
  const d = await registerDevice(gw, uid('metrics'));
  const dev = await deviceSession(t, gw, d);
  await subscribeGranted(dev.client, [errorsTopic(d.id)], 1);
  await dev.client.publishAsync(`devices/${d.id}/telemetry`, '{}', { qos: 1 });
  await dev.client.publishAsync('devices/someone-else/telemetry', '{}', { qos: 1 });
  await dev.inbox.waitFor(onTopic(errorsTopic(d.id)), 'the error for the refused publish');

  const res = await call(gw.url, 'GET', '/metrics');
  assert.equal(res.status, 200);
  const value = (re: RegExp): number => {
    const m = res.text.match(re);
    assert.ok(m, `metric ${re} in:\n${res.text.split('\n').filter((l) => l.startsWith('iotgate_mqtt')).join('\n')}`);
    return Number(m[1]);
  };
  assert.ok(value(/^iotgate_mqtt_connections\{listener="mqtt"\} (\d+)/m) >= 1);
  assert.ok(value(/^iotgate_mqtt_messages_in_total\{listener="mqtt"\} (\d+)/m) > 0);
  assert.ok(value(/^iotgate_mqtt_rejections_total\{reason="publish_not_authorized"\} (\d+)/m) > 0);
});
