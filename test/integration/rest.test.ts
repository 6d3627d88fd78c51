/**
 * The REST facade over real HTTP against an in-process gateway (one per file): register with RSA
 * and EC CSRs, device routes, auth (401 vs 403) on every /v1 route, JWT attacks, problem+json for
 * every error, OpenAPI, health and metrics, and no secrets in the log.
 */
import { before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createHmac, createPrivateKey, generateKeyPairSync, sign as cryptoSign, type KeyObject } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execFileSync } from 'node:child_process';
import { suiteGateway, type TestGateway } from '../helpers/gateway.js';
import { call } from '../helpers/http.js';
import { opensslCsr } from '../helpers/csr.js';
import { hasTool } from '../helpers/tools.js';

if (!hasTool('openssl') && process.env.CI === 'true') throw new Error('openssl is required (CI=true)');

const PROBLEM = /^application\/problem\+json/;

function assertProblem(res: { status: number; headers: Headers; body: Record<string, unknown> }, status: number, code?: string): void {
  assert.equal(res.status, status, JSON.stringify(res.body));
  assert.match(res.headers.get('content-type') ?? '', PROBLEM);
  assert.equal(res.body.status, status);
  assert.equal(typeof res.body.title, 'string');
  assert.equal(typeof res.body.type, 'string');
  assert.equal(typeof res.body.detail, 'string');
  if (code) assert.equal(res.body.code, code);
}

const b64url = (v: unknown) => Buffer.from(typeof v === 'string' ? v : JSON.stringify(v)).toString('base64url');

function es256(key: KeyObject, header: object, payload: object): string {
  const input = `${b64url(header)}.${b64url(payload)}`;
  return `${input}.${cryptoSign('sha256', Buffer.from(input), { key, dsaEncoding: 'ieee-p1363' }).toString('base64url')}`;
}

describe('REST facade', { skip: !hasTool('openssl') && 'openssl is not installed' }, () => {
  let gw: TestGateway;
  let admin: string;
  let jwtKey: KeyObject;
  const now = () => Math.floor(Date.now() / 1000);

  const gateway = suiteGateway();
  before(async () => {
    gw = gateway();
    admin = await gw.token('admin');
    jwtKey = createPrivateKey(await readFile(join(gw.certsDir, 'jwt.key')));
  });

  describe('POST /v1/register', () => {
    for (const kind of ['rsa', 'ec'] as const) {
      it(`registers a device from an ${kind.toUpperCase()} CSR and the certificate chains to the CA`, async (t) => {
        const id = `reg-${kind}`;
        const { csrPem } = opensslCsr(id, kind);
        const token = await gw.token('provision');
        const res = await call(gw.url, 'POST', '/v1/register', { token, body: { id, csr: csrPem, type: 'generic' } });
        assert.equal(res.status, 201, res.text);
        assert.equal(res.body.id, id);
        assert.equal(typeof res.body.token, 'string');
        assert.match(String(res.body.certificate), /^-----BEGIN CERTIFICATE-----/);
        assert.equal(res.body.caCertificate, await readFile(join(gw.certsDir, 'ca.crt'), 'utf8'));
        assert.deepEqual(res.body.topics, {
          telemetry: `devices/${id}/telemetry`,
          commands: `devices/${id}/commands/+`,
          commandResponse: `devices/${id}/commands/{commandId}/response`,
          shadow: `devices/${id}/shadow`,
          status: `devices/${id}/status`,
          errors: `devices/${id}/errors`,
        });
        assert.equal(res.headers.get('location'), `/v1/devices/${id}`);

        const dir = await mkdtemp(join(tmpdir(), 'iotgate-rest-'));
        t.after(() => rm(dir, { recursive: true, force: true }));
        await writeFile(join(dir, 'd.crt'), String(res.body.certificate));
        const verify = execFileSync('openssl', ['verify', '-CAfile', join(gw.certsDir, 'ca.crt'), join(dir, 'd.crt')], { encoding: 'utf8' });
        assert.match(verify, /OK/);
        const subject = execFileSync('openssl', ['x509', '-in', join(dir, 'd.crt'), '-noout', '-subject', '-serial'], { encoding: 'utf8' });
        assert.match(subject, new RegExp(`CN ?= ?${id}`));
        assert.match(subject, /OU ?= ?generic/);
        const serial = /serial=([0-9A-F]+)/.exec(subject)?.[1];

        const got = await call(gw.url, 'GET', `/v1/devices/${id}`, { token: await gw.token('devices:read') });
        assert.equal(got.status, 200);
        assert.equal(got.body.id, id);
        assert.equal(got.body.type, 'generic');
        assert.equal(got.body.online, false);
        assert.equal((got.body.certificate as { serial: string }).serial, serial);
        assert.ok(!Number.isNaN(Date.parse((got.body.certificate as { notAfter: string }).notAfter)));
      });
    }

    it('409 for an id that is already registered; the first device keeps its certificate', async () => {
      const token = await gw.token('provision');
      const first = await call(gw.url, 'POST', '/v1/register', { token, body: { id: 'dup-1', csr: opensslCsr('dup-1').csrPem } });
      assert.equal(first.status, 201);
      const again = await call(gw.url, 'POST', '/v1/register', { token, body: { id: 'dup-1', csr: opensslCsr('dup-1').csrPem } });
      assertProblem(again, 409, 'device_exists');
      const got = await call(gw.url, 'GET', '/v1/devices/dup-1', { token: admin });
      const certSerial = execFileSync('openssl', ['x509', '-noout', '-serial'], { input: String(first.body.certificate), encoding: 'utf8' });
      assert.equal(`serial=${(got.body.certificate as { serial: string }).serial}`, certSerial.trim());
    });

    it('400 with the reason for a CSR whose CN differs, a garbage CSR, and a tampered CSR', async () => {
      const token = await gw.token('provision');
      const other = await call(gw.url, 'POST', '/v1/register', { token, body: { id: 'cn-1', csr: opensslCsr('someone-else', 'ec').csrPem } });
      assertProblem(other, 400, 'csr_invalid');
      assert.match(String(other.body.detail), /someone-else/);
      assert.match(String(other.body.detail), /cn-1/);

      const garbage = await call(gw.url, 'POST', '/v1/register', { token, body: { id: 'cn-2', csr: 'not a csr at all' } });
      assertProblem(garbage, 400, 'csr_invalid');

      const pem = opensslCsr('cn-3').csrPem;
      const der = Buffer.from(pem.replace(/-----[A-Z ]+-----|\s/g, ''), 'base64');
      der[der.length - 5] = (der[der.length - 5] ?? 0) ^ 0xff; // flip bits inside the signature
      const tampered = `-----BEGIN CERTIFICATE REQUEST-----\n${der.toString('base64')}\n-----END CERTIFICATE REQUEST-----\n`;
      const bad = await call(gw.url, 'POST', '/v1/register', { token, body: { id: 'cn-3', csr: tampered } });
      assertProblem(bad, 400, 'csr_invalid');

      for (const id of ['cn-1', 'cn-2', 'cn-3']) {
        assertProblem(await call(gw.url, 'GET', `/v1/devices/${id}`, { token: admin }), 404, 'device_not_found');
      }
    });

    it('400 naming the failing field for a bad body, a bad id and an unknown type', async () => {
      const token = await gw.token('provision');
      const missing = await call(gw.url, 'POST', '/v1/register', { token, body: { id: 'x-1' } });
      assertProblem(missing, 400, 'validation_failed');
      assert.deepEqual((missing.body.errors as { path: string }[]).map((e) => e.path), ['body.csr']);

      const badId = await call(gw.url, 'POST', '/v1/register', { token, body: { id: 'bad id!', csr: opensslCsr('x').csrPem } });
      assertProblem(badId, 400, 'validation_failed');
      assert.ok((badId.body.errors as { path: string }[]).some((e) => e.path === 'body.id'));

      const type = await call(gw.url, 'POST', '/v1/register', { token, body: { id: 'x-2', csr: opensslCsr('x-2').csrPem, type: 'nosuch' } });
      assertProblem(type, 400);
      assert.match(String(type.body.detail), /nosuch/);

      const notJson = await call(gw.url, 'POST', '/v1/register', { token, rawBody: '{"id":', headers: { 'content-type': 'application/json' } });
      assertProblem(notJson, 400);
      const wrongType = await call(gw.url, 'POST', '/v1/register', { token, rawBody: 'id=x', headers: { 'content-type': 'text/plain' } });
      assertProblem(wrongType, 415);
      const huge = await call(gw.url, 'POST', '/v1/register', { token, body: { id: 'x-3', csr: 'A'.repeat(2_000_000) } });
      assertProblem(huge, 413);
    });
  });

  describe('device routes', () => {
    it('lists devices in id order with paging and filters', async () => {
      const token = await gw.token('provision devices:read');
      for (const id of ['list-b', 'list-a', 'list-c']) {
        assert.equal((await call(gw.url, 'POST', '/v1/register', { token, body: { id, csr: opensslCsr(id, 'ec').csrPem } })).status, 201);
      }
      const ids: string[] = [];
      let cursor: string | null = null;
      do {
        const page = await call(gw.url, 'GET', `/v1/devices?limit=2${cursor ? `&cursor=${cursor}` : ''}`, { token });
        assert.equal(page.status, 200, page.text);
        ids.push(...(page.body.items as { id: string }[]).map((d) => d.id));
        cursor = page.body.nextCursor as string | null;
      } while (cursor);
      const listed = ids.filter((id) => id.startsWith('list-'));
      assert.deepEqual(listed, ['list-a', 'list-b', 'list-c']);
      assert.deepEqual([...ids].sort(), ids, 'ordered by id');

      const offline = await call(gw.url, 'GET', '/v1/devices?online=false&type=generic&limit=1000', { token });
      assert.ok((offline.body.items as { id: string }[]).some((d) => d.id === 'list-a'));
      const online = await call(gw.url, 'GET', '/v1/devices?online=true', { token });
      assert.deepEqual(online.body.items, []);
      assertProblem(await call(gw.url, 'GET', '/v1/devices?limit=0', { token }), 400, 'validation_failed');
      assertProblem(await call(gw.url, 'GET', '/v1/devices?cursor=%25bogus', { token }), 400);
      assertProblem(await call(gw.url, 'GET', '/v1/devices/not%20valid', { token }), 400);
      assertProblem(await call(gw.url, 'GET', '/v1/devices/never-seen', { token }), 404, 'device_not_found');
    });

    it('DELETE revokes and forgets a device; the id can be registered again', async () => {
      const token = await gw.token('provision devices:write devices:read');
      assert.equal((await call(gw.url, 'POST', '/v1/register', { token, body: { id: 'del-1', csr: opensslCsr('del-1').csrPem } })).status, 201);
      const del = await call(gw.url, 'DELETE', '/v1/devices/del-1', { token });
      assert.equal(del.status, 204);
      assert.equal(del.text, '');
      assertProblem(await call(gw.url, 'GET', '/v1/devices/del-1', { token }), 404);
      assertProblem(await call(gw.url, 'DELETE', '/v1/devices/del-1', { token }), 404);
      const crl = execFileSync('openssl', ['crl', '-in', join(gw.certsDir, 'ca.crl'), '-noout', '-text'], { encoding: 'utf8' });
      assert.match(crl, /Serial Number/);
      assert.equal((await call(gw.url, 'POST', '/v1/register', { token, body: { id: 'del-1', csr: opensslCsr('del-1').csrPem } })).status, 201);
    });
  });

  describe('authentication and scopes', () => {
    const routes: { method: string; path: string; scope: string; body?: unknown; stream?: boolean }[] = [
      { method: 'GET', path: '/v1/events', scope: 'telemetry:read', stream: true },
      { method: 'GET', path: '/v1/upstreams', scope: 'admin' },
      { method: 'GET', path: '/v1/routes', scope: 'admin' },
      { method: 'POST', path: '/v1/register', scope: 'provision', body: { id: 'authz-1', csr: 'x' } },
      { method: 'GET', path: '/v1/devices', scope: 'devices:read' },
      { method: 'GET', path: '/v1/devices/authz-1', scope: 'devices:read' },
      { method: 'DELETE', path: '/v1/devices/authz-1', scope: 'devices:write' },
      { method: 'GET', path: '/v1/devices/authz-1/telemetry', scope: 'telemetry:read' },
      { method: 'GET', path: '/v1/devices/authz-1/telemetry/latest', scope: 'telemetry:read' },
      { method: 'GET', path: '/v1/schemas', scope: 'devices:read' },
      { method: 'GET', path: '/v1/devices/authz-1/shadow', scope: 'shadow:read' },
      { method: 'PATCH', path: '/v1/devices/authz-1/shadow', scope: 'shadow:write', body: { state: { desired: { x: 1 } } } },
      { method: 'DELETE', path: '/v1/devices/authz-1/shadow', scope: 'shadow:write' },
      { method: 'GET', path: '/v1/devices/authz-1/shadows', scope: 'shadow:read' },
      { method: 'POST', path: '/v1/devices/authz-1/firmware', scope: 'firmware:write', body: { version: '1', url: 'https://x/fw', sha256: 'a'.repeat(64) } },
      { method: 'GET', path: '/v1/devices/authz-1/firmware', scope: 'firmware:write' },
      { method: 'POST', path: '/v1/devices/authz-1/commands', scope: 'commands:send', body: { name: 'reboot', wait: false } },
      { method: 'GET', path: '/v1/devices/authz-1/commands', scope: 'commands:send' },
      { method: 'GET', path: '/v1/devices/authz-1/commands/c1', scope: 'commands:send' },
      { method: 'DELETE', path: '/v1/devices/authz-1/commands/c1', scope: 'commands:send' },
      { method: 'GET', path: '/v1/schemas/generic', scope: 'devices:read' },
    ];
    /** Routes that take a device token instead of a service JWT. */
    const deviceTokenRoutes = [{ method: 'POST', path: '/v1/devices/authz-1/telemetry' }];
    const documentedPath = (path: string) => path.replace('authz-1', '{id}').replace('/commands/c1', '/commands/{commandId}').replace('/v1/schemas/generic', '/v1/schemas/{type}');

    it('the route table covers every /v1 route in the OpenAPI document', async () => {
      const doc = await call(gw.url, 'GET', '/openapi.json');
      const documented = Object.entries(doc.body.paths as Record<string, Record<string, unknown>>)
        .filter(([p]) => p.startsWith('/v1/'))
        .flatMap(([p, ops]) => Object.keys(ops).map((m) => `${m.toUpperCase()} ${p}`))
        .sort();
      const tested = [...routes, ...deviceTokenRoutes].map((r) => `${r.method} ${documentedPath(r.path)}`).sort();
      assert.deepEqual(documented, tested);
    });

    for (const r of routes) {
      it(`${r.method} ${r.path}: 401 without or with a bad token, 403 with another scope, passes with ${r.scope} and admin`, async () => {
        const opts = r.body === undefined ? {} : { body: r.body };
        const none = await call(gw.url, r.method, r.path, opts);
        assertProblem(none, 401, 'unauthorized');
        assert.match(none.headers.get('www-authenticate') ?? '', /^Bearer/);
        assertProblem(await call(gw.url, r.method, r.path, { ...opts, token: 'garbage' }), 401);
        assertProblem(await call(gw.url, r.method, r.path, { ...opts, headers: { authorization: 'Basic dXNlcjpwYXNz' } }), 401);
        const wrong = await call(gw.url, r.method, r.path, { ...opts, token: await gw.token(r.scope === 'firmware:write' ? 'devices:write' : 'firmware:write') });
        assertProblem(wrong, 403, 'forbidden');
        assert.match(String(wrong.body.detail), new RegExp(r.scope));
        for (const scope of [r.scope, 'admin']) {
          if (r.stream) {
            // An event stream never ends: read the status line, then hang up.
            const abort = new AbortController();
            const res = await fetch(`${gw.url}${r.path}`, { headers: { authorization: `Bearer ${await gw.token(scope)}` }, signal: abort.signal });
            abort.abort();
            assert.equal(res.status, 200, scope);
            continue;
          }
          const ok = await call(gw.url, r.method, r.path, { ...opts, token: await gw.token(scope) });
          assert.ok(![401, 403].includes(ok.status), `${scope}: ${ok.status} ${ok.text}`);
        }
      });
    }

    it('refuses forged, expired, premature, misaddressed and malformed JWTs with 401', async () => {
      const pub = await readFile(join(gw.certsDir, 'jwt.pub'), 'utf8');
      const claims = { sub: 'mallory', scope: 'admin', iss: 'iotgate', aud: 'iotgate', iat: now(), exp: now() + 600 };
      const otherKey = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey;
      const hs = (secret: string | Buffer, payload: object) => {
        const input = `${b64url({ alg: 'HS256', typ: 'JWT' })}.${b64url(payload)}`;
        return `${input}.${createHmac('sha256', secret).update(input).digest('base64url')}`;
      };
      const good = es256(jwtKey, { alg: 'ES256', typ: 'JWT' }, claims);
      const valid = await call(gw.url, 'GET', '/v1/devices', { token: good });
      assert.equal(valid.status, 200, 'the hand-made token is right when not tampered with');

      const attacks: Record<string, string> = {
        'alg none': `${b64url({ alg: 'none', typ: 'JWT' })}.${b64url(claims)}.`,
        'alg none without signature part': `${b64url({ alg: 'none' })}.${b64url(claims)}`,
        'HS256 signed with the public key (algorithm confusion)': hs(pub, claims),
        'HS256 signed with the public key DER': hs(Buffer.from(pub.replace(/-----[A-Z ]+-----|\s/g, ''), 'base64'), claims),
        expired: es256(jwtKey, { alg: 'ES256' }, { ...claims, iat: now() - 7200, exp: now() - 3600 }),
        'not yet valid': es256(jwtKey, { alg: 'ES256' }, { ...claims, nbf: now() + 3600 }),
        'wrong issuer': es256(jwtKey, { alg: 'ES256' }, { ...claims, iss: 'evil' }),
        'wrong audience': es256(jwtKey, { alg: 'ES256' }, { ...claims, aud: 'someone-else' }),
        'no issuer or audience': es256(jwtKey, { alg: 'ES256' }, { sub: 'x', scope: 'admin', exp: now() + 600 }),
        'RS256 header on an ES256 signature': es256(jwtKey, { alg: 'RS256' }, claims),
        'no expiry': es256(jwtKey, { alg: 'ES256' }, { sub: 'x', scope: 'admin', iss: 'iotgate', aud: 'iotgate' }),
        'signed with another key': es256(otherKey, { alg: 'ES256' }, claims),
        'payload swapped after signing': `${good.split('.')[0]}.${b64url({ ...claims, sub: 'root' })}.${good.split('.')[2]}`,
        truncated: good.slice(0, -10),
        'two parts': good.split('.').slice(0, 2).join('.'),
        'not base64': 'a.b.c',
      };
      for (const [name, token] of Object.entries(attacks)) {
        const res = await call(gw.url, 'GET', '/v1/devices', { token });
        assert.equal(res.status, 401, `${name} must be refused, got ${res.status}`);
        assert.match(res.headers.get('content-type') ?? '', PROBLEM);
      }
      assertProblem(await call(gw.url, 'GET', '/v1/devices', { headers: { authorization: 'Bearer ' } }), 401);
      assertProblem(await call(gw.url, 'GET', '/v1/devices', { headers: { authorization: 'Bearer' } }), 401);
    });
  });

  describe('operations routes', () => {
    it('healthz, readyz with components, metrics in Prometheus text, and problem+json for unknown routes', async () => {
      const health = await call(gw.url, 'GET', '/healthz');
      assert.equal(health.status, 200);
      assert.equal(health.body.status, 'ok');
      assert.equal((health.body.components as Record<string, { status: string }>).mqtt?.status, 'ok', 'per-component status');
      const ready = await call(gw.url, 'GET', '/readyz');
      assert.equal(ready.status, 200);
      const components = ready.body.components as Record<string, { status: string }>;
      for (const c of ['pki', 'store', 'mqtt', 'mqtts', 'coap']) assert.equal(components[c]?.status, 'ok', c);

      const metrics = await call(gw.url, 'GET', '/metrics');
      assert.equal(metrics.status, 200);
      assert.match(metrics.headers.get('content-type') ?? '', /text\/plain/);
      assert.match(metrics.text, /^process_cpu_user_seconds_total /m);
      assert.match(metrics.text, /^iotgate_http_requests_total\{method="GET",route="\/readyz",status="200"\} 1$/m);
      assert.match(metrics.text, /^iotgate_devices_known \d+$/m);

      const unknown = await call(gw.url, 'GET', '/nope/nothing');
      assertProblem(unknown, 404, 'not_found');
      assert.equal(unknown.body.instance, '/nope/nothing');
    });

    it('OpenAPI lists every route with its security, and /docs serves the UI', async () => {
      const doc = await call(gw.url, 'GET', '/openapi.json');
      assert.equal(doc.status, 200);
      assert.match(String(doc.body.openapi), /^3\./);
      const paths = doc.body.paths as Record<string, Record<string, { security?: unknown[]; responses?: Record<string, unknown> }>>;
      for (const [p, methods] of [
        ['/healthz', ['get']],
        ['/readyz', ['get']],
        ['/metrics', ['get']],
        ['/openapi.json', ['get']],
        ['/v1/register', ['post']],
        ['/v1/devices', ['get']],
        ['/v1/devices/{id}', ['get', 'delete']],
      ] as const) {
        for (const m of methods) {
          const op = paths[p]?.[m];
          assert.ok(op, `${m.toUpperCase()} ${p} is documented`);
          if (p.startsWith('/v1/')) {
            assert.deepEqual(op.security, [{ serviceJwt: [] }], `${p} declares its auth`);
            assert.ok(op.responses?.['401'] && op.responses['403'], `${p} documents 401 and 403`);
          }
        }
      }
      const docs = await fetch(`${gw.url}/docs/`);
      assert.equal(docs.status, 200);
      assert.match(await docs.text(), /swagger/i);
    });

    it('never logs tokens, keys or secrets', async () => {
      const token = await gw.token('provision');
      const reg = await call(gw.url, 'POST', '/v1/register', { token, body: { id: 'log-1', csr: opensslCsr('log-1').csrPem } });
      assert.equal(reg.status, 201);
      await call(gw.url, 'GET', `/v1/devices?t=${String(reg.body.token)}`, { token: `${token}x` });
      const log = gw.logs.lines.join('\n');
      assert.ok(gw.logs.lines.length > 0);
      const secrets = [token, String(reg.body.token), String(reg.body.token).split('.').pop() ?? ''];
      for (const file of ['ca.key', 'server.key', 'jwt.key']) {
        const body = (await readFile(join(gw.certsDir, file), 'utf8')).replace(/-----[A-Z ]+-----|\s/g, '');
        secrets.push(body.slice(0, 40), body.slice(-40));
      }
      secrets.push((await readFile(join(gw.certsDir, 'token.secret'), 'utf8')).trim());
      for (const s of secrets) assert.ok(s.length >= 16 && !log.includes(s), `a secret leaked into the log: ${s.slice(0, 8)}…`);
    });
  });
});
