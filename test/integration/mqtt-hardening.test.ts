/**
 * Hardening and limits of the MQTT device edge (issue 3, items 5 and 6) against in-process
 * gateways: raw sockets with mqtt-packet for malformed and hostile traffic, mqtt.js for the
 * well-behaved clients that must not notice any of it.
 *
 * "X did not happen" is always shown by a positive control on the same connection after X (a
 * PINGREQ→PINGRESP or SUBSCRIBE→SUBACK round trip, or a later message that arrived), never by
 * sleeping; the only polling is `until()`, for a metric to reach a value, with a deadline.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { connect as netConnect, type Socket } from 'node:net';
import mqttPacket, { type IConnackPacket, type IConnectPacket, type IPublishPacket, type ISubackPacket, type Packet } from 'mqtt-packet';
import { loadConfig } from '../../src/config/load.js';
import { build, type TestGateway, type Teardown } from '../helpers/gateway.js';
import { call, metric } from '../helpers/http.js';
import { varint } from '../helpers/bytes.js';
import {
  assertRefused,
  deviceLogin,
  onTopic,
  openSession,
  registerDevice,
  subscribeGranted,
  tcpUrl,
  withDeadline,
  type Device,
  type Session,
} from '../helpers/mqtt.js';

// ---------------------------------------------------------------------------------------------
// Gateways: one with short timeouts and small caps for most tests, one with tight rate limits,
// one with a connection cap of 2. Started together, stopped at the end.

const PACKET_LIMIT = 65_536;
const CONNECT_TIMEOUT_MS = 1000;
const MAX_INFLIGHT_QOS2 = 5;
const OFFLINE_QUEUE_MAX = 3;
const DRAIN_TIMEOUT_MS = 1000;
const KEEPALIVE_MAX = 1200; // the default of broker.keepaliveMaxSeconds

const cleanups: (() => unknown)[] = [];
const teardown: Teardown = { after: (fn) => cleanups.push(fn) };
let main: TestGateway;
let limited: TestGateway;
let capped: TestGateway;

before(async () => {
  [main, limited, capped] = await Promise.all([
    build(teardown, {
      IOTGATE_BROKER_CONNECT_TIMEOUT_MS: String(CONNECT_TIMEOUT_MS),
      IOTGATE_LIMITS_MQTT_PACKET_BYTES: String(PACKET_LIMIT),
      IOTGATE_BROKER_MAX_INFLIGHT_QOS2: String(MAX_INFLIGHT_QOS2),
      IOTGATE_BROKER_OFFLINE_QUEUE_MAX: String(OFFLINE_QUEUE_MAX),
      IOTGATE_BROKER_DRAIN_TIMEOUT_MS: String(DRAIN_TIMEOUT_MS),
    }),
    build(teardown, {
      IOTGATE_LIMITS_DEVICE_MESSAGES: '[{"limit":5,"windowMs":1000}]',
      IOTGATE_LIMITS_DEVICE_BYTES: '[{"limit":1000,"windowMs":1000}]',
    }),
    build(teardown, { IOTGATE_MQTT_MAX_CONNECTIONS: '2' }),
  ]);
});

after(async () => {
  for (const fn of cleanups.reverse()) await fn();
});

let seq = 0;
/** A client / device id unique within this file. */
const uid = (name: string): string => `hard-${name}-${++seq}`;

const REFUSED = 0x80;
const errorsTopic = (id: string) => `devices/${id}/errors`;

interface ErrorDoc {
  code: number;
  message: string;
  topic: string;
  limit?: string;
}

// ---------------------------------------------------------------------------------------------
// A raw MQTT client: a TCP socket, mqtt-packet to generate and parse, every packet kept.

type Match = (p: Packet) => boolean;

class RawClient {
  readonly packets: Packet[] = [];
  private readonly taken = new Set<Packet>();
  private readonly waiters = new Set<{ match: Match; resolve: (p: Packet) => void }>();
  private readonly closedPromise: Promise<void>;
  closed = false;
  /** Bytes the server sent that are not valid MQTT 3.1.1 (none expected). */
  parseError: Error | null = null;

  private constructor(readonly socket: Socket) {
    const parser = mqttPacket.parser({ protocolVersion: 4 });
    parser.on('packet', (p: Packet) => {
      this.packets.push(p);
      for (const w of this.waiters) {
        if (w.match(p)) {
          this.waiters.delete(w);
          this.taken.add(p);
          w.resolve(p);
          return;
        }
      }
    });
    parser.on('error', (err: Error) => (this.parseError ??= err));
    socket.on('data', (d: Buffer) => parser.parse(d));
    socket.on('error', () => undefined); // EPIPE / ECONNRESET after the server closed: 'close' follows
    this.closedPromise = new Promise((resolve) =>
      socket.once('close', () => {
        this.closed = true;
        resolve();
      }),
    );
  }

  static open(t: Teardown, port: number): Promise<RawClient> {
    return new Promise((resolve, reject) => {
      const socket = netConnect({ host: '127.0.0.1', port });
      const client = new RawClient(socket);
      t.after(() => void socket.destroy());
      socket.once('connect', () => {
        socket.off('error', reject);
        resolve(client);
      });
      socket.once('error', reject);
    });
  }

  /** Opens a connection and logs in with a v3.1.1 CONNECT; resolves the CONNACK (any code). */
  static async login(t: Teardown, gw: TestGateway, opts: Partial<IConnectPacket> & { clientId: string }): Promise<{ raw: RawClient; returnCode: number }> {
    const raw = await RawClient.open(t, gw.ports.mqtt);
    raw.send({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 4, clean: true, keepalive: 60, ...opts });
    const connack = (await raw.next((p) => p.cmd === 'connack', 'CONNACK')) as IConnackPacket;
    return { raw, returnCode: connack.returnCode ?? -1 };
  }

  /** Logs a device in with its token; asserts CONNACK 0. */
  static async device(t: Teardown, gw: TestGateway, d: Device, extra: Partial<IConnectPacket> = {}): Promise<RawClient> {
    const { raw, returnCode } = await RawClient.login(t, gw, { clientId: d.id, username: d.id, password: Buffer.from(d.token), ...extra });
    assert.equal(returnCode, 0, `CONNACK of ${d.id}`);
    return raw;
  }

  send(packet: Packet): void {
    this.socket.write(mqttPacket.generate(packet));
  }

  write(bytes: Buffer): void {
    this.socket.write(bytes);
  }

  /** The first packet not yet returned by `next` that matches (already received or future). */
  next(match: Match, what: string, ms = 3000): Promise<Packet> {
    const found = this.packets.find((p) => !this.taken.has(p) && match(p));
    if (found) {
      this.taken.add(found);
      return Promise.resolve(found);
    }
    let waiter: { match: Match; resolve: (p: Packet) => void } | undefined;
    const arrived = new Promise<Packet>((resolve) => this.waiters.add((waiter = { match, resolve })));
    const failOnClose = this.closedPromise.then(() => {
      throw new Error(`connection closed while waiting for ${what}`);
    });
    return withDeadline(Promise.race([arrived, failOnClose]), ms, what).finally(() => waiter && this.waiters.delete(waiter));
  }

  /** Resolves when the server has closed the connection, or fails after `ms`. */
  whenClosed(what: string, ms = 3000): Promise<void> {
    return withDeadline(this.closedPromise, ms, `${what}: the connection is closed`);
  }

  /** PINGREQ → PINGRESP on this connection. */
  async ping(what = 'PINGRESP'): Promise<void> {
    this.send({ cmd: 'pingreq' });
    await this.next((p) => p.cmd === 'pingresp', what);
  }

  /** SUBSCRIBE → SUBACK; resolves the granted codes. */
  async subscribe(filters: string[], qos: 0 | 1 | 2 = 1): Promise<number[]> {
    const messageId = 1 + (++seq % 60_000);
    this.send({ cmd: 'subscribe', messageId, subscriptions: filters.map((topic) => ({ topic, qos })) });
    const suback = (await this.next((p) => p.cmd === 'suback' && p.messageId === messageId, `SUBACK ${messageId}`)) as ISubackPacket;
    return (suback.granted as (number | { qos: number })[]).map((g) => (typeof g === 'number' ? g : g.qos));
  }

  /** Either the connection closes or it still answers a ping: which one. */
  async closedOrAlive(what: string): Promise<'closed' | 'alive'> {
    if (this.closed) return 'closed';
    this.send({ cmd: 'pingreq' });
    const pong = this.next((p) => p.cmd === 'pingresp', `${what}: PINGRESP`).then(
      () => 'alive' as const,
      () => 'closed' as const,
    );
    const result = await withDeadline(Promise.race([this.closedPromise.then(() => 'closed' as const), pong]), 3000, `${what}: closed or PINGRESP`);
    return result;
  }

  publishes(topic: string): IPublishPacket[] {
    return this.packets.filter((p): p is IPublishPacket => p.cmd === 'publish' && p.topic === topic);
  }
}


const u16 = (n: number) => Buffer.from([n >> 8, n & 0xff]);

/** A PUBLISH with arbitrary topic bytes (mqtt-packet would encode a string as valid UTF-8). */
function rawPublish(topic: Buffer, payload: Buffer, qos: 0 | 1 | 2 = 0, messageId = 1): Buffer {
  const body = Buffer.concat([u16(topic.length), topic, qos > 0 ? u16(messageId) : Buffer.alloc(0), payload]);
  return Buffer.concat([Buffer.from([0x30 | (qos << 1)]), varint(body.length), body]);
}

/** A v3.1.1 CONNECT written by hand (mqtt-packet validates what it generates). */
function rawConnect(o: { clientId: string; clean: boolean; keepalive?: number; username?: string; password?: string }): Buffer {
  const str = (v: string) => {
    const b = Buffer.from(v, 'utf8');
    return Buffer.concat([u16(b.length), b]);
  };
  const flags = (o.clean ? 0x02 : 0) | (o.username !== undefined ? 0x80 : 0) | (o.password !== undefined ? 0x40 : 0);
  const body = Buffer.concat([
    str('MQTT'),
    Buffer.from([4, flags]),
    u16(o.keepalive ?? 60),
    str(o.clientId),
    ...(o.username !== undefined ? [str(o.username)] : []),
    ...(o.password !== undefined ? [str(o.password)] : []),
  ]);
  return Buffer.concat([Buffer.from([0x10]), varint(body.length), body]);
}

/**
 * Streams `total` bytes (after `head`) as fast as the socket takes them, stopping when the server
 * closes the connection. Resolves how many bytes the client managed to hand to its socket.
 */
async function stream(raw: RawClient, head: Buffer, total: number): Promise<number> {
  const chunk = Buffer.alloc(64 * 1024, 0x61);
  let sent = 0;
  raw.write(head);
  while (sent < total && !raw.closed) {
    sent += chunk.length;
    if (!raw.socket.write(chunk)) {
      await Promise.race([new Promise((r) => raw.socket.once('drain', r)), raw.whenClosed('stream').catch(() => undefined)]);
    } else {
      await new Promise((r) => setImmediate(r)); // let 'close' / 'error' in between chunks
    }
  }
  return sent;
}

// ---------------------------------------------------------------------------------------------
// Well-behaved clients (mqtt.js).

async function serviceSession(t: Teardown, gw: TestGateway, scope = 'admin'): Promise<Session> {
  const sub = `ops-${++seq}`;
  return openSession(t, tcpUrl(gw), { clientId: sub, username: `service:${sub}`, password: await gw.token(scope, { sub }) });
}

/** A connected device that proves the gateway still serves others: a publish → delivery round trip. */
interface Bystander {
  device: Device;
  session: Session;
  roundTrip(what: string): Promise<void>;
}

async function bystander(t: Teardown, gw: TestGateway): Promise<Bystander> {
  const device = await registerDevice(gw, uid('bystander'));
  const session = await openSession(t, tcpUrl(gw), deviceLogin(device));
  const echo = `devices/${device.id}/echo`;
  assert.deepEqual(await subscribeGranted(session.client, [echo], 1), [1]);
  return {
    device,
    session,
    async roundTrip(what) {
      assert.equal(session.client.connected, true, `${what}: the bystander is still connected`);
      const nonce = `${what} ${++seq}`;
      await withDeadline(session.client.publishAsync(echo, nonce, { qos: 1 }), 3000, `${what}: PUBACK to the bystander`);
      await session.inbox.waitFor((m) => m.topic === echo && m.text === nonce, `${what}: the bystander's message comes back`, 3000);
    },
  };
}

async function healthy(gw: TestGateway): Promise<void> {
  assert.equal((await fetch(`${gw.url}/healthz`)).status, 200, '/healthz');
}

/** The value of a counter in /metrics (0 when absent). */

/** Resolves once `condition` holds, checking every 10 ms, or fails after `ms`. */
async function until(condition: () => Promise<boolean> | boolean, what: string, ms = 5000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

// =============================================================================================
// 1. Connect timeout

test('1. a connection that never sends CONNECT is closed within the connect timeout (default 10 s)', async (t) => {
  assert.equal(loadConfig(undefined, {}).broker.connectTimeoutMs, 10_000, 'the default connect timeout');
  assert.equal(main.gateway.config.broker.connectTimeoutMs, CONNECT_TIMEOUT_MS);

  const silent = await RawClient.open(t, main.ports.mqtt);
  // A CONNECT that starts but never completes is not a CONNECT either.
  const partial = await RawClient.open(t, main.ports.mqtt);
  partial.write(Buffer.concat([Buffer.from([0x10]), varint(1000), Buffer.alloc(10)]));
  const started = Date.now();
  await Promise.all([silent.whenClosed('silent client'), partial.whenClosed('half a CONNECT')]);
  const elapsed = Date.now() - started;
  assert.ok(elapsed < 3000, `closed after ${elapsed} ms`);
  assert.ok(elapsed >= CONNECT_TIMEOUT_MS - 200, `not before the timeout (${elapsed} ms)`);
  assert.deepEqual(silent.packets, [], 'nothing was sent to it');
  assert.deepEqual(partial.packets, []);
});

// 2. Bytes before CONNECT

test('2. bytes before CONNECT are capped: a 200 MB CONNECT or PUBLISH announcement is closed at its header; memory stays flat; others unaffected', async (t) => {
  const other = await bystander(t, main);
  const rawOther = await RawClient.device(t, main, await registerDevice(main, uid('pre-other')));
  const rssBefore = process.memoryUsage().rss;

  const huge = 200 * 1024 * 1024;
  const heads = {
    'a CONNECT announcing 200 MB': Buffer.concat([Buffer.from([0x10]), varint(huge)]),
    'a PUBLISH announcing 200 MB as the first packet': Buffer.concat([Buffer.from([0x30]), varint(huge)]),
    'a PINGREQ as the first packet, then 5 MB': Buffer.from([0xc0, 0x00]),
  };
  for (const [what, head] of Object.entries(heads)) {
    // The header alone is enough: closed by the guard at once, not by the connect timeout.
    const headOnly = await RawClient.open(t, main.ports.mqtt);
    const started = Date.now();
    headOnly.write(head);
    await headOnly.whenClosed(`${what} (header only)`, CONNECT_TIMEOUT_MS - 200);
    t.diagnostic(`${what}: closed ${Date.now() - started} ms after the header`);
    assert.deepEqual(headOnly.packets, [], `${what}: no CONNACK`);

    // Streaming on after the header: the server is gone, nothing piles up.
    const raw = await RawClient.open(t, main.ports.mqtt);
    const streaming = stream(raw, head, 5 * 1024 * 1024);
    await raw.whenClosed(what, 3000);
    const sent = await streaming;
    t.diagnostic(`${what}: closed after the client wrote ${sent} bytes`);
    assert.ok(sent < 5 * 1024 * 1024, `${what}: cut off before the 5 MB were out`);
    assert.deepEqual(raw.packets, [], `${what}: no CONNACK`);
  }

  const growth = (process.memoryUsage().rss - rssBefore) / 1024 / 1024;
  t.diagnostic(`RSS growth: ${growth.toFixed(1)} MB`);
  assert.ok(growth < 50, `RSS grew by ${growth.toFixed(1)} MB`);
  await other.roundTrip('after the pre-login streams');
  await rawOther.ping('a raw client logged in before the streams');
  await healthy(main);
});

// 3. Max packet size

test('3. a PUBLISH larger than limits.mqttPacketBytes disconnects that device only; exactly the limit passes', async (t) => {
  const other = await bystander(t, main);
  const [big, fit] = await Promise.all([registerDevice(main, uid('big')), registerDevice(main, uid('fit'))]);
  const topic = `devices/${big.id}/blob`;

  const s = await openSession(t, tcpUrl(main), deviceLogin(big));
  const closed = new Promise<void>((resolve) => s.client.once('close', () => resolve()));
  s.client.publish(topic, Buffer.alloc(100 * 1024, 1), { qos: 1 });
  await withDeadline(closed, 3000, 'the 100 KiB publisher is disconnected');
  await other.roundTrip('after the oversized publish');

  // The same size limit at the byte: a QoS 1 PUBLISH of exactly PACKET_LIMIT bytes, then one more.
  const fitTopic = `devices/${fit.id}/blob`;
  const overhead = mqttPacket.generate({ cmd: 'publish', topic: fitTopic, payload: Buffer.alloc(60_000), qos: 1, messageId: 1, retain: false, dup: false }).length - 60_000;
  const fitting = Buffer.alloc(PACKET_LIMIT - overhead, 2);
  assert.equal(
    mqttPacket.generate({ cmd: 'publish', topic: fitTopic, payload: fitting, qos: 1, messageId: 1, retain: false, dup: false }).length,
    PACKET_LIMIT,
  );
  const f = await openSession(t, tcpUrl(main), deviceLogin(fit));
  assert.deepEqual(await subscribeGranted(f.client, [fitTopic], 1), [1]);
  await withDeadline(f.client.publishAsync(fitTopic, fitting, { qos: 1 }), 3000, 'PUBACK for a packet of exactly the limit');
  const back = await f.inbox.waitFor(onTopic(fitTopic), 'the packet of exactly the limit is delivered');
  assert.equal(back.payload.length, fitting.length);
  assert.equal(f.client.connected, true);

  const closedToo = new Promise<void>((resolve) => f.client.once('close', () => resolve()));
  f.client.publish(fitTopic, Buffer.alloc(fitting.length + 1, 3), { qos: 1 });
  await withDeadline(closedToo, 3000, 'one byte over the limit disconnects');
  await other.roundTrip('after the packet one byte over the limit');
  await healthy(main);
});

// 4. Garbage

test('4. garbage byte streams close only their own connection; the process and other clients carry on', async (t) => {
  const other = await bystander(t, main);
  const d = await registerDevice(main, uid('garbage'));

  // Before CONNECT: random bytes (several streams), and a reserved packet type.
  const randomStreams = await Promise.all(Array.from({ length: 8 }, () => RawClient.open(t, main.ports.mqtt)));
  const sent = randomStreams.map((raw) => {
    const bytes = randomBytes(16 * 1024);
    raw.write(bytes);
    return bytes.subarray(0, 8).toString('hex');
  });
  await Promise.all(randomStreams.map((raw, i) => raw.whenClosed(`random bytes starting ${sent[i]}`, 3000)));
  for (const raw of randomStreams) assert.equal(raw.packets.some((p) => p.cmd === 'connack' && p.returnCode === 0), false, 'no login from garbage');

  const reserved = await RawClient.open(t, main.ports.mqtt);
  reserved.write(Buffer.from([0x00, 0xff, 0xff, 0xff, 0xff, 0x7f, 0x00]));
  await reserved.whenClosed('0x00 0xff… before CONNECT');

  // After a successful login.
  for (const [what, bytes] of [
    ['reserved type 0', Buffer.from([0x00, 0xff, 0xff, 0xff, 0xff])],
    ['a 5-byte remaining length', Buffer.from([0x30, 0xff, 0xff, 0xff, 0xff, 0x7f])],
    ['an AUTH packet (MQTT 5 only)', Buffer.from([0xf0, 0x00])],
    ['a second CONNECT', mqttPacket.generate({ cmd: 'connect', clientId: d.id, username: d.id, password: Buffer.from(d.token), protocolVersion: 4, keepalive: 60 })],
    ['PUBLISH with both QoS bits set', Buffer.from([0x36, 0x04, 0x00, 0x01, 0x61, 0x00])],
    ['SUBSCRIBE with wrong header flags', Buffer.from([0x80, 0x06, 0x00, 0x01, 0x00, 0x01, 0x61, 0x00])],
    ['random bytes', Buffer.concat([Buffer.from([0x00]), randomBytes(4096)])],
  ] as const) {
    const raw = await RawClient.device(t, main, d);
    raw.write(bytes);
    await raw.whenClosed(`${what} after login`);
  }

  await other.roundTrip('after the garbage');
  await healthy(main);
});

// 5. MQTT 5

test('5. MQTT 5 is refused with CONNACK 1; the packet that crashed aedes 2.0.0-beta.1 harms nobody', async (t) => {
  const other = await bystander(t, main);
  const d = await registerDevice(main, uid('v5'));

  for (const [what, opts] of [
    ['with valid credentials', { username: d.id, password: Buffer.from(d.token) }],
    ['without credentials', {}],
  ] as const) {
    const raw = await RawClient.open(t, main.ports.mqtt);
    raw.send({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 5, clientId: d.id, clean: true, keepalive: 60, properties: { sessionExpiryInterval: 0 }, ...opts });
    const connack = (await raw.next((p) => p.cmd === 'connack', `CONNACK for MQTT 5 ${what}`)) as IConnackPacket;
    assert.equal(connack.returnCode, 1, `MQTT 5 ${what}: CONNACK 1 (unacceptable protocol version)`);
    await raw.whenClosed(`MQTT 5 ${what}`);
    assert.equal(raw.parseError, null, 'the CONNACK is a well-formed MQTT 3.1.1 packet');
  }

  const crash = Buffer.from('3212' + '0005' + '746F706963' + '1234' + '01' + '08' + '7061796C6F6164', 'hex');
  assert.equal(crash.length, 20);

  // After a v3.1.1 login of a real device: at most this connection may close.
  const raw = await RawClient.device(t, main, d);
  assert.deepEqual(await raw.subscribe([errorsTopic(d.id)]), [1]);
  raw.write(crash);
  const outcome = await raw.closedOrAlive('the beta-crash PUBLISH after login');
  if (outcome === 'alive') {
    // Read as 3.1.1 it is a QoS 1 PUBLISH to "topic": acknowledged, dropped and reported.
    const ack = await raw.next((p) => p.cmd === 'puback' && p.messageId === 0x1234, 'PUBACK 0x1234');
    assert.ok(ack);
    const err = await raw.next((p) => p.cmd === 'publish' && p.topic === errorsTopic(d.id), 'error document');
    const doc = JSON.parse((err as IPublishPacket).payload.toString()) as ErrorDoc;
    assert.equal(doc.code, 0x87);
    assert.equal(doc.topic, 'topic');
  }
  t.diagnostic(`the beta-crash packet after login: connection ${outcome}`);
  await other.roundTrip('after the beta-crash packet on a logged-in connection');

  // As the first packet of a fresh connection.
  const fresh = await RawClient.open(t, main.ports.mqtt);
  fresh.write(crash);
  await fresh.whenClosed('the beta-crash packet as the first packet');
  assert.deepEqual(fresh.packets, []);

  await other.roundTrip('after the beta-crash packet as the first packet');
  await healthy(main);
});

// 6. Empty client id

test('6. an empty client id is refused with CONNACK 2 [MQTT-3.1.3-8], clean or not', async (t) => {
  const d = await registerDevice(main, uid('empty-id'));
  for (const clean of [true, false]) {
    for (const creds of [{ username: d.id, password: d.token }, {}]) {
      const what = `clean=${clean}${'username' in creds ? ' with device credentials' : ' without credentials'}`;
      const raw = await RawClient.open(t, main.ports.mqtt);
      // Written by hand: mqtt-packet refuses to generate an empty client id with clean=false.
      raw.write(rawConnect({ clientId: '', clean, ...creds }));
      const connack = (await raw.next((p) => p.cmd === 'connack', `CONNACK (${what})`)) as IConnackPacket;
      assert.equal(connack.returnCode, 2, what);
      await raw.whenClosed(what);
    }
  }
  // The device itself is not harmed by the attempts.
  const ok = await RawClient.device(t, main, d);
  await ok.ping();
});

// 7. $SYS

test('7. $SYS reveals nothing to devices (SUBACK 128, no $SYS message); an admin service may subscribe to $SYS/#', async (t) => {
  const d = await registerDevice(main, uid('sys'));
  const dev = await openSession(t, tcpUrl(main), deviceLogin(d));
  const filters = ['$SYS/#', '$SYS/+/new/clients', '$SYS/+/heartbeat', '#', '+/#', '+/+/new/clients', '$share/g/$SYS/#'];
  assert.deepEqual(await subscribeGranted(dev.client, filters, 0), filters.map(() => REFUSED));
  assert.equal(dev.client.connected, true);

  const admin = await serviceSession(t, main);
  assert.deepEqual(await subscribeGranted(admin.client, ['$SYS/#'], 0), [0]);

  // A new client makes aedes publish $SYS/<broker>/new/clients with its id.
  const newcomer = await registerDevice(main, uid('sys-newcomer'));
  await openSession(t, tcpUrl(main), deviceLogin(newcomer));
  const seen = await admin.inbox.waitFor((m) => m.topic.startsWith('$SYS/') && m.topic.endsWith('/new/clients') && m.text === newcomer.id, 'the admin sees the new client on $SYS');
  assert.match(seen.topic, /^\$SYS\/[^/]+\/new\/clients$/);

  // Positive control on the device's connection after the $SYS message went out.
  assert.deepEqual(await subscribeGranted(dev.client, [`devices/${d.id}/x`], 0), [0]);
  assert.deepEqual(
    dev.inbox.all((m) => m.topic.startsWith('$') || m.text.includes(newcomer.id)),
    [],
    'the device got no $SYS message and nothing naming another client',
  );
});

// 8. Refused subscription

test('8. a refused subscription gets SUBACK 128 and never a disconnect', async (t) => {
  const d = await registerDevice(main, uid('subref'));
  const raw = await RawClient.device(t, main, d);
  assert.deepEqual(await raw.subscribe([errorsTopic(d.id)]), [1]);
  assert.deepEqual(await raw.subscribe(['devices/someone-else/#']), [REFUSED]);
  await raw.ping('after a refused subscription');
  assert.deepEqual(await raw.subscribe([`devices/${d.id}/a`, 'devices/+/telemetry', `devices/${d.id}/b`, '$SYS/#'], 2), [2, REFUSED, 2, REFUSED], 'mixed');
  assert.deepEqual(await raw.subscribe([`devices/${d.id}/nul\u0000`]), [REFUSED], 'a filter with a null character');
  await raw.ping('after more refusals');
  const docs = raw.publishes(errorsTopic(d.id)).map((p) => JSON.parse(p.payload.toString()) as ErrorDoc);
  assert.deepEqual(
    docs.map((doc) => [doc.code, doc.topic]),
    [
      [0x87, 'devices/someone-else/#'],
      [0x87, 'devices/+/telemetry'],
      [0x87, '$SYS/#'],
      [0x90, `devices/${d.id}/nul\u0000`],
    ],
  );
  assert.equal(raw.closed, false);
});

test(
  '8b. a subscription refused for its depth gets SUBACK 128 and an error document, not a disconnect',
  async (t) => {
    const d = await registerDevice(main, uid('subdeep'));
    const raw = await RawClient.device(t, main, d);
    assert.deepEqual(await raw.subscribe([errorsTopic(d.id)]), [1]);
    const deep = `devices/${d.id}/${'a/'.repeat(40)}#`; // 43 levels: over the limit of 32, under aedes' cap of 100
    const granted = await raw.subscribe([deep]).catch((err: Error) => err.message);
    assert.deepEqual(granted, [REFUSED]);
    await raw.ping('after the deep filter');
    const err = await raw.next((p) => p.cmd === 'publish' && p.topic === errorsTopic(d.id), 'error document for the deep filter');
    assert.equal((JSON.parse((err as IPublishPacket).payload.toString()) as ErrorDoc).code, 0x90, 'topic invalid (docs/topics.md: too many levels)');
  },
);

// 9. Invalid topics, message id 0, unexpected acks

test('9. invalid topics, message id 0 and unexpected acks are rejected without harming other clients', async (t) => {
  const other = await bystander(t, main);
  const d = await registerDevice(main, uid('topics'));
  const admin = await serviceSession(t, main);
  assert.deepEqual(await subscribeGranted(admin.client, ['#'], 1), [1]);
  const outcomes: Record<string, string> = {};

  let raw = await RawClient.device(t, main, d);
  const fresh = async () => {
    if (raw.closed) raw = await RawClient.device(t, main, d);
    assert.deepEqual(await raw.subscribe([errorsTopic(d.id)]), [1]);
  };
  await fresh();

  const prefix = Buffer.from(`devices/${d.id}/`);
  const bad: [string, Buffer][] = [
    ['a null character', Buffer.concat([prefix, Buffer.from('a\u0000b')])],
    ['invalid UTF-8 (C3 28)', Buffer.concat([prefix, Buffer.from([0xc3, 0x28])])],
    ['a UTF-8 encoded surrogate (ED A0 80)', Buffer.concat([prefix, Buffer.from([0xed, 0xa0, 0x80])])],
    ['122 levels', Buffer.concat([prefix, Buffer.from('a/'.repeat(120)), Buffer.from('x')])],
    ['40 levels', Buffer.concat([prefix, Buffer.from('a/'.repeat(38)), Buffer.from('x')])],
  ];
  for (const [what, topic] of bad) {
    await fresh();
    const marker = `BAD ${what}`;
    for (const qos of [0, 1] as const) raw.write(rawPublish(topic, Buffer.from(marker), qos, 7));
    const outcome = await raw.closedOrAlive(what);
    outcomes[what] = outcome;
    if (outcome === 'alive') {
      // One error document per refused PUBLISH (QoS 0 and QoS 1), naming the topic as decoded.
      const decoded = topic.toString('utf8').slice(0, 256);
      for (const qos of [0, 1]) {
        const err = await raw.next(
          (p) => p.cmd === 'publish' && p.topic === errorsTopic(d.id) && (JSON.parse(p.payload.toString()) as ErrorDoc).topic === decoded,
          `${what}: error document ${qos + 1} of 2`,
        );
        const doc = JSON.parse((err as IPublishPacket).payload.toString()) as ErrorDoc;
        assert.equal(doc.code, 0x90, `${what}: ${doc.message}`);
      }
    }
  }

  // Control: a good message from the same device reaches the admin after all the bad ones.
  await fresh();
  raw.send({ cmd: 'publish', topic: `devices/${d.id}/ok`, payload: Buffer.from('GOOD'), qos: 1, messageId: 9, retain: false, dup: false });
  await admin.inbox.waitFor((m) => m.topic === `devices/${d.id}/ok` && m.text === 'GOOD', 'the control message reaches the admin on #');
  assert.deepEqual(
    admin.inbox.all((m) => m.text.startsWith('BAD')).map((m) => m.topic),
    [],
    'no invalid-topic message was delivered',
  );

  // Message id 0 on QoS 1 and QoS 2 (see 9b for whether it is rejected).
  for (const qos of [1, 2] as const) {
    await fresh();
    raw.write(rawPublish(Buffer.from(`devices/${d.id}/zero`), Buffer.from(`ZERO q${qos}`), qos, 0));
    outcomes[`message id 0, QoS ${qos}`] = await raw.closedOrAlive(`message id 0 on QoS ${qos}`);
  }

  // Acks for ids the broker never used.
  for (const cmd of ['puback', 'pubrec', 'pubrel', 'pubcomp'] as const) {
    await fresh();
    for (const messageId of [0, 1, 4242, 65535]) raw.send({ cmd, messageId });
    outcomes[`unexpected ${cmd}`] = await raw.closedOrAlive(`unexpected ${cmd}`);
  }
  t.diagnostic(JSON.stringify(outcomes));

  await other.roundTrip('after invalid topics and unexpected acks');
  await healthy(main);
});

test(
  '9b. a QoS 1/2 PUBLISH with message id 0 is rejected (dropped or the connection closed) [MQTT-2.3.1-1]',
  async (t) => {
    const d = await registerDevice(main, uid('zero'));
    const admin = await serviceSession(t, main);
    assert.deepEqual(await subscribeGranted(admin.client, [`devices/${d.id}/#`], 1), [1]);
    for (const qos of [1, 2] as const) {
      const raw = await RawClient.device(t, main, d);
      raw.write(rawPublish(Buffer.from(`devices/${d.id}/zero`), Buffer.from(`ZERO q${qos}`), qos, 0));
      // Control from the same connection if it is still up (else from a new one), after the id 0.
      const ctl = (await raw.closedOrAlive('after message id 0')) === 'alive' ? raw : await RawClient.device(t, main, d);
      const control = `CONTROL q${qos}`;
      ctl.send({ cmd: 'publish', topic: `devices/${d.id}/ok`, payload: Buffer.from(control), qos: 1, messageId: 10, retain: false, dup: false });
      await admin.inbox.waitFor((m) => m.text === control, `control after message id 0 on QoS ${qos}`);
      assert.deepEqual(admin.inbox.all((m) => m.text === `ZERO q${qos}`).map((m) => m.topic), [], `QoS ${qos} message with id 0 is not delivered`);
      assert.equal(raw.packets.some((p) => (p.cmd === 'puback' || p.cmd === 'pubrec') && p.messageId === 0), false, `QoS ${qos}: no acknowledgement of id 0`);
    }
  },
);

// 10. Inbound QoS 2 cap

test('10. a client with more unacknowledged inbound QoS 2 messages than broker.maxInflightQos2 is disconnected', async (t) => {
  const other = await bystander(t, main);
  const d = await registerDevice(main, uid('qos2'));
  const raw = await RawClient.device(t, main, d);
  const topic = `devices/${d.id}/q2`;
  for (let id = 1; id <= MAX_INFLIGHT_QOS2; id++) raw.send({ cmd: 'publish', topic, payload: Buffer.from(`m${id}`), qos: 2, messageId: id, retain: false, dup: false });
  for (let id = 1; id <= MAX_INFLIGHT_QOS2; id++) await raw.next((p) => p.cmd === 'pubrec' && p.messageId === id, `PUBREC ${id}`);
  // A DUP retransmission of one in flight does not count twice.
  raw.send({ cmd: 'publish', topic, payload: Buffer.from('m1'), qos: 2, messageId: 1, retain: false, dup: true });
  await raw.next((p) => p.cmd === 'pubrec' && p.messageId === 1, 'PUBREC for the DUP');
  await raw.ping(`${MAX_INFLIGHT_QOS2} unreleased QoS 2 messages are allowed`);

  raw.send({ cmd: 'publish', topic, payload: Buffer.from('m6'), qos: 2, messageId: MAX_INFLIGHT_QOS2 + 1, retain: false, dup: false });
  await raw.whenClosed(`QoS 2 message ${MAX_INFLIGHT_QOS2 + 1} without PUBREL`);
  assert.equal(raw.packets.some((p) => p.cmd === 'pubrec' && p.messageId === MAX_INFLIGHT_QOS2 + 1), false);
  await other.roundTrip('after the QoS 2 flood');
});

// 11. Offline queue cap

test('11. an offline persistent session queues at most broker.offlineQueueMax messages; the rest are counted as dropped', async (t) => {
  const d = await registerDevice(main, uid('offline'));
  const inbox = `devices/${d.id}/inbox`;
  const series = 'iotgate_mqtt_rejections_total{reason="offline_queue_full"}';
  const droppedBefore = await metric(main, series);

  const admin = await serviceSession(t, main);
  assert.deepEqual(await subscribeGranted(admin.client, [`devices/${d.id}/status`], 1), [1]);

  const first = await openSession(t, tcpUrl(main), { ...deviceLogin(d), clean: false });
  assert.deepEqual(await subscribeGranted(first.client, [inbox], 1), [1]);
  await admin.inbox.waitFor((m) => m.topic === `devices/${d.id}/status` && (JSON.parse(m.text) as { online: boolean }).online, 'online');
  await first.client.endAsync();
  // The broker has unregistered the session once the offline status is out.
  await admin.inbox.waitFor((m) => m.topic === `devices/${d.id}/status` && !(JSON.parse(m.text) as { online: boolean }).online, 'offline');

  for (let i = 1; i <= 10; i++) await admin.client.publishAsync(inbox, `m${i}`, { qos: 1 });
  await until(async () => (await metric(main, series)) - droppedBefore >= 7, 'the 7 drops to be counted');

  const second = await openSession(t, tcpUrl(main), { ...deviceLogin(d), clean: false });
  assert.equal(second.connack.sessionPresent, true);
  // Fence: the queue is written before any packet the device sends after CONNACK is handled.
  await second.client.publishAsync(inbox, 'fence', { qos: 1 });
  await second.inbox.waitFor((m) => m.topic === inbox && m.text === 'fence', 'the fence message');
  assert.deepEqual(
    second.inbox.all(onTopic(inbox)).map((m) => m.text),
    ['m1', 'm2', 'm3', 'fence'],
    'exactly the first 3 queued messages, then the fence',
  );
  assert.equal((await metric(main, series)) - droppedBefore, 7);
});

// 12. Slow subscriber

test('12. a subscriber that stops reading never blocks the others (it is dropped after broker.drainTimeoutMs)', async (t) => {
  const d = await registerDevice(main, uid('slow'));
  const topic = `devices/${d.id}/busy`;
  const count = 2000;
  const payload = Buffer.alloc(10 * 1024, 0x5a);

  const slow = await RawClient.device(t, main, d);
  assert.deepEqual(await slow.subscribe([topic], 0), [0]);
  slow.socket.pause();

  const reader = await serviceSession(t, main);
  assert.deepEqual(await subscribeGranted(reader.client, [topic], 0), [0]);
  let received = 0;
  const all = new Promise<void>((resolve) =>
    reader.client.on('message', (tp) => {
      if (tp === topic && ++received === count) resolve();
    }),
  );

  const publisher = await serviceSession(t, main);
  const started = Date.now();
  for (let i = 0; i < count; i++) publisher.client.publish(topic, payload, { qos: 0 });
  await withDeadline(all, 20_000, `all ${count} messages at the normal subscriber (got ${received})`).catch((err: Error) => {
    throw new Error(`${err.message}; received ${received}`);
  });
  t.diagnostic(`${count} × 10 KiB delivered to the normal subscriber in ${Date.now() - started} ms`);

  // The slow subscriber was disconnected: once it reads again it sees the end of the stream.
  slow.socket.resume();
  await slow.whenClosed('the slow subscriber', 5000);
  const got = slow.publishes(topic).length;
  t.diagnostic(`the slow subscriber got ${got} of ${count} before it was dropped`);
  assert.ok(got < count, `the slow subscriber got ${got} of ${count} before it was dropped`);
});

// 13. Rate limits

test('13. per-device rate limits: the 6th message in a second is dropped with code 151 naming the limit; bytes likewise; the connection stays up', async (t) => {
  const d = await registerDevice(limited, uid('rate'));
  const s = await openSession(t, tcpUrl(limited), deviceLogin(d));
  const data = `devices/${d.id}/data`;
  assert.deepEqual(await subscribeGranted(s.client, [errorsTopic(d.id), data], 1), [1, 1]);

  await Promise.all(Array.from({ length: 10 }, (_, i) => s.client.publishAsync(data, `n${i + 1}`, { qos: 1 })));
  await s.inbox.waitFor(() => s.inbox.all(onTopic(errorsTopic(d.id))).length >= 5, '5 error documents');
  await s.inbox.waitFor(() => s.inbox.all(onTopic(data)).length >= 5, '5 delivered messages');
  assert.deepEqual(await subscribeGranted(s.client, [`devices/${d.id}/ctl`], 1), [1], 'round trip: the connection is up');
  assert.deepEqual(
    s.inbox.all(onTopic(data)).map((m) => m.text),
    ['n1', 'n2', 'n3', 'n4', 'n5'],
  );
  const docs = s.inbox.all(onTopic(errorsTopic(d.id))).map((m) => JSON.parse(m.text) as ErrorDoc);
  assert.equal(docs.length, 5);
  for (const doc of docs) {
    assert.equal(doc.code, 151);
    assert.equal(doc.limit, '5 messages per 1s');
    assert.equal(doc.topic, data);
    assert.match(doc.message, /5 messages per 1s/);
  }
  assert.equal(s.client.connected, true);

  // Bytes: 1000 bytes per second.
  const b = await registerDevice(limited, uid('rate-bytes'));
  const sb = await openSession(t, tcpUrl(limited), deviceLogin(b));
  const bdata = `devices/${b.id}/data`;
  assert.deepEqual(await subscribeGranted(sb.client, [errorsTopic(b.id), bdata], 1), [1, 1]);
  await Promise.all(['a', 'b', 'c'].map((c) => sb.client.publishAsync(bdata, c.repeat(400), { qos: 1 })));
  await sb.client.publishAsync(bdata, 'x'.repeat(5000), { qos: 1 }); // larger than the whole window
  await sb.inbox.waitFor(() => sb.inbox.all(onTopic(errorsTopic(b.id))).length >= 2, '2 byte-limit errors');
  assert.deepEqual(await subscribeGranted(sb.client, [`devices/${b.id}/ctl`], 1), [1]);
  assert.deepEqual(
    sb.inbox.all(onTopic(bdata)).map((m) => m.text[0]),
    ['a', 'b'],
  );
  const bdocs = sb.inbox.all(onTopic(errorsTopic(b.id))).map((m) => JSON.parse(m.text) as ErrorDoc);
  assert.equal(bdocs.length, 2);
  for (const doc of bdocs) {
    assert.equal(doc.code, 151);
    assert.equal(doc.limit, '1000 bytes per 1s');
    assert.match(doc.message, /1000 bytes per 1s/);
  }
  assert.equal(sb.client.connected, true);
});

// 14. Max connections

test('14. mqtt.maxConnections: a third TCP connection is closed at once; the first two keep working', async (t) => {
  const login = async () => {
    const sub = `cap-${++seq}`;
    const { raw, returnCode } = await RawClient.login(t, capped, { clientId: sub, username: `service:${sub}`, password: Buffer.from(await capped.token('admin', { sub })) });
    assert.equal(returnCode, 0);
    return raw;
  };
  const first = await login();
  const second = await login();
  const third = await RawClient.open(t, capped.ports.mqtt).catch(() => null);
  if (third) {
    await third.whenClosed('the third connection', 1000);
    assert.deepEqual(third.packets, []);
  }
  await first.ping('first connection');
  await second.ping('second connection');
  // A slot freed is a slot available again (once the server has seen the close).
  first.socket.destroy();
  await first.whenClosed('first');
  await until(async () => {
    const sub = `cap-${++seq}`;
    const probe = await RawClient.open(t, capped.ports.mqtt).catch(() => null);
    if (!probe) return false;
    probe.send({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 4, clean: true, keepalive: 60, clientId: sub, username: `service:${sub}`, password: Buffer.from(await capped.token('admin', { sub })) });
    const connack = await probe.next((p) => p.cmd === 'connack', 'CONNACK of the probe', 1000).catch(() => null);
    probe.socket.destroy();
    return connack !== null;
  }, 'a new connection to be accepted after one closed');
  await second.ping('second connection, still');
  await healthy(capped);
});

// 15. Keepalive bounds

test('15. keepalive 0 or above broker.keepaliveMaxSeconds is refused with CONNACK 5 (a 3.1.1 code); the bound itself is accepted', async (t) => {
  assert.equal(main.gateway.config.broker.keepaliveMaxSeconds, KEEPALIVE_MAX);
  const d = await registerDevice(main, uid('keepalive'));
  const creds = { clientId: d.id, username: d.id, password: Buffer.from(d.token) };
  for (const keepalive of [0, KEEPALIVE_MAX + 1, 65535]) {
    const { raw, returnCode } = await RawClient.login(t, main, { ...creds, keepalive });
    // aedes' own check would answer CONNACK 6, which 3.1.1 does not define; iotgate checks first.
    assert.equal(returnCode, 5, `keepalive ${keepalive}`);
    await raw.whenClosed(`keepalive ${keepalive}`);
  }
  // What a common client makes of it: mqtt.js rejects the connect with code 5.
  await assertRefused(tcpUrl(main), { ...deviceLogin(d), keepalive: 0 }, 'mqtt.js with keepalive 0', [5]);
  const ok = await RawClient.device(t, main, d, { keepalive: KEEPALIVE_MAX });
  await ok.ping('keepalive at the bound');
  await healthy(main);
});
