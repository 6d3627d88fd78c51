/**
 * Device shadows end to end (issue 5 "Done when", contract §4, §5, §8, AWS semantics of
 * reference §2.1) against one in-process gateway, over real sockets: mqtt.js (MQTT 3.1.1) devices
 * and REST with service JWTs. The full loop both ways, delta on subscribe after an offline change,
 * version conflicts (409 on both sides) and If-Match (412), null deletion, named shadows, the 8 KiB
 * and depth limits with AWS's messages, isolation between devices, 100 concurrent REST and device
 * writers, `iotgate.shadow.updated` on SSE, and 404s.
 *
 * "X does not arrive" is shown after a control reply (a `get` on the same connection) that the
 * gateway sent after X would have been sent.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { call, type JsonResponse } from '../helpers/http.js';
import { openEvents as openSse, type SseEvent } from '../helpers/sse.js';
import { suiteGateway, type TestGateway } from '../helpers/gateway.js';
import {
  deviceLogin,
  onTopic,
  openSession,
  registerDevice,
  subscribeGranted,
  tcpUrl,
  withDeadline,
  type Device,
  type Message,
  type Session,
} from '../helpers/mqtt.js';

const gateway = suiteGateway();

/** Errors thrown to the top of this process (the gateway runs in it); observed, not handled. */
const uncaught: unknown[] = [];
process.on('uncaughtExceptionMonitor', (err) => uncaught.push(err));

type Json = Record<string, unknown>;
interface ShadowDoc {
  state: { desired?: Json; reported?: Json; delta?: Json };
  metadata: { desired?: Json; reported?: Json };
  version: number;
  timestamp: number;
  clientToken?: string;
}
interface DeltaDoc {
  state: Json;
  metadata: Json;
  version: number;
  timestamp: number;
  clientToken?: string;
}
interface AcceptedDoc {
  state: { desired?: Json | null; reported?: Json | null };
  metadata: Json;
  version: number;
  timestamp: number;
  clientToken?: string;
}
interface DocumentsDoc {
  previous: { state: Json; metadata: Json; version: number };
  current: { state: { desired?: Json; reported?: Json }; metadata: Json; version: number };
  timestamp: number;
  clientToken?: string;
}
interface ErrorDoc {
  code: number;
  message: string;
  timestamp: number;
  clientToken?: string;
}
interface Problem {
  status: number;
  code: string;
  detail?: string;
  shadowError?: { code: number; message: string };
}

const NOT_AUTHORIZED = 0x87; // 135, named in the errors-topic document
const REFUSED = 0x80; // MQTT 3.1.1 SUBACK failure
const MAX_STATE = 8192;
const TOO_DEEP = 'JSON contains too many levels of nesting; maximum is 6';

let seq = 0;
/** A device id unique within this file. */
const uid = (name: string): string => `shd-${name}-${++seq}`;
const doc = <T>(m: Message): T => JSON.parse(m.text) as T;
const nowSeconds = () => Math.floor(Date.now() / 1000);

/** A service token that can read and write shadows and read events. */
const serviceToken = (gw: TestGateway) => gw.token('shadow:read shadow:write telemetry:read devices:read');

/** Topic of `op` (e.g. 'update/delta') of a device's classic or named shadow. */
const topic = (id: string, op: string, name = ''): string => `devices/${id}/shadow${name ? `/name/${name}` : ''}/${op}`;
const shadowPath = (id: string, name = ''): string => `/v1/devices/${id}/shadow${name ? `?name=${name}` : ''}`;

async function rest(gw: TestGateway, method: string, path: string, opts: { body?: unknown; headers?: Record<string, string> } = {}): Promise<JsonResponse> {
  return call(gw.url, method, path, { token: await serviceToken(gw), ...opts });
}

const patch = (gw: TestGateway, id: string, body: unknown, opts: { name?: string; ifMatch?: string } = {}) =>
  rest(gw, 'PATCH', shadowPath(id, opts.name), { body, ...(opts.ifMatch !== undefined && { headers: { 'if-match': opts.ifMatch } }) });

const getShadow = (gw: TestGateway, id: string, name = '') => rest(gw, 'GET', shadowPath(id, name));

/** Asserts an RFC 9457 problem with the given status (and AWS shadow error, when given). */
function assertProblem(res: JsonResponse, status: number, shadowError?: { code: number; message: string | RegExp }): Problem {
  assert.equal(res.status, status, res.text);
  assert.match(res.headers.get('content-type') ?? '', /^application\/problem\+json/);
  const p = res.body as unknown as Problem;
  assert.equal(p.status, status);
  if (shadowError) {
    assert.ok(p.shadowError, `shadowError in ${res.text}`);
    assert.equal(p.shadowError.code, shadowError.code);
    if (typeof shadowError.message === 'string') assert.equal(p.shadowError.message, shadowError.message);
    else assert.match(p.shadowError.message, shadowError.message);
  }
  return p;
}

/** Asserts a 200 shadow document and its ETag. */
function assertDocument(res: JsonResponse): ShadowDoc {
  assert.equal(res.status, 200, res.text);
  const body = res.body as unknown as ShadowDoc;
  assert.equal(res.headers.get('etag'), `"${body.version}"`, 'ETag = "<version>"');
  return body;
}

/** A registered device with a clean MQTT 3.1.1 session over TCP, subscribed to `ops` of its classic shadow. */
async function onlineDevice(t: TestContext, gw: TestGateway, name: string, ops: string[] = []): Promise<{ device: Device; s: Session }> {
  const device = await registerDevice(gw, uid(name));
  const s = await connectDevice(t, gw, device, ops.map((op) => topic(device.id, op)));
  return { device, s };
}

async function connectDevice(t: TestContext, gw: TestGateway, device: Device, filters: string[]): Promise<Session> {
  const s = await openSession(t, tcpUrl(gw), { ...deviceLogin(device), clean: true });
  if (filters.length > 0) assert.deepEqual(await subscribeGranted(s.client, filters, 1), filters.map(() => 1));
  return s;
}

const publish = (s: Session, t: string, payload: unknown) =>
  s.client.publishAsync(t, typeof payload === 'string' ? payload : JSON.stringify(payload), { qos: 1 });

/** The first message on `t` whose document matches, within 5 s. */
function waitDoc<T>(s: Session, t: string, match: (d: T) => boolean, what: string): Promise<T> {
  return s.inbox.waitFor((m) => m.topic === t && match(doc<T>(m)), what).then((m) => doc<T>(m));
}

/**
 * Publishes an update request and resolves the answer to it: the first update/accepted or
 * update/rejected received after the publish (requests of one connection are answered in order;
 * used where the gateway cannot echo a clientToken).
 */
async function updateAnswer(s: Session, id: string, payload: unknown, name = ''): Promise<Message> {
  const start = s.inbox.messages.length;
  const answers = [topic(id, 'update/accepted', name), topic(id, 'update/rejected', name)];
  await publish(s, topic(id, 'update', name), payload);
  return s.inbox.waitFor((m) => answers.includes(m.topic) && s.inbox.messages.indexOf(m) >= start, 'the answer to an update request');
}

/** Asserts an update/rejected answer with the AWS error document. */
function assertRejected(m: Message, id: string, code: number, message: string): ErrorDoc {
  assert.equal(m.topic, topic(id, 'update/rejected'), m.text);
  const d = doc<ErrorDoc>(m);
  assert.deepEqual([d.code, d.message], [code, message]);
  assert.ok(Math.abs(d.timestamp - nowSeconds()) <= 2, 'timestamp in seconds');
  return d;
}

/**
 * A `get` on the device's own (classic or named) shadow with a fresh clientToken, answered on
 * get/accepted or get/rejected (subscribed here if needed). Everything the gateway published to
 * this connection before answering has arrived when this resolves.
 */
async function control(s: Session, id: string, name = ''): Promise<Message> {
  const filters = [topic(id, 'get/accepted', name), topic(id, 'get/rejected', name)];
  await subscribeGranted(s.client, filters, 1);
  const token = `ctl-${++seq}`;
  await publish(s, topic(id, 'get', name), { clientToken: token });
  return s.inbox.waitFor((m) => filters.includes(m.topic) && doc<{ clientToken?: string }>(m).clientToken === token, 'the control get reply');
}

/** `GET /v1/events?…` with this file's service token. */
const openEvents = async (t: TestContext, gw: TestGateway, query: string) => openSse(t, gw, query, await serviceToken(gw));

test('full loop: REST desired → device delta → device report → REST shows reported and no delta', async (t) => {
  const gw = gateway();
  const { device, s } = await onlineDevice(t, gw, 'loop', ['update/delta', 'update/accepted', 'update/documents', 'update/rejected']);
  const id = device.id;
  const desired = { color: 'red', nested: { a: 1 } };
  const before = nowSeconds();

  const patched = assertDocument(await patch(gw, id, { state: { desired }, clientToken: 'rest-1' }));
  assert.equal(patched.version, 1);
  assert.deepEqual(patched.state, { desired, delta: desired }, 'the PATCH answers the whole document, delta included');
  assert.equal(patched.clientToken, 'rest-1');

  const delta = await waitDoc<DeltaDoc>(s, topic(id, 'update/delta'), (d) => d.version === 1, 'the delta after the REST PATCH');
  assert.deepEqual(Object.keys(delta).sort(), ['clientToken', 'metadata', 'state', 'timestamp', 'version'].sort());
  assert.deepEqual(delta.state, desired);
  assert.ok(delta.timestamp >= before && delta.timestamp <= nowSeconds(), 'timestamp in seconds');
  assert.deepEqual(delta.metadata, { color: { timestamp: delta.timestamp }, nested: { a: { timestamp: delta.timestamp } } });

  const accepted = await waitDoc<AcceptedDoc>(s, topic(id, 'update/accepted'), (d) => d.version === 1, 'update/accepted of the PATCH');
  assert.deepEqual(accepted.state, { desired });
  assert.deepEqual(accepted.metadata, { desired: { color: { timestamp: accepted.timestamp }, nested: { a: { timestamp: accepted.timestamp } } } });
  assert.equal(accepted.clientToken, 'rest-1');

  const documents = await waitDoc<DocumentsDoc>(s, topic(id, 'update/documents'), (d) => d.current.version === 1, 'update/documents of the PATCH');
  assert.equal(documents.previous.version, 0);
  assert.deepEqual(documents.previous.state, {});
  assert.deepEqual(documents.current.state, { desired });
  assert.equal(documents.clientToken, 'rest-1');

  // The device converges and reports.
  await publish(s, topic(id, 'update'), { state: { reported: delta.state }, clientToken: 'dev-1' });
  const reportAccepted = await waitDoc<AcceptedDoc>(s, topic(id, 'update/accepted'), (d) => d.clientToken === 'dev-1', 'update/accepted of the report');
  assert.equal(reportAccepted.version, 2);
  assert.deepEqual(reportAccepted.state, { reported: desired });
  const docs2 = await waitDoc<DocumentsDoc>(s, topic(id, 'update/documents'), (d) => d.clientToken === 'dev-1', 'update/documents of the report');
  assert.deepEqual(docs2.previous.state, { desired });
  assert.deepEqual(docs2.current.state, { desired, reported: desired });

  const ctl = doc<ShadowDoc>(await control(s, id));
  assert.equal(ctl.version, 2);
  assert.equal(ctl.state.delta, undefined, 'get/accepted has no delta');
  assert.deepEqual(s.inbox.all(onTopic(topic(id, 'update/delta'))).map((m) => doc<DeltaDoc>(m).version), [1], 'no delta once reported matches desired');
  assert.deepEqual(s.inbox.all(onTopic(topic(id, 'update/rejected'))), []);

  const got = assertDocument(await getShadow(gw, id));
  assert.equal(got.version, 2);
  assert.deepEqual(got.state, { desired, reported: desired }, 'reported shown, state.delta absent');
  assert.ok(!('delta' in got.state));
  assert.deepEqual(Object.keys(got.metadata).sort(), ['desired', 'reported']);
  assert.equal(got.timestamp, reportAccepted.timestamp);
});

test('delta on subscribe: a device that was offline while desired changed gets the delta as soon as it subscribes', async (t) => {
  const gw = gateway();
  const device = await registerDevice(gw, uid('offline'));
  const id = device.id;
  const first = await connectDevice(t, gw, device, []);
  await first.client.endAsync();

  const desired = { mode: 'eco', level: { x: 3 } };
  assert.equal(assertDocument(await patch(gw, id, { state: { desired } })).version, 1);
  assert.equal(assertDocument(await patch(gw, id, { state: { desired: { fw: '2' } } }, { name: 'ota' })).version, 1);

  // The exact delta topic.
  const exact = await connectDevice(t, gw, device, [topic(id, 'update/delta')]);
  const d1 = await waitDoc<DeltaDoc>(exact, topic(id, 'update/delta'), () => true, 'the current delta on subscribe (exact filter)');
  assert.deepEqual(d1.state, desired);
  assert.equal(d1.version, 1);
  assert.deepEqual(Object.keys(d1.metadata).sort(), ['level', 'mode']);
  await exact.client.endAsync();

  // A wildcard over the whole shadow subtree: the classic and the named shadow's deltas.
  const wild = await connectDevice(t, gw, device, [`devices/${id}/shadow/#`]);
  const d2 = await waitDoc<DeltaDoc>(wild, topic(id, 'update/delta'), () => true, 'the classic delta on subscribe (devices/{id}/shadow/#)');
  assert.deepEqual(d2.state, desired);
  const named = await waitDoc<DeltaDoc>(wild, topic(id, 'update/delta', 'ota'), () => true, 'the named delta on subscribe (devices/{id}/shadow/#)');
  assert.deepEqual(named.state, { fw: '2' });
  await wild.client.endAsync();

  // Once reported matches, subscribing delivers nothing.
  const dev = await connectDevice(t, gw, device, [topic(id, 'update/accepted')]);
  await publish(dev, topic(id, 'update'), { state: { reported: desired }, clientToken: 'conv' });
  await waitDoc<AcceptedDoc>(dev, topic(id, 'update/accepted'), (d) => d.clientToken === 'conv', 'the report is accepted');
  await subscribeGranted(dev.client, [topic(id, 'update/delta')], 1);
  await control(dev, id);
  assert.deepEqual(dev.inbox.all(onTopic(topic(id, 'update/delta'))), [], 'no delta on subscribe when desired = reported');
});

test('delta on subscribe does not throw in the gateway (a real process would crash)', {
}, async (t) => {
  const gw = gateway();
  const device = await registerDevice(gw, uid('crash'));
  assertDocument(await patch(gw, device.id, { state: { desired: { a: 1 } } }));
  const before = uncaught.length;
  const s = await connectDevice(t, gw, device, [topic(device.id, 'update/delta')]);
  await waitDoc<DeltaDoc>(s, topic(device.id, 'update/delta'), () => true, 'the delta on subscribe');
  await control(s, device.id); // a full round trip later: the gateway has long run the write callback
  assert.deepEqual(uncaught.slice(before).map(String), [], 'no uncaught exception while delivering the delta on subscribe');
});

test('version conflict: stale version → 409 over MQTT and REST; If-Match → 412; the right If-Match → 200 and a new ETag', async (t) => {
  const gw = gateway();
  const { device, s } = await onlineDevice(t, gw, 'conflict', ['update/accepted', 'update/rejected']);
  const id = device.id;
  assert.equal(assertDocument(await patch(gw, id, { state: { desired: { a: 1 } } })).version, 1);

  await publish(s, topic(id, 'update'), { state: { reported: { a: 0 } }, version: 0, clientToken: 'stale-mqtt' });
  const rejected = await waitDoc<ErrorDoc>(s, topic(id, 'update/rejected'), (d) => d.clientToken === 'stale-mqtt', 'update/rejected of the stale update');
  assert.deepEqual(Object.keys(rejected).sort(), ['clientToken', 'code', 'message', 'timestamp']);
  assert.equal(rejected.code, 409);
  assert.equal(rejected.message, 'Version conflict');
  assert.ok(Math.abs(rejected.timestamp - nowSeconds()) <= 2, 'timestamp in seconds');

  await publish(s, topic(id, 'update'), { state: { reported: { a: 1 } }, version: 1, clientToken: 'fresh-mqtt' });
  const ok = await waitDoc<AcceptedDoc>(s, topic(id, 'update/accepted'), (d) => d.clientToken === 'fresh-mqtt', 'the update with the current version');
  assert.equal(ok.version, 2);

  const stale = await patch(gw, id, { state: { desired: { a: 2 } }, version: 1, clientToken: 'stale-rest' });
  assertProblem(stale, 409, { code: 409, message: 'Version conflict' });

  assertProblem(await patch(gw, id, { state: { desired: { a: 2 } } }, { ifMatch: '"1"' }), 412, { code: 412, message: /precondition|If-Match/i });
  assertProblem(await rest(gw, 'DELETE', shadowPath(id), { headers: { 'if-match': '"1"' } }), 412);

  const matched = await patch(gw, id, { state: { desired: { a: 2 } } }, { ifMatch: '"2"' });
  const body = assertDocument(matched);
  assert.equal(body.version, 3);
  assert.equal(matched.headers.get('etag'), '"3"');

  // A body version that is current works too; the rejected requests changed nothing.
  assert.equal(assertDocument(await patch(gw, id, { state: { desired: { b: true } }, version: 3 })).version, 4);
  const got = assertDocument(await getShadow(gw, id));
  assert.equal(got.version, 4);
  assert.deepEqual(got.state, { desired: { a: 2, b: true }, reported: { a: 1 }, delta: { a: 2, b: true } });
});

test('null deletes a desired field (leaf, nested leaf, whole section) and the delta follows', async (t) => {
  const gw = gateway();
  const { device, s } = await onlineDevice(t, gw, 'null', ['update/delta', 'update/accepted']);
  const id = device.id;
  const deltaOf = (v: number) => waitDoc<DeltaDoc>(s, topic(id, 'update/delta'), (d) => d.version === v, `delta v${v}`);

  assertDocument(await patch(gw, id, { state: { desired: { keep: 1, drop: 2, obj: { x: 1, y: 2 } } } }));
  assert.deepEqual((await deltaOf(1)).state, { keep: 1, drop: 2, obj: { x: 1, y: 2 } });

  const v2 = assertDocument(await patch(gw, id, { state: { desired: { drop: null, obj: { y: null } } } }));
  assert.deepEqual(v2.state.desired, { keep: 1, obj: { x: 1 } });
  assert.deepEqual(Object.keys(v2.metadata.desired ?? {}).sort(), ['keep', 'obj']);
  assert.deepEqual(Object.keys((v2.metadata.desired?.obj as Json | undefined) ?? {}), ['x'], 'metadata of deleted leaves is gone');
  const d2 = await deltaOf(2);
  assert.deepEqual(d2.state, { keep: 1, obj: { x: 1 } });
  const acc2 = await waitDoc<AcceptedDoc>(s, topic(id, 'update/accepted'), (d) => d.version === 2, 'accepted v2');
  assert.deepEqual(acc2.state, { desired: { drop: null, obj: { y: null } } }, 'accepted shows the request as sent, nulls included');

  await publish(s, topic(id, 'update'), { state: { reported: { keep: 1, extra: 'r' } } });
  assert.deepEqual((await deltaOf(3)).state, { obj: { x: 1 } }, 'reported-only fields stay out of the delta');

  // Deleting the last nested leaf removes the emptied object.
  const v4 = assertDocument(await patch(gw, id, { state: { desired: { obj: { x: null } } } }));
  assert.deepEqual(v4.state, { desired: { keep: 1 }, reported: { keep: 1, extra: 'r' } });

  const v5 = assertDocument(await patch(gw, id, { state: { desired: null }, clientToken: 'wipe' }));
  assert.equal(v5.version, 5);
  assert.deepEqual(v5.state, { reported: { keep: 1, extra: 'r' } }, 'desired: null removes the whole section');
  assert.equal(v5.metadata.desired, undefined);
  const wipe = await waitDoc<AcceptedDoc>(s, topic(id, 'update/accepted'), (d) => d.clientToken === 'wipe', 'accepted of desired: null');
  assert.deepEqual(wipe.state, { desired: null });

  await control(s, id);
  assert.deepEqual(s.inbox.all(onTopic(topic(id, 'update/delta'))).map((m) => doc<DeltaDoc>(m).version), [1, 2, 3], 'no delta once nothing differs');
  const got = assertDocument(await getShadow(gw, id));
  assert.deepEqual(got.state, { reported: { keep: 1, extra: 'r' } });
});

test('named shadows are independent of the classic one; delete keeps the version counting', async (t) => {
  const gw = gateway();
  const device = await registerDevice(gw, uid('named'));
  const id = device.id;
  const s = await connectDevice(t, gw, device, [`devices/${id}/shadow/#`]);

  await publish(s, topic(id, 'update', 'ota'), { state: { reported: { fw: '1.0' } }, clientToken: 'n1' });
  const n1 = await waitDoc<AcceptedDoc>(s, topic(id, 'update/accepted', 'ota'), (d) => d.clientToken === 'n1', 'named update/accepted');
  assert.equal(n1.version, 1);

  assert.equal(assertDocument(await patch(gw, id, { state: { desired: { color: 'blue' } } })).version, 1);
  assert.equal(assertDocument(await patch(gw, id, { state: { desired: { fw: '2.0' } } }, { name: 'ota' })).version, 2);
  const namedDelta = await waitDoc<DeltaDoc>(s, topic(id, 'update/delta', 'ota'), (d) => d.version === 2, 'named delta');
  assert.deepEqual(namedDelta.state, { fw: '2.0' });
  const classicDelta = await waitDoc<DeltaDoc>(s, topic(id, 'update/delta'), (d) => d.version === 1, 'classic delta');
  assert.deepEqual(classicDelta.state, { color: 'blue' });

  const classic = assertDocument(await getShadow(gw, id));
  assert.deepEqual(classic.state, { desired: { color: 'blue' }, delta: { color: 'blue' } });
  assert.equal(classic.version, 1);
  const named = assertDocument(await getShadow(gw, id, 'ota'));
  assert.deepEqual(named.state, { desired: { fw: '2.0' }, reported: { fw: '1.0' }, delta: { fw: '2.0' } });
  assert.equal(named.version, 2);

  const list = await rest(gw, 'GET', `/v1/devices/${id}/shadows`);
  assert.equal(list.status, 200);
  assert.deepEqual(list.body.results, ['ota']);
  assert.equal(typeof list.body.timestamp, 'number');

  // MQTT get of the named shadow answers on the named topic.
  const got = doc<ShadowDoc>(await control(s, id, 'ota'));
  assert.equal(got.version, 2);

  // AWS /delete on the named shadow: the classic one stays.
  await publish(s, topic(id, 'delete', 'ota'), { clientToken: 'del-1' });
  const deleted = await waitDoc<{ version: number; timestamp: number; clientToken?: string }>(s, topic(id, 'delete/accepted', 'ota'), (d) => d.clientToken === 'del-1', 'delete/accepted');
  assert.equal(deleted.version, 3);
  assert.equal(typeof deleted.timestamp, 'number');
  assertProblem(await getShadow(gw, id, 'ota'), 404, { code: 404, message: /No shadow exists/ });
  assert.equal(assertDocument(await getShadow(gw, id)).version, 1, 'the classic shadow is untouched');
  await publish(s, topic(id, 'delete', 'ota'), { clientToken: 'del-2' });
  const again = await waitDoc<ErrorDoc>(s, topic(id, 'delete/rejected', 'ota'), (d) => d.clientToken === 'del-2', 'delete of a deleted shadow');
  assert.equal(again.code, 404);

  // The next update continues the version.
  await publish(s, topic(id, 'update', 'ota'), { state: { reported: { fw: '2.0' } }, clientToken: 'n2' });
  const n2 = await waitDoc<AcceptedDoc>(s, topic(id, 'update/accepted', 'ota'), (d) => d.clientToken === 'n2', 'update after delete');
  assert.equal(n2.version, 4, 'version > the deleted one');
  assert.deepEqual(assertDocument(await getShadow(gw, id, 'ota')).state, { reported: { fw: '2.0' } }, 'nothing of the deleted state came back');

  // REST DELETE of the named shadow; then 404.
  const del = await rest(gw, 'DELETE', shadowPath(id, 'ota'));
  assert.equal(del.status, 200, del.text);
  assert.equal(del.body.version, 5);
  assertProblem(await rest(gw, 'DELETE', shadowPath(id, 'ota')), 404);
  assertProblem(await getShadow(gw, id, 'ota'), 404);
  assert.equal(assertDocument(await getShadow(gw, id)).version, 1);
});

test('named shadows: a deleted named shadow is no longer listed by GET /v1/devices/{id}/shadows', {
}, async () => {
  const gw = gateway();
  const id = (await registerDevice(gw, uid('names'))).id;
  assertDocument(await patch(gw, id, { state: { desired: { a: 1 } } }, { name: 'gone' }));
  assertDocument(await patch(gw, id, { state: { desired: { a: 1 } } }, { name: 'kept' }));
  assert.equal((await rest(gw, 'DELETE', shadowPath(id, 'gone'))).status, 200);
  assertProblem(await getShadow(gw, id, 'gone'), 404);
  const list = await rest(gw, 'GET', `/v1/devices/${id}/shadows`);
  assert.deepEqual(list.body.results, ['kept'], 'AWS ListNamedShadowsForThing does not list a deleted shadow');
});

test('limits: 8 KiB → 413, depth 7 → 400, invalid JSON, reported from REST, clientToken > 64 bytes, each with AWS messages', async (t) => {
  const gw = gateway();
  const { device, s } = await onlineDevice(t, gw, 'limits', ['update/accepted', 'update/rejected']);
  const id = device.id;
  const rejectedFor = (token: string) => waitDoc<ErrorDoc>(s, topic(id, 'update/rejected'), (d) => d.clientToken === token, `update/rejected (${token})`);

  // Size: UTF-8 bytes of desired + reported; {"big":"xxx…"} is the length + 10.
  const big = { big: 'x'.repeat(9000) };
  const bigBytes = JSON.stringify(big).length;
  const tooLarge = `Json document too large. Size is ${bigBytes}, max allowed: ${MAX_STATE}`;
  assertProblem(await patch(gw, id, { state: { desired: big } }), 413, { code: 413, message: tooLarge });
  await publish(s, topic(id, 'update'), { state: { reported: big }, clientToken: 'big' });
  const r413 = await rejectedFor('big');
  assert.equal(r413.code, 413);
  assert.equal(r413.message, tooLarge);
  // The limit is on the whole state: two halves that fit alone do not fit together.
  const half = { h: 'y'.repeat(MAX_STATE / 2) };
  assert.equal(assertDocument(await patch(gw, id, { state: { desired: half } })).version, 1);
  await publish(s, topic(id, 'update'), { state: { reported: half }, clientToken: 'half' });
  assert.equal((await rejectedFor('half')).code, 413);
  assert.equal(assertDocument(await patch(gw, id, { state: { desired: null } })).version, 2);

  // Depth: 6 levels inside desired are fine, 7 are not.
  const six = { a: { b: { c: { d: { e: { f: 1 } } } } } };
  const seven = { a: { b: { c: { d: { e: { f: { g: 1 } } } } } } };
  assert.equal(assertDocument(await patch(gw, id, { state: { desired: six } })).version, 3);
  assertProblem(await patch(gw, id, { state: { desired: seven } }), 400, { code: 400, message: TOO_DEEP });
  assertRejected(await updateAnswer(s, id, { state: { reported: seven } }), id, 400, TOO_DEEP);

  // Invalid JSON over MQTT (no clientToken can be echoed), and over REST.
  assert.equal(assertRejected(await updateAnswer(s, id, '{"state": {"reported": '), id, 400, 'Invalid JSON').clientToken, undefined);
  const badJson = await call(gw.url, 'PATCH', shadowPath(id), { token: await serviceToken(gw), rawBody: '{"state":', headers: { 'content-type': 'application/json' } });
  assertProblem(badJson, 400);

  // Services write only desired.
  assertProblem(await patch(gw, id, { state: { reported: { x: 1 } } }), 400, { code: 400, message: /reported/i });
  assertProblem(await patch(gw, id, { state: { desired: { x: 1 }, reported: { x: 1 } } }), 400);

  // clientToken: 64 bytes pass, 65 bytes (or 33 two-byte characters) do not.
  const t64 = 'k'.repeat(64);
  await publish(s, topic(id, 'update'), { state: { reported: { ok: 1 } }, clientToken: t64 });
  await waitDoc<AcceptedDoc>(s, topic(id, 'update/accepted'), (d) => d.clientToken === t64, 'a 64-byte clientToken is accepted');
  for (const long of ['k'.repeat(65), 'é'.repeat(33)]) {
    const rejected = assertRejected(await updateAnswer(s, id, { state: { reported: { no: 1 } }, clientToken: long }), id, 400, 'Invalid clientToken');
    assert.equal(rejected.clientToken, undefined, 'an invalid clientToken is not echoed');
    assertProblem(await patch(gw, id, { state: { desired: { z: 1 } }, clientToken: long }), 400, { code: 400, message: 'Invalid clientToken' });
  }

  const got = assertDocument(await getShadow(gw, id));
  assert.deepEqual(got.state.desired, six, 'no rejected request changed the shadow');
  assert.deepEqual(got.state.reported, { ok: 1 });
  assert.equal(got.version, 4);
});

test('400 rejections over MQTT echo the clientToken like every other error document', {
}, async (t) => {
  const gw = gateway();
  const { device, s } = await onlineDevice(t, gw, 'echo', ['update/rejected']);
  const id = device.id;
  const seven = { a: { b: { c: { d: { e: { f: { g: 1 } } } } } } };
  for (const [request, message] of [
    [{ state: { reported: seven }, clientToken: 'tok-deep' }, TOO_DEEP],
    [{ state: 'on', clientToken: 'tok-state' }, 'State node must be an object'],
    [{ state: { reported: { a: 1 } }, version: -1, clientToken: 'tok-version' }, 'Invalid version'],
    [{ clientToken: 'tok-missing' }, 'Missing required node: state'],
  ] as const) {
    const rejected = assertRejected(await updateAnswer(s, id, request), id, 400, message);
    assert.equal(rejected.clientToken, request.clientToken, `clientToken echoed for "${message}"`);
  }
});

test('get over MQTT does not echo a clientToken longer than 64 bytes', {
}, async (t) => {
  const gw = gateway();
  const { device, s } = await onlineDevice(t, gw, 'token-bytes', ['get/accepted', 'get/rejected']);
  const id = device.id;
  assertDocument(await patch(gw, id, { state: { desired: { a: 1 } } }));
  const long = 'é'.repeat(33); // 33 characters, 66 bytes
  await publish(s, topic(id, 'get'), { clientToken: long });
  const reply = await s.inbox.waitFor((m) => m.topic.startsWith(topic(id, 'get/')), 'the get reply');
  assert.notEqual(doc<{ clientToken?: string }>(reply).clientToken, long, 'a 66-byte clientToken must not be echoed (AWS: "Invalid clientToken")');
});

test('isolation: a device can neither write nor read another device\'s shadow', async (t) => {
  const gw = gateway();
  const [a, b] = await Promise.all([registerDevice(gw, uid('iso-a')), registerDevice(gw, uid('iso-b'))]);
  const sb = await connectDevice(t, gw, b, [`devices/${b.id}/shadow/#`]);
  assert.equal(assertDocument(await patch(gw, b.id, { state: { desired: { secret: 1 } } })).version, 1);
  await waitDoc<DeltaDoc>(sb, topic(b.id, 'update/delta'), () => true, "B's delta");
  const sa = await connectDevice(t, gw, a, [`devices/${a.id}/errors`, `devices/${a.id}/shadow/#`]);
  const errorsFor = (t2: string) => sa.inbox.waitFor((m) => m.topic === `devices/${a.id}/errors` && doc<{ topic: string }>(m).topic === t2, `error report for ${t2}`).then((m) => doc<{ code: number; message: string; topic: string }>(m));

  for (const op of ['update', 'get', 'delete']) {
    const forged = topic(b.id, op);
    await publish(sa, forged, { state: { reported: { secret: 2 } }, clientToken: `forged-${op}` });
    const e = await errorsFor(forged);
    assert.equal(e.code, NOT_AUTHORIZED);
    assert.ok(e.message.length > 0);
  }
  for (const filter of [`devices/${b.id}/shadow/#`, topic(b.id, 'update/delta'), topic(b.id, 'get/accepted')]) {
    assert.deepEqual(await subscribeGranted(sa.client, [filter], 1), [REFUSED], `SUBACK 0x80 for ${filter}`);
    assert.equal((await errorsFor(filter)).code, NOT_AUTHORIZED);
  }
  // A device cannot forge the gateway's answers on its own subtree either.
  const ownAccepted = topic(a.id, 'get/accepted');
  await publish(sa, ownAccepted, { state: { desired: { forged: true } } });
  assert.equal((await errorsFor(ownAccepted)).code, NOT_AUTHORIZED);

  // A's get is answered on A's topics only (A has no shadow: 404).
  const own = await control(sa, a.id);
  assert.equal(own.topic, topic(a.id, 'get/rejected'));
  assert.equal(doc<ErrorDoc>(own).code, 404);
  assert.equal(sa.client.connected, true, 'the connection stayed up');

  // B saw nothing caused by A: its control get is the only answer on its get/delete topics.
  const ctl = await control(sb, b.id);
  const prefix = `devices/${b.id}/shadow/`;
  assert.deepEqual(
    sb.inbox.all((m) => m.topic !== ctl.topic).map((m) => `${m.topic.slice(prefix.length)} v${doc<{ version?: number; current?: { version: number } }>(m).version ?? doc<{ current: { version: number } }>(m).current.version}`).sort(),
    ['update/accepted v1', 'update/delta v1', 'update/documents v1'],
    'B heard only the REST PATCH of its shadow and its own control reply',
  );
  assert.deepEqual(
    sa.inbox.all((m) => !m.topic.startsWith(`devices/${a.id}/`)),
    [],
    'A received nothing from B',
  );
  const got = assertDocument(await getShadow(gw, b.id));
  assert.equal(got.version, 1, "B's shadow is unchanged");
  assert.deepEqual(got.state, { desired: { secret: 1 }, delta: { secret: 1 } });
});

test('concurrency: 100 REST PATCHes and 100 device reports in flight at once leave one consistent document', async (t) => {
  const gw = gateway();
  const { device, s } = await onlineDevice(t, gw, 'race', ['update/accepted', 'update/rejected']);
  const id = device.id;
  const N = 100;
  assert.equal(assertDocument(await patch(gw, id, { state: { desired: { n: -1 } } })).version, 1, 'initial create');

  const token = await serviceToken(gw);
  const patches: Promise<JsonResponse>[] = [];
  const reports: Promise<unknown>[] = [];
  for (let i = 0; i < N; i++) {
    patches.push(call(gw.url, 'PATCH', shadowPath(id), { token, body: { state: { desired: { n: i } }, clientToken: `rest-${i}` } }));
    reports.push(publish(s, topic(id, 'update'), { state: { reported: { m: i } }, clientToken: `dev-${i}` }));
  }
  const results = await Promise.all(patches);
  await Promise.all(reports);
  const answered = (i: number) =>
    s.inbox.waitFor((m) => (m.topic === topic(id, 'update/accepted') || m.topic === topic(id, 'update/rejected')) && doc<{ clientToken?: string }>(m).clientToken === `dev-${i}`, `answer to dev-${i}`);
  const answers = await Promise.all(Array.from({ length: N }, (_, i) => answered(i)));

  assert.deepEqual(results.map((r) => r.status), results.map(() => 200), 'every PATCH (no version named) got 200');
  assert.deepEqual(answers.map((m) => m.topic), answers.map(() => topic(id, 'update/accepted')), 'every device update was accepted');

  const restVersions = results.map((r) => (r.body as unknown as ShadowDoc).version);
  const devVersions = answers.map((m) => doc<AcceptedDoc>(m).version);
  const all = [...restVersions, ...devVersions].sort((x, y) => x - y);
  assert.deepEqual(all, Array.from({ length: 2 * N }, (_, i) => i + 2), 'each accepted update got its own version, none lost');
  for (const r of results) assert.equal(r.headers.get('etag'), `"${(r.body as unknown as ShadowDoc).version}"`);

  const final = assertDocument(await getShadow(gw, id));
  assert.equal(final.version, 1 + N + N, 'version = 1 (create) + accepted PATCHes + accepted device updates');
  const n = final.state.desired?.n as number;
  const m = final.state.reported?.m as number;
  assert.ok(Number.isInteger(n) && n >= 0 && n < N, `desired.n = ${n} is one of the sent values`);
  assert.ok(Number.isInteger(m) && m >= 0 && m < N, `reported.m = ${m} is one of the sent values`);
  // Last writer wins through versions: the final values are those of the highest versions.
  const lastRest = results.reduce((best, r, i) => ((r.body as unknown as ShadowDoc).version > best.v ? { v: (r.body as unknown as ShadowDoc).version, i } : best), { v: 0, i: -1 });
  const lastDev = devVersions.reduce((best, v, i) => (v > best.v ? { v, i } : best), { v: 0, i: -1 });
  assert.equal(n, lastRest.i, 'desired.n is the value of the PATCH with the highest version');
  assert.equal(m, lastDev.i, 'reported.m is the value of the device update with the highest version');
  assert.deepEqual(final.state.delta, { n }, 'delta = desired fields that reported lacks');
});

test('events: every shadow change emits iotgate.shadow.updated on SSE /v1/events', async (t) => {
  const gw = gateway();
  const { device, s } = await onlineDevice(t, gw, 'events', ['update/accepted', 'delete/accepted']);
  const id = device.id;
  const sse = await openEvents(t, gw, `types=iotgate.shadow.updated&devices=${id}`);

  const patched = assertDocument(await patch(gw, id, { state: { desired: { color: 'green' } }, clientToken: 'ev-1' }));
  const e1 = await sse.next((e) => e.data.subject === id && (e.data.data as Json).version === patched.version, 'the shadow.updated event of the PATCH');
  assert.equal(e1.event, 'iotgate.shadow.updated');
  assert.match(e1.id, /^\d+$/);
  assert.equal(e1.data.specversion, '1.0');
  assert.equal(e1.data.type, 'iotgate.shadow.updated');
  assert.equal(e1.data.source, `/devices/${id}`);
  const data1 = e1.data.data as { deviceId: string; name: string; writer: string; deleted: boolean; current: { state: Json }; clientToken?: string };
  assert.equal(data1.deviceId, id);
  assert.equal(data1.name, '');
  assert.equal(data1.writer, 'service');
  assert.equal(data1.deleted, false);
  assert.deepEqual(data1.current.state, { desired: { color: 'green' } });

  await publish(s, topic(id, 'update'), { state: { reported: { color: 'green' } }, clientToken: 'ev-2' });
  const e2 = await sse.next((e) => (e.data.data as Json).version === 2, 'the event of the device report');
  assert.equal((e2.data.data as Json).writer, 'device');

  await publish(s, topic(id, 'delete'), { clientToken: 'ev-3' });
  const e3 = await sse.next((e) => (e.data.data as Json).version === 3, 'the event of the delete');
  assert.equal((e3.data.data as Json).deleted, true);

  assert.ok(sse.events.every((e) => e.event === 'iotgate.shadow.updated' && e.data.subject === id), 'the filters hold');
  sse.close();
});

test('404: a never-written shadow, and an unknown device', async (t) => {
  const gw = gateway();
  const { device, s } = await onlineDevice(t, gw, 'missing', []);
  const id = device.id;
  assertProblem(await getShadow(gw, id), 404, { code: 404, message: /^No shadow exists with name/ });
  assertProblem(await getShadow(gw, id, 'nope'), 404, { code: 404, message: 'No shadow exists with name: nope' });
  assertProblem(await rest(gw, 'DELETE', shadowPath(id)), 404);
  const names = await rest(gw, 'GET', `/v1/devices/${id}/shadows`);
  assert.equal(names.status, 200);
  assert.deepEqual(names.body.results, []);

  const rejected = await control(s, id);
  assert.equal(rejected.topic, topic(id, 'get/rejected'));
  assert.equal(doc<ErrorDoc>(rejected).code, 404);

  const unknown = 'shd-never-registered';
  for (const [method, path, body] of [
    ['GET', shadowPath(unknown), undefined],
    ['PATCH', shadowPath(unknown), { state: { desired: { a: 1 } } }],
    ['DELETE', shadowPath(unknown), undefined],
    ['GET', `/v1/devices/${unknown}/shadows`, undefined],
  ] as const) {
    const res = await rest(gw, method, path, body === undefined ? {} : { body });
    assertProblem(res, 404);
    assert.equal(res.body.shadowError, undefined, `${method} ${path}: the device, not the shadow, is missing`);
  }
  // A PATCH to an unknown device created nothing.
  assertProblem(await getShadow(gw, unknown), 404);
});
