/**
 * Several gateways as one (issue 8, contract §1): two `iotgate start` processes sharing one real
 * redis-server and one certs dir. A command sent through B reaches the device on A and B's REST
 * call gets the answer; a shadow PATCH through B reaches the device on A; a device that moves from
 * A to B never shows offline in between; revocation through B drops the device on A; rate limits
 * are shared; a gateway killed with SIGKILL keeps shadows, command records and queued commands;
 * with Redis stopped /readyz is 503 and requests fail fast, and everything recovers when it is back.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import type { MqttClient } from 'mqtt';
import { runCli } from '../helpers/cli.js';
import { clusterNodes, type ClusterNode as Node } from '../helpers/cluster.js';
import { loopbackEnv } from '../helpers/gateway.js';
import { call } from '../helpers/http.js';
import { assertRefused, closeEvent, connect, deviceLogin, onTopic, openSession, registerDevice, subscribeGranted, withDeadline, type Device, type Inbox } from '../helpers/mqtt.js';
import { startRedis, type TestRedis } from '../helpers/redis.js';

let redis: TestRedis | null = null;
let certsDir = '';
const cleanups: (() => unknown)[] = [];
const teardown = { after: (fn: () => unknown) => cleanups.push(fn) };
let a!: Node;
let b!: Node;
let skipped = false;

const { startNode, token, asGateway, coapPost, rest } = clusterNodes({
  redisUrl: () => redis!.url,
  certsDir: () => certsDir,
  env: { IOTGATE_LIMITS_DEVICE_MESSAGES: '[{"limit":10,"windowMs":60000}]' },
  teardown,
});

/** Polls /readyz (every 50 ms, up to 10 s) until it answers `status`; resolves that answer. */
/** Polls /readyz until it answers `status` (and, if given, `component` has `componentStatus`). */
function readyzBecomes(node: Node, status: number, component?: string, componentStatus?: string) {
  return withDeadline(
    (async () => {
      for (;;) {
        const res = await call(node.url, 'GET', '/readyz');
        const c = (res.body as { components?: Record<string, { status: string }> }).components?.[component ?? ''];
        if (res.status === status && (component === undefined || c?.status === componentStatus)) return res;
        await new Promise((r) => setTimeout(r, 50));
      }
    })(),
    10_000,
    `/readyz ${status}`,
  );
}

let seq = 0;
const uid = (p: string) => `${p}-${process.pid}-${++seq}`;

async function device(node: Node, id: string): Promise<{ dev: Device; client: MqttClient; inbox: Inbox }> {
  const dev = await registerDevice(asGateway(node), id);
  const { client, inbox } = await openSession(teardown, node.mqtt, deviceLogin(dev));
  return { dev, client, inbox };
}

before(async () => {
  redis = await startRedis(null);
  if (!redis) {
    skipped = true;
    return;
  }
  certsDir = await mkdtemp(join(tmpdir(), 'iotgate-cluster-'));
  a = await startNode(); // creates the CA in the shared certs dir
  b = await startNode();
});

after(async () => {
  for (const fn of cleanups.reverse()) await fn();
  await redis?.dispose();
  if (certsDir) await rm(certsDir, { recursive: true, force: true });
});

describe('two gateways on one Redis', () => {
  it('a command sent through B reaches the device on A, and B’s REST call gets its answer', async (t) => {
    if (skipped) return t.skip('redis-server is not installed');
    const { dev, client, inbox } = await device(a, uid('cmd'));
    assert.deepEqual(await subscribeGranted(client, [`devices/${dev.id}/commands/+`]), [1]);
    const answered = inbox.waitFor((m) => m.topic.startsWith(`devices/${dev.id}/commands/`), 'the command on A', 10_000).then((m) => {
      const cmd = JSON.parse(m.payload.toString()) as { id: string; name: string };
      client.publish(`devices/${dev.id}/commands/${cmd.id}/response`, JSON.stringify({ status: 200, payload: { rebooted: cmd.name } }), { qos: 1 });
      return cmd;
    });
    const res = await rest(b, 'POST', `/v1/devices/${dev.id}/commands`, 'commands:send', { name: 'reboot', params: {}, timeoutMs: 10_000 });
    assert.equal(res.status, 200, JSON.stringify(res.body));
    const cmd = await answered;
    assert.equal((res.body as { id: string }).id, cmd.id);
    assert.equal((res.body as { state: string }).state, 'succeeded');
    assert.deepEqual((res.body as { response: unknown }).response, { status: 200, payload: { rebooted: 'reboot' } });
    // Both gateways read the same record.
    const onA = await rest(a, 'GET', `/v1/devices/${dev.id}/commands/${cmd.id}`, 'commands:send');
    assert.equal((onA.body as { state: string }).state, 'succeeded');
  });

  it('a shadow PATCH through B reaches the device on A as a delta; its report is visible through B', async (t) => {
    if (skipped) return t.skip('redis-server is not installed');
    const { dev, client, inbox } = await device(a, uid('shadow'));
    await subscribeGranted(client, [`devices/${dev.id}/shadow/update/delta`, `devices/${dev.id}/shadow/update/accepted`]);
    const delta = inbox.waitFor(onTopic(`devices/${dev.id}/shadow/update/delta`), 'the delta on A');
    const patch = await rest(b, 'PATCH', `/v1/devices/${dev.id}/shadow`, 'shadow:write', { state: { desired: { heat: 21 } } });
    assert.equal(patch.status, 200, JSON.stringify(patch.body));
    const d = JSON.parse((await delta).payload.toString()) as { state: Record<string, unknown> };
    assert.deepEqual(d.state, { heat: 21 });
    // update/accepted also announced the PATCH: wait for the one of the report.
    const accepted = inbox.waitFor((m) => m.topic === `devices/${dev.id}/shadow/update/accepted` && m.text.includes('"reported"'), 'update/accepted of the report on A');
    client.publish(`devices/${dev.id}/shadow/update`, JSON.stringify({ state: { reported: { heat: 21 } } }), { qos: 1 });
    await accepted;
    const doc = await rest(b, 'GET', `/v1/devices/${dev.id}/shadow`, 'shadow:read');
    assert.equal(doc.status, 200);
    assert.deepEqual((doc.body as { state: { reported: unknown } }).state.reported, { heat: 21 });
  });

  it('a device moving from A to B stays online throughout; it goes offline when it leaves B', async (t) => {
    if (skipped) return t.skip('redis-server is not installed');
    const id = uid('move');
    const dev = await registerDevice(asGateway(a), id);
    // A backend client on B watches the retained status topic.
    const svc = await connect(teardown, b.mqtt, { clientId: uid('svc'), username: 'service:cluster-test', password: await token('admin') });
    await subscribeGranted(svc, [`devices/${id}/status`]);
    const statuses: boolean[] = [];
    let twiceOnline!: () => void;
    const movedOnline = new Promise<void>((resolve) => (twiceOnline = resolve));
    const offline = new Promise<void>((resolve) =>
      svc.on('message', (topic, payload) => {
        if (topic !== `devices/${id}/status` || payload.length === 0) return;
        const s = JSON.parse(payload.toString()) as { online: boolean };
        statuses.push(s.online);
        if (statuses.filter(Boolean).length === 2) twiceOnline();
        if (!s.online && statuses.includes(true)) resolve();
      }),
    );
    const first = await connect(teardown, a.mqtt, deviceLogin(dev));
    const firstClosed = closeEvent(first);
    const second = await connect(teardown, b.mqtt, deviceLogin(dev));
    await withDeadline(firstClosed, 5000, 'the session on A to be taken over');
    await withDeadline(movedOnline, 5000, 'the online status from B');
    const onB = await rest(b, 'GET', `/v1/devices/${id}`, 'devices:read');
    assert.equal((onB.body as { online: boolean }).online, true, 'online after the move (read through B)');
    const onA = await rest(a, 'GET', `/v1/devices/${id}`, 'devices:read');
    assert.equal((onA.body as { online: boolean }).online, true, 'online after the move (read through A)');
    await second.endAsync();
    await withDeadline(offline, 5000, 'the offline status');
    assert.equal(statuses.at(-1), false);
    assert.ok(!statuses.slice(0, -1).includes(false), `no offline status before the device left: ${JSON.stringify(statuses)}`);
  });

  it('revoking through B closes the device’s session on A within 5 s', async (t) => {
    if (skipped) return t.skip('redis-server is not installed');
    const { dev, client } = await device(a, uid('revoke'));
    const closed = closeEvent(client);
    const res = await rest(b, 'DELETE', `/v1/devices/${dev.id}`, 'devices:write');
    assert.equal(res.status, 204);
    await withDeadline(closed, 5000, 'A to close the revoked device’s session');
  });

  it('rate limits are shared: what a device used on A counts on B', async (t) => {
    if (skipped) return t.skip('redis-server is not installed');
    const dev = await registerDevice(asGateway(a), uid('rate'));
    const post = (node: Node) =>
      fetch(`${node.url}/v1/devices/${dev.id}/telemetry`, {
        method: 'POST',
        headers: { authorization: `Bearer ${dev.token}`, 'content-type': 'application/json' },
        body: JSON.stringify({ n: 1 }),
      });
    for (let i = 0; i < 10; i++) assert.equal((await post(a)).status, 202, `message ${i + 1} of 10 on A`);
    // A's consumption reaches Redis (observable), then B's first request syncs B with the fleet.
    const peek = new Redis(redis!.url);
    t.after(() => peek.disconnect());
    const used = async () => {
      const keys = await peek.keys(`iotgate:{${dev.id}}:rate:messages:*`);
      const values = keys.length ? await peek.mget(...keys) : [];
      return values.reduce((s, v) => s + Number(v ?? 0), 0);
    };
    const usedAtLeast = (n: number) =>
      withDeadline(
        (async () => {
          while ((await used()) < n) await new Promise((r) => setImmediate(r));
        })(),
        5000,
        `${n} messages counted in Redis`,
      );
    await usedAtLeast(10);
    const firstOnB = await post(b);
    const acceptedOnB = firstOnB.status === 202 ? 1 : 0;
    await usedAtLeast(10 + acceptedOnB);
    const refused = await post(b);
    assert.equal(refused.status, 429);
    const problem = (await refused.json()) as { limit?: string; detail?: string };
    assert.match(JSON.stringify(problem), /10 messages per 1m/);
    assert.ok(refused.headers.get('retry-after'), 'Retry-After');
  });

  it('a gateway killed with SIGKILL and started again keeps shadows, command records and queued commands', async (t) => {
    if (skipped) return t.skip('redis-server is not installed');
    const c = await startNode();
    const dev = await registerDevice(asGateway(c), uid('crash'));
    const patch = await rest(c, 'PATCH', `/v1/devices/${dev.id}/shadow`, 'shadow:write', { state: { desired: { mode: 'eco' } } });
    assert.equal(patch.status, 200);
    const queued: string[] = [];
    for (const name of ['first', 'second']) {
      const res = await rest(c, 'POST', `/v1/devices/${dev.id}/commands`, 'commands:send', { name, params: {}, wait: false });
      assert.equal(res.status, 202, JSON.stringify(res.body));
      queued.push((res.body as { id: string }).id);
    }
    c.proc.child.kill('SIGKILL');
    await c.proc.exited;
    const again = await startNode();
    const shadow = await rest(again, 'GET', `/v1/devices/${dev.id}/shadow`, 'shadow:read');
    assert.deepEqual((shadow.body as { state: { desired: unknown } }).state.desired, { mode: 'eco' });
    const list = await rest(again, 'GET', `/v1/devices/${dev.id}/commands`, 'commands:send');
    assert.deepEqual((list.body as { items: { id: string; state: string }[] }).items.map((r) => [r.id, r.state]), queued.map((id) => [id, 'queued']));
    // The device comes online at the restarted gateway and gets both, in creation order.
    const { client, inbox } = await openSession(teardown, again.mqtt, deviceLogin(dev));
    await subscribeGranted(client, [`devices/${dev.id}/commands/+`]);
    await inbox.waitFor(() => inbox.all((m) => m.topic.startsWith(`devices/${dev.id}/commands/`)).length === 2, 'both queued commands');
    const got = inbox.all((m) => m.topic.startsWith(`devices/${dev.id}/commands/`)).map((m) => (JSON.parse(m.text) as { name: string }).name);
    assert.deepEqual(got, ['first', 'second']);
  });

  it('with Redis down /readyz is 503 and requests fail fast with 503; when it is back everything works without a restart', async (t) => {
    if (skipped) return t.skip('redis-server is not installed');
    const dev = await registerDevice(asGateway(a), uid('outage'));
    const { client } = await openSession(teardown, a.mqtt, deviceLogin(dev));
    // A third gateway with a device connected: SIGTERM while Redis is down still exits 0 in 10 s.
    const c = await startNode();
    await openSession(teardown, c.mqtt, deviceLogin(await registerDevice(asGateway(c), uid('outage-c'))));
    await redis!.stop();
    // The gateway sees the connection close a moment after Redis exits.
    // The stores' connection and the broker's notice it each on their own, a moment apart.
    await readyzBecomes(a, 503, 'store', 'failing');
    await readyzBecomes(a, 503, 'broker', 'failing');
    const shadow = await rest(a, 'GET', `/v1/devices/${dev.id}/shadow`, 'shadow:read');
    assert.equal(shadow.status, 503, JSON.stringify(shadow.body));
    const telemetry = await fetch(`${a.url}/v1/devices/${dev.id}/telemetry`, {
      method: 'POST',
      headers: { authorization: `Bearer ${dev.token}`, 'content-type': 'application/json' },
      body: JSON.stringify({ n: 1 }),
    });
    assert.equal(telemetry.status, 503);
    // CoAP: 5.03 with Max-Age at once.
    const coapReply = await coapPost(a, '/telemetry', dev.token, JSON.stringify({ n: 1 }));
    assert.equal(coapReply.code, '5.03', coapReply.text);
    assert.match(coapReply.text, /unavailable/);
    // MQTT: a QoS 1 publish is not acknowledged, the connection is closed (the device retries
    // later), and a new CONNECT is refused at once with 3 (server unavailable).
    const gone = closeEvent(client);
    let acked = false;
    client.publish(`devices/${dev.id}/telemetry`, JSON.stringify({ n: 2 }), { qos: 1 }, (err) => (acked = !err));
    await withDeadline(gone, 5000, 'the MQTT connection to close without a PUBACK');
    assert.equal(acked, false, 'no PUBACK while the message could not be stored');
    await assertRefused(a.mqtt, deviceLogin(dev), 'CONNECT while Redis is down', [3]);
    // The CA database is in Redis too: a revocation while Redis is down fails fast, through REST
    // (503) and through the CLI (exit 1, naming Redis), and no gateway crashes.
    const del = await rest(a, 'DELETE', `/v1/devices/${dev.id}`, 'devices:write');
    assert.equal(del.status, 503, JSON.stringify(del.body));
    const cli = await runCli(['device', 'revoke', dev.id], loopbackEnv(certsDir, { IOTGATE_REDIS_URL: redis!.url }));
    assert.equal(cli.status, 1, cli.stdout);
    assert.match(cli.stderr, /cannot reach Redis/);
    assert.equal(a.proc.child.exitCode, null, 'gateway A still runs');
    c.proc.child.kill('SIGTERM');
    assert.equal(await withDeadline(c.proc.exited, 10_000, 'a SIGTERM to exit within 10 s with Redis down'), 0);
    await redis!.start();
    // ioredis reconnects by itself (backoff ≤ 1 s): wait for readiness, then it all works again.
    await readyzBecomes(a, 200);
    const patch = await rest(b, 'PATCH', `/v1/devices/${dev.id}/shadow`, 'shadow:write', { state: { desired: { back: true } } });
    assert.equal(patch.status, 200, JSON.stringify(patch.body));
    const read = await rest(a, 'GET', `/v1/devices/${dev.id}/shadow`, 'shadow:read');
    assert.deepEqual((read.body as { state: { desired: unknown } }).state.desired, { back: true });
  });
});
