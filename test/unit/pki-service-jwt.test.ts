import assert from 'node:assert/strict';
import { createHmac, generateKeyPairSync, sign } from 'node:crypto';
import { after, before, test } from 'node:test';
import { createVerifier } from 'fast-jwt';
import {
  JWT_AUDIENCE,
  JWT_ISSUER,
  initCa,
  loadCaMaterial,
  parseTtl,
  serviceJwtVerifyOptions,
  signServiceToken,
  verifyServiceToken,
  type CaMaterial,
} from '../../src/pki/index.js';
import { newTempDir, removeDir } from '../helpers/pki.js';

let dir: string | undefined;
let material: CaMaterial;

after(() => removeDir(dir));

before(async () => {
  dir = await newTempDir();
  await initCa(dir);
  material = await loadCaMaterial(dir);
});

const b64 = (v: unknown) => Buffer.from(JSON.stringify(v)).toString('base64url');
const now = () => Math.floor(Date.now() / 1000);
const goodClaims = () => ({ sub: 'svc', scope: 'admin', iss: JWT_ISSUER, aud: JWT_AUDIENCE, iat: now(), exp: now() + 600 });

/** An ES256 token built by hand with node:crypto, so that its claims can be anything. */
function es256(payload: Record<string, unknown>, keyPem = material.jwtPrivateKeyPem, header: Record<string, unknown> = {}): string {
  const input = `${b64({ alg: 'ES256', typ: 'JWT', ...header })}.${b64(payload)}`;
  const sig = sign('sha256', Buffer.from(input), { key: keyPem, dsaEncoding: 'ieee-p1363' });
  return `${input}.${sig.toString('base64url')}`;
}

test('signServiceToken produces an ES256 token that verifies with its scopes', () => {
  const minted = signServiceToken(material, { sub: 'backend-1', scope: 'devices:read  telemetry:read', ttlSeconds: 3600 });
  assert.equal(minted.sub, 'backend-1');
  assert.equal(minted.scope, 'devices:read telemetry:read');
  const [h, p] = minted.token.split('.') as [string, string, string];
  assert.deepEqual(JSON.parse(Buffer.from(h, 'base64url').toString()), { alg: 'ES256', typ: 'JWT' });
  const payload = JSON.parse(Buffer.from(p, 'base64url').toString()) as Record<string, unknown>;
  assert.equal(payload['iss'], 'iotgate');
  assert.equal(payload['aud'], 'iotgate');
  assert.equal(typeof payload['jti'], 'string');
  assert.equal(payload['exp'], (payload['iat'] as number) + 3600);
  assert.equal(minted.expiresAt, new Date((payload['exp'] as number) * 1000).toISOString());

  const claims = verifyServiceToken(material.jwtPublicKeyPem, minted.token);
  assert.equal(claims.sub, 'backend-1');
  assert.deepEqual(claims.scopes, new Set(['devices:read', 'telemetry:read']));

  // The exported options work with a plain fast-jwt verifier too (the HTTP layer's path).
  const verify = createVerifier(serviceJwtVerifyOptions(material.jwtPublicKeyPem));
  assert.equal((verify(minted.token) as { sub: string }).sub, 'backend-1');
  assert.notEqual(signServiceToken(material, { sub: 'a', scope: 'admin', ttlSeconds: 60 }).token, signServiceToken(material, { sub: 'a', scope: 'admin', ttlSeconds: 60 }).token);
  assert.equal(verifyServiceToken(material.jwtPublicKeyPem, es256(goodClaims())).sub, 'svc');
});

test('signServiceToken rejects unknown scopes, bad subjects and ttls', () => {
  assert.throws(() => signServiceToken(material, { sub: 's', scope: 'admin root', ttlSeconds: 60 }), /unknown scope "root"/);
  assert.throws(() => signServiceToken(material, { sub: 's', scope: ' ', ttlSeconds: 60 }), /at least one scope/);
  assert.throws(() => signServiceToken(material, { sub: '', scope: 'admin', ttlSeconds: 60 }), /invalid sub/);
  assert.throws(() => signServiceToken(material, { sub: 's', scope: 'admin', ttlSeconds: 0 }), /invalid ttl/);
  assert.throws(() => signServiceToken(material, { sub: 's', scope: 'admin', ttlSeconds: 1.5 }), /invalid ttl/);
});

test('verifyServiceToken rejects forged, expired, premature, misaddressed and broken tokens', () => {
  const pub = material.jwtPublicKeyPem;
  /** `expected` is fast-jwt's error code, or a message pattern for our own checks. */
  const reject = (token: string, expected: string | RegExp, what: string) =>
    assert.throws(
      () => verifyServiceToken(pub, token),
      (err: unknown) => {
        assert.ok(err instanceof Error, what);
        if (typeof expected === 'string') assert.equal((err as { code?: unknown }).code, expected, what);
        else assert.match(err.message, expected, what);
        return true;
      },
      what,
    );

  reject(`${b64({ alg: 'none', typ: 'JWT' })}.${b64(goodClaims())}.`, 'FAST_JWT_MISSING_SIGNATURE', 'alg none');
  reject(`${b64({ alg: 'none', typ: 'JWT' })}.${b64(goodClaims())}.AAAA`, 'FAST_JWT_INVALID_ALGORITHM', 'alg none with a signature');
  const hsInput = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64(goodClaims())}`;
  const hsToken = `${hsInput}.${createHmac('sha256', pub).update(hsInput).digest('base64url')}`;
  reject(hsToken, 'FAST_JWT_INVALID_ALGORITHM', 'HS256 keyed with the public key PEM');
  reject(es256(goodClaims(), material.jwtPrivateKeyPem, { alg: 'ES384' }), 'FAST_JWT_INVALID_ALGORITHM', 'header alg ES384');
  reject(es256({ ...goodClaims(), iat: now() - 120, exp: now() - 60 }), 'FAST_JWT_EXPIRED', 'expired');
  reject(es256({ ...goodClaims(), exp: now() - 1 }), 'FAST_JWT_EXPIRED', 'expired a second ago (no clock tolerance)');
  reject(es256({ ...goodClaims(), nbf: now() + 3600 }), 'FAST_JWT_INACTIVE', 'not yet valid');
  reject(es256({ ...goodClaims(), iss: 'someone' }), 'FAST_JWT_INVALID_CLAIM_VALUE', 'wrong iss');
  reject(es256({ ...goodClaims(), aud: 'other' }), 'FAST_JWT_INVALID_CLAIM_VALUE', 'wrong aud');
  const { exp: _exp, ...noExp } = goodClaims();
  reject(es256(noExp), 'FAST_JWT_MISSING_REQUIRED_CLAIM', 'no exp');
  const { sub: _sub, ...noSub } = goodClaims();
  reject(es256(noSub), 'FAST_JWT_MISSING_REQUIRED_CLAIM', 'no sub');
  reject(es256({ ...goodClaims(), scope: ['admin'] }), /scope is not a string/, 'scope not a string');
  const otherKey = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ type: 'pkcs8', format: 'pem' }).toString();
  reject(es256(goodClaims(), otherKey), 'FAST_JWT_INVALID_SIGNATURE', 'signed by another key');

  const good = signServiceToken(material, { sub: 'svc', scope: 'admin', ttlSeconds: 60 }).token;
  reject(good.slice(0, -10), 'FAST_JWT_VERIFY_ERROR', 'truncated signature');
  reject(good.split('.').slice(0, 2).join('.'), 'FAST_JWT_MALFORMED', 'no signature part');
  reject('', /malformed/, 'empty');
  reject('a.b.c', 'FAST_JWT_MALFORMED', 'garbage');
  reject(`${good}x`.repeat(200), /malformed/, 'oversized');
});

test('parseTtl', () => {
  assert.equal(parseTtl('1h'), 3600);
  assert.equal(parseTtl('30m'), 1800);
  assert.equal(parseTtl('3600'), 3600);
  assert.equal(parseTtl('2d'), 172_800);
  assert.equal(parseTtl('45s'), 45);
  assert.equal(parseTtl('1w'), 604_800);
  for (const bad of ['', 'h', '1x', '-5m', '1.5h', '0', '0s', '99999999d', '1h30m']) {
    assert.throws(() => parseTtl(bad), /invalid TTL/, bad);
  }
});
