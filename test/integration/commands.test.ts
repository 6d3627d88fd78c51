/**
 * Commands over REST and MQTT (issue 6, contract §4 and §8) against one in-process gateway on real
 * sockets: mqtt.js devices (token login, MQTT 3.1.1) and REST with service JWTs. Synchronous
 * success and failure, a silent device (504, answered later), the offline queue with expiry and
 * creation order, cancel, idempotency, answers from the wrong device or in the wrong shape, the
 * bounded queue, request validation, and `iotgate.command.updated` on SSE.
 *
 * "X is not delivered" is shown by order: commands are delivered in creation order, so X, created
 * before a control command, would arrive before it.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import type { CommandRecord } from '../../src/core/commands.js';
import { call, type JsonResponse } from '../helpers/http.js';
import { suiteGateway, type TestGateway } from '../helpers/gateway.js';
import { openEvents, type EventStream } from '../helpers/sse.js';
import { deviceLogin, onTopic, openSession, registerDevice, subscribeGranted, tcpUrl, type Device, type Message, type Session } from '../helpers/mqtt.js';

const QUEUE_MAX = 5;
const gateway = suiteGateway({ IOTGATE_COMMANDS_QUEUE_MAX: String(QUEUE_MAX) });


let seq = 0;
const uniqueId = (prefix: string) => `${prefix}-${process.pid}-${++seq}`;

async function sendToken(gw: TestGateway): Promise<string> {
  return gw.token('commands:send');
}

function post(gw: TestGateway, token: string, deviceId: string, body: unknown): Promise<JsonResponse> {
  return call(gw.url, 'POST', `/v1/devices/${deviceId}/commands`, { token, body });
}

const record = (res: JsonResponse) => res.body as unknown as CommandRecord;

/** A device connected over TCP and subscribed to its commands (and errors) topics. */
async function onlineDevice(t: TestContext, gw: TestGateway, device?: Device): Promise<{ device: Device; session: Session }> {
  const d = device ?? (await registerDevice(gw, uniqueId('cmd')));
  const session = await openSession(t, tcpUrl(gw), deviceLogin(d));
  assert.deepEqual(await subscribeGranted(session.client, [`devices/${d.id}/commands/+`, `devices/${d.id}/errors`]), [1, 1]);
  return { device: d, session };
}

/** Answers every command the device receives with `answer(command)`. */
function answerWith(session: Session, deviceId: string, answer: (cmd: { id: string; name: string; params: Record<string, unknown> }) => unknown): void {
  session.client.on('message', (topic, payload) => {
    if (!topic.startsWith(`devices/${deviceId}/commands/`)) return;
    const cmd = JSON.parse(payload.toString('utf8')) as { id: string; name: string; params: Record<string, unknown> };
    session.client.publish(`${topic}/response`, JSON.stringify(answer(cmd)), { qos: 1 });
  });
}

const isCommand = (deviceId: string) => (m: Message) => m.topic.startsWith(`devices/${deviceId}/commands/`);
const commandIds = (session: Session, deviceId: string) => session.inbox.all(isCommand(deviceId)).map((m) => (JSON.parse(m.text) as { id: string }).id);

function stateEvent(events: EventStream, id: string, state: string, ms = 5000) {
  return events.next((e) => (e.data.data as CommandRecord | undefined)?.id === id && (e.data.data as CommandRecord).state === state, `command ${id} ${state}`, ms);
}

test('a synchronous command returns the device payload (200, succeeded)', async (t) => {
  const gw = gateway();
  const { device, session } = await onlineDevice(t, gw);
  answerWith(session, device.id, (cmd) => ({ status: 200, payload: { echoed: cmd.params, name: cmd.name } }));

  const res = await post(gw, await sendToken(gw), device.id, { name: 'setpoint', params: { heat: 21.5 } });
  assert.equal(res.status, 200, res.text);
  const r = record(res);
  assert.equal(r.state, 'succeeded');
  assert.equal(r.deviceId, device.id);
  assert.deepEqual(r.response, { status: 200, payload: { echoed: { heat: 21.5 }, name: 'setpoint' } });
  assert.equal(res.headers.get('location'), `/v1/devices/${device.id}/commands/${r.id}`);

  // The device received the contract's document on its own topic.
  const [msg] = session.inbox.all(isCommand(device.id));
  assert.ok(msg);
  assert.equal(msg.topic, `devices/${device.id}/commands/${r.id}`);
  assert.equal(msg.packet.qos, 1);
  assert.deepEqual(JSON.parse(msg.text), { id: r.id, name: 'setpoint', params: { heat: 21.5 }, expiresAt: r.expiresAt });
});

test('a device answering with status 500 makes the command failed', async (t) => {
  const gw = gateway();
  const { device, session } = await onlineDevice(t, gw);
  answerWith(session, device.id, () => ({ status: 500, payload: { error: 'actuator jammed' } }));
  const res = await post(gw, await sendToken(gw), device.id, { name: 'open-valve' });
  assert.equal(res.status, 200, res.text);
  assert.equal(record(res).state, 'failed');
  assert.deepEqual(record(res).response, { status: 500, payload: { error: 'actuator jammed' } });
});

test('a silent device gives 504 with the record; its late answer still makes it succeeded', async (t) => {
  const gw = gateway();
  const token = await sendToken(gw);
  const events = await openEvents(t, gw, 'types=iotgate.command.updated', await gw.token('telemetry:read'));
  const { device, session } = await onlineDevice(t, gw);

  const res = await post(gw, token, device.id, { name: 'slow', timeoutMs: 1000 });
  assert.equal(res.status, 504, res.text);
  assert.match(res.headers.get('content-type') ?? '', /^application\/problem\+json/);
  const r = record(res);
  assert.equal(res.body.status, 504);
  assert.equal(r.deviceId, device.id);
  assert.equal(r.name, 'slow');
  // mqtt.js acknowledged the PUBLISH at once: the record says so.
  assert.equal(r.state, 'delivered');
  assert.equal(res.headers.get('location'), `/v1/devices/${device.id}/commands/${r.id}`);

  const msg = await session.inbox.waitFor(onTopic(`devices/${device.id}/commands/${r.id}`), 'the command');
  session.client.publish(`${msg.topic}/response`, JSON.stringify({ status: 204 }), { qos: 1 });
  await stateEvent(events, r.id, 'succeeded');
  const after = await call(gw.url, 'GET', `/v1/devices/${device.id}/commands/${r.id}`, { token });
  assert.equal(after.status, 200);
  assert.equal(record(after).state, 'succeeded');
  assert.deepEqual(record(after).response, { status: 204, payload: null });
});

test('commands to an offline device are queued (202), delivered on subscribe in creation order, expired ones never', async (t) => {
  const gw = gateway();
  const token = await sendToken(gw);
  const events = await openEvents(t, gw, 'types=iotgate.command.updated', await gw.token('telemetry:read'));
  const device = await registerDevice(gw, uniqueId('offline'));

  const first = await post(gw, token, device.id, { name: 'first', wait: false });
  assert.equal(first.status, 202, first.text);
  assert.equal(record(first).state, 'queued');
  const location = first.headers.get('location');
  assert.equal(location, `/v1/devices/${device.id}/commands/${record(first).id}`);
  assert.equal(record(await call(gw.url, 'GET', location, { token })).id, record(first).id);

  const shortLived = await post(gw, token, device.id, { name: 'short-lived', wait: false, ttlMs: 50 });
  assert.equal(shortLived.status, 202);
  const third = await post(gw, token, device.id, { name: 'third', wait: false, params: { n: 3 } });
  await stateEvent(events, record(shortLived).id, 'expired');

  const { session } = await onlineDevice(t, gw, device);
  await session.inbox.waitFor(onTopic(`devices/${device.id}/commands/${record(third).id}`), 'the third command');
  assert.deepEqual(commandIds(session, device.id), [record(first).id, record(third).id]);
  await stateEvent(events, record(third).id, 'delivered');

  const list = await call(gw.url, 'GET', `/v1/devices/${device.id}/commands`, { token });
  assert.equal(list.status, 200);
  const states = (list.body.items as CommandRecord[]).map((c) => [c.name, c.state]);
  assert.deepEqual(states, [
    ['first', 'delivered'],
    ['short-lived', 'expired'],
    ['third', 'delivered'],
  ]);
});

test('cancel before delivery prevents delivery; a finished command cannot be canceled; a late answer is refused', async (t) => {
  const gw = gateway();
  const token = await sendToken(gw);
  const device = await registerDevice(gw, uniqueId('cancel'));
  const doomed = record(await post(gw, token, device.id, { name: 'doomed', wait: false }));
  const canceled = await call(gw.url, 'DELETE', `/v1/devices/${device.id}/commands/${doomed.id}`, { token });
  assert.equal(canceled.status, 200, canceled.text);
  assert.equal(record(canceled).state, 'canceled');

  const again = await call(gw.url, 'DELETE', `/v1/devices/${device.id}/commands/${doomed.id}`, { token });
  assert.equal(again.status, 409);
  assert.match(again.headers.get('content-type') ?? '', /^application\/problem\+json/);
  assert.equal(record(again).state, 'canceled');

  const control = record(await post(gw, token, device.id, { name: 'control', wait: false }));
  const { session } = await onlineDevice(t, gw, device);
  await session.inbox.waitFor(onTopic(`devices/${device.id}/commands/${control.id}`), 'the control command');
  assert.deepEqual(commandIds(session, device.id), [control.id]);

  // The device answers the canceled command anyway (it learnt the id elsewhere): refused, told why.
  session.client.publish(`devices/${device.id}/commands/${doomed.id}/response`, JSON.stringify({ status: 200 }), { qos: 1 });
  const err = await session.inbox.waitFor(onTopic(`devices/${device.id}/errors`), 'the error report');
  assert.deepEqual(JSON.parse(err.text), { code: 0x83, message: `command ${doomed.id} is already canceled`, topic: `devices/${device.id}/commands/${doomed.id}/response` });
  assert.equal(record(await call(gw.url, 'GET', `/v1/devices/${device.id}/commands/${doomed.id}`, { token })).state, 'canceled');

  const unknown = await call(gw.url, 'DELETE', `/v1/devices/${device.id}/commands/no-such-command`, { token });
  assert.equal(unknown.status, 404);
});

test('the same idempotencyKey twice creates one command; reused with other params it is 422', async () => {
  const gw = gateway();
  const token = await sendToken(gw);
  const device = await registerDevice(gw, uniqueId('idem'));
  const body = { name: 'reboot', params: { delay: 5 }, wait: false, idempotencyKey: 'reboot-2026-11-22' };
  const a = await post(gw, token, device.id, body);
  const b = await post(gw, token, device.id, body);
  assert.equal(a.status, 202);
  assert.equal(b.status, 202);
  assert.equal(record(b).id, record(a).id);
  const list = await call(gw.url, 'GET', `/v1/devices/${device.id}/commands`, { token });
  assert.equal((list.body.items as CommandRecord[]).length, 1);

  const other = await post(gw, token, device.id, { ...body, params: { delay: 10 } });
  assert.equal(other.status, 422, other.text);
  assert.equal(other.body.commandId, record(a).id);

  // Keys are per device.
  const device2 = await registerDevice(gw, uniqueId('idem'));
  const c = await post(gw, token, device2.id, body);
  assert.equal(c.status, 202);
  assert.notEqual(record(c).id, record(a).id);
});

test("a device cannot answer another device's command, nor answer in the wrong shape", async (t) => {
  const gw = gateway();
  const token = await sendToken(gw);
  const events = await openEvents(t, gw, 'types=iotgate.command.updated', await gw.token('telemetry:read'));
  const a = await onlineDevice(t, gw);
  const b = await onlineDevice(t, gw);
  const cmd = record(await post(gw, token, a.device.id, { name: 'only-for-a', wait: false }));
  await stateEvent(events, cmd.id, 'delivered');

  // On A's topic: refused by the topic rules.
  b.session.client.publish(`devices/${a.device.id}/commands/${cmd.id}/response`, JSON.stringify({ status: 200 }), { qos: 1 });
  const denied = await b.session.inbox.waitFor(onTopic(`devices/${b.device.id}/errors`), 'the first error');
  assert.equal((JSON.parse(denied.text) as { code: number }).code, 0x87);
  // On its own topic with A's command id: there is no such command for B.
  b.session.client.publish(`devices/${b.device.id}/commands/${cmd.id}/response`, JSON.stringify({ status: 200 }), { qos: 1 });
  const unknown = await b.session.inbox.waitFor((m) => m.topic === `devices/${b.device.id}/errors` && m !== denied, 'the second error');
  assert.deepEqual(JSON.parse(unknown.text), {
    code: 0x83,
    message: `no command ${cmd.id} for device ${b.device.id}`,
    topic: `devices/${b.device.id}/commands/${cmd.id}/response`,
  });
  assert.equal(record(await call(gw.url, 'GET', `/v1/devices/${a.device.id}/commands/${cmd.id}`, { token })).state, 'delivered');

  // A answers in the wrong shape: told on its errors topic, the record is unchanged.
  a.session.client.publish(`devices/${a.device.id}/commands/${cmd.id}/response`, JSON.stringify({ status: 'ok' }), { qos: 1 });
  const bad = await a.session.inbox.waitFor(onTopic(`devices/${a.device.id}/errors`), 'the shape error');
  assert.equal((JSON.parse(bad.text) as { code: number }).code, 0x99);
  a.session.client.publish(`devices/${a.device.id}/commands/${cmd.id}/response`, 'not json', { qos: 1 });
  await a.session.inbox.waitFor((m) => m.topic === `devices/${a.device.id}/errors` && m !== bad, 'the JSON error');
  assert.equal(record(await call(gw.url, 'GET', `/v1/devices/${a.device.id}/commands/${cmd.id}`, { token })).state, 'delivered');

  // The right answer from the right device still works.
  a.session.client.publish(`devices/${a.device.id}/commands/${cmd.id}/response`, JSON.stringify({ status: 200, payload: 'done' }), { qos: 1 });
  await stateEvent(events, cmd.id, 'succeeded');
});

test('every state change is an iotgate.command.updated CloudEvent carrying the record', async (t) => {
  const gw = gateway();
  const events = await openEvents(t, gw, 'types=iotgate.command.updated', await gw.token('telemetry:read'));
  const { device, session } = await onlineDevice(t, gw);
  const cmd = record(await post(gw, await sendToken(gw), device.id, { name: 'evented', wait: false }));
  // Answer only once the gateway recorded the PUBACK, so the record passes through `delivered`.
  await stateEvent(events, cmd.id, 'delivered');
  session.client.publish(`devices/${device.id}/commands/${cmd.id}/response`, JSON.stringify({ status: 200, payload: [1, 2] }), { qos: 1 });
  const done = await stateEvent(events, cmd.id, 'succeeded');

  const mine = events.events.filter((e) => (e.data.data as CommandRecord).id === cmd.id);
  assert.deepEqual(
    mine.map((e) => (e.data.data as CommandRecord).state),
    ['queued', 'sent', 'delivered', 'succeeded'],
  );
  assert.equal(done.data.type, 'iotgate.command.updated');
  assert.equal(done.data.source, `/devices/${device.id}`);
  assert.deepEqual((done.data.data as CommandRecord).response, { status: 200, payload: [1, 2] });
});

test('a full queue is refused with 429 naming the limit; nothing is stored', async () => {
  const gw = gateway();
  const token = await sendToken(gw);
  const device = await registerDevice(gw, uniqueId('full'));
  for (let i = 0; i < QUEUE_MAX; i++) assert.equal((await post(gw, token, device.id, { name: `n${i}`, wait: false })).status, 202);
  const over = await post(gw, token, device.id, { name: 'one-too-many', wait: false });
  assert.equal(over.status, 429, over.text);
  assert.match(over.headers.get('content-type') ?? '', /^application\/problem\+json/);
  assert.match(String(over.body.limit), new RegExp(`${QUEUE_MAX} undelivered commands per device`));
  const list = await call(gw.url, 'GET', `/v1/devices/${device.id}/commands?limit=1000`, { token });
  assert.equal((list.body.items as CommandRecord[]).length, QUEUE_MAX);

  // Canceling one makes room.
  const first = (list.body.items as CommandRecord[])[0];
  assert.ok(first);
  assert.equal((await call(gw.url, 'DELETE', `/v1/devices/${device.id}/commands/${first.id}`, { token })).status, 200);
  assert.equal((await post(gw, token, device.id, { name: 'fits-now', wait: false })).status, 202);
});

test('listing filters by state and pages with nextCursor', async () => {
  const gw = gateway();
  const token = await sendToken(gw);
  const device = await registerDevice(gw, uniqueId('list'));
  const ids: string[] = [];
  for (let i = 0; i < 4; i++) ids.push(record(await post(gw, token, device.id, { name: `c${i}`, wait: false })).id);
  await call(gw.url, 'DELETE', `/v1/devices/${device.id}/commands/${ids[1]}`, { token });

  const seen: string[] = [];
  let cursor: string | null = null;
  do {
    const page: JsonResponse = await call(gw.url, 'GET', `/v1/devices/${device.id}/commands?limit=3${cursor ? `&cursor=${cursor}` : ''}`, { token });
    assert.equal(page.status, 200);
    seen.push(...(page.body.items as CommandRecord[]).map((c) => c.id));
    cursor = page.body.nextCursor as string | null;
  } while (cursor);
  assert.deepEqual(seen, ids);

  const queued = await call(gw.url, 'GET', `/v1/devices/${device.id}/commands?state=queued`, { token });
  assert.deepEqual((queued.body.items as CommandRecord[]).map((c) => c.id), [ids[0], ids[2], ids[3]]);
  const several = await call(gw.url, 'GET', `/v1/devices/${device.id}/commands?state=canceled,succeeded`, { token });
  assert.deepEqual((several.body.items as CommandRecord[]).map((c) => c.id), [ids[1]]);
  const bad = await call(gw.url, 'GET', `/v1/devices/${device.id}/commands?state=running`, { token });
  assert.equal(bad.status, 400);
});

test('unknown devices and commands are 404; bad bodies are 400 naming the field', async () => {
  const gw = gateway();
  const token = await sendToken(gw);
  const never = await post(gw, token, 'never-seen-device', { name: 'x' });
  assert.equal(never.status, 404);
  assert.equal(never.body.code, 'device_not_found');
  assert.equal((await call(gw.url, 'GET', '/v1/devices/never-seen-device/commands', { token })).status, 404);

  const device = await registerDevice(gw, uniqueId('bad'));
  const missing = await call(gw.url, 'GET', `/v1/devices/${device.id}/commands/00000000-0000-4000-8000-000000000000`, { token });
  assert.equal(missing.status, 404);
  assert.equal(missing.body.code, 'command_not_found');

  const cases: [unknown, string][] = [
    [{}, 'body.name'],
    [{ name: '' }, 'body.name'],
    [{ name: 'x', params: [1, 2] }, 'body.params'],
    [{ name: 'x', timeoutMs: 999 }, 'body.timeoutMs'],
    [{ name: 'x', timeoutMs: 300_001 }, 'body.timeoutMs'],
    [{ name: 'x', ttlMs: 48 * 3_600_000 + 1 }, 'body.ttlMs'],
    [{ name: 'x', wait: 'yes' }, 'body.wait'],
    [{ name: 'x', idempotencyKey: '' }, 'body.idempotencyKey'],
  ];
  for (const [body, path] of cases) {
    const res = await post(gw, token, device.id, body);
    assert.equal(res.status, 400, `${JSON.stringify(body)}: ${res.text}`);
    const errors = res.body.errors as { path: string }[];
    assert.ok(errors.some((e) => e.path === path), `${JSON.stringify(body)} names ${path}: ${res.text}`);
  }
  const unknownKey = await post(gw, token, device.id, { name: 'x', ttl: 5 });
  assert.equal(unknownKey.status, 400, unknownKey.text);
  // None of those created anything.
  const list = await call(gw.url, 'GET', `/v1/devices/${device.id}/commands`, { token });
  assert.deepEqual(list.body.items, []);
});
