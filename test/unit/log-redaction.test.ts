/**
 * The root logger's redaction (src/log.ts): secret keys at depth 1–3, the header paths and URL
 * query secrets never reach a line. The logger no longer uses pino's wildcard paths (`*.key`,
 * `*.*.key`: slow) but its own walk; these tests check, line by line, that its output is exactly
 * what pino's own redaction with the full REDACT_PATHS writes, for hand-written and random
 * objects, in log objects, child bindings and interpolated messages, and that the logged objects
 * are never changed.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { Writable } from 'node:stream';
import { pino, type Logger } from 'pino';
import { CENSOR, createLogger, flatLineLogger, REDACT_PATHS, redactSecretKeys, redactUrl } from '../../src/log.js';

const SECRET = 'S3CRET-value-never-logged';

function capture(): { stream: Writable; lines: string[] } {
  const lines: string[] = [];
  const stream = new Writable({
    write(chunk: Buffer, _enc, cb) {
      for (const l of chunk.toString().split('\n')) if (l !== '') lines.push(l);
      cb();
    },
  });
  return { stream, lines };
}

/** pino with the original wildcard paths: the reference output. */
function referenceLogger(stream: Writable): Logger {
  const ours = createLogger({ destination: capture().stream });
  return pino(
    {
      level: 'info',
      base: { pid: process.pid },
      redact: { paths: REDACT_PATHS, censor: CENSOR },
      // The same serializers as the root logger (err, req).
      serializers: (ours as unknown as { [k: symbol]: Record<string, (v: unknown) => unknown> })[pino.symbols.serializersSym] ?? {},
    },
    stream,
  );
}

const withoutTime = (line: string) => line.replace(/"time":\d+,/, '');

class WithToJson {
  constructor(private readonly secret: string) {}
  toJSON() {
    return { kind: 'custom', token: this.secret };
  }
}

const CASES: unknown[] = [
  { token: SECRET },
  { a: { token: SECRET, other: 1 } },
  { a: { b: { password: SECRET, ok: true } } },
  { a: { b: { c: { key: 'deep-enough-to-show' } } } },
  { list: [{ secret: SECRET }, { fine: 1 }, 'str', null, 7] },
  { list: [[{ key: SECRET }]] },
  { a: { authorization: undefined, cookie: null, csr: { nested: SECRET } } },
  { err: Object.assign(new Error('boom'), { token: SECRET, code: 'E1' }) },
  { error: Object.assign(new Error('plain'), { detail: { privateKey: SECRET } }) },
  { req: { method: 'GET', url: `/x?t=${SECRET}`, id: 'r1', ip: '127.0.0.1' } },
  { res: { statusCode: 200, headers: { 'set-cookie': SECRET, token: SECRET } } },
  { custom: new WithToJson(SECRET), date: new Date(0) },
  { n: 1.5, b: false, s: 'text "quoted"\n', nan: Number.NaN, nil: null, undef: undefined },
  { a: { tokenSecret: SECRET, accessToken: SECRET, privateKeyPem: SECRET, keys: ['key'] } },
  { map: new Map([['token', SECRET]]), set: new Set([SECRET]) },
  { proto: Object.create({ token: 'inherited' }) as object },
  {},
];

/** Random trees over a key pool with secret keys in it, up to 5 levels deep. */
function randomTree(rand: () => number, depth: number): unknown {
  const pool = ['token', 'key', 'a', 'b', 'items', 'password', 'x', 'cookie', 'data', 'csr', '0', 'secret'];
  const r = rand();
  if (depth === 0 || r < 0.25) {
    const leaves = [SECRET, 42, true, null, 'plain', undefined];
    return leaves[Math.floor(rand() * leaves.length)];
  }
  if (r < 0.4) return Array.from({ length: Math.floor(rand() * 4) }, () => randomTree(rand, depth - 1));
  const o: Record<string, unknown> = {};
  const n = Math.floor(rand() * 5);
  for (let i = 0; i < n; i++) o[pool[Math.floor(rand() * pool.length)] as string] = randomTree(rand, depth - 1);
  return o;
}

function mulberry32(seed: number): () => number {
  let a = seed;
  return () => {
    a = (a + 0x6d2b79f5) | 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function both(fn: (log: Logger) => void): { ours: string[]; ref: string[] } {
  const a = capture();
  const b = capture();
  fn(createLogger({ destination: a.stream }));
  fn(referenceLogger(b.stream));
  return { ours: a.lines.map(withoutTime), ref: b.lines.map(withoutTime) };
}

describe('root logger redaction', () => {
  it('redacts a secret key at depth 1, 2 and 3, in headers and in URLs', () => {
    const { stream, lines } = capture();
    const log = createLogger({ destination: stream });
    log.info({ token: SECRET, a: { password: SECRET }, b: { c: { key: SECRET } }, req: { url: `/v1?token=${SECRET}`, method: 'GET' } }, 'm');
    log.info({ res: { statusCode: 200, headers: { 'set-cookie': SECRET, etag: '"1"' } } }, 'h');
    log.child({ secret: SECRET, ctx: { privateKey: SECRET } }).info('bound');
    log.info('interpolated %j %o', { token: SECRET }, { a: { key: SECRET } });
    assert.equal(lines.length, 4);
    for (const l of lines) assert.ok(!l.includes(SECRET), `a secret leaked: ${l}`);
    assert.ok(lines.every((l) => l.includes(CENSOR)));
    assert.equal(JSON.parse(lines[0] as string).b.c.key, CENSOR);
    assert.equal(JSON.parse(lines[1] as string).res.headers['set-cookie'], CENSOR);
  });

  it('writes exactly what pino with the wildcard paths writes (hand-written cases)', () => {
    for (const obj of CASES) {
      const { ours, ref } = both((log) => {
        log.info(obj as object, 'case');
        log.child({ ctx: obj }).warn('child');
        log.child({ module: 'x' }).child(obj as object).info({ more: obj }, 'nested child');
        log.info('fmt %j %o', obj as object, obj as object);
      });
      assert.deepEqual(ours, ref, `same output for ${ref[0]}`);
    }
  });

  it('writes exactly what pino with the wildcard paths writes (2,000 random objects)', () => {
    const rand = mulberry32(9);
    for (let i = 0; i < 2000; i++) {
      const obj = { top: randomTree(rand, 5), other: randomTree(rand, 4), token: i % 7 === 0 ? SECRET : undefined };
      const { ours, ref } = both((log) => {
        log.info(obj, 'random');
        log.child({ b: obj.top }).info('bound');
      });
      assert.deepEqual(ours, ref);
    }
  });

  it('logs a Buffer below the top level (pino wildcard redaction threw on one)', () => {
    const { stream, lines } = capture();
    createLogger({ destination: stream }).info({ a: { buf: Buffer.from('abc'), token: SECRET } }, 'buf');
    assert.equal(lines.length, 1);
    assert.deepEqual(JSON.parse(lines[0] as string).a, { buf: { type: 'Buffer', data: [97, 98, 99] }, token: CENSOR });
  });

  it('never changes the logged object', () => {
    const obj = { a: { token: SECRET, list: [{ key: SECRET }] } };
    const before = JSON.stringify(obj);
    createLogger({ destination: capture().stream }).info(obj, 'x');
    assert.equal(JSON.stringify(obj), before);
    assert.equal(redactSecretKeys({ a: 1, b: { c: 2 } }, 2) !== null, true);
    const clean = { a: { b: 1 } };
    assert.equal(redactSecretKeys(clean, 3), clean, 'nothing to redact: the same object, no copy');
  });

  it('the flat-line child (access lines) redacts top-level secret keys and URL secrets', () => {
    const { stream, lines } = capture();
    const access = flatLineLogger(createLogger({ destination: stream }));
    access.info({ reqId: 'r', url: redactUrl(`/v1/devices?t=${SECRET}&x=1`), token: SECRET }, 'request completed');
    assert.equal(lines.length, 1);
    assert.ok(!lines[0]?.includes(SECRET));
    assert.equal(JSON.parse(lines[0] as string).url, '/v1/devices?t=[Redacted]&x=1');
  });
});
