/**
 * The load generator's building blocks: its payloads are valid telemetry of their device types
 * (checked by the gateway's own codecs), the stamp round-trips, the lean HTTP client parses and
 * pipelines against a real server, and CoAP request templates are well-formed.
 */
import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { test } from 'node:test';
import { parse } from 'coap-packet';
import { SchemaRegistry } from '../../src/codecs/registry.js';
import { BUNDLED_SCHEMAS_DIR } from '../../src/package-info.js';
import { payloadTemplate, PAYLOAD_BYTES, readStamp, stamp, type PayloadKind } from '../../bench/lib/payloads.js';
import { encodeRequest, HttpPool, parseResponse } from '../../bench/lib/http-client.js';
import { peekHeader, requestTemplate } from '../../bench/lib/coap-client.js';

test('each payload is 100 bytes, valid telemetry of its type, and keeps a stamp', async () => {
  const registry = await SchemaRegistry.load(BUNDLED_SCHEMAS_DIR, { maxBytes: 65_536, maxDepth: 16 });
  for (const kind of ['generic', 'tracker', 'thermostat'] as PayloadKind[]) {
    const tpl = payloadTemplate(kind);
    assert.equal(tpl.bytes.length, PAYLOAD_BYTES, kind);
    const b = Buffer.concat([Buffer.alloc(7), tpl.bytes]);
    stamp(b, 7, tpl.markOffset, 4321, 9_876_543_210_123_456);
    assert.deepEqual(readStamp(b, 7, tpl.markOffset), { sender: 4321, us: 9_876_543_210_123_456 });
    const decoded = registry.get(kind)?.decodeTelemetry(b.subarray(7));
    assert.equal(decoded?.ok, true, `${kind}: ${JSON.stringify(decoded)}`);
  }
});

test('parseResponse: Content-Length, chunked, no body, incomplete, garbage', () => {
  const one = Buffer.from('HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello');
  assert.deepEqual(parseResponse(one), { response: { status: 200, body: Buffer.from('hello') }, consumed: one.length });
  const chunked = Buffer.from('HTTP/1.1 201 Created\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\nHTTP/1.1');
  const r = parseResponse(chunked);
  assert.ok(r && r !== 'bad');
  assert.equal(r.response.status, 201);
  assert.equal(r.response.body.toString(), 'abcde');
  assert.equal(chunked.subarray(r.consumed).toString(), 'HTTP/1.1');
  const empty = parseResponse(Buffer.from('HTTP/1.1 204 No Content\r\n\r\n'));
  assert.ok(empty && empty !== 'bad');
  assert.equal(empty.response.body.length, 0);
  assert.equal(parseResponse(one.subarray(0, one.length - 1)), null);
  assert.equal(parseResponse(Buffer.from('SSH-2.0\r\n\r\n')), 'bad');
});

test('HttpPool pipelines requests on keep-alive connections and answers each in order', async (t) => {
  let connections = 0;
  const server: Server = createServer((req, res) => {
    res.setHeader('content-type', 'application/json');
    res.end(JSON.stringify({ path: req.url, auth: req.headers.authorization ?? null }));
  });
  server.on('connection', () => connections++);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.after(() => server.close());
  const port = (server.address() as AddressInfo).port;
  const pool = new HttpPool('127.0.0.1', port, 2, 8);
  await pool.open();
  t.after(() => pool.close());
  const raws = Array.from({ length: 50 }, (_, i) => encodeRequest(`127.0.0.1:${port}`, { method: 'GET', path: `/r/${i}`, headers: { authorization: 'Bearer x' } }));
  const answers = await Promise.all(raws.map((raw) => pool.request(raw)));
  answers.forEach((a, i) => {
    assert.equal(a.status, 200);
    assert.deepEqual(JSON.parse(a.body.toString()), { path: `/r/${i}`, auth: 'Bearer x' });
  });
  assert.equal(connections, 2);
});

test('a CoAP request template is a well-formed CON POST with a patchable id, token and payload', () => {
  const payload = Buffer.from('{"a":1}');
  const tpl = requestTemplate({ method: 'POST', path: 'telemetry', query: ['t=abc'], contentFormat: 50, payload });
  const b = Buffer.from(tpl.bytes);
  b.writeUInt16BE(0xbeef, 2);
  b.writeUInt32BE(0xdeadbeef, 4);
  const p = parse(b);
  assert.equal(p.code, '0.02');
  assert.equal(p.confirmable, true);
  assert.equal(p.messageId, 0xbeef);
  assert.equal(p.token.toString('hex'), 'deadbeef');
  assert.ok(p.payload.equals(payload));
  assert.deepEqual(
    p.options.map((o) => [o.name, o.value.toString('latin1')]),
    [
      ['Uri-Path', 'telemetry'],
      ['Content-Format', '2'],
      ['Uri-Query', 't=abc'],
    ],
  );
  assert.deepEqual(peekHeader(b), { type: 0, code: 2, messageId: 0xbeef, token: 0xdeadbeef });
  assert.equal(b.subarray(tpl.payloadOffset).toString(), '{"a":1}');
});
