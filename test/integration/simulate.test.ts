/**
 * `iotgate simulate` against a real gateway on 127.0.0.1: the simulated fleet registers over REST,
 * its telemetry arrives, a command sent over REST is answered by a simulated device, a desired
 * change reaches the device and comes back as reported (MQTT and CoAP); and the CLI prints its
 * JSON summary.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { Simulation } from '../../bench/simulate/fleet.js';
import type { SimProtocol } from '../../bench/simulate/types.js';
import type { ShadowUpdated } from '../../src/core/events.js';
import type { TelemetryRecord } from '../../src/core/model.js';
import { build, type TestGateway } from '../helpers/gateway.js';
import { withDeadline } from '../helpers/pki.js';

const CLI_ENTRY = fileURLToPath(new URL('../../src/cli/index.ts', import.meta.url));

function telemetryFrom(gw: TestGateway, prefix: string): Promise<TelemetryRecord> {
  return new Promise((resolve) => {
    const on = (r: TelemetryRecord) => {
      if (!r.deviceId.startsWith(prefix)) return;
      gw.gateway.bus.off('telemetry', on);
      resolve(r);
    };
    gw.gateway.bus.on('telemetry', on);
  });
}

function reportedBy(gw: TestGateway, deviceId: string, match: (doc: string) => boolean): Promise<ShadowUpdated> {
  return new Promise((resolve) => {
    const on = (e: ShadowUpdated) => {
      if (e.deviceId !== deviceId || e.writer !== 'device' || !match(JSON.stringify(e.documents.current))) return;
      gw.gateway.bus.off('shadow.updated', on);
      resolve(e);
    };
    gw.gateway.bus.on('shadow.updated', on);
  });
}

async function fleetScenario(t: { after(fn: () => unknown): void }, protocol: SimProtocol): Promise<void> {
  const gw = await build(t);
  const prefix = `sim${protocol}-`;
  const arrived = telemetryFrom(gw, prefix);
  const sim = await Simulation.start({
    url: gw.url,
    mqtt: { host: '127.0.0.1', port: gw.ports.mqtt },
    coap: { host: '127.0.0.1', port: gw.ports.coap },
    protocol,
    devices: 3,
    rate: 10,
    type: 'generic',
    prefix,
    token: await gw.token('provision'),
    shadowEveryS: 60,
  });
  let stopped = false;
  t.after(() => (stopped ? undefined : sim.stop()));
  assert.deepEqual(
    sim.fleet.map((d) => d.id),
    [`${prefix}0`, `${prefix}1`, `${prefix}2`],
  );

  const record = await withDeadline(arrived, 10_000, 'simulated telemetry');
  assert.equal(record.protocol, protocol);
  assert.equal(typeof (record.data as { temp?: unknown }).temp, 'number');

  // A command over REST (wait for the answer): a simulated device answers it with 200.
  const res = await fetch(`${gw.url}/v1/devices/${prefix}1/commands`, {
    method: 'POST',
    headers: { authorization: `Bearer ${await gw.token('commands:send')}`, 'content-type': 'application/json' },
    body: JSON.stringify({ name: 'reboot', params: { delay: 1 }, timeoutMs: 10_000 }),
  });
  const command = (await res.json()) as { state?: string; response?: { status?: number; payload?: { name?: unknown } } };
  assert.equal(res.status, 200, JSON.stringify(command));
  assert.equal(command.state, 'succeeded');
  assert.equal(command.response?.status, 200);
  assert.equal(command.response?.payload?.name, 'reboot');

  // A desired change reaches the device, which reports it back.
  const reported = reportedBy(gw, `${prefix}2`, (doc) => doc.includes('"reported":{') && doc.includes('"led":"red"'));
  const patch = await fetch(`${gw.url}/v1/devices/${prefix}2/shadow`, {
    method: 'PATCH',
    headers: { authorization: `Bearer ${await gw.token('shadow:write')}`, 'content-type': 'application/json' },
    body: JSON.stringify({ state: { desired: { led: 'red' } } }),
  });
  assert.equal(patch.status, 200);
  await withDeadline(reported, 10_000, 'the reported led');

  stopped = true;
  const summary = await sim.stop();
  assert.equal(summary.connected, 3);
  assert.ok(summary.sent > 0 && summary.acked > 0, JSON.stringify(summary));
  assert.ok(summary.commandsAnswered >= 1);
  assert.ok(summary.deltasApplied >= 1);
  assert.equal(summary.errors, 0, summary.errorSamples.join('; '));
}

test('simulated MQTT devices: telemetry arrives, a REST command is answered, a delta is reported back', (t) => fleetScenario(t, 'mqtt'));

test('simulated CoAP devices: telemetry arrives, a REST command is answered, a delta is reported back', (t) => fleetScenario(t, 'coap'));

test('iotgate simulate --duration --json prints its summary (the CLI, service token from the certs dir)', async (t) => {
  const gw = await build(t);
  const args = ['simulate', '--devices', '2', '--rate', '10', '--duration', '1', '--prefix', 'cli-', '--mqtt-url', `mqtt://127.0.0.1:${gw.ports.mqtt}`, '--json'];
  const child = spawn(process.execPath, ['--import', 'tsx', '-e', `import(${JSON.stringify(CLI_ENTRY)}).then((m) => m.main(['node', 'iotgate', ...process.argv.slice(1)]))`, ...args], {
    env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '/tmp', ...gw.env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const code = await withDeadline(new Promise<number | null>((resolve) => child.on('close', resolve)), 60_000, 'iotgate simulate');
  assert.equal(code, 0, stderr);
  const summary = JSON.parse(stdout) as Record<string, unknown>;
  assert.equal(summary['protocol'], 'mqtt');
  assert.equal(summary['devices'], 2);
  assert.equal(summary['connected'], 2);
  assert.ok((summary['acked'] as number) > 0, stdout);
  assert.match(stderr, /registering 2 devices/);
});
