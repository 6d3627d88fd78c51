/**
 * Firmware updates on top of the shadow (issue 5 item 5, contract §8, §9) against one in-process
 * gateway: a simulated device over MQTT 3.1.1 (mqtt.js) gets `desired.firmware` as a delta and
 * reports `reported.firmware {version, state, progress?, error?}`; REST shows the job and the
 * device record; every step is an `iotgate.firmware.updated` CloudEvent on SSE `/v1/events`.
 * Validation (url, sha256, version) and scopes (401/403).
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { call, type JsonResponse } from '../helpers/http.js';
import { openEvents as openSse, type SseEvent } from '../helpers/sse.js';
import type { FirmwareJob, FirmwareState, FirmwareStatus } from '../../src/core/firmware.js';
import { suiteGateway, type TestGateway } from '../helpers/gateway.js';
import { deviceLogin, openSession, registerDevice, subscribeGranted, tcpUrl, withDeadline, type Device, type Message, type Session } from '../helpers/mqtt.js';

const gateway = suiteGateway();

type Json = Record<string, unknown>;
// The documents as the API sends them (the types are the service's own).
type Job = FirmwareJob;
type Status = FirmwareStatus;
interface ShadowDoc {
  state: { desired?: Json; reported?: Json; delta?: Json };
  version: number;
}

const SHA = 'ab'.repeat(32);
const target = (version: string) => ({ version, url: `https://updates.example/fw-${version}.bin`, sha256: SHA, size: 1024 });

let seq = 0;
const uid = (name: string): string => `fw-${name}-${++seq}`;
const doc = <T>(m: Message): T => JSON.parse(m.text) as T;
const topic = (id: string, op: string) => `devices/${id}/shadow/${op}`;

const serviceToken = (gw: TestGateway) => gw.token('firmware:write shadow:read devices:read telemetry:read');

async function rest(gw: TestGateway, method: string, path: string, body?: unknown): Promise<JsonResponse> {
  return call(gw.url, method, path, { token: await serviceToken(gw), ...(body !== undefined && { body }) });
}

const firmwarePath = (id: string) => `/v1/devices/${id}/firmware`;

async function status(gw: TestGateway, id: string): Promise<Status> {
  const res = await rest(gw, 'GET', firmwarePath(id));
  assert.equal(res.status, 200, res.text);
  return res.body as unknown as Status;
}

async function deviceFirmware(gw: TestGateway, id: string): Promise<unknown> {
  const res = await rest(gw, 'GET', `/v1/devices/${id}`);
  assert.equal(res.status, 200, res.text);
  return res.body.firmware;
}

async function shadow(gw: TestGateway, id: string): Promise<ShadowDoc> {
  const res = await rest(gw, 'GET', `/v1/devices/${id}/shadow`);
  assert.equal(res.status, 200, res.text);
  return res.body as unknown as ShadowDoc;
}

/** The simulated device: a clean MQTT session subscribed to its delta and update answers. */
async function simulatedDevice(t: TestContext, gw: TestGateway, name: string): Promise<{ device: Device; s: Session }> {
  const device = await registerDevice(gw, uid(name));
  const s = await openSession(t, tcpUrl(gw), { ...deviceLogin(device), clean: true });
  const filters = [topic(device.id, 'update/delta'), topic(device.id, 'update/accepted'), topic(device.id, 'update/rejected')];
  assert.deepEqual(await subscribeGranted(s.client, filters, 1), [1, 1, 1]);
  return { device, s };
}

/** Reports `reported.firmware` and waits until the gateway accepted it. */
async function report(s: Session, id: string, firmware: Json): Promise<void> {
  const clientToken = `r-${++seq}`;
  await s.client.publishAsync(topic(id, 'update'), JSON.stringify({ state: { reported: { firmware } }, clientToken }), { qos: 1 });
  const m = await s.inbox.waitFor(
    (x) => (x.topic === topic(id, 'update/accepted') || x.topic === topic(id, 'update/rejected')) && doc<{ clientToken?: string }>(x).clientToken === clientToken,
    `the answer to report ${JSON.stringify(firmware)}`,
  );
  assert.equal(m.topic, topic(id, 'update/accepted'), m.text);
}

/** `GET /v1/events?…` with this file's service token. */
const openEvents = async (t: TestContext, gw: TestGateway, query: string) => openSse(t, gw, query, await serviceToken(gw));

/** The job of a firmware event. */
const jobOf = (e: SseEvent): Job => e.data.data as Job;

test('firmware update end to end: POST → delta → downloading → installing → succeeded, with events and state', async (t) => {
  const gw = gateway();
  const { device, s } = await simulatedDevice(t, gw, 'ok');
  const id = device.id;
  // The device says what it runs now.
  await report(s, id, { version: '1.0.0' });
  const sse = await openEvents(t, gw, `types=iotgate.firmware.updated&devices=${id}`);
  const step = (state: FirmwareState) => sse.next((e) => jobOf(e).state === state, `the ${state} event`);

  const posted = await rest(gw, 'POST', firmwarePath(id), { ...target('2.0.0'), sha256: SHA.toUpperCase() });
  assert.equal(posted.status, 202, posted.text);
  assert.equal(posted.headers.get('location'), firmwarePath(id));
  const job = posted.body as unknown as Job;
  assert.equal(job.state, 'pending');
  assert.equal(job.deviceId, id);
  assert.deepEqual(job.target, target('2.0.0'), 'sha256 stored in lower case');
  assert.equal(job.completedAt, null);
  assert.deepEqual(job.history.map((h) => h.state), ['pending']);

  // The device gets desired.firmware as a delta.
  const delta = await s.inbox.waitFor((m) => m.topic === topic(id, 'update/delta') && 'firmware' in doc<{ state: Json }>(m).state, 'the delta with firmware');
  assert.deepEqual(doc<{ state: Json }>(delta).state, { firmware: target('2.0.0') });

  const pending = await step('pending');
  assert.equal(pending.event, 'iotgate.firmware.updated');
  assert.equal(pending.data.type, 'iotgate.firmware.updated');
  assert.equal(pending.data.source, `/devices/${id}`);
  assert.equal(jobOf(pending).id, job.id);
  assert.deepEqual(
    { ...(await status(gw, id)), job: undefined },
    { current: '1.0.0', target: '2.0.0', state: 'pending', progress: null, error: null, job: undefined },
  );
  assert.deepEqual(await deviceFirmware(gw, id), { current: '1.0.0', target: '2.0.0', state: 'pending' });

  await report(s, id, { version: '2.0.0', state: 'downloading', progress: 10 });
  const downloading = await step('downloading');
  assert.equal(jobOf(downloading).progress, 10);
  const st = await status(gw, id);
  assert.deepEqual([st.current, st.target, st.state, st.progress], ['1.0.0', '2.0.0', 'downloading', 10]);

  await report(s, id, { version: '2.0.0', state: 'installing' });
  await step('installing');
  assert.deepEqual(await deviceFirmware(gw, id), { current: '1.0.0', target: '2.0.0', state: 'installing' });

  await report(s, id, { version: '2.0.0', state: 'succeeded' });
  const succeeded = await step('succeeded');
  assert.equal(typeof jobOf(succeeded).completedAt, 'number');

  const done = await status(gw, id);
  assert.equal(done.current, '2.0.0');
  assert.equal(done.target, '2.0.0');
  assert.equal(done.state, 'succeeded');
  assert.equal(done.error, null);
  assert.ok(done.job);
  assert.equal(done.job.id, job.id);
  assert.deepEqual(done.job.history.map((h) => h.state), ['pending', 'downloading', 'installing', 'succeeded'], 'the job history has every step');
  assert.equal(done.job.history[1]?.progress, 10);
  assert.deepEqual(await deviceFirmware(gw, id), { current: '2.0.0', target: '2.0.0', state: 'succeeded' });

  // desired.firmware is cleared: nothing about firmware left in desired or the delta.
  const sh = await shadow(gw, id);
  assert.equal(sh.state.desired?.firmware, undefined, 'desired.firmware cleared');
  assert.equal(sh.state.delta?.firmware, undefined, 'no firmware delta');
  assert.deepEqual(sh.state.reported?.firmware, { version: '2.0.0', state: 'succeeded', progress: 10 });

  assert.deepEqual(sse.events.map((e) => jobOf(e).state), ['pending', 'downloading', 'installing', 'succeeded'], 'one event per step, in order');
  assert.ok(sse.events.every((e) => e.event === 'iotgate.firmware.updated' && e.data.subject === id && jobOf(e).id === job.id));
  sse.close();
});

test('a failed report ends the job as failed with the error and clears desired.firmware', async (t) => {
  const gw = gateway();
  const { device, s } = await simulatedDevice(t, gw, 'fail');
  const id = device.id;
  await report(s, id, { version: '1.0.0' });
  const sse = await openEvents(t, gw, `types=iotgate.firmware.updated&devices=${id}`);

  const posted = await rest(gw, 'POST', firmwarePath(id), target('3.0.0'));
  assert.equal(posted.status, 202, posted.text);
  await report(s, id, { version: '3.0.0', state: 'downloading', progress: 50 });
  await sse.next((e) => jobOf(e).state === 'downloading', 'the downloading event');
  await report(s, id, { version: '3.0.0', state: 'failed', error: 'sha256 mismatch' });
  const failed = await sse.next((e) => jobOf(e).state === 'failed', 'the failed event');
  assert.equal(jobOf(failed).error, 'sha256 mismatch');
  assert.equal(typeof jobOf(failed).completedAt, 'number');

  const st = await status(gw, id);
  assert.equal(st.state, 'failed');
  assert.equal(st.error, 'sha256 mismatch');
  assert.equal(st.target, '3.0.0');
  assert.equal(st.current, '1.0.0', 'the device still runs 1.0.0');
  assert.deepEqual(st.job?.history.map((h) => h.state), ['pending', 'downloading', 'failed']);
  assert.equal(st.job?.history.at(-1)?.error, 'sha256 mismatch');
  assert.deepEqual(await deviceFirmware(gw, id), { current: '1.0.0', target: '3.0.0', state: 'failed' });
  assert.equal((await shadow(gw, id)).state.desired?.firmware, undefined, 'desired.firmware cleared');

  // A finished job ignores later reports.
  await report(s, id, { version: '3.0.0', state: 'installing' });
  assert.equal((await status(gw, id)).state, 'failed');
  assert.deepEqual(sse.events.map((e) => jobOf(e).state), ['pending', 'downloading', 'failed']);
  sse.close();
});

test('current stays the installed version while an update is in flight or failed (device never reported one)', {
}, async (t) => {
  const gw = gateway();
  const { device, s } = await simulatedDevice(t, gw, 'current');
  const id = device.id;
  assert.equal((await rest(gw, 'POST', firmwarePath(id), target('4.0.0'))).status, 202);
  await report(s, id, { version: '4.0.0', state: 'downloading', progress: 5 });
  await report(s, id, { version: '4.0.0', state: 'failed', error: 'flash write error' });
  const st = await status(gw, id);
  assert.equal(st.state, 'failed');
  assert.notEqual(st.current, '4.0.0', 'a version that failed to install is not the current one');
  assert.deepEqual(await deviceFirmware(gw, id), { current: st.current, target: '4.0.0', state: 'failed' }, 'GET firmware and the device record agree');
});

test('validation: url must be http(s), sha256 64 hex, version required; nothing is started', async () => {
  const gw = gateway();
  const id = (await registerDevice(gw, uid('invalid'))).id;
  const cases: [string, Json][] = [
    ['ftp url', { ...target('2.0.0'), url: 'ftp://updates.example/fw.bin' }],
    ['relative url', { ...target('2.0.0'), url: '/fw.bin' }],
    ['sha256 of 63 hex', { ...target('2.0.0'), sha256: SHA.slice(1) }],
    ['sha256 not hex', { ...target('2.0.0'), sha256: 'g'.repeat(64) }],
    ['missing version', { url: target('2.0.0').url, sha256: SHA }],
    ['empty version', { ...target('2.0.0'), version: '' }],
    ['negative size', { ...target('2.0.0'), size: -1 }],
  ];
  for (const [what, body] of cases) {
    const res = await rest(gw, 'POST', firmwarePath(id), body);
    assert.equal(res.status, 400, `${what}: ${res.text}`);
    assert.match(res.headers.get('content-type') ?? '', /^application\/problem\+json/, what);
    assert.equal(res.body.status, 400);
  }
  const ftp = await rest(gw, 'POST', firmwarePath(id), { ...target('2.0.0'), url: 'ftp://updates.example/fw.bin' });
  assert.match(String(ftp.body.detail), /http/);
  const hex = await rest(gw, 'POST', firmwarePath(id), { ...target('2.0.0'), sha256: 'x' });
  assert.match(String(hex.body.detail), /sha256/);

  const st = await status(gw, id);
  assert.deepEqual({ ...st }, { current: null, target: null, state: null, progress: null, error: null, job: null }, 'no job was created');
  assert.equal((await rest(gw, 'GET', `/v1/devices/${id}/shadow`)).status, 404, 'no desired.firmware was written');

  assert.equal((await rest(gw, 'POST', firmwarePath('fw-unknown-device'), target('2.0.0'))).status, 404);
  assert.equal((await rest(gw, 'GET', firmwarePath('fw-unknown-device'))).status, 404);
});

test('scopes: no or bad token → 401, a token without firmware:write → 403', async () => {
  const gw = gateway();
  const device = await registerDevice(gw, uid('scope'));
  const id = device.id;
  const weak = await gw.token('shadow:write shadow:read devices:read devices:write');
  const tokens: [string, string | undefined, number][] = [
    ['no token', undefined, 401],
    ['garbage', 'not-a-jwt', 401],
    ['a device token', device.token, 401],
    ['another scope', weak, 403],
  ];
  for (const [what, token, expected] of tokens) {
    for (const [method, body] of [['POST', target('2.0.0')], ['GET', undefined]] as const) {
      const res = await call(gw.url, method, firmwarePath(id), { ...(token !== undefined && { token }), ...(body !== undefined && { body }) });
      assert.equal(res.status, expected, `${method} with ${what}: ${res.text}`);
      assert.match(res.headers.get('content-type') ?? '', /^application\/problem\+json/);
    }
  }
  const admin = await call(gw.url, 'GET', firmwarePath(id), { token: await gw.token('admin') });
  assert.equal(admin.status, 200, 'admin includes firmware:write');
  assert.equal((await status(gw, id)).job, null, 'no refused request started a job');
});
