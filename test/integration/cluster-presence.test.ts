/**
 * Fleet-wide presence (issue 8, docs/redis.md "Several gateways as one"): three `iotgate start`
 * processes on one real redis-server and one certs dir.
 *
 * - A gateway killed with SIGKILL: the gateways left notice (the MQTT will keeper's liveness check)
 *   and mark its devices offline: GET /v1/devices/{id} says `online: false`, the retained status
 *   goes offline, and exactly one `iotgate.device.disconnected` reaches the fleet's event stream
 *   although two gateways reap.
 * - A late offline from the gateway a device left (its MQTT connection there ends after the device
 *   went on over CoAP through another gateway) changes nothing: presence writes compare-and-set on
 *   the session owner.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import { clusterNodes, type ClusterNode } from '../helpers/cluster.js';
import { connect, deviceLogin, openSession, registerDevice, subscribeGranted, withDeadline } from '../helpers/mqtt.js';
import { startRedis, type TestRedis } from '../helpers/redis.js';
import { EVENT_STREAM_KEY, eventFromFields } from '../../src/upstream/redis-stream.js';
import { BROKERS_KEY } from '../../protocols/mqtt/redis-wills.js';

let redis: TestRedis | null = null;
let peek!: Redis;
let certsDir = '';
const cleanups: (() => unknown)[] = [];
const teardown = { after: (fn: () => unknown) => cleanups.push(fn) };
let b!: ClusterNode;
let c!: ClusterNode;
let skipped = false;

const { startNode, token, asGateway, coapPost, rest } = clusterNodes({
  redisUrl: () => redis!.url,
  certsDir: () => certsDir,
  // The debug line of an offline that was not applied; CoAP presence ends 1 s after the last request.
  env: { IOTGATE_LOG_LEVEL: 'debug', IOTGATE_COAP_PRESENCE_WINDOW_MS: '1000' },
  teardown,
});

let seq = 0;
const uid = (p: string) => `${p}-${process.pid}-${++seq}`;
const tick = () => new Promise((r) => setTimeout(r, 50));

/** Polls `check` (cross-process state) every 50 ms until it returns a value, within `ms`. */
function until<T>(check: () => Promise<T | undefined | false>, what: string, ms = 20_000): Promise<T> {
  return withDeadline(
    (async () => {
      for (;;) {
        const v = await check();
        if (v !== undefined && v !== false) return v;
        await tick();
      }
    })(),
    ms,
    what,
  );
}

interface DeviceView {
  online: boolean;
  protocol: string | null;
}

async function view(node: ClusterNode, id: string): Promise<DeviceView> {
  const res = await rest(node, 'GET', `/v1/devices/${id}`, 'devices:read');
  assert.equal(res.status, 200, res.text);
  return res.body as unknown as DeviceView;
}

/** The `iotgate.device.*` events of one device in the fleet's stream `iotgate:events`. */
async function deviceEvents(id: string, type: 'connected' | 'disconnected') {
  const entries = await peek.xrange(EVENT_STREAM_KEY, '-', '+');
  return entries.map(([, fields]) => eventFromFields(fields)).filter((e) => e.subject === id && e.type === `iotgate.device.${type}`);
}

/** The MQTT broker id (= presence owner id) a node logged at start. */
function brokerIdOf(node: ClusterNode): string {
  for (const line of node.proc.lines) {
    const entry = JSON.parse(line) as { msg?: string; brokerId?: string };
    if (entry.msg === 'mqtt: sessions, retained messages and wills in redis' && entry.brokerId) return entry.brokerId;
  }
  throw new Error('no broker id in the log');
}

before(async () => {
  redis = await startRedis(null);
  if (!redis) {
    skipped = true;
    return;
  }
  peek = new Redis(redis.url);
  peek.on('error', () => undefined);
  certsDir = await mkdtemp(join(tmpdir(), 'iotgate-cluster-presence-'));
  b = await startNode(); // creates the CA in the shared certs dir
  c = await startNode();
});

after(async () => {
  for (const fn of cleanups.reverse()) await fn();
  peek?.disconnect();
  await redis?.dispose();
  if (certsDir) await rm(certsDir, { recursive: true, force: true });
});

describe('presence across gateways on one Redis', () => {
  it('a device on a gateway killed with SIGKILL goes offline, once, through the gateways left', async (t) => {
    if (skipped) return t.skip('redis-server is not installed');
    const a = await startNode();
    const victim = brokerIdOf(a);
    const id = uid('killed');
    const dev = await registerDevice(asGateway(b), id);
    // A backend client on B watches the retained status topic.
    const svc = await connect(teardown, b.mqtt, { clientId: uid('svc'), username: 'service:cluster-test', password: await token('admin') });
    await subscribeGranted(svc, [`devices/${id}/status`]);
    const statuses: { online: boolean; reason: string }[] = [];
    const offlineStatus = new Promise<void>((resolve) =>
      svc.on('message', (topic, payload) => {
        if (topic !== `devices/${id}/status` || payload.length === 0) return;
        const s = JSON.parse(payload.toString()) as { online: boolean; reason: string };
        statuses.push(s);
        if (!s.online) resolve();
      }),
    );
    await openSession(teardown, a.mqtt, deviceLogin(dev));
    await until(async () => (await view(b, id)).online, 'the device online (read through B)');
    // A writes its events to the stream a moment after they happen (a kill loses what is still
    // buffered, docs/redis.md): the connect is in the stream before A dies.
    await until(async () => (await deviceEvents(id, 'connected')).length === 1, 'the connected event in the stream');

    a.proc.child.kill('SIGKILL');
    await a.proc.exited;
    await until(async () => !(await view(b, id)).online, 'the device offline (read through B)');
    const onC = await view(c, id);
    assert.deepEqual([onC.online, onC.protocol], [false, null], 'and through C');
    await withDeadline(offlineStatus, 10_000, 'the offline status');
    assert.equal(statuses.at(-1)?.reason, 'connection_lost');

    // Every reap of A is over once A is out of the live set and B and C each began a pass after
    // that (passes of one gateway never overlap): only then is "exactly one" final.
    await until(async () => (await peek.zscore(BROKERS_KEY, victim)) === null, 'A forgotten by the gateways left');
    const forgottenAt = Date.now();
    await until(async () => {
      const scores = await Promise.all([b, c].map((n) => peek.zscore(BROKERS_KEY, brokerIdOf(n))));
      return scores.every((s) => Number(s) > forgottenAt);
    }, 'a later pass on B and on C');
    const events = await until(async () => {
      const found = await deviceEvents(id, 'disconnected');
      return found.length > 0 && found;
    }, 'the disconnected event in the stream');
    assert.equal(events.length, 1, `exactly one iotgate.device.disconnected: ${JSON.stringify(events)}`);
    assert.deepEqual(
      { online: (events[0]?.data as { online: boolean }).online, reason: (events[0]?.data as { reason: string }).reason },
      { online: false, reason: 'connection_lost' },
    );
    assert.equal((await deviceEvents(id, 'connected')).length, 1);
  });

  it('a late offline from the gateway a device left does not mark it offline', async (t) => {
    if (skipped) return t.skip('redis-server is not installed');
    const id = uid('moved');
    const dev = await registerDevice(asGateway(b), id);
    const { client } = await openSession(teardown, b.mqtt, deviceLogin(dev));
    await until(async () => (await view(c, id)).protocol === 'mqtt', 'the device online over MQTT on B');
    // The device goes on over CoAP through C: C holds its presence now.
    const reply = await coapPost(c, '/telemetry', dev.token, JSON.stringify({ n: 1 }));
    assert.equal(reply.code, '2.04', reply.text);
    await until(async () => (await view(b, id)).protocol === 'coap', 'the device online over CoAP on C');

    // Its old MQTT connection to B ends now: B's offline comes after C took over.
    await client.endAsync();
    await until(
      async () => b.proc.lines.some((l) => l.includes('presence: offline not applied') && l.includes(id)),
      'B to find that it no longer holds the device',
      10_000,
    );
    const onB = await view(b, id);
    assert.deepEqual([onB.online, onB.protocol], [true, 'coap'], 'still online (read through B)');
    assert.deepEqual(await deviceEvents(id, 'disconnected'), [], 'no disconnected event');

    // The holder's own offline applies: the CoAP window on C ends 1 s after the request.
    await until(async () => !(await view(b, id)).online, 'offline once the CoAP window on C ends');
    const events = await until(async () => {
      const found = await deviceEvents(id, 'disconnected');
      return found.length > 0 && found;
    }, 'the disconnected event of C');
    assert.deepEqual(
      events.map((e) => (e.data as { reason: string }).reason),
      ['inactive'],
    );
  });
});
