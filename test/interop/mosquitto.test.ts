/**
 * Interop with clients nobody here wrote: Debian's mosquitto_sub (a service over TCP with its JWT)
 * receives what mosquitto_pub (a device over mutual TLS with files from POST /v1/register)
 * publishes; a wrong device token makes mosquitto_pub fail; a device made of mosquitto_sub and
 * mosquitto_pub (token login) receives a command created over REST and answers it.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { TestContext } from 'node:test';
import { suiteGateway } from '../helpers/gateway.js';
import { registerDevice, withDeadline } from '../helpers/mqtt.js';
import { requireTool, toolPath } from '../helpers/tools.js';

const gateway = suiteGateway();

interface Running {
  child: ChildProcess;
  /** stdout and stderr so far, interleaved. */
  output(): string;
  /** Resolves once the output matches `re`. */
  waitForOutput(re: RegExp, ms: number, what: string): Promise<void>;
  /** Resolves with the exit code. */
  exited: Promise<number | null>;
}

/** Spawns a tool; it is killed when the test ends if it is still running. */
function start(t: TestContext, tool: string, args: string[]): Running {
  const child = spawn(toolPath(tool) ?? tool, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  const listeners = new Set<() => void>();
  const onData = (d: Buffer) => {
    out += d.toString('utf8');
    for (const l of listeners) l();
  };
  child.stdout?.on('data', onData);
  child.stderr?.on('data', onData);
  const exited = new Promise<number | null>((resolve) => child.once('close', (code) => resolve(code)));
  t.after(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  });
  return {
    child,
    output: () => out,
    exited,
    waitForOutput(re, ms, what) {
      const seen = new Promise<void>((resolve) => {
        const check = () => {
          if (re.test(out)) {
            listeners.delete(check);
            resolve();
          }
        };
        listeners.add(check);
        check();
      });
      return withDeadline(seen, ms, `${what}; output so far:\n${out}`);
    },
  };
}

async function exitCode(p: Running, ms: number, what: string): Promise<number | null> {
  return withDeadline(p.exited, ms, `${what} to exit; output:\n${p.output()}`);
}

test('mosquitto_pub over mutual TLS → mosquitto_sub as a service over TCP', async (t) => {
  if (!requireTool(t, 'mosquitto_pub') || !requireTool(t, 'mosquitto_sub') || !requireTool(t, 'stdbuf') || !requireTool(t, 'openssl')) return;
  const gw = gateway();
  const device = await registerDevice(gw, 'interop-mosq-1', 'ec');
  const dir = await mkdtemp(join(tmpdir(), 'iotgate-mosquitto-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  await Promise.all([
    writeFile(join(dir, 'ca.crt'), device.caPem),
    writeFile(join(dir, 'dev.crt'), device.certPem),
    writeFile(join(dir, 'dev.key'), device.keyPem, { mode: 0o600 }),
  ]);
  const jwt = await gw.token('admin', { sub: 'ops' });

  // -d prints the SUBACK, so the publish starts only once the subscription is in place; stdbuf
  // makes mosquitto_sub's stdout (a pipe here) line-buffered so the line shows up when printed.
  const sub = start(t, 'stdbuf', [
    '-oL', toolPath('mosquitto_sub') as string,
    '-h', '127.0.0.1', '-p', String(gw.ports.mqtt), '-i', 'interop-ops', '-u', 'service:ops', '-P', jwt,
    '-t', 'devices/+/telemetry', '-q', '1', '-C', '1', '-W', '10', '-v', '-d',
  ]);
  await sub.waitForOutput(/received SUBACK/, 10_000, 'mosquitto_sub subscribed');

  const pub = start(t, 'mosquitto_pub', [
    '--cafile', join(dir, 'ca.crt'), '--cert', join(dir, 'dev.crt'), '--key', join(dir, 'dev.key'),
    '-i', device.id, '-h', 'localhost', '-p', String(gw.ports.mqtts),
    '-t', `devices/${device.id}/telemetry`, '-m', '{"t":21}', '-q', '1',
  ]);
  assert.equal(await exitCode(pub, 10_000, 'mosquitto_pub'), 0, pub.output());
  assert.equal(await exitCode(sub, 12_000, 'mosquitto_sub'), 0, sub.output());
  assert.ok(sub.output().split('\n').includes(`devices/${device.id}/telemetry {"t":21}`), sub.output());
});

test('mosquitto_pub with a wrong device token over TCP exits non-zero', async (t) => {
  if (!requireTool(t, 'mosquitto_pub') || !requireTool(t, 'openssl')) return;
  const gw = gateway();
  const device = await registerDevice(gw, 'interop-mosq-2', 'ec');
  const pub = start(t, 'mosquitto_pub', [
    '-h', '127.0.0.1', '-p', String(gw.ports.mqtt), '-i', device.id, '-u', device.id, '-P', `${device.token.slice(0, -2)}xx`,
    '-t', `devices/${device.id}/telemetry`, '-m', '{"t":1}', '-q', '1',
  ]);
  const code = await exitCode(pub, 10_000, 'mosquitto_pub');
  assert.notEqual(code, 0, pub.output());
  assert.match(pub.output(), /refused|not authori[sz]ed|bad user name or password/i);
});

test('mosquitto_sub as a device receives a command created over REST; mosquitto_pub answers it → succeeded', async (t) => {
  if (!requireTool(t, 'mosquitto_sub') || !requireTool(t, 'mosquitto_pub') || !requireTool(t, 'stdbuf') || !requireTool(t, 'openssl')) return;
  const gw = gateway();
  const device = await registerDevice(gw, 'interop-mosq-3', 'ec');
  const token = await gw.token('commands:send');
  const login = ['-h', '127.0.0.1', '-p', String(gw.ports.mqtt), '-i', device.id, '-u', device.id, '-P', device.token];

  // The device waits for one command at QoS 1; -d prints the SUBACK, so the command is created
  // only once the subscription is in place (and is delivered to it at once).
  const sub = start(t, 'stdbuf', ['-oL', toolPath('mosquitto_sub') as string, ...login, '-t', `devices/${device.id}/commands/+`, '-q', '1', '-C', '1', '-W', '10', '-v', '-d']);
  await sub.waitForOutput(/received SUBACK/, 10_000, 'mosquitto_sub subscribed');

  const created = await fetch(`${gw.url}/v1/devices/${device.id}/commands`, {
    method: 'POST',
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
    body: JSON.stringify({ name: 'reboot', params: { delay: 1 }, wait: false }),
  });
  assert.equal(created.status, 202);
  const command = (await created.json()) as { id: string; expiresAt: number };
  const topic = `devices/${device.id}/commands/${command.id}`;

  assert.equal(await exitCode(sub, 12_000, 'mosquitto_sub'), 0, sub.output());
  const line = sub.output().split('\n').find((l) => l.startsWith(`${topic} `));
  assert.ok(line, `the command on its topic; output:\n${sub.output()}`);
  assert.deepEqual(JSON.parse(line.slice(topic.length + 1)), { id: command.id, name: 'reboot', params: { delay: 1 }, expiresAt: command.expiresAt });

  // mosquitto_pub exits after the PUBACK, which the gateway sends once the answer is recorded.
  const pub = start(t, 'mosquitto_pub', [...login, '-t', `${topic}/response`, '-m', '{"status":200,"payload":"ok"}', '-q', '1']);
  assert.equal(await exitCode(pub, 10_000, 'mosquitto_pub'), 0, pub.output());
  const res = await fetch(`${gw.url}/v1/devices/${device.id}/commands/${command.id}`, { headers: { authorization: `Bearer ${token}` } });
  assert.equal(res.status, 200);
  const done = (await res.json()) as { state: string; response?: unknown };
  assert.equal(done.state, 'succeeded');
  assert.deepEqual(done.response, { status: 200, payload: 'ok' });
});
