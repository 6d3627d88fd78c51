/**
 * End to end (issue 4 "Done when"): JSON telemetry published over MQTT by a real device appears as a
 * CloudEvent on the SSE stream and at a real HTTP receiver configured as a webhook upstream; the
 * receiver answers 500 at first and gets the same event again until it answers 200.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type IncomingMessage } from 'node:http';
import type { AddressInfo } from 'node:net';
import { connectAsync } from 'mqtt';
import { build } from '../helpers/gateway.js';
import { deviceLogin, registerDevice, withDeadline } from '../helpers/mqtt.js';
import { openEvents } from '../helpers/sse.js';
import { requireTool } from '../helpers/tools.js';

interface Received {
  contentType: string | undefined;
  event: { id: string; type: string; source: string; specversion: string; data: { deviceId: string; data: Record<string, unknown> } };
}

test('MQTT telemetry → SSE and a webhook receiver (after two 500s), as one CloudEvent', async (t) => {
  if (!requireTool(t, 'openssl')) return;
  const received: Received[] = [];
  let failuresLeft = 2;
  let resolveDelivered: () => void = () => undefined;
  const delivered = new Promise<void>((r) => (resolveDelivered = r));
  const receiver = createServer((req: IncomingMessage, res) => {
    let body = '';
    req.on('data', (c: Buffer) => (body += c.toString()));
    req.on('end', () => {
      received.push({ contentType: req.headers['content-type'], event: JSON.parse(body) as Received['event'] });
      if (failuresLeft-- > 0) {
        res.writeHead(500).end();
        return;
      }
      res.writeHead(200).end();
      resolveDelivered();
    });
  });
  await new Promise<void>((r) => receiver.listen(0, '127.0.0.1', r));
  t.after(() => new Promise<void>((r) => receiver.close(() => r())));
  const port = (receiver.address() as AddressInfo).port;

  const gw = await build(t, {
    IOTGATE_UPSTREAMS: JSON.stringify([{ name: 'receiver', url: `http://127.0.0.1:${port}/hook`, types: ['iotgate.telemetry'], maxAttempts: 5 }]),
  });
  const device = await registerDevice(gw, 'e2e-1');
  const sse = await openEvents(t, gw, 'types=iotgate.telemetry&devices=e2e-1', await gw.token('telemetry:read'));

  const client = await connectAsync(`mqtt://127.0.0.1:${gw.ports.mqtt}`, { ...deviceLogin(device), reconnectPeriod: 0 }, false);
  t.after(() => client.endAsync(true));
  await client.publishAsync('devices/e2e-1/telemetry', JSON.stringify({ temp: 21.5, ts: 1_795_000_000_000 }), { qos: 1 });

  const onSse = await sse.next((e) => e.event === 'iotgate.telemetry', 'the telemetry CloudEvent on SSE');
  const cloudEvent = onSse.data as Received['event'];
  assert.equal(cloudEvent.specversion, '1.0');
  assert.equal(cloudEvent.type, 'iotgate.telemetry');
  assert.equal(cloudEvent.source, '/devices/e2e-1');
  assert.equal(cloudEvent.data.deviceId, 'e2e-1');
  assert.deepEqual(cloudEvent.data.data, { temp: 21.5, ts: 1_795_000_000_000 });

  await withDeadline(delivered, 15_000, 'the webhook delivery after two failures');
  assert.equal(received.length, 3, 'two failed attempts, then the successful one');
  for (const r of received) {
    assert.match(r.contentType ?? '', /^application\/cloudevents\+json/);
    assert.equal(r.event.id, cloudEvent.id, 'the same CloudEvent id on every retry and on SSE');
    assert.deepEqual(r.event.data.data, { temp: 21.5, ts: 1_795_000_000_000 });
  }

  const history = await fetch(`${gw.url}/v1/devices/e2e-1/telemetry`, { headers: { authorization: `Bearer ${await gw.token('telemetry:read')}` } });
  const items = ((await history.json()) as { items: { id: string }[] }).items;
  assert.deepEqual(items.map((i) => i.id), [cloudEvent.id], 'stored once, with the id the events carry');
});
