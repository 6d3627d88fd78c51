/**
 * The event hub: bus events become CloudEvents with monotonic sequence numbers, filters, replay
 * after a sequence number, gaps when the buffer overflowed, and fan-out that survives a throwing
 * subscriber.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { EventBus } from '../../src/core/events.js';
import { EventHub, type EventGap } from '../../src/core/event-hub.js';
import { CLOUD_EVENT_TYPES, toCloudEvent, type CloudEvent } from '../../src/core/cloudevents.js';
import type { TelemetryRecord } from '../../src/core/model.js';

function record(deviceId: string, n: number): TelemetryRecord {
  return { id: `rec-${deviceId}-${n}`, deviceId, type: 'generic', protocol: 'mqtt', receivedAt: 1_700_000_000_000 + n, deviceTime: null, data: { n } };
}

function hub(bufferSize = 100): { bus: EventBus; hub: EventHub } {
  const bus = new EventBus();
  return { bus, hub: new EventHub(bus, { bufferSize, seqBase: 0 }) };
}

type Got = { seq: number; event: CloudEvent };

describe('cloudevents', () => {
  it('wraps telemetry with the record id, receivedAt and /devices/{id}', () => {
    const r = record('d1', 1);
    const e = toCloudEvent('iotgate.telemetry', 'd1', r);
    assert.deepEqual(e, {
      specversion: '1.0',
      id: r.id,
      source: '/devices/d1',
      type: 'iotgate.telemetry',
      subject: 'd1',
      time: new Date(r.receivedAt).toISOString(),
      datacontenttype: 'application/json',
      data: r,
    });
    const other = toCloudEvent('iotgate.shadow.updated', 'd1', { version: 1 }, { time: 0 });
    assert.match(other.id, /^[0-9a-f-]{36}$/);
    assert.equal(other.time, '1970-01-01T00:00:00.000Z');
    assert.equal(CLOUD_EVENT_TYPES.length, 6);
  });
});

describe('EventHub', () => {
  it('turns bus events into CloudEvents with increasing sequence numbers, in order', (t) => {
    const { bus, hub: h } = hub();
    t.after(() => h.close());
    const got: Got[] = [];
    h.subscribe({}, (seq, event) => got.push({ seq, event }));
    bus.emit('telemetry', record('d1', 1));
    bus.emit('device.connected', { deviceId: 'd1', protocol: 'mqtt', online: true, reason: 'connected', at: 1000, version: 1 });
    bus.emit('device.disconnected', { deviceId: 'd1', protocol: 'mqtt', online: false, reason: 'client_disconnect', at: 2000, version: 2 });
    assert.deepEqual(got.map((g) => g.seq), [1, 2, 3]);
    assert.deepEqual(got.map((g) => g.event.type), ['iotgate.telemetry', 'iotgate.device.connected', 'iotgate.device.disconnected']);
    assert.equal(got[0]?.event.id, 'rec-d1-1');
    assert.equal(got[1]?.event.time, new Date(1000).toISOString());
    assert.deepEqual(got[2]?.event.data, { deviceId: 'd1', protocol: 'mqtt', online: false, reason: 'client_disconnect', at: 2000, version: 2 });
    assert.equal(h.lastSeq, 3);
  });

  it('serializes each event once and shares the string between subscribers', (t) => {
    const { bus, hub: h } = hub();
    t.after(() => h.close());
    const texts: string[] = [];
    for (let i = 0; i < 3; i++) h.subscribe({}, (_s, _e, entry) => texts.push(entry.json()));
    let stringified = 0;
    const r = record('d1', 1);
    const data = { toJSON: () => (stringified++, { n: 1 }) };
    bus.emit('telemetry', { ...r, data: data as unknown as Record<string, unknown> });
    assert.equal(texts.length, 3);
    assert.equal(stringified, 1);
    assert.ok(texts.every((x) => x === texts[0]));
  });

  it("reuses a telemetry record's JSON given with the bus event as the event's data JSON", (t) => {
    const { bus, hub: h } = hub();
    t.after(() => h.close());
    const dataTexts: string[] = [];
    h.subscribe({}, (_s, _e, entry) => dataTexts.push(entry.dataJson()));
    const r = record('d1', 1);
    const stored = JSON.stringify(r);
    bus.emit('telemetry', r, stored);
    bus.emit('telemetry', record('d1', 2));
    bus.emit('device.connected', { deviceId: 'd1', protocol: 'mqtt', online: true, reason: 'connected', at: 1, version: 1 });
    assert.equal(dataTexts[0], stored, 'the text the store made, not a second serialization');
    assert.deepEqual(JSON.parse(dataTexts[1] as string), record('d1', 2), 'made once when none was given');
    assert.equal(JSON.parse(dataTexts[2] as string).deviceId, 'd1');
  });

  it('filters by type and by device', (t) => {
    const { bus, hub: h } = hub();
    t.after(() => h.close());
    const byType: number[] = [];
    const byDevice: number[] = [];
    const both: number[] = [];
    h.subscribe({ types: new Set(['iotgate.device.connected']) }, (seq) => byType.push(seq));
    h.subscribe({ devices: new Set(['d2']) }, (seq) => byDevice.push(seq));
    h.subscribe({ types: new Set(['iotgate.telemetry']), devices: new Set(['d2']) }, (seq) => both.push(seq));
    bus.emit('telemetry', record('d1', 1)); // 1
    bus.emit('telemetry', record('d2', 2)); // 2
    bus.emit('device.connected', { deviceId: 'd2', protocol: 'mqtt', online: true, reason: 'connected', at: 1, version: 1 }); // 3
    bus.emit('device.connected', { deviceId: 'd1', protocol: 'mqtt', online: true, reason: 'connected', at: 1, version: 1 }); // 4
    assert.deepEqual(byType, [3, 4]);
    assert.deepEqual(byDevice, [2, 3]);
    assert.deepEqual(both, [2]);
  });

  it('replays buffered events after a sequence number, then goes live, without duplicates', (t) => {
    const { bus, hub: h } = hub();
    t.after(() => h.close());
    for (let i = 1; i <= 5; i++) bus.emit('telemetry', record(i % 2 === 0 ? 'even' : 'odd', i));
    const got: number[] = [];
    let gap: EventGap | null = null;
    h.subscribe({ devices: new Set(['odd']) }, (seq) => got.push(seq), { afterSeq: 1, onGap: (g) => (gap = g) });
    assert.deepEqual(got, [3, 5]);
    bus.emit('telemetry', record('odd', 7));
    bus.emit('telemetry', record('even', 8));
    assert.deepEqual(got, [3, 5, 6]);
    assert.equal(gap, null);

    const all: number[] = [];
    h.subscribe({}, (seq) => all.push(seq), { afterSeq: h.lastSeq });
    assert.deepEqual(all, []);
    bus.emit('telemetry', record('odd', 9));
    assert.deepEqual(all, [8]);
  });

  it('reports a gap when the buffer overflowed, and replays what is left', (t) => {
    const { bus, hub: h } = hub(3);
    t.after(() => h.close());
    for (let i = 1; i <= 10; i++) bus.emit('telemetry', record('d', i));
    assert.equal(h.oldestSeq, 8);
    const got: number[] = [];
    const gaps: EventGap[] = [];
    h.subscribe({}, (seq) => got.push(seq), { afterSeq: 2, onGap: (g) => gaps.push(g) });
    assert.deepEqual(gaps, [{ afterSeq: 2, oldestSeq: 8, reason: 'expired' }]);
    assert.deepEqual(got, [8, 9, 10]);

    // No gap exactly at the edge of the buffer.
    const edge: number[] = [];
    h.subscribe({}, (seq) => edge.push(seq), { afterSeq: 7, onGap: () => assert.fail('no gap expected') });
    assert.deepEqual(edge, [8, 9, 10]);

    // An id newer than anything published (an earlier process): a gap, then everything buffered.
    const future: number[] = [];
    const futureGaps: EventGap[] = [];
    h.subscribe({}, (seq) => future.push(seq), { afterSeq: 99, onGap: (g) => futureGaps.push(g) });
    assert.equal(futureGaps[0]?.reason, 'unknown');
    assert.deepEqual(future, [8, 9, 10]);
  });

  it('numbers events from the start time by default, so ids grow across restarts', () => {
    const before = Date.now() * 1000;
    const h = new EventHub(null);
    const entry = h.emit('iotgate.shadow.updated', 'd', {});
    assert.ok(entry && entry.seq > before);
    assert.equal(h.gapAfter(entry.seq - 1), null);
    assert.equal(h.gapAfter(5)?.reason, 'expired');
    h.close();
  });

  it('a throwing subscriber affects neither the publisher nor other subscribers', (t) => {
    const bus = new EventBus();
    const warnings: unknown[] = [];
    const log = { warn: (o: unknown) => warnings.push(o), error: () => {} } as never;
    const logged = new EventHub(bus, { seqBase: 0, log });
    t.after(() => logged.close());
    const a: number[] = [];
    const b: number[] = [];
    logged.subscribe({}, (seq) => a.push(seq));
    logged.subscribe({}, () => {
      throw new Error('boom');
    });
    logged.subscribe({}, (seq) => b.push(seq));
    assert.doesNotThrow(() => {
      bus.emit('telemetry', record('d', 1));
      bus.emit('telemetry', record('d', 2));
    });
    assert.deepEqual(a, [1, 2]);
    assert.deepEqual(b, [1, 2]);
    assert.equal(warnings.length, 1, 'logged once, not per event');
  });

  it('keeps order when a subscriber publishes while being called, and supports unsubscribe', (t) => {
    const { hub: h } = hub();
    t.after(() => h.close());
    const first: number[] = [];
    const second: number[] = [];
    h.subscribe({}, (seq, event) => {
      first.push(seq);
      if (event.type === 'iotgate.telemetry') h.emit('iotgate.shadow.updated', 'd', { from: seq });
    });
    const off = h.subscribe({}, (seq) => second.push(seq));
    h.emit('iotgate.telemetry', 'd', record('d', 1));
    assert.deepEqual(first, [1, 2]);
    assert.deepEqual(second, [1, 2]);
    off();
    h.emit('iotgate.shadow.updated', 'd', {});
    assert.deepEqual(second, [1, 2]);
    assert.equal(h.subscriberCount, 1);
  });

  it('close() detaches from the bus', () => {
    const { bus, hub: h } = hub();
    const got: number[] = [];
    h.subscribe({}, (seq) => got.push(seq));
    h.close();
    bus.emit('telemetry', record('d', 1));
    assert.deepEqual(got, []);
    assert.equal(bus.listenerCount('telemetry'), 0);
    assert.equal(h.emit('iotgate.telemetry', 'd', {}), null);
  });
});
