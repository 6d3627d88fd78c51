/**
 * The MQTT broker on Redis (issue 8 item 2): a real redis-server (AOF, appendfsync always) and
 * gateway processes (`iotgate start` with IOTGATE_REDIS_URL, killed with SIGKILL) or in-process
 * gateways sharing it. What a user sees: retained messages and a clean=false session's queued QoS 1
 * messages survive kill -9; a publish on one gateway reaches a subscriber on another; a client id
 * taking its session to another gateway is disconnected from the first; wills are delivered when a
 * connection dies, also when the gateway holding it is killed; connect/subscribe/disconnect cycles
 * leave no growing state in Redis; and the command bridge (PUBACK tracking, no replay of aedes'
 * stored copy) works on the Redis persistence across a restart.
 *
 * Gateway processes run dist/ (built by `npm test`, or `npm run build`).
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import mqtt, { type MqttClient } from 'mqtt';
import { loadConfig } from '../../src/config/load.js';
import { buildGateway, type Gateway } from '../../src/gateway.js';
import { createLogger } from '../../src/log.js';
import { loadCaMaterial, signServiceToken } from '../../src/pki/index.js';
import { MemoryCommandStore } from '../../src/stores/memory/commands.js';
import { startGatewayProcess, type GatewayProcess } from '../helpers/cli.js';
import { opensslCsr } from '../helpers/csr.js';
import { build, captureLogs, loopbackEnv, type Teardown } from '../helpers/gateway.js';
import { requireTool } from '../helpers/tools.js';
import { closeEvent, deviceLogin, onTopic, openSession, subscribeGranted, withDeadline, type Session } from '../helpers/mqtt.js';
import { redisOn, stack, startRedis, type TestRedis } from '../helpers/redis.js';



let seq = 0;
const uid = (name: string): string => `rb-${name}-${process.pid}-${++seq}`;

interface Device {
  id: string;
  token: string;
}

/** A shared certs dir and the tokens signed with its key (what every gateway of the test uses). */
async function sharedPki(t: TestContext): Promise<{ certsDir: string; token(scope: string): Promise<string> }> {
  const certsDir = await mkdtemp(join(tmpdir(), 'iotgate-rb-'));
  t.after(() => rm(certsDir, { recursive: true, force: true }));
  return {
    certsDir,
    async token(scope) {
      return signServiceToken(await loadCaMaterial(certsDir), { sub: 'redis-tests', scope, ttlSeconds: 600 }).token;
    },
  };
}

interface Node {
  http: string;
  mqtt: string;
  proc: GatewayProcess;
}

/** `iotgate start` on 127.0.0.1 with every port 0, the shared certs dir and Redis; SIGKILLed when the test ends. */
async function startNode(t: TestContext, certsDir: string, redis: TestRedis): Promise<Node> {
  const proc = await startGatewayProcess(loopbackEnv(certsDir, { IOTGATE_REDIS_URL: redis.url, IOTGATE_CERTS_SYNC_INTERVAL_MS: '200' }));
  t.after(() => {
    if (proc.child.exitCode === null && proc.child.signalCode === null) proc.child.kill('SIGKILL');
  });
  return { http: `http://127.0.0.1:${String(proc.ready.http)}`, mqtt: `mqtt://127.0.0.1:${String(proc.ready.mqtt)}`, proc };
}

async function kill9(node: Node): Promise<void> {
  node.proc.child.kill('SIGKILL');
  await node.proc.exited;
}

/** `POST /v1/register` with an openssl CSR; resolves the device id and token. */
async function provision(http: string, provisionToken: string, id: string): Promise<Device> {
  const { csrPem } = opensslCsr(id, 'ec');
  const res = await fetch(`${http}/v1/register`, {
    method: 'POST',
    headers: { authorization: `Bearer ${provisionToken}`, 'content-type': 'application/json' },
    body: JSON.stringify({ id, csr: csrPem }),
  });
  const body = (await res.json()) as { token: string };
  assert.equal(res.status, 201, JSON.stringify(body));
  return { id, token: body.token };
}

const admin = (t: TestContext, url: string, jwt: string, clientId: string, clean = true) =>
  openSession(t, url, { clientId, username: 'service:redis-tests', password: jwt, clean });

/** Ends the connection without DISCONNECT (the broker sees the socket die). */
function dropConnection(client: MqttClient): void {
  client.stream.destroy();
}

test('retained messages and a clean=false session\u2019s queued QoS 1 messages survive kill -9 of the gateway', async (t) => {
  const redis = await startRedis(t);
  if (!redis) return;
  const pki = await sharedPki(t);
  const a = await startNode(t, pki.certsDir, redis);
  const adminJwt = await pki.token('admin');
  const d = await provision(a.http, await pki.token('provision'), uid('queue'));
  const downlink = `devices/${d.id}/downlink`;
  const config = `devices/${d.id}/config`;

  const first = await openSession(t, a.mqtt, { ...deviceLogin(d), clean: false });
  assert.deepEqual(await subscribeGranted(first.client, [downlink], 1), [1]);
  await first.client.endAsync();

  const ops = await admin(t, a.mqtt, adminJwt, uid('ops'));
  const sent = Array.from({ length: 50 }, (_, i) => `m${i}`);
  // Each publish is acknowledged (PUBACK) before the next one: acknowledged means stored.
  for (const m of sent) await ops.client.publishAsync(downlink, m, { qos: 1 });
  await ops.client.publishAsync(config, 'v42', { qos: 1, retain: true });

  await kill9(a);
  const a2 = await startNode(t, pki.certsDir, redis);

  const again = await openSession(t, a2.mqtt, { ...deviceLogin(d), clean: false });
  assert.equal(again.connack.sessionPresent, true, 'the session survived the crash');
  for (const m of sent) await again.inbox.waitFor((x) => x.topic === downlink && x.text === m, `the acknowledged message ${m}`, 10_000);
  for (const m of again.inbox.all(onTopic(downlink))) assert.equal(m.packet.qos, 1);

  const reader = await admin(t, a2.mqtt, adminJwt, uid('reader'));
  await subscribeGranted(reader.client, [config], 1);
  const retained = await reader.inbox.waitFor(onTopic(config), 'the retained message after the crash');
  assert.equal(retained.text, 'v42');
  assert.equal(retained.packet.retain, true);
});

test('two gateways sharing Redis: a publish on one reaches a subscriber on the other; a session taken to the other gateway is closed on the first', async (t) => {
  const redis = await startRedis(t);
  if (!redis) return;
  const pki = await sharedPki(t);
  const a = await startNode(t, pki.certsDir, redis);
  const b = await startNode(t, pki.certsDir, redis);
  const adminJwt = await pki.token('admin');
  const d = await provision(a.http, await pki.token('provision'), uid('two'));

  // A device on B, an operator on A: both directions cross gateways.
  const dev = await openSession(t, b.mqtt, deviceLogin(d));
  await subscribeGranted(dev.client, [`devices/${d.id}/downlink`], 1);
  const ops = await admin(t, a.mqtt, adminJwt, uid('ops'));
  await subscribeGranted(ops.client, [`devices/${d.id}/telemetry`], 1);

  await ops.client.publishAsync(`devices/${d.id}/downlink`, 'from A', { qos: 1 });
  assert.equal((await dev.inbox.waitFor(onTopic(`devices/${d.id}/downlink`), 'A\u2019s publish on B')).text, 'from A');
  await dev.client.publishAsync(`devices/${d.id}/telemetry`, JSON.stringify({ t: 21.5 }), { qos: 1 });
  const tel = await ops.inbox.waitFor(onTopic(`devices/${d.id}/telemetry`), 'B\u2019s telemetry on A');
  assert.deepEqual(JSON.parse(tel.text), { t: 21.5 });
  assert.equal(ops.inbox.all(onTopic(`devices/${d.id}/telemetry`)).length, 1, 'once, not once per gateway');

  // The same client id on A: B closes its connection ([MQTT-3.1.4-2] across gateways).
  const closed = closeEvent(dev.client);
  const moved = await openSession(t, a.mqtt, deviceLogin(d));
  await withDeadline(closed, 5000, 'the connection on B to close');
  await subscribeGranted(moved.client, [`devices/${d.id}/downlink`], 1);
  await ops.client.publishAsync(`devices/${d.id}/downlink`, 'after the move', { qos: 1 });
  await moved.inbox.waitFor((m) => m.text === 'after the move', 'the publish at the new connection');
});

test('wills: a lost connection\u2019s will reaches another gateway; after kill -9 the wills of the dead gateway are published, a reconnecting device\u2019s first', async (t) => {
  const redis = await startRedis(t);
  if (!redis) return;
  const pki = await sharedPki(t);
  const a = await startNode(t, pki.certsDir, redis);
  const b = await startNode(t, pki.certsDir, redis);
  const adminJwt = await pki.token('admin');
  const provisionJwt = await pki.token('provision');
  const [w0, w1, w2] = await Promise.all([provision(a.http, provisionJwt, uid('w0')), provision(a.http, provisionJwt, uid('w1')), provision(a.http, provisionJwt, uid('w2'))]);
  const willOf = (d: Device) => ({ topic: `devices/${d.id}/will`, payload: Buffer.from(`${d.id} gone`), qos: 1 as const, retain: false });

  // A persistent observer: it gets the wills published while it is away, too.
  const observerId = uid('observer');
  const observer = await admin(t, b.mqtt, adminJwt, observerId, false);
  await subscribeGranted(observer.client, ['devices/+/will', 'devices/+/hello'], 1);

  // 1. A live gateway: the socket dies, the will crosses to the observer on B.
  const s0 = await openSession(t, a.mqtt, { ...deviceLogin(w0), will: willOf(w0) });
  dropConnection(s0.client);
  assert.equal((await observer.inbox.waitFor(onTopic(`devices/${w0.id}/will`), 'w0\u2019s will on B')).text, `${w0.id} gone`);

  // 2. The gateway holding w1 and w2 is killed; w2 comes back at once on B, w1 never.
  await openSession(t, a.mqtt, { ...deviceLogin(w1), will: willOf(w1) });
  await openSession(t, a.mqtt, { ...deviceLogin(w2), will: willOf(w2) });
  await kill9(a);
  const back = await openSession(t, b.mqtt, { ...deviceLogin(w2), will: willOf(w2) });
  await back.client.publishAsync(`devices/${w2.id}/hello`, 'hello again', { qos: 1 });
  await observer.inbox.waitFor(onTopic(`devices/${w2.id}/hello`), 'w2\u2019s first message after the reconnect');
  const topics = observer.inbox.all((m) => m.topic.startsWith(`devices/${w2.id}/`)).map((m) => m.topic);
  assert.deepEqual(topics, [`devices/${w2.id}/will`, `devices/${w2.id}/hello`], 'the will of the dead connection, then the new session');
  // w1 never reconnects: B publishes its will once it finds A dead (its Redis connection is gone).
  await observer.inbox.waitFor(onTopic(`devices/${w1.id}/will`), 'w1\u2019s will after A was killed', 15_000);

  // 3. B restarts too (kill -9), with the observer away: the wills it held are published by the
  // restarted gateway and queued for the observer's session. w2 leaves cleanly first (no will).
  await back.client.endAsync();
  // A round trip: the observer's PUBACKs of everything so far reached B before it goes away.
  await observer.client.publishAsync(`devices/${w0.id}/ping`, 'x', { qos: 1 });
  observer.client.end(true);
  await openSession(t, b.mqtt, { ...deviceLogin(w0), will: willOf(w0) });
  await kill9(b);
  const b2 = await startNode(t, pki.certsDir, redis);
  const observer2 = await admin(t, b2.mqtt, adminJwt, observerId, false);
  assert.equal(observer2.connack.sessionPresent, true);
  const late = await observer2.inbox.waitFor(onTopic(`devices/${w0.id}/will`), 'w0\u2019s will after B was killed and started again', 15_000);
  assert.equal(late.text, `${w0.id} gone`);
  // Once per lost connection: w0 twice (parts 1 and 3), w1 once; w2's old will was published when
  // w2 came back and not again when B reaped A's wills, and its clean DISCONNECT published none.
  const wills = (d: Device) => [...observer.inbox.all(onTopic(`devices/${d.id}/will`)), ...observer2.inbox.all(onTopic(`devices/${d.id}/will`))].length;
  assert.deepEqual([wills(w0), wills(w1), wills(w2)], [2, 1, 1]);
});

/** Keys of the Redis db by prefix (up to the first ':'), for the assertion messages. */
async function keyShape(db: Redis): Promise<Record<string, number>> {
  const shape: Record<string, number> = {};
  for (const k of await db.keys('*')) {
    const p = k.split(':')[0] as string;
    shape[p] = (shape[p] ?? 0) + 1;
  }
  return shape;
}

/** Resolves once `check` holds (polled after each Redis round trip), or fails with `what`. */
async function eventually(check: () => Promise<boolean>, what: string, ms = 5000): Promise<void> {
  await withDeadline(
    (async () => {
      while (!(await check())) await new Promise((r) => setImmediate(r));
    })(),
    ms,
    what,
  );
}

test('connect/subscribe/disconnect cycles leave no growing state in Redis; an offline session\u2019s queue is capped', async (t) => {
  const teardown = stack(t);
  const redis = await redisOn(t, teardown);
  if (!redis) return;
  const CAP = 20;
  const gw = await build(teardown, { IOTGATE_REDIS_URL: redis.url, IOTGATE_BROKER_OFFLINE_QUEUE_MAX: String(CAP), IOTGATE_LOG_LEVEL: 'info' });
  const db = new Redis(redis.url);
  db.on('error', () => undefined);
  t.after(() => db.disconnect());
  const provisionJwt = await gw.token('provision');
  const [c, p, q] = await Promise.all([provision(gw.url, provisionJwt, uid('clean')), provision(gw.url, provisionJwt, uid('persist')), provision(gw.url, provisionJwt, uid('capped'))]);
  const ops = await admin(t, `mqtt://127.0.0.1:${gw.ports.mqtt}`, await gw.token('admin', { sub: 'redis-tests' }), uid('ops'));
  const url = `mqtt://127.0.0.1:${gw.ports.mqtt}`;
  const downlink = (d: Device) => `devices/${d.id}/downlink`;

  async function cycle(i: number): Promise<void> {
    // A clean session with a will, subscriptions, a QoS 2 publish; half of them lose the socket.
    const s = await openSession(t, url, { ...deviceLogin(c), will: { topic: `devices/${c.id}/will`, payload: Buffer.from('x'), qos: 1, retain: false } });
    await subscribeGranted(s.client, [`devices/${c.id}/#`], 2);
    await s.client.publishAsync(`devices/${c.id}/data`, `d${i}`, { qos: 2 });
    await s.inbox.waitFor((m) => m.text === `d${i}`, 'the own QoS 2 message');
    if (i % 2 === 0) dropConnection(s.client);
    else await s.client.endAsync();
    // A persistent session that goes away with 5 messages queued, and comes back persistent or
    // clean (then its queue is discarded).
    const ps = await openSession(t, url, { ...deviceLogin(p), clean: false });
    await subscribeGranted(ps.client, [downlink(p)], 1);
    await ps.client.endAsync();
    for (let k = 0; k < 5; k++) await ops.client.publishAsync(downlink(p), `q${i}.${k}`, { qos: 1 });
    const back: Session = await openSession(t, url, { ...deviceLogin(p), clean: i % 2 === 0 });
    if (i % 2 === 1) await back.inbox.waitFor((m) => m.text === `q${i}.4`, 'the queued messages');
    await back.client.endAsync();
  }

  const settled = async () => {
    // A round trip through the broker after the last cycle; wills are gone once no client holds one.
    await ops.client.publishAsync(`devices/${c.id}/ping`, 'x', { qos: 1 });
    await eventually(async () => (await db.exists('will')) === 0 && (await db.keys('will:*')).length === 0, 'no stored will once the clients left');
    await eventually(async () => (await db.keys('incoming:*')).length === 0, 'no QoS 2 state of clean sessions');
  };

  for (let i = 0; i < 4; i++) await cycle(i);
  await settled();
  const warm = await db.dbsize();
  const warmShape = await keyShape(db);
  const channels = ((await db.pubsub('CHANNELS')) as string[]).length;
  const patterns = Number(await db.pubsub('NUMPAT'));

  for (let i = 4; i < 44; i++) await cycle(i);
  await settled();
  await eventually(async () => (await db.dbsize()) <= warm, `key count back to ${warm} after 40 more cycles (now ${JSON.stringify(await keyShape(db))}, was ${JSON.stringify(warmShape)})`);
  assert.equal((await db.keys('packet:*')).length, 0, 'no message kept once no queue references it');
  assert.ok(((await db.pubsub('CHANNELS')) as string[]).length <= channels, 'Redis pub/sub channels back to where they were');
  assert.ok(Number(await db.pubsub('NUMPAT')) <= patterns, 'Redis pub/sub patterns back to where they were');

  // An offline persistent session gets at most CAP messages queued; the rest are dropped.
  const qs = await openSession(t, url, { ...deviceLogin(q), clean: false });
  await subscribeGranted(qs.client, [downlink(q)], 1);
  await qs.client.endAsync();
  for (let k = 0; k < 3 * CAP; k++) await ops.client.publishAsync(downlink(q), `c${k}`, { qos: 1 });
  assert.equal(await db.llen(`outgoing:${encodeURIComponent(q.id)}`), CAP);
  assert.equal((await db.keys('packet:*')).filter((k) => !k.endsWith(':offlineCount')).length, CAP, 'the messages kept are the queued ones');
  const qback = await openSession(t, url, { ...deviceLogin(q), clean: false });
  await qback.inbox.waitFor((m) => m.text === `c${CAP - 1}`, 'the last message that fitted');
  await qback.client.publishAsync(`devices/${q.id}/telemetry`, '{}', { qos: 1 });
  await ops.client.publishAsync(downlink(q), 'control', { qos: 1 });
  await qback.inbox.waitFor((m) => m.text === 'control', 'a live message after the queue');
  assert.deepEqual(
    qback.inbox.all(onTopic(downlink(q))).map((m) => m.text),
    [...Array.from({ length: CAP }, (_, k) => `c${k}`), 'control'],
    'the first CAP queued messages, then the live one',
  );
  await eventually(async () => (await db.llen(`outgoing:${encodeURIComponent(q.id)}`)) === 0, 'the delivered queue is empty');
});

test('commands on the Redis persistence: delivered on PUBACK, and after a restart aedes\u2019 stored copy is not replayed (the command arrives once)', async (t) => {
  const teardown = stack(t);
  const redis = await redisOn(t, teardown);
  if (!redis) return;
  const pki = await sharedPki(t);
  const env = loopbackEnv(pki.certsDir, { IOTGATE_REDIS_URL: redis.url, IOTGATE_CERTS_SYNC_INTERVAL_MS: '200', IOTGATE_LOG_LEVEL: 'info' });
  // A command store that outlives one gateway (the Redis command store's role, built elsewhere).
  class KeptCommandStore extends MemoryCommandStore {
    override async close(): Promise<void> {}
  }
  const commandStore = new KeptCommandStore();
  const gateways: Gateway[] = [];
  teardown.after(async () => {
    for (const g of gateways) await g.stop();
  });
  async function start(): Promise<{ http: string; mqtt: string; gateway: Gateway }> {
    const gateway = await buildGateway(loadConfig(undefined, env), { log: createLogger({ level: 'info', destination: captureLogs().stream }), commandStore });
    gateways.push(gateway);
    const ports = await gateway.start();
    return { http: `http://127.0.0.1:${ports.http}`, mqtt: `mqtt://127.0.0.1:${ports.mqtt}`, gateway };
  }
  const send = async (http: string, deviceId: string, body: unknown) => {
    const res = await fetch(`${http}/v1/devices/${deviceId}/commands`, {
      method: 'POST',
      headers: { authorization: `Bearer ${await pki.token('commands:send')}`, 'content-type': 'application/json' },
      body: JSON.stringify(body),
    });
    assert.equal(res.status, 202);
    return ((await res.json()) as { id: string }).id;
  };
  const stateOf = async (http: string, deviceId: string, id: string) => {
    const res = await fetch(`${http}/v1/devices/${deviceId}/commands/${id}`, { headers: { authorization: `Bearer ${await pki.token('commands:send')}` } });
    return ((await res.json()) as { state: string }).state;
  };

  const g1 = await start();
  const d = await provision(g1.http, await pki.token('provision'), uid('cmd'));
  const filter = `devices/${d.id}/commands/+`;
  const first = await openSession(t, g1.mqtt, { ...deviceLogin(d), clean: false });
  await subscribeGranted(first.client, [filter], 1);
  // mqtt.js sends the PUBACK when handleMessage calls back: hold it for commands.
  const handle = first.client.handleMessage.bind(first.client);
  first.client.handleMessage = (packet, done) => (packet.topic.includes('/commands/') ? undefined : handle(packet, done));
  const id = await send(g1.http, d.id, { name: 'calibrate', wait: false });
  await first.inbox.waitFor(onTopic(`devices/${d.id}/commands/${id}`), 'the command on the first gateway');
  assert.equal(await stateOf(g1.http, d.id, id), 'sent', 'not acknowledged');
  first.client.end(true);
  await g1.gateway.stop();

  // Another gateway process (a new aedes id) on the same Redis: aedes has the unacknowledged copy
  // in the session's queue, the command service re-sends the command itself.
  const g2 = await start();
  const second = await openSession(t, g2.mqtt, { ...deviceLogin(d), clean: false });
  assert.equal(second.connack.sessionPresent, true);
  await second.inbox.waitFor(onTopic(`devices/${d.id}/commands/${id}`), 'the command after the restart');
  const control = await send(g2.http, d.id, { name: 'control', wait: false });
  await second.inbox.waitFor(onTopic(`devices/${d.id}/commands/${control}`), 'the control command');
  assert.deepEqual(
    second.inbox.all((m) => m.topic.startsWith(`devices/${d.id}/commands/`)).map((m) => m.topic.slice(m.topic.lastIndexOf('/') + 1)),
    [id, control],
    'the command once, then the control command',
  );
  await withDeadline(
    (async () => {
      while ((await stateOf(g2.http, d.id, id)) !== 'delivered') await new Promise((r) => setImmediate(r));
    })(),
    5000,
    'the command delivered (PUBACK seen through the Redis persistence)',
  );
});

test('a SUBSCRIBE that overtakes aedes\u2019 replay of a persistent session\u2019s queue still gets the queued command', async (t) => {
  const teardown = stack(t);
  const redis = await redisOn(t, teardown);
  if (!redis) return;
  const gw = await build(teardown, { IOTGATE_REDIS_URL: redis.url, IOTGATE_LOG_LEVEL: 'info' });
  const d = await provision(gw.url, await gw.token('provision'), uid('early-sub'));
  const url = `mqtt://127.0.0.1:${gw.ports.mqtt}`;
  const commands = `devices/${d.id}/commands/+`;
  const delta = `devices/${d.id}/shadow/update/delta`;
  const first = await openSession(t, url, { ...deviceLogin(d), clean: false });
  await subscribeGranted(first.client, [commands, delta], 1);
  first.client.end(true);
  await closeEvent(first.client);

  // While it is away, deltas queue up in its session (aedes replays them one Redis write each at
  // the reconnect, after the CONNACK and before its `clientReady`), and a command waits.
  const shadowJwt = await gw.token('shadow:write');
  for (let n = 0; n < 150; n++) {
    const res = await fetch(`${gw.url}/v1/devices/${d.id}/shadow`, {
      method: 'PATCH',
      headers: { authorization: `Bearer ${shadowJwt}`, 'content-type': 'application/json' },
      body: JSON.stringify({ state: { desired: { n } } }),
    });
    assert.equal(res.status, 200);
  }
  const res = await fetch(`${gw.url}/v1/devices/${d.id}/commands`, {
    method: 'POST',
    headers: { authorization: `Bearer ${await gw.token('commands:send')}`, 'content-type': 'application/json' },
    body: JSON.stringify({ name: 'reboot', wait: false }),
  });
  assert.equal(res.status, 202);
  const { id } = (await res.json()) as { id: string };

  // Back, subscribing again in the same turn as the CONNACK arrives (during the replay).
  const client = mqtt.connect(url, { ...deviceLogin(d), clean: false, reconnectPeriod: 0 });
  teardown.after(() => client.end(true));
  const got = new Promise<void>((resolve) => client.on('message', (topic) => topic === `devices/${d.id}/commands/${id}` && resolve()));
  client.once('connect', () => client.subscribe(commands, { qos: 1 }));
  await withDeadline(got, 10_000, 'the queued command');
});
