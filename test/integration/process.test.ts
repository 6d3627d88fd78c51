/**
 * `iotgate start` as a real process (contract §1): the ready line and the ports behind it, the
 * first-start PKI, graceful stop on SIGTERM/SIGINT, exit code 2 for bad configuration, a config
 * file that is honoured, and logs that never carry a secret.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createSocket } from 'node:dgram';
import { connect as tcpConnect } from 'node:net';
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import type { TestContext } from 'node:test';
import { loopbackEnv } from '../helpers/gateway.js';
import { connectAsync } from 'mqtt';
import { BIN, runCli, startGatewayProcess, type GatewayProcess } from '../helpers/cli.js';
import { requireTool, run } from '../helpers/tools.js';

const PORT_KEYS = ['http', 'mqtt', 'mqtts', 'coap'] as const;
const STOP_DEADLINE_MS = 10_000;

async function tempDir(t: TestContext, prefix = 'iotgate-proc-'): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), prefix));
  t.after(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

const gatewayEnv = loopbackEnv;

function isRunning(child: { exitCode: number | null; signalCode: NodeJS.Signals | null }): boolean {
  return child.exitCode === null && child.signalCode === null;
}

/** Starts the gateway process and kills it (SIGKILL) when the test ends, if it is still running. */
async function startGateway(t: TestContext, env: Record<string, string>, args: string[] = []): Promise<GatewayProcess> {
  const gp = await startGatewayProcess(env, args);
  t.after(() => {
    if (isRunning(gp.child)) gp.child.kill('SIGKILL');
  });
  return gp;
}

/** Sends `signal` and resolves the exit code and how long the exit took; fails after 10 s. */
async function stopWith(gp: { child: { kill(s: NodeJS.Signals): boolean }; exited: Promise<number | null> }, signal: NodeJS.Signals) {
  const sentAt = Date.now();
  gp.child.kill(signal);
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`gateway did not exit within ${STOP_DEADLINE_MS} ms of ${signal}`)), STOP_DEADLINE_MS);
  });
  try {
    const code = await Promise.race([gp.exited, deadline]);
    return { code, elapsedMs: Date.now() - sentAt };
  } finally {
    clearTimeout(timer);
  }
}

function parsedLines(lines: readonly string[]): Record<string, unknown>[] {
  const out: Record<string, unknown>[] = [];
  for (const line of lines) {
    try {
      out.push(JSON.parse(line) as Record<string, unknown>);
    } catch {
      // non-JSON output is checked by the tests that care
    }
  }
  return out;
}

function tcpAccepts(port: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const socket = tcpConnect({ host: '127.0.0.1', port }, () => {
      socket.destroy();
      resolve();
    });
    socket.once('error', reject);
  });
}

/** Sends one datagram to the port; then shows the port is held by binding it ourselves. */
async function udpPortIsBound(port: number): Promise<void> {
  const sender = createSocket('udp4');
  try {
    await new Promise<void>((resolve, reject) => sender.send(Buffer.from([0x40, 0x00, 0x00, 0x01]), port, '127.0.0.1', (err) => (err ? reject(err) : resolve())));
  } finally {
    sender.close();
  }
  const probe = createSocket({ type: 'udp4', reuseAddr: false });
  const bindError = await new Promise<NodeJS.ErrnoException | null>((resolve) => {
    probe.once('error', (err) => resolve(err));
    probe.bind(port, '127.0.0.1', () => resolve(null));
  });
  probe.close();
  assert.equal(bindError?.code, 'EADDRINUSE', `UDP port ${port} should be held by the gateway`);
}

function stderrLines(stderr: string): string[] {
  return stderr.split('\n').filter((l) => l.trim() !== '');
}

/** `iotgate start` with stdout and stderr captured from the first byte (for the secrets grep). */
async function startCapturingAll(t: TestContext, env: Record<string, string>) {
  const child = spawn(process.execPath, [BIN, 'start'], {
    env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '/tmp', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  t.after(() => {
    if (isRunning(child)) child.kill('SIGKILL');
  });
  const output = { stdout: '', stderr: '' };
  child.stdout.on('data', (d: Buffer) => (output.stdout += d.toString()));
  child.stderr.on('data', (d: Buffer) => (output.stderr += d.toString()));
  const exited = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)));
  const ready = await new Promise<Record<string, unknown>>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`gateway did not become ready: ${output.stderr}`)), 20_000);
    createInterface({ input: child.stdout }).on('line', (line) => {
      if (!line.includes('"iotgate ready"')) return;
      clearTimeout(timer);
      resolve(JSON.parse(line) as Record<string, unknown>);
    });
    void exited.then((code) => reject(new Error(`gateway exited with ${code}: ${output.stderr}`)));
  });
  return { child, exited, ready, output };
}

/** The base64 body of a PEM file, whole and line by line. */
function pemSecrets(pem: string): string[] {
  const body = pem
    .split('\n')
    .filter((l) => l !== '' && !l.startsWith('-----'))
    .map((l) => l.trim());
  return [body.join(''), ...body.filter((l) => l.length >= 40)];
}

// Independent tests, each with its own dirs and gateway: run them side by side.
describe('iotgate start (a real process)', { concurrency: true }, () => {
  test('the ready line reports bound ports; first start creates the PKI; SIGTERM stops cleanly', async (t) => {
    const certsDir = await tempDir(t);
    const gp = await startGateway(t, gatewayEnv(certsDir));

    // The ready line: one JSON line with integer ports > 0.
    for (const key of PORT_KEYS) {
      const v = gp.ready[key];
      assert.ok(typeof v === 'number' && Number.isInteger(v) && v > 0 && v < 65536, `ready.${key} = ${JSON.stringify(v)}`);
    }
    const ports = gp.ready as Record<(typeof PORT_KEYS)[number], number>;

    // Those ports really accept.
    const health = await fetch(`http://127.0.0.1:${ports.http}/healthz`);
    assert.equal(health.status, 200);
    await tcpAccepts(ports.mqtt);
    await tcpAccepts(ports.mqtts);
    await udpPortIsBound(ports.coap);

    // First start with an empty certs dir: the PKI files, private ones 0600, and a log line.
    for (const name of ['ca.key', 'ca.crt', 'server.key', 'server.crt', 'token.secret', 'jwt.key', 'jwt.pub']) {
      const st = await stat(join(certsDir, name));
      assert.ok(st.isFile(), `${name} exists`);
      if (['ca.key', 'server.key', 'jwt.key', 'token.secret'].includes(name)) {
        assert.equal(st.mode & 0o777, 0o600, `${name} mode is ${(st.mode & 0o777).toString(8)}`);
      }
    }
    const entries = parsedLines(gp.lines);
    const caLine = entries.find((e) => typeof e.msg === 'string' && /created/i.test(e.msg) && /\bCA\b/.test(e.msg));
    assert.ok(caLine, `a log line says the CA was created; lines: ${gp.lines.join('\n')}`);

    if (requireTool(t, 'openssl')) {
      const verify = run('openssl', ['verify', '-CAfile', 'ca.crt', 'server.crt'], { cwd: certsDir });
      assert.equal(verify.status, 0, verify.stderr + verify.stdout);
      assert.match(verify.stdout, /server\.crt: OK/);
      const san = run('openssl', ['x509', '-in', 'server.crt', '-noout', '-ext', 'subjectAltName'], { cwd: certsDir });
      assert.equal(san.status, 0, san.stderr);
      assert.match(san.stdout, /IP Address:127\.0\.0\.1(,|$|\s)/m);
      assert.match(san.stdout, /DNS:localhost(,|$|\s)/m);
    }

    // SIGTERM: exit 0 within 10 s, with a stopped line.
    const { code, elapsedMs } = await stopWith(gp, 'SIGTERM');
    assert.equal(code, 0);
    assert.ok(elapsedMs < STOP_DEADLINE_MS, `stopped in ${elapsedMs} ms`);
    const after = parsedLines(gp.lines);
    assert.ok(after.some((e) => e.msg === 'iotgate stopped'), `no "iotgate stopped" line in:\n${gp.lines.join('\n')}`);
    const readyLines = gp.lines.filter((l) => l.includes('iotgate ready'));
    assert.equal(readyLines.length, 1, 'exactly one ready line');
    assert.equal(after.filter((e) => e.msg === 'iotgate ready').length, 1);
  });

  test('SIGINT stops the gateway with exit code 0 within 10 s', async (t) => {
    const certsDir = await tempDir(t);
    const gp = await startGateway(t, gatewayEnv(certsDir));
    // One request first: the process is past its start-up (see the next test for the race before that).
    assert.equal((await fetch(`http://127.0.0.1:${String(gp.ready.http)}/healthz`)).status, 200);
    const { code, elapsedMs } = await stopWith(gp, 'SIGINT');
    assert.equal(code, 0, `exit ${code} (signal ${gp.child.signalCode}); output:\n${gp.lines.join('\n')}`);
    assert.ok(elapsedMs < STOP_DEADLINE_MS);
    assert.ok(parsedLines(gp.lines).some((e) => e.msg === 'iotgate stopped'), gp.lines.join('\n'));
  });

  test(
    'a signal sent the moment the ready line appears still stops the gateway cleanly',
    async (t) => {
      const certsDir = await tempDir(t);
      for (const signal of ['SIGTERM', 'SIGINT'] as const) {
        const gp = await startGateway(t, gatewayEnv(certsDir));
        const { code } = await stopWith(gp, signal);
        assert.equal(code, 0, `${signal} right after ready: exit ${code}, killed by ${gp.child.signalCode}`);
      }
    },
  );

  test('bad configuration exits 2 with one line per bad key', async (t) => {
    const dir = await tempDir(t);
    const base = { IOTGATE_HOST: '127.0.0.1', IOTGATE_CERTS_DIR: join(dir, 'certs') };

    await t.test('IOTGATE_HTTP_PORT=abc names key, variable, value and what is allowed', async () => {
      const r = await runCli(['start'], { ...base, IOTGATE_HTTP_PORT: 'abc' });
      assert.equal(r.status, 2, r.stderr);
      const lines = stderrLines(r.stderr);
      assert.equal(lines.length, 1, r.stderr);
      const line = lines[0] ?? '';
      assert.ok(line.includes('http.port'), line);
      assert.ok(line.includes('IOTGATE_HTTP_PORT'), line);
      assert.ok(line.includes('"abc"'), line);
      assert.match(line, /0 to 65535|integer/, line);
      assert.equal(r.stdout.includes('iotgate ready'), false);
    });

    await t.test('a YAML file with two bad keys gives two lines', async () => {
      const file = join(dir, 'bad.yaml');
      await writeFile(file, 'http: {port: 70000}\nlog: {level: loud}\n');
      const r = await runCli(['start', '--config', file], base);
      assert.equal(r.status, 2, r.stderr);
      const lines = stderrLines(r.stderr);
      assert.equal(lines.length, 2, r.stderr);
      const port = lines.find((l) => l.includes('http.port'));
      const level = lines.find((l) => l.includes('log.level'));
      assert.ok(port?.includes('70000') && /65535/.test(port), r.stderr);
      assert.ok(level?.includes('"loud"') && level.includes('"info"'), r.stderr);
    });

    await t.test('an unknown key is named', async () => {
      const file = join(dir, 'unknown.yaml');
      await writeFile(file, 'htpp:\n  port: 0\n');
      const r = await runCli(['start', '--config', file], base);
      assert.equal(r.status, 2, r.stderr);
      const lines = stderrLines(r.stderr);
      assert.equal(lines.length, 1, r.stderr);
      assert.match(lines[0] ?? '', /\bhtpp\b.*unknown key/, r.stderr);
    });

    await t.test('an unknown nested key is named', async () => {
      const file = join(dir, 'unknown-nested.yaml');
      await writeFile(file, 'mqtt:\n  prot: 1\nhttp:\n  port: 0\n');
      // `token create` reads the same config as `start` and exits at once whichever way it goes.
      const r = await runCli(['token', 'create', '--sub', 'x', '--scope', 'admin', '--config', file], base);
      assert.equal(r.status, 2, r.stderr);
      assert.ok(stderrLines(r.stderr).some((l) => l.includes('mqtt.prot') && /unknown/i.test(l)), r.stderr);
    });

    await t.test('a missing config file', async () => {
      const file = join(dir, 'does-not-exist.yaml');
      const r = await runCli(['start', '--config', file], base);
      assert.equal(r.status, 2, r.stderr);
      assert.ok(r.stderr.includes('does-not-exist.yaml'), r.stderr);
      assert.equal(r.stderr.includes('    at '), false, 'no stack trace');
    });
  });

  test('a valid YAML config file is honoured', async (t) => {
    const dir = await tempDir(t);
    const certsDir = join(dir, 'from-yaml-certs');
    const file = join(dir, 'iotgate.yaml');
    await writeFile(
      file,
      [
        'host: 127.0.0.1',
        'http: {port: 0}',
        'mqtt: {port: 0}',
        'mqtts: {port: 0}',
        'coap: {port: 0}',
        'certs:',
        `  dir: ${JSON.stringify(certsDir)}`,
        'log: {level: debug}',
        '',
      ].join('\n'),
    );
    // No IOTGATE_* variables: everything comes from the file.
    const gp = await startGateway(t, {}, ['--config', file]);
    for (const key of PORT_KEYS) {
      const v = gp.ready[key];
      assert.ok(typeof v === 'number' && v > 0, `ready.${key}`);
    }
    assert.notEqual(gp.ready.http, 8080);
    assert.notEqual(gp.ready.mqtt, 1883);
    await stat(join(certsDir, 'ca.crt')); // the certs dir of the file was used
    const health = await fetch(`http://127.0.0.1:${String(gp.ready.http)}/healthz`);
    assert.equal(health.status, 200);
    const { code } = await stopWith(gp, 'SIGTERM');
    assert.equal(code, 0);
  });

  test('logs never contain tokens, JWTs or keys', async (t) => {
    if (!requireTool(t, 'openssl')) return;
    const dir = await tempDir(t);
    const certsDir = join(dir, 'certs');
    const env = gatewayEnv(certsDir, { IOTGATE_LOG_LEVEL: 'trace' });
    const gw = await startCapturingAll(t, env);
    const base = `http://127.0.0.1:${String(gw.ready.http)}`;

    // A provisioning JWT from the CLI, with the same environment.
    const minted = await runCli(['token', 'create', '--sub', 't', '--scope', 'provision', '--json'], env);
    assert.equal(minted.status, 0, minted.stderr);
    const jwt = (JSON.parse(minted.stdout) as { token: string }).token;

    // Register a device from an openssl CSR.
    const id = 'leak-check-1';
    const csr = run('openssl', ['req', '-new', '-newkey', 'rsa:2048', '-nodes', '-keyout', join(dir, 'dev.key'), '-subj', `/CN=${id}`], {});
    assert.equal(csr.status, 0, csr.stderr);
    const registered = await fetch(`${base}/v1/register`, {
      method: 'POST',
      headers: { authorization: `Bearer ${jwt}`, 'content-type': 'application/json' },
      body: JSON.stringify({ id, csr: csr.stdout }),
    });
    assert.equal(registered.status, 201, await registered.clone().text());
    const deviceToken = ((await registered.json()) as { token: string }).token;
    assert.ok(deviceToken.length > 16);

    // A bad JWT (signature flipped), a device token in a query string, MQTT logins good and bad.
    const [h, p, s = ''] = jwt.split('.');
    const badJwt = `${h}.${p}.${s.slice(0, -4)}${s.slice(-4) === 'AAAA' ? 'BBBB' : 'AAAA'}`;
    const denied = await fetch(`${base}/v1/devices`, { headers: { authorization: `Bearer ${badJwt}` } });
    assert.equal(denied.status, 401);
    const withQuery = await fetch(`${base}/v1/devices/${id}?t=${encodeURIComponent(deviceToken)}&token=${encodeURIComponent(jwt)}`);
    assert.equal(withQuery.status, 401);
    const mqttUrl = `mqtt://127.0.0.1:${String(gw.ready.mqtt)}`;
    const client = await connectAsync(mqttUrl, { clientId: id, username: id, password: deviceToken, reconnectPeriod: 0 }, false);
    await client.endAsync();
    await assert.rejects(connectAsync(mqttUrl, { clientId: id, username: id, password: `${deviceToken}x`, reconnectPeriod: 0 }, false));
    await assert.rejects(connectAsync(mqttUrl, { clientId: 'svc', username: 'service:t', password: badJwt, reconnectPeriod: 0 }, false));

    const { code } = await stopWith(gw, 'SIGTERM');
    assert.equal(code, 0);

    const all = gw.output.stdout + gw.output.stderr;
    assert.ok(all.includes('"iotgate stopped"'), 'the whole log was captured');
    const secrets: Array<[string, string]> = [
      ['device token', deviceToken],
      ['device token MAC', deviceToken.split('.').at(-1) ?? deviceToken],
      ['provisioning JWT', jwt],
      ['provisioning JWT signature', s],
      ['bad JWT', badJwt],
      ['token.secret', (await readFile(join(certsDir, 'token.secret'), 'utf8')).trim()],
    ];
    for (const name of ['ca.key', 'server.key', 'jwt.key']) {
      for (const part of pemSecrets(await readFile(join(certsDir, name), 'utf8'))) secrets.push([name, part]);
    }
    for (const [what, secret] of secrets) {
      assert.ok(secret.length >= 16, `${what} is long enough to grep for`);
      assert.equal(all.includes(secret), false, `the log contains the ${what}`);
    }
  });
});
