/**
 * The CoAP fast path (protocols/coap/fast-telemetry.ts) end to end on real UDP sockets: a CON
 * `POST /telemetry?t=` is answered in front of the `coap` package, and nothing a device can see may
 * differ from the full path — the same codes, options and diagnostics, the same answer to a
 * retransmission and no second ingest (RFC 7252 §4.5), and every request the fast path does not
 * take (other options, NON, Block1, malformed bytes) still handled by the full path.
 *
 * Which path a datagram takes is decided by parseFastTelemetry alone, so each case asserts that
 * decision first: the comparisons below then really pit one path against the other.
 * With a Redis store the pipeline answers asynchronously and the fast path hands the request to
 * the package (its 50 ms piggyback timer applies): tested at the end, against a real redis-server.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { connect as tcpConnect } from 'node:net';
import { generate, parse, type Packet } from 'coap-packet';
import { parseFastTelemetry } from '../../protocols/coap/fast-telemetry.js';
import { call, metric } from '../helpers/http.js';
import { build, suiteGateway, type Teardown, type TestGateway } from '../helpers/gateway.js';
import { registerDevice, type Device } from '../helpers/mqtt.js';
import { RawCoap, type Received } from '../helpers/coap-raw.js';
import { startRedis } from '../helpers/redis.js';

const TELEMETRY_LIMIT = 1024;
const gateway = suiteGateway({ IOTGATE_LIMITS_TELEMETRY_BYTES: String(TELEMETRY_LIMIT) });

let seq = 0;
const uid = (name: string): string => `coapfast-${name}-${++seq}`;

type Option = { name: string; value: Buffer };


const uriPath = (s: string): Option => ({ name: 'Uri-Path', value: Buffer.from(s) });
const uriQuery = (s: string): Option => ({ name: 'Uri-Query', value: Buffer.from(s) });

/** A telemetry request datagram: CON unless told, a fresh message id and token. */
function telemetryDatagram(client: RawCoap, d: Pick<Device, 'token'>, body: Buffer | string, opts: { format?: number | null; extra?: Option[]; packet?: Partial<Packet> } = {}): Buffer {
  const format = opts.format === undefined ? 50 : opts.format;
  return generate(
    {
      code: '0.02',
      confirmable: true,
      messageId: client.nextMessageId(),
      token: randomBytes(4),
      options: [uriPath('telemetry'), uriQuery(`t=${d.token}`), ...(format === null ? [] : [{ name: 'Content-Format', value: Buffer.of(format) }]), ...(opts.extra ?? [])],
      payload: Buffer.isBuffer(body) ? body : Buffer.from(body),
      ...opts.packet,
    } as Packet,
    65_000,
  );
}

/** Uri-Host is ignored by the gateway, but the fast path leaves any option it does not read to the full path. */
const FULL_PATH = [{ name: 'Uri-Host', value: Buffer.from('127.0.0.1') }];

async function serviceToken(gw: TestGateway): Promise<string> {
  return gw.token('telemetry:read devices:read');
}

async function storedCount(gw: TestGateway, id: string): Promise<number> {
  const res = await call(gw.url, 'GET', `/v1/devices/${id}/telemetry?limit=1000`, { token: await serviceToken(gw) });
  assert.equal(res.status, 200, res.text);
  return (res.body.items as unknown[]).length;
}

/** What a device sees of a response, without the message id and token (they differ per request). */
function seen(p: Received) {
  return { type: p.ack ? 'ACK' : p.confirmable ? 'CON' : p.reset ? 'RST' : 'NON', code: p.code, options: p.options.map((o) => `${o.name}=${o.value.toString('hex')}`), payload: p.payload.toString('utf8') };
}

// =============================================================================================

test('40 CON telemetry requests, each sent twice: the retransmission gets the same datagram, and each is stored once', async (t) => {
  const gw = gateway();
  const d = await registerDevice(gw, uid('dedup'));
  const client = await RawCoap.open(t, gw.ports.coap);
  const datagrams = Array.from({ length: 40 }, (_, i) => telemetryDatagram(client, d, JSON.stringify({ i })));
  assert.ok(datagrams.every((g) => parseFastTelemetry(g) !== null), 'the fast path takes them');
  const acceptedBefore = await metric(gw, 'iotgate_telemetry_accepted_total{protocol="coap"}');

  const first = await Promise.all(datagrams.map((g, i) => client.exchange(g, `request ${i}`)));
  const again = await Promise.all(datagrams.map((g, i) => client.exchange(g, `retransmission ${i}`)));
  for (const [i, g] of datagrams.entries()) {
    const req = parse(g);
    const r = first[i] as Received;
    assert.deepEqual([r.ack, r.code, r.messageId, r.token.toString('hex'), r.options.length, r.payload.length], [true, '2.04', req.messageId, req.token.toString('hex'), 0, 0], `response ${i}`);
    assert.deepEqual((again[i] as Received).raw, r.raw, `retransmission ${i}: byte for byte`);
  }
  assert.equal(await storedCount(gw, d.id), 40, 'stored once each');
  assert.equal((await metric(gw, 'iotgate_telemetry_accepted_total{protocol="coap"}')) - acceptedBefore, 40, 'accepted once each');
});

test('the fast path answers as the full path does: codes, options and diagnostics of every telemetry outcome', async (t) => {
  const gw = gateway();
  const d = await registerDevice(gw, uid('same'));
  const client = await RawCoap.open(t, gw.ports.coap);
  const cases: [string, Buffer | string, number | null][] = [
    ['JSON accepted', '{"temp":21.5}', 50],
    ['no Content-Format: the type decides', '{"temp":21.5}', null],
    ['invalid JSON', '{"temp":21.5', 50],
    ['a JSON array', '[1,2]', 50],
    ['an empty body', '', 50],
    ['protobuf for a type without a .proto', Buffer.of(8, 1), 42],
    ['over limits.telemetryBytes', JSON.stringify({ pad: 'x'.repeat(TELEMETRY_LIMIT) }), 50],
  ];
  let accepted = 0;
  for (const [what, body, format] of cases) {
    const fastDatagram = telemetryDatagram(client, d, body, { format });
    const fullDatagram = telemetryDatagram(client, d, body, { format, extra: FULL_PATH });
    assert.notEqual(parseFastTelemetry(fastDatagram), null, `${what}: the fast path takes it`);
    assert.equal(parseFastTelemetry(fullDatagram), null, `${what}: the full path takes it`);
    const fast = await client.exchange(fastDatagram, `${what} (fast path)`);
    const full = await client.exchange(fullDatagram, `${what} (full path)`);
    assert.deepEqual(seen(fast), seen(full), what);
    assert.equal(fast.messageId, parse(fastDatagram).messageId, `${what}: piggybacked on the ACK`);
    if (fast.code === '2.04') accepted += 2;
    else assert.notEqual(fast.payload.length, 0, `${what}: a diagnostic`);
  }
  assert.equal(accepted, 4);
  assert.equal(await storedCount(gw, d.id), accepted, 'only the accepted ones are stored, by either path');
});

test('a token the gateway does not accept, and the rate limit: the same answers on both paths', async (t) => {
  const gw = await build(t, { IOTGATE_LIMITS_DEVICE_MESSAGES: '[{"limit":4,"windowMs":60000}]' });
  const d = await registerDevice(gw, uid('limited'));
  const client = await RawCoap.open(t, gw.ports.coap);
  const stranger = { token: `${d.token.slice(0, -4)}AAAA` };
  const bad = await client.exchange(telemetryDatagram(client, stranger, '{}'), 'a wrong token');
  assert.deepEqual(seen(bad), { type: 'ACK', code: '4.01', options: [], payload: 'the device token is invalid or revoked' });

  for (let i = 0; i < 2; i++) assert.equal((await client.exchange(telemetryDatagram(client, d, '{"a":1}'), `fast ${i}`)).code, '2.04');
  for (let i = 0; i < 2; i++) assert.equal((await client.exchange(telemetryDatagram(client, d, '{"a":1}', { extra: FULL_PATH }), `full ${i}`)).code, '2.04');
  const refusedBefore = await metric(gw, 'iotgate_coap_dropped_total{reason="rate_limited"}');
  const fastDatagram = telemetryDatagram(client, d, '{"a":1}');
  const fast = await client.exchange(fastDatagram, 'the 5th message (fast path)');
  const full = await client.exchange(telemetryDatagram(client, d, '{"a":1}', { extra: FULL_PATH }), 'the 6th message (full path)');
  assert.equal(fast.code, '4.29');
  assert.match(fast.payload.toString(), /rate limit exceeded: 4 messages per 1m/);
  assert.deepEqual(seen(fast).options.map((o) => o.split('=')[0]), ['Max-Age']);
  assert.deepEqual({ ...seen(fast), options: [] }, { ...seen(full), options: [] });
  assert.equal((await metric(gw, 'iotgate_coap_dropped_total{reason="rate_limited"}')) - refusedBefore, 2, 'both counted');
  // Its retransmission is answered from the cache (not refused again, not counted again).
  assert.deepEqual((await client.exchange(fastDatagram, 'the 4.29 retransmitted')).raw, fast.raw);
  assert.equal((await metric(gw, 'iotgate_coap_dropped_total{reason="rate_limited"}')) - refusedBefore, 2, 'the retransmission is not counted');
  assert.equal(await storedCount(gw, d.id), 4);
  assert.equal(await metric(gw, 'iotgate_coap_requests_total{resource="telemetry",code="2.04"}'), 4, 'every answer counted once, whichever path');
});

test('requests the fast path leaves to the full path: NON, Block1, a 9-byte token, a second Uri-Path', async (t) => {
  const gw = gateway();
  const d = await registerDevice(gw, uid('full'));
  const client = await RawCoap.open(t, gw.ports.coap);

  const non = telemetryDatagram(client, d, '{"kind":"non"}', { packet: { confirmable: false } });
  assert.equal(parseFastTelemetry(non), null);
  const nonReply = await client.exchange(non, 'NON');
  assert.deepEqual([nonReply.ack, nonReply.confirmable, nonReply.code], [false, false, '2.04'], 'a NON 2.04');

  const block = telemetryDatagram(client, d, '{"kind":"block1"}', { extra: [{ name: 'Block1', value: Buffer.of(0x02) }] }); // NUM 0, last, 64 bytes
  assert.equal(parseFastTelemetry(block), null);
  assert.equal((await client.exchange(block, 'Block1 in one block')).code, '2.04');

  const longToken = telemetryDatagram(client, d, '{"kind":"token9"}', { packet: { token: randomBytes(9) } });
  assert.equal(parseFastTelemetry(longToken), null);
  const longReply = await client.exchange(longToken, '9-byte token');
  assert.deepEqual([longReply.ack, longReply.code, longReply.token.equals(parse(longToken).token)], [true, '2.04', true]);

  const nested = generate({ code: '0.02', confirmable: true, messageId: client.nextMessageId(), token: randomBytes(4), options: [uriPath('telemetry'), uriPath('x'), uriQuery(`t=${d.token}`)] as never, payload: Buffer.from('{}') });
  assert.equal(parseFastTelemetry(nested), null);
  assert.equal((await client.exchange(nested, '/telemetry/x')).code, '4.04');

  assert.equal(await storedCount(gw, d.id), 3);
});

test('malformed datagrams shaped like telemetry requests get what the full path gives them', async (t) => {
  const gw = gateway();
  const d = await registerDevice(gw, uid('malformed'));
  const client = await RawCoap.open(t, gw.ports.coap);
  const malformed = 'iotgate_coap_dropped_total{reason="malformed"}';
  const before = await metric(gw, malformed);

  // The last option (the token's Uri-Query... here Content-Format is last, so drop it) claims more
  // bytes than there are: coap-packet reads a shortened value, so the full path sees a cut token.
  const whole = telemetryDatagram(client, d, '', { format: null });
  const cut = whole.subarray(0, whole.length - 3);
  assert.equal(parseFastTelemetry(cut), null);
  const cutReply = await client.exchange(cut, 'a cut token');
  assert.deepEqual(seen(cutReply), { type: 'ACK', code: '4.01', options: [], payload: 'the device token is invalid or revoked' });

  // Option delta 15 right after the token: not CoAP; dropped and counted, no answer.
  const head = telemetryDatagram(client, d, '{}');
  const bad = Buffer.concat([head.subarray(0, 8), Buffer.of(0xf1, 0x00)]);
  assert.equal(parseFastTelemetry(bad), null);
  client.sendRaw(bad);
  // Three bytes: shorter than the header.
  client.sendRaw(head.subarray(0, 3));
  const control = await client.exchange(telemetryDatagram(client, d, '{"after":true}'), 'a request after them');
  assert.equal(control.code, '2.04');
  assert.equal((await metric(gw, malformed)) - before, 2, 'both counted as malformed');
  assert.equal(client.received.filter((p) => p.token.equals(parse(head).token)).length, 0, 'no answer to the bad one');
  assert.equal(await storedCount(gw, d.id), 1);
});

// =============================================================================================
// An asynchronous store (Redis): the fast path hands the request to the package

/** Sends one command to redis-server on a raw connection and resolves its first reply line. */
function redisCommand(port: number, ...args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    const sock = tcpConnect({ host: '127.0.0.1', port });
    sock.once('error', reject);
    sock.once('connect', () => sock.write(`*${args.length}\r\n${args.map((a) => `$${Buffer.byteLength(a)}\r\n${a}\r\n`).join('')}`));
    sock.once('data', (b) => {
      sock.destroy();
      resolve(b.toString('utf8').split('\r\n')[0] ?? '');
    });
  });
}

test('Redis store: piggybacked 2.04, a retransmission while the first is in the pipeline is not ingested twice; a slow store gets an empty ACK, then a separate CON 2.04', async (t) => {
  const redis = await startRedis(t);
  if (!redis) return;
  const gw = await build(t, { IOTGATE_REDIS_URL: redis.url });
  const d = await registerDevice(gw, uid('redis'));
  const client = await RawCoap.open(t, gw.ports.coap);

  // The very same datagram twice in a row: the second arrives while the first is being stored.
  const datagram = telemetryDatagram(client, d, '{"n":1}');
  assert.notEqual(parseFastTelemetry(datagram), null);
  const { token, messageId } = parse(datagram);
  const from = client.received.length;
  client.sendRaw(datagram);
  client.sendRaw(datagram);
  const first = await client.waitFor((p) => p.token.equals(token), 'the response', { from });
  assert.deepEqual([first.ack, first.code, first.messageId], [true, '2.04', messageId]);
  const again = await client.exchange(datagram, 'a later retransmission');
  assert.deepEqual(again.raw, first.raw, 'answered from the cache');
  assert.equal(await storedCount(gw, d.id), 1, 'stored once');

  // Redis holds writes for 400 ms: the package's piggyback timer (50 ms) sends an empty ACK, the
  // 2.04 follows as a separate CON response (contract: "a separate CON response when the work
  // takes longer than 50 ms"); a retransmission in between gets the empty ACK again.
  assert.equal(await redisCommand(redis.port, 'CLIENT', 'PAUSE', '400', 'WRITE'), '+OK');
  const slow = telemetryDatagram(client, d, '{"n":2}');
  const slowReq = parse(slow);
  const mark = client.received.length;
  client.sendRaw(slow);
  const emptyAck = await client.waitFor((p) => p.code === '0.00' && p.ack && p.messageId === slowReq.messageId, 'the empty ACK', { from: mark });
  client.sendRaw(slow);
  const emptyAgain = await client.waitFor((p) => p.code === '0.00' && p.ack && p.messageId === slowReq.messageId, 'the empty ACK again', { from: mark, nth: 1 });
  assert.deepEqual(emptyAgain.raw, emptyAck.raw);
  const separate = await client.waitFor((p) => p.token.equals(slowReq.token) && p.code !== '0.00', 'the separate response', { from: mark });
  assert.deepEqual([separate.confirmable, separate.ack, separate.code], [true, false, '2.04']);
  assert.notEqual(separate.messageId, slowReq.messageId, 'a message id of its own');
  assert.equal(client.received.slice(mark).filter((p) => p.token.equals(slowReq.token) && p.code === '2.04').length, 1, 'one response');
  assert.equal(await storedCount(gw, d.id), 2, 'stored once');
});
