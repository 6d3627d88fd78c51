/**
 * The operator CLI as a user runs it (contract §3): help, `ca init`, `device provision|revoke|
 * list|show` with and without a running gateway, `token create`, and the commands not built yet.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createPrivateKey } from 'node:crypto';
import { once } from 'node:events';
import { createServer } from 'node:net';
import { mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { TestContext } from 'node:test';
import { connectAsync, type MqttClient } from 'mqtt';
import { runCli, type CliResult } from '../helpers/cli.js';
import { build } from '../helpers/gateway.js';
import { requireTool, run } from '../helpers/tools.js';

const REVOCATION_BOUND_MS = 5_000;

async function tempDir(t: TestContext, prefix = 'iotgate-cli-'): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), prefix));
  t.after(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

/** A TCP port with nothing listening on it (bound, then released). */
async function closedPort(): Promise<number> {
  const server = createServer();
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const address = server.address();
  assert.ok(address !== null && typeof address === 'object');
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return address.port;
}

/**
 * CLI environment for a bare certs dir: the config points at a gateway URL where nothing runs, as
 * for an operator whose gateway is down.
 */
async function bareEnv(t: TestContext): Promise<{ dir: string; certsDir: string; env: Record<string, string> }> {
  const dir = await tempDir(t);
  const certsDir = join(dir, 'certs');
  return { dir, certsDir, env: { IOTGATE_CERTS_DIR: certsDir, IOTGATE_HOST: '127.0.0.1', IOTGATE_HTTP_PORT: String(await closedPort()) } };
}

function ok(r: CliResult, what: string): void {
  assert.equal(r.status, 0, `${what} exited ${r.status}; stderr: ${r.stderr}`);
}

/** A user error: non-zero exit, exactly one stderr line, no stack trace. Returns that line. */
function userError(r: CliResult, what: string): string {
  assert.notEqual(r.status, 0, `${what} should fail; stdout: ${r.stdout}`);
  assert.equal(r.stderr.includes('    at '), false, `${what}: stack trace on stderr:\n${r.stderr}`);
  const lines = r.stderr.split('\n').filter((l) => l.trim() !== '');
  assert.equal(lines.length, 1, `${what}: expected one stderr line, got:\n${r.stderr}`);
  return lines[0] ?? '';
}

/** Parses stdout as exactly one JSON object. */
function oneJson<T>(r: CliResult): T {
  const lines = r.stdout.split('\n').filter((l) => l.trim() !== '');
  assert.equal(lines.length, 1, `expected one JSON line, got:\n${r.stdout}`);
  const parsed = JSON.parse(lines[0] ?? '') as unknown;
  assert.ok(parsed !== null && typeof parsed === 'object' && !Array.isArray(parsed), r.stdout);
  return parsed as T;
}

/** The command names of a `--help` page's "Commands:" section. */
function helpCommands(help: string): string[] {
  const section = help.split(/^Commands:$/m)[1] ?? '';
  return [...section.matchAll(/^ {2}([a-z][a-z-]*)/gm)].map((m) => m[1] ?? '');
}

interface Provisioned {
  id: string;
  type: string;
  token: string;
  key: string;
  cert: string;
  ca: string;
  serial: string;
  notAfter: string;
}

interface Listed {
  id: string;
  type: string;
  online: boolean;
  certificate: { serial: string; notAfter: string } | null;
}

/** Retries `check` until it returns true; fails after `timeoutMs` (for effects with no event). */
async function eventually(what: string, timeoutMs: number, check: () => Promise<boolean>): Promise<number> {
  const start = Date.now();
  for (;;) {
    if (await check()) return Date.now() - start;
    if (Date.now() - start > timeoutMs) assert.fail(`${what}: not within ${timeoutMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

function openssl(t: TestContext, args: string[], cwd?: string) {
  if (!requireTool(t, 'openssl')) return null;
  return run('openssl', args, cwd === undefined ? {} : { cwd });
}

/** Resolves when the client's connection closes (attach before causing the close). */
function closeEvent(client: MqttClient): Promise<void> {
  return new Promise((resolve) => client.once('close', () => resolve()));
}

/** Resolves what `promise` resolves, or fails when `ms` pass first. */
async function withDeadline<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: not within ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([promise, deadline]);
  } finally {
    clearTimeout(timer);
  }
}

/** Connects over MQTT TCP with the device token; rejects with the broker's refusal. */
function connectDevice(port: number, id: string, token: string): Promise<MqttClient> {
  return connectAsync(`mqtt://127.0.0.1:${port}`, { clientId: id, username: id, password: token, reconnectPeriod: 0, connectTimeout: 3000 }, false);
}

// Independent tests, each with its own dirs and gateway: run them side by side.
describe('iotgate CLI', { concurrency: true }, () => {
  test('--help lists every command', async () => {
    const top = await runCli(['--help']);
    ok(top, 'iotgate --help');
    const commands = helpCommands(top.stdout);
    for (const name of ['start', 'ca', 'device', 'token', 'simulate', 'bench']) assert.ok(commands.includes(name), `${name} in:\n${top.stdout}`);
    const device = await runCli(['device', '--help']);
    ok(device, 'iotgate device --help');
    const sub = helpCommands(device.stdout);
    for (const name of ['provision', 'revoke', 'list', 'show']) assert.ok(sub.includes(name), `${name} in:\n${device.stdout}`);
  });

  test('ca init creates the CA, refuses to overwrite it, and --force replaces it', async (t) => {
    const { certsDir, env } = await bareEnv(t);
    const first = await runCli(['ca', 'init', '--json'], env);
    ok(first, 'ca init');
    const { created } = oneJson<{ created: string[] }>(first);
    for (const name of ['ca.key', 'ca.crt', 'server.key', 'server.crt', 'token.secret', 'jwt.key', 'jwt.pub']) {
      assert.ok(created.includes(join(certsDir, name)), `${name} listed in ${JSON.stringify(created)}`);
      await stat(join(certsDir, name));
    }
    for (const name of ['ca.key', 'server.key', 'jwt.key', 'token.secret']) {
      assert.equal((await stat(join(certsDir, name))).mode & 0o777, 0o600, `${name} mode`);
    }
    const caBefore = await readFile(join(certsDir, 'ca.crt'));
    const keyBefore = await readFile(join(certsDir, 'ca.key'));

    const second = await runCli(['ca', 'init'], env);
    const line = userError(second, 'second ca init');
    assert.match(line, /--force/);
    assert.deepEqual(await readFile(join(certsDir, 'ca.crt')), caBefore, 'ca.crt unchanged');
    assert.deepEqual(await readFile(join(certsDir, 'ca.key')), keyBefore, 'ca.key unchanged');

    const forced = await runCli(['ca', 'init', '--force', '--json'], env);
    ok(forced, 'ca init --force');
    assert.notDeepEqual(await readFile(join(certsDir, 'ca.crt')), caBefore, 'ca.crt replaced');
    assert.equal((await stat(join(certsDir, 'ca.key'))).mode & 0o777, 0o600);
  });

  test('device provision writes a key, a certificate and a token', async (t) => {
    const { dir, env } = await bareEnv(t);
    const out = join(dir, 'out');

    await t.test('dev-1: one JSON object, 0600 key, a certificate openssl verifies', async (t) => {
      const r = await runCli(['device', 'provision', 'dev-1', '--out', out, '--json'], env);
      ok(r, 'provision dev-1');
      const p = oneJson<Provisioned>(r);
      assert.deepEqual(Object.keys(p).sort(), ['ca', 'cert', 'id', 'key', 'notAfter', 'serial', 'token', 'type']);
      assert.equal(p.id, 'dev-1');
      assert.equal(p.type, 'generic');
      assert.equal(p.key, join(out, 'dev-1.key'));
      assert.equal(p.cert, join(out, 'dev-1.crt'));
      assert.equal(p.ca, join(out, 'ca.crt'));
      assert.ok(p.token.length >= 20);
      assert.match(p.serial, /^[0-9A-Fa-f]+$/);
      assert.ok(Date.parse(p.notAfter) > Date.now());
      assert.equal((await stat(p.key)).mode & 0o777, 0o600, 'key file mode');
      assert.equal(createPrivateKey(await readFile(p.key)).asymmetricKeyType, 'rsa');

      const verify = openssl(t, ['verify', '-CAfile', 'ca.crt', 'dev-1.crt'], out);
      if (!verify) return;
      assert.equal(verify.status, 0, verify.stderr + verify.stdout);
      assert.match(verify.stdout, /dev-1\.crt: OK/);
      const subject = openssl(t, ['x509', '-in', 'dev-1.crt', '-noout', '-subject', '-serial', '-nameopt', 'RFC2253'], out);
      assert.ok(subject);
      assert.equal(subject.status, 0, subject.stderr);
      assert.match(subject.stdout, /(^|[=,])CN=dev-1(,|$)/m);
      assert.match(subject.stdout, /(^|[=,])OU=generic(,|$)/m);
      const serial = /serial=([0-9A-Fa-f]+)/.exec(subject.stdout)?.[1] ?? '';
      assert.equal(serial.toUpperCase().replace(/^0+/, ''), p.serial.toUpperCase().replace(/^0+/, ''));
    });

    await t.test('the same id twice: the second fails', async () => {
      const r = await runCli(['device', 'provision', 'dev-1', '--out', out, '--json'], env);
      assert.match(userError(r, 'second provision'), /already exists/);
      assert.equal(r.stdout, '');
    });

    await t.test('an unknown --type fails with a clear message', async () => {
      const r = await runCli(['device', 'provision', 'dev-2', '--type', 'nosuch', '--out', out], env);
      const line = userError(r, '--type nosuch');
      assert.match(line, /nosuch/);
      assert.match(line, /type/);
    });

    await t.test('an invalid id fails and shows the id pattern', async () => {
      const r = await runCli(['device', 'provision', 'bad id!', '--out', out], env);
      const line = userError(r, 'provision "bad id!"');
      assert.ok(line.includes('^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$'), line);
    });

    await t.test('--key-type ec gives a P-256 key and a certificate openssl verifies', async (t) => {
      const r = await runCli(['device', 'provision', 'dev-ec', '--key-type', 'ec', '--out', out, '--json'], env);
      ok(r, 'provision --key-type ec');
      const p = oneJson<Provisioned>(r);
      const key = createPrivateKey(await readFile(p.key));
      assert.equal(key.asymmetricKeyType, 'ec');
      assert.equal(key.asymmetricKeyDetails?.namedCurve, 'prime256v1');
      assert.equal((await stat(p.key)).mode & 0o777, 0o600);
      const verify = openssl(t, ['verify', '-CAfile', 'ca.crt', 'dev-ec.crt'], out);
      if (!verify) return;
      assert.equal(verify.status, 0, verify.stderr + verify.stdout);
    });
  });

  test('token create mints a service JWT with the asked scope and lifetime', async (t) => {
    const gw = await build(t);

    await t.test('--json prints {token, sub, scope, expiresAt}; the token works with its scope only', async () => {
      const before = Date.now();
      const r = await runCli(['token', 'create', '--sub', 'svc', '--scope', 'devices:read', '--ttl', '10m', '--json'], gw.env);
      ok(r, 'token create');
      const minted = oneJson<{ token: string; sub: string; scope: string; expiresAt: string }>(r);
      assert.deepEqual(Object.keys(minted).sort(), ['expiresAt', 'scope', 'sub', 'token']);
      assert.equal(minted.sub, 'svc');
      assert.equal(minted.scope, 'devices:read');
      const expected = before + 10 * 60_000;
      assert.ok(Math.abs(Date.parse(minted.expiresAt) - expected) < 10_000, `expiresAt ${minted.expiresAt}`);
      const claims = JSON.parse(Buffer.from(minted.token.split('.')[1] ?? '', 'base64url').toString()) as { sub: string; scope: string; exp: number };
      assert.equal(claims.sub, 'svc');
      assert.equal(claims.scope, 'devices:read');
      assert.equal(claims.exp * 1000, Date.parse(minted.expiresAt));

      const auth = { authorization: `Bearer ${minted.token}` };
      assert.equal((await fetch(`${gw.url}/v1/devices`, { headers: auth })).status, 200);
      const del = await fetch(`${gw.url}/v1/devices/x`, { method: 'DELETE', headers: auth });
      assert.equal(del.status, 403);
    });

    await t.test('an unknown scope exits 2', async () => {
      const r = await runCli(['token', 'create', '--sub', 'svc', '--scope', 'nope'], gw.env);
      assert.equal(r.status, 2, r.stderr);
      assert.match(userError(r, '--scope nope'), /nope/);
    });

    await t.test('a bad ttl exits 2', async () => {
      for (const ttl of ['soon', '-5m']) {
        const r = await runCli(['token', 'create', '--sub', 'svc', '--scope', 'devices:read', '--ttl', ttl], gw.env);
        assert.equal(r.status, 2, `--ttl ${ttl}: ${r.stderr}`);
        assert.match(userError(r, `--ttl ${ttl}`), /ttl/i);
      }
    });
  });

  test('with a running gateway: provision, list, show and revoke through the CLI', async (t) => {
    const gw = await build(t);
    const dir = await tempDir(t);
    const out = join(dir, 'out');
    const id = 'dev-x';
    const admin = { authorization: `Bearer ${await gw.token('admin')}` };
    const getDevice = () => fetch(`${gw.url}/v1/devices/${id}`, { headers: admin });

    const r = await runCli(['device', 'provision', id, '--out', out, '--json'], gw.env);
    ok(r, 'provision');
    const p = oneJson<Provisioned>(r);

    // Contract §3: no restart and no wait — the gateway knows the device as soon as the CLI is done.
    assert.equal((await getDevice()).status, 200, 'the gateway knows the provisioned device at once');
    const record = (await (await getDevice()).json()) as Listed;
    assert.equal(record.type, 'generic');
    assert.equal(record.certificate?.serial, p.serial);

    const client = await connectDevice(gw.ports.mqtt, id, p.token);
    t.after(() => client.end(true));

    // MQTT straight after provisioning (no REST call in between) works too.
    const fresh = oneJson<Provisioned>(await runCli(['device', 'provision', 'dev-fresh', '--out', out, '--json'], gw.env));
    const freshClient = await connectDevice(gw.ports.mqtt, 'dev-fresh', fresh.token);
    assert.equal(freshClient.connected, true, 'a device provisioned a moment ago logs in at once');
    await freshClient.endAsync(true);
    assert.equal(client.connected, true);

    const list = await runCli(['device', 'list', '--json'], gw.env);
    ok(list, 'device list');
    const listed = oneJson<{ devices: Listed[] }>(list).devices.find((d) => d.id === id);
    assert.ok(listed, list.stdout);
    assert.equal(listed.certificate?.serial, p.serial);
    assert.equal(listed.type, 'generic');
    assert.equal(typeof listed.online, 'boolean');

    const show = await runCli(['device', 'show', id, '--json'], gw.env);
    ok(show, 'device show');
    const shown = oneJson<Listed>(show);
    assert.equal(shown.id, id);
    assert.equal(shown.certificate?.serial, p.serial);

    // Revoke: the live session is closed, new logins are refused, REST and the CLI forget it.
    const closed = closeEvent(client);
    const revoke = await runCli(['device', 'revoke', id, '--json'], gw.env);
    ok(revoke, 'device revoke');
    assert.equal(oneJson<{ id: string; revoked: boolean }>(revoke).revoked, true);
    // The 5 s bound counts from the CLI's exit: the revocation is on disk then.
    await withDeadline(closed, REVOCATION_BOUND_MS, 'the gateway closes the open MQTT session of the revoked device');

    await eventually('a new MQTT connect with the revoked token is refused', REVOCATION_BOUND_MS, async () => {
      try {
        const again = await connectDevice(gw.ports.mqtt, id, p.token);
        await again.endAsync(true);
        return false;
      } catch (e) {
        const code = (e as { code?: unknown }).code;
        assert.ok(code === 4 || code === 5, `refused with CONNACK 4/5, got ${String(code)} (${(e as Error).message})`);
        return true;
      }
    });
    await eventually('GET /v1/devices/dev-x is 404', REVOCATION_BOUND_MS, async () => (await getDevice()).status === 404);
    const showAfter = await runCli(['device', 'show', id, '--json'], gw.env);
    assert.match(userError(showAfter, 'show after revoke'), /not known/);

    const crl = openssl(t, ['verify', '-crl_check', '-CRLfile', join(gw.certsDir, 'ca.crl'), '-CAfile', 'ca.crt', `${id}.crt`], out);
    if (!crl) return;
    assert.notEqual(crl.status, 0, crl.stdout);
    assert.match(crl.stdout + crl.stderr, /certificate revoked/);
  });

  test('without a running gateway: provision, list, show and revoke on the certs dir', async (t) => {
    const { dir, env } = await bareEnv(t);
    const out = join(dir, 'out');
    const a = oneJson<Provisioned>(await runCli(['device', 'provision', 'bare-a', '--out', out, '--json'], env));
    const b = oneJson<Provisioned>(await runCli(['device', 'provision', 'bare-b', '--type', 'generic', '--out', out, '--json'], env));

    const revoke = await runCli(['device', 'revoke', 'bare-a', '--json'], env);
    ok(revoke, 'revoke without a gateway');
    assert.equal(oneJson<{ id: string; revoked: boolean }>(revoke).revoked, true);

    const list = await runCli(['device', 'list', '--json'], env);
    ok(list, 'list without a gateway');
    const devices = oneJson<{ devices: Listed[] }>(list).devices;
    assert.deepEqual(
      devices.map((d) => d.id),
      ['bare-b'],
      'live devices only',
    );
    assert.equal(devices[0]?.certificate?.serial, b.serial);
    assert.equal(devices[0]?.online, false);

    const show = await runCli(['device', 'show', 'bare-b', '--json'], env);
    ok(show, 'show without a gateway');
    assert.equal(oneJson<Listed>(show).certificate?.serial, b.serial);
    assert.match(userError(await runCli(['device', 'show', 'bare-a'], env), 'show a revoked device'), /not known/);

    const unknown = await runCli(['device', 'revoke', 'unknown'], env);
    assert.match(userError(unknown, 'revoke unknown'), /not known/);

    const crl = openssl(t, ['verify', '-crl_check', '-CRLfile', join(env.IOTGATE_CERTS_DIR ?? '', 'ca.crl'), '-CAfile', 'ca.crt', 'bare-a.crt'], out);
    if (!crl) return;
    assert.match(crl.stdout + crl.stderr, /certificate revoked/, `serial ${a.serial}`);
  });

  test('list, show and revoke never create a CA, and a gateway that refuses the CLI is an error', async (t) => {
    const { certsDir, env } = await bareEnv(t);
    for (const args of [['device', 'list'], ['device', 'show', 'x-1'], ['device', 'revoke', 'x-1']]) {
      assert.match(userError(await runCli(args, env), args.join(' ')), /ca init/);
    }
    await assert.rejects(stat(join(certsDir, 'ca.key')), 'no CA was created in a mistyped certs dir');

    // A gateway with another certs dir answers the CLI's token with 401: say so, do not fall back.
    const gw = await build(t);
    const dir = await tempDir(t);
    const other = { ...gw.env, IOTGATE_CERTS_DIR: join(dir, 'other-certs') };
    ok(await runCli(['ca', 'init'], other), 'ca init in the other dir');
    for (const args of [['device', 'list'], ['device', 'show', 'x-1']]) {
      const line = userError(await runCli(args, other), `${args.join(' ')} against a gateway with other certs`);
      assert.match(line, /answered 401/);
      assert.match(line, /certs dir/);
    }
  });

  test('simulate and bench are listed with their options in --help', async () => {
    for (const [cmd, option] of [
      ['simulate', '--devices'],
      ['bench', '--scenario'],
    ] as const) {
      const r = await runCli([cmd, '--help']);
      assert.equal(r.status, 0, r.stderr);
      assert.match(r.stdout, new RegExp(option));
    }
  });
});
