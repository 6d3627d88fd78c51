/**
 * The CoAP fast path's parser and encoder (protocols/coap/fast-telemetry.ts, reply.ts) against
 * what the full path does with the same bytes: coap-packet's parse, the `coap` package's
 * IncomingMessage (its URL and headers) and the gateway's own reading of them (splitUrl,
 * encodingOf). The fast path may refuse anything, but what it accepts it must read exactly as the
 * full path would; and the ACK it encodes must be the datagram the package would send.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { IncomingMessage } from 'coap';
import { generate, parse, type Packet, type ParsedPacket } from 'coap-packet';
import fc from 'fast-check';
import { encodingOf } from '../../protocols/coap/content-format.js';
import { parseFastTelemetry, rateLimitAnswer, telemetryAnswer } from '../../protocols/coap/fast-telemetry.js';
import { encodePiggybacked, uintOption, type Answer } from '../../protocols/coap/reply.js';
import { splitUrl } from '../../protocols/coap/server.js';

type Option = { name: string; value: Buffer };

const uriPath = (s: string): Option => ({ name: 'Uri-Path', value: Buffer.from(s) });
const uriQuery = (s: string | Buffer): Option => ({ name: 'Uri-Query', value: Buffer.isBuffer(s) ? s : Buffer.from(s) });
const format = (...bytes: number[]): Option => ({ name: 'Content-Format', value: Buffer.from(bytes) });

function datagram(p: Partial<Packet> & { options?: Option[] }): Buffer {
  return generate({ code: '0.02', confirmable: true, messageId: 4711, token: Buffer.from([1, 2, 3, 4]), payload: Buffer.from('{"a":1}'), ...p } as Packet, 65_000);
}

const telemetry = (extra: Option[] = [], p: Partial<Packet> = {}) =>
  datagram({ ...p, options: [uriPath('telemetry'), uriQuery('t=dev.tok-en_1'), format(50), ...extra] });

/** How the full path reads a datagram: null where it is not a CON POST /telemetry with a token. */
function fullPathReading(msg: Buffer) {
  let packet: ParsedPacket;
  try {
    packet = parse(msg);
  } catch {
    return null;
  }
  const blockOrObserve = packet.options.some((o) => o.name === 'Block1' || o.name === 'Block2' || o.name === 'Observe');
  const req = new IncomingMessage(packet as never, { address: '127.0.0.1', port: 1, family: 'IPv4' });
  const { path, query } = splitUrl(req.url);
  return {
    confirmable: packet.confirmable,
    method: req.method,
    messageId: packet.messageId,
    token: packet.token,
    path,
    deviceToken: query.get('t'),
    contentType: encodingOf(req),
    payload: packet.payload,
    blockOrObserve,
  };
}

describe('parseFastTelemetry', () => {
  it('reads a CON POST /telemetry?t= with Content-Format 50, 42 or none', () => {
    for (const [opts, contentType] of [
      [[format(50)], 'json'],
      [[format(42)], 'protobuf'],
      [[], undefined],
    ] as const) {
      const msg = datagram({ options: [uriPath('telemetry'), uriQuery('x=1'), uriQuery('t=abc.def+g=='), ...opts] });
      const r = parseFastTelemetry(msg);
      assert.ok(r, 'accepted');
      assert.deepEqual(
        { messageId: r.messageId, tokenLength: r.tokenLength, deviceToken: r.deviceToken, contentType: r.contentType, payload: r.payload.toString() },
        { messageId: 4711, tokenLength: 4, deviceToken: 'abc.def+g==', contentType, payload: '{"a":1}' },
      );
      const full = fullPathReading(msg);
      assert.equal(full?.deviceToken, r.deviceToken, 'the full path reads the same token');
    }
  });

  it('reads token lengths 0 to 8 and an empty payload', () => {
    for (let n = 0; n <= 8; n++) {
      const r = parseFastTelemetry(telemetry([], { token: Buffer.alloc(n, 7), payload: Buffer.alloc(0) }));
      assert.equal(r?.tokenLength, n);
      assert.equal(r?.payload.length, 0);
    }
  });

  it('leaves everything else to the full path', () => {
    const cases: [string, Buffer][] = [
      ['NON', telemetry([], { confirmable: false })],
      ['GET', telemetry([], { code: '0.01' })],
      ['PUT', telemetry([], { code: '0.03' })],
      ['a 9-byte token', telemetry([], { token: Buffer.alloc(9, 1) })],
      ['Block1', telemetry([{ name: 'Block1', value: Buffer.of(0x02) }])],
      ['Observe', telemetry([{ name: 'Observe', value: Buffer.alloc(0) }])],
      ['Uri-Host', telemetry([{ name: 'Uri-Host', value: Buffer.from('gw') }])],
      ['Accept', telemetry([{ name: 'Accept', value: Buffer.of(50) }])],
      ['Size1', telemetry([{ name: 'Size1', value: Buffer.of(10) }])],
      ['/shadow', datagram({ options: [uriPath('shadow'), uriQuery('t=abc')] })],
      ['/telemetry/x', datagram({ options: [uriPath('telemetry'), uriPath('x'), uriQuery('t=abc')] })],
      ['no Uri-Path', datagram({ options: [uriQuery('t=abc')] })],
      ['Content-Format 0', datagram({ options: [uriPath('telemetry'), uriQuery('t=abc'), format(0)] })],
      ['Content-Format 50 in two bytes', datagram({ options: [uriPath('telemetry'), uriQuery('t=abc'), format(0, 50)] })],
      ['Content-Format empty', datagram({ options: [uriPath('telemetry'), uriQuery('t=abc'), format()] })],
      ['two Content-Formats', datagram({ options: [uriPath('telemetry'), uriQuery('t=abc'), format(50), format(42)] })],
      ['no t=', datagram({ options: [uriPath('telemetry'), uriQuery('x=abc')] })],
      ['an empty t=', datagram({ options: [uriPath('telemetry'), uriQuery('t=')] })],
      ['a bare t', datagram({ options: [uriPath('telemetry'), uriQuery('t')] })],
      ['two t=', datagram({ options: [uriPath('telemetry'), uriQuery('t=abc'), uriQuery('t=def')] })],
      ['percent-encoded', datagram({ options: [uriPath('telemetry'), uriQuery('t=a%62c')] })],
      ["'&' inside a query", datagram({ options: [uriPath('telemetry'), uriQuery('t=abc&t=def')] })],
      ['non-ASCII', datagram({ options: [uriPath('telemetry'), uriQuery(Buffer.from('t=ab\u00e9'))] })],
      ['a space', datagram({ options: [uriPath('telemetry'), uriQuery('t=a b')] })],
      ["a first query starting with '?' (the full path reads it as t=)", datagram({ options: [uriPath('telemetry'), uriQuery('?t=wrong'), uriQuery('t=abc')] })],
      ['shorter than a header', Buffer.of(0x40, 0x02, 0x00)],
      ['version 2', Buffer.concat([Buffer.of(0x80 | 0x04), telemetry().subarray(1)])],
    ];
    for (const [what, msg] of cases) assert.equal(parseFastTelemetry(msg), null, what);
    // Cut inside the options: coap-packet would read a shortened value; the full path decides.
    const whole = telemetry([], { payload: Buffer.alloc(0) });
    for (let cut = 4; cut < whole.length; cut++) {
      const r = parseFastTelemetry(whole.subarray(0, cut));
      assert.equal(r, null, `cut at ${cut} of ${whole.length}`);
    }
  });

  it('accepts only what the full path reads the same way (generated and mutated datagrams)', () => {
    const queryText = fc.stringMatching(/^[t=ax+%&. é?]{0,8}$/);
    const option = fc.oneof(
      fc.constant(uriPath('telemetry')),
      fc.constantFrom('shadow', 'telemetr', '', 'telemetry2').map(uriPath),
      queryText.map((q) => uriQuery(q)),
      fc.constantFrom('t=abc', 't=a.b-c_d+e', 't=', 't').map((q) => uriQuery(q)),
      fc.array(fc.integer({ min: 0, max: 255 }), { maxLength: 3 }).map((b) => format(...b)),
      fc.constantFrom(format(50), format(42)),
      fc.record({ name: fc.constantFrom('Uri-Host', 'Observe', 'Block1', 'Block2', 'Accept', 'Size1', 'If-Match', '2049'), value: fc.uint8Array({ maxLength: 3 }).map((a) => Buffer.from(a)) }),
    );
    const none: fc.Arbitrary<Option[]> = fc.constant([] as Option[]);
    const often = <T>(a: fc.Arbitrary<T>, b: fc.Arbitrary<T>) => fc.oneof({ arbitrary: a, weight: 6 }, { arbitrary: b, weight: 1 });
    const packet = fc.record({
      code: often(fc.constant('0.02'), fc.constantFrom('0.01', '0.03', '2.04')),
      confirmable: often(fc.constant(true), fc.constant(false)),
      ack: fc.boolean(),
      token: fc.uint8Array({ maxLength: 10 }).map((a) => Buffer.from(a)),
      path: often<Option[]>(fc.constant([uriPath('telemetry')] as Option[]), none),
      t: often<Option[]>(fc.constantFrom('t=abc', 't=a.b-c_d+e=').map((q) => [uriQuery(q)]), none),
      extra: often<Option[]>(none, fc.array(option, { maxLength: 3 })),
      payload: fc.uint8Array({ maxLength: 20 }).map((a) => Buffer.from(a)),
      messageId: fc.integer({ min: 0, max: 0xffff }),
    }).map(({ path, t, extra, ...rest }) => ({ ...rest, options: [...path, ...t, ...extra] }));
    const mutation = often(
      fc.constant(null),
      fc.oneof(fc.record({ cut: fc.nat() }), fc.record({ at: fc.nat(), byte: fc.integer({ min: 0, max: 255 }) })),
    );
    let accepted = 0;
    fc.assert(
      fc.property(packet, mutation, (p, m) => {
        let msg: Buffer;
        try {
          msg = generate(p as Packet, 65_000);
        } catch {
          return;
        }
        if (m && 'cut' in m) msg = msg.subarray(0, m.cut % (msg.length + 1));
        else if (m && 'at' in m) {
          msg = Buffer.from(msg);
          msg[m.at % msg.length] = m.byte;
        }
        const fast = parseFastTelemetry(msg);
        if (fast === null) return;
        accepted++;
        const full = fullPathReading(msg);
        assert.ok(full, 'coap-packet parses what the fast path accepted');
        assert.equal(full.confirmable, true);
        assert.equal(full.method, 'POST');
        assert.equal(full.path, '/telemetry');
        assert.equal(full.blockOrObserve, false);
        assert.equal(full.messageId, fast.messageId);
        assert.equal(full.token.length, fast.tokenLength);
        assert.equal(full.deviceToken, fast.deviceToken);
        assert.equal(full.contentType, fast.contentType);
        assert.ok(full.payload.equals(fast.payload), 'the same payload');
      }),
      { numRuns: 5000 },
    );
    assert.ok(accepted > 1000, `enough accepted cases to mean something (${accepted})`);
  });
});

describe('encodePiggybacked', () => {
  const generated = (a: Answer, messageId: number, token: Buffer) =>
    generate({
      code: a.code,
      messageId,
      token,
      ack: true,
      confirmable: false,
      options: a.maxAgeSeconds === undefined ? [] : [{ name: 'Max-Age', value: uintOption(a.maxAgeSeconds) }],
      ...(a.diagnostic !== undefined && { payload: Buffer.from(a.diagnostic) }),
    });

  it('2.04: the ACK header with the request message id and token, nothing else', () => {
    for (const token of [Buffer.alloc(0), Buffer.of(9), Buffer.from('0123456789abcdef', 'hex')]) {
      for (const mid of [0, 1, 0x1234, 0xffff]) {
        const out = encodePiggybacked({ code: '2.04' }, mid, token);
        assert.deepEqual(out, generated({ code: '2.04' }, mid, token));
        const p = parse(out);
        assert.deepEqual([p.ack, p.confirmable, p.code, p.messageId, p.token.toString('hex'), p.options.length, p.payload.length], [true, false, '2.04', mid, token.toString('hex'), 0, 0]);
      }
    }
  });

  it('errors: the diagnostic as payload (512 characters at most), Max-Age as the package encodes it', () => {
    const token = Buffer.of(1, 2);
    for (const a of [
      { code: '4.00', diagnostic: 'invalid JSON: x' },
      { code: '4.29', diagnostic: 'rate limit exceeded: 5 messages per 1m', maxAgeSeconds: 60 },
      { code: '5.03', diagnostic: 'service unavailable; retry later', maxAgeSeconds: 5 },
      { code: '4.29', diagnostic: 'x', maxAgeSeconds: 300 },
    ] satisfies Answer[]) {
      assert.deepEqual(encodePiggybacked(a, 7, token), generated(a, 7, token), a.code);
    }
    const long = parse(encodePiggybacked({ code: '4.00', diagnostic: 'y'.repeat(600) }, 7, token));
    assert.equal(long.payload.length, 512);
    assert.deepEqual(uintOption(300), Buffer.of(1, 44));
    assert.deepEqual(uintOption(0), Buffer.alloc(0));
  });
});

describe('answers', () => {
  it('telemetry outcomes map to the contract codes, the reason prefixed with its path', () => {
    const rejected = (code: 'undecodable' | 'schema_violation' | 'too_large' | 'unsupported_content_type', message: string, path?: string) =>
      telemetryAnswer({ ok: false, error: { code, message, ...(path !== undefined && { path }) } });
    assert.deepEqual(telemetryAnswer({ ok: true, record: {} as never }), { code: '2.04' });
    assert.deepEqual(rejected('too_large', 'too big'), { code: '4.13', diagnostic: 'too big' });
    assert.deepEqual(rejected('unsupported_content_type', 'no proto'), { code: '4.15', diagnostic: 'no proto' });
    assert.deepEqual(rejected('schema_violation', 'must be <= 90', '/lat'), { code: '4.00', diagnostic: '/lat: must be <= 90' });
    assert.deepEqual(rejected('schema_violation', '/lat must be <= 90', '/lat'), { code: '4.00', diagnostic: '/lat must be <= 90' });
    assert.deepEqual(rejected('undecodable', 'invalid JSON'), { code: '4.00', diagnostic: 'invalid JSON' });
  });

  it('a rate-limit refusal is 4.29 with Max-Age in whole seconds, at least 1', () => {
    const refusal = { limit: '5 messages per 1m', window: '1m', max: 5, windowMs: 60_000 };
    assert.deepEqual(rateLimitAnswer({ ...refusal, retryAfterMs: 1 }), { code: '4.29', diagnostic: 'rate limit exceeded: 5 messages per 1m', maxAgeSeconds: 1 });
    assert.equal(rateLimitAnswer({ ...refusal, retryAfterMs: 59_001 }).maxAgeSeconds, 60);
  });
});
