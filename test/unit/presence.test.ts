/**
 * PresenceService (src/core/presence.ts) on the memory registry and a real EventBus: versions,
 * several sessions per device, takeover ordering, lastSeen batching and the emitted events; and
 * several gateways on one registry: a late offline from a gateway the device left, and the reap of
 * a dead gateway's devices (once, with concurrent reapers).
 */
import { describe, it, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { pino } from 'pino';
import { EventBus, type DeviceConnected, type DeviceDisconnected } from '../../src/core/events.js';
import type { DeviceRecord } from '../../src/core/model.js';
import { PresenceService } from '../../src/core/presence.js';
import { MemoryDeviceRegistry } from '../../src/stores/memory/registry.js';

function record(id: string): DeviceRecord {
  return { id, type: 'generic', createdAt: 1, online: false, protocol: null, lastSeen: null, connectedAt: null, certificate: null, firmware: null };
}

type Event = DeviceConnected | DeviceDisconnected;

async function setup(t: TestContext, ids: string[] = ['dev-1']) {
  const registry = new MemoryDeviceRegistry();
  for (const id of ids) await registry.create(record(id));
  const bus = new EventBus();
  const events: Event[] = [];
  bus.on('device.connected', (e) => events.push(e));
  bus.on('device.disconnected', (e) => events.push(e));
  const errors: unknown[] = [];
  const log = pino({ level: 'error' }, { write: (line: string) => void errors.push(JSON.parse(line)) });
  // A long flush interval: the tests call flushSeen themselves.
  const presence = new PresenceService(registry, bus, log, 3_600_000);
  t.after(() => presence.close());
  return { registry, bus, events, presence, errors };
}

const versions = (events: Event[]) => events.map((e) => e.version);

describe('PresenceService', () => {
  it('a session that ends because the device moved to another gateway (moved) emits nothing and leaves the record online', async (t) => {
    const { registry, events, presence } = await setup(t);
    await presence.connected('dev-1', 'mqtt', 's1');
    const off = await presence.disconnected('dev-1', 'mqtt', 's1', 'moved');
    assert.equal(off, null);
    assert.equal(presence.isOnline('dev-1'), false, 'no session here any more');
    assert.deepEqual(events.map((e) => e.online), [true], 'no offline event');
    assert.equal((await registry.get('dev-1'))?.online, true, 'the other gateway owns the status');
  });

  it('connect and disconnect update the registry, emit events and bump the version each time', async (t) => {
    const { registry, events, presence } = await setup(t);
    const before = Date.now();
    const on = await presence.connected('dev-1', 'mqtt', 's1');
    assert.ok(on);
    assert.equal(on.online, true);
    assert.equal(on.reason, 'connected');
    assert.equal(on.protocol, 'mqtt');
    assert.equal(on.version, 1);
    assert.ok(on.at >= before && on.at <= Date.now());
    assert.equal(presence.isOnline('dev-1'), true);
    let rec = await registry.get('dev-1');
    assert.equal(rec?.online, true);
    assert.equal(rec?.protocol, 'mqtt');
    assert.equal(rec?.connectedAt, on.at);
    assert.equal(rec?.lastSeen, on.at);
    assert.equal(rec?.presenceVersion, 1);

    const off = await presence.disconnected('dev-1', 'mqtt', 's1', 'client_disconnect');
    assert.ok(off);
    assert.equal(off.online, false);
    assert.equal(off.reason, 'client_disconnect');
    assert.equal(off.version, 2);
    assert.equal(presence.isOnline('dev-1'), false);
    rec = await registry.get('dev-1');
    assert.equal(rec?.online, false);
    assert.equal(rec?.protocol, null);
    assert.equal(rec?.lastSeen, off.at);
    assert.equal(rec?.connectedAt, on.at, 'connectedAt keeps the last connect');
    assert.equal(rec?.presenceVersion, 2);

    for (let i = 0; i < 3; i++) {
      await presence.connected('dev-1', 'mqtts', `s${i + 2}`);
      await presence.disconnected('dev-1', 'mqtts', `s${i + 2}`, 'connection_lost');
    }
    assert.deepEqual(versions(events), [1, 2, 3, 4, 5, 6, 7, 8]);
    assert.deepEqual(
      events.map((e) => e.online),
      [true, false, true, false, true, false, true, false],
    );
    assert.equal((await registry.get('dev-1'))?.presenceVersion, 8);
  });

  it('versions continue from the registry (a restart does not reuse them)', async (t) => {
    const { registry, presence } = await setup(t);
    await registry.update('dev-1', { presenceVersion: 41 });
    assert.equal((await presence.connected('dev-1', 'mqtt', 's1'))?.version, 42);
  });

  it('updates issued without awaiting are applied in order', async (t) => {
    const { events, presence } = await setup(t);
    const results = await Promise.all([
      presence.connected('dev-1', 'mqtt', 's1'),
      presence.disconnected('dev-1', 'mqtt', 's1', 'connection_lost'),
      presence.connected('dev-1', 'mqtt', 's2'),
    ]);
    assert.deepEqual(
      results.map((r) => r?.version ?? null),
      [1, null, 2],
      'the offline of s1 is superseded by s2, which started before it was applied',
    );
    assert.deepEqual(versions(events), [1, 2]);
    assert.equal(presence.isOnline('dev-1'), true);
  });

  it('two sessions keep the device online until the last one ends', async (t) => {
    const { registry, events, presence } = await setup(t);
    await presence.connected('dev-1', 'mqtt', 's1');
    await presence.connected('dev-1', 'coap', 's2');
    assert.equal(await presence.disconnected('dev-1', 'mqtt', 's1', 'client_disconnect'), null, 'one session is left');
    assert.equal(presence.isOnline('dev-1'), true);
    assert.equal((await registry.get('dev-1'))?.online, true);
    assert.equal(events.filter((e) => !e.online).length, 0, 'no offline event yet');

    const off = await presence.disconnected('dev-1', 'coap', 's2', 'connection_lost');
    assert.ok(off);
    assert.equal(off.online, false);
    assert.equal(off.protocol, 'coap');
    assert.equal((await registry.get('dev-1'))?.online, false);
    assert.deepEqual(versions(events), [1, 2, 3]);
  });

  it('ending a session twice, or one never started, changes nothing', async (t) => {
    const { events, presence } = await setup(t);
    assert.equal(await presence.disconnected('dev-1', 'mqtt', 'never', 'connection_lost'), null);
    await presence.connected('dev-1', 'mqtt', 's1');
    await presence.disconnected('dev-1', 'mqtt', 's1', 'connection_lost');
    assert.equal(await presence.disconnected('dev-1', 'mqtt', 's1', 'connection_lost'), null);
    assert.deepEqual(versions(events), [1, 2]);
  });

  it('takeover (old session ends, new one starts at once): the device ends online with a higher version', async (t) => {
    const { registry, events, presence } = await setup(t);
    await presence.connected('dev-1', 'mqtt', 'old');
    // aedes closes the old client before the new one is ready: offline first, then online.
    const off = presence.disconnected('dev-1', 'mqtt', 'old', 'takeover');
    const on = presence.connected('dev-1', 'mqtts', 'new');
    const [offEvent, onEvent] = await Promise.all([off, on]);
    assert.equal(offEvent, null, 'the new session started before the offline was applied: no offline flap');
    assert.ok(onEvent);
    assert.equal(onEvent.version, 2);
    assert.equal(presence.isOnline('dev-1'), true);
    const rec = await registry.get('dev-1');
    assert.equal(rec?.online, true);
    assert.equal(rec?.protocol, 'mqtts');
    assert.deepEqual(
      events.map((e) => [e.online, e.version]),
      [
        [true, 1],
        [true, 2],
      ],
    );
  });

  it('takeover whose new session comes later: offline then online, versions increasing', async (t) => {
    const { registry, events, presence } = await setup(t);
    await presence.connected('dev-1', 'mqtt', 'old');
    const off = await presence.disconnected('dev-1', 'mqtt', 'old', 'takeover');
    assert.equal(off?.reason, 'takeover');
    const on = await presence.connected('dev-1', 'mqtt', 'new');
    assert.ok(off && on && on.version > off.version);
    assert.deepEqual(
      events.map((e) => [e.online, e.reason, e.version]),
      [
        [true, 'connected', 1],
        [false, 'takeover', 2],
        [true, 'connected', 3],
      ],
    );
    assert.equal((await registry.get('dev-1'))?.online, true);
  });

  it('an unknown device yields null, no event and no registry record', async (t) => {
    const { registry, events, presence } = await setup(t);
    assert.equal(await presence.connected('ghost', 'mqtt', 's1'), null);
    assert.deepEqual(events, [], 'no online event for a device the registry does not know');
    assert.equal(await registry.get('ghost'), null);
    await presence.disconnected('ghost', 'mqtt', 's1', 'connection_lost');
    presence.touch('ghost', 5);
    await presence.flushSeen();
    assert.equal(await registry.get('ghost'), null, 'neither a disconnect nor a touch creates a record');
    assert.equal(presence.isOnline('ghost'), false);
  });

  it('a device deleted while online (revoked) still goes offline with the next version, without re-creating its record', async (t) => {
    const { registry, events, presence } = await setup(t);
    await presence.connected('dev-1', 'mqtt', 's1');
    await registry.delete('dev-1');
    const off = await presence.disconnected('dev-1', 'mqtt', 's1', 'revoked');
    assert.ok(off);
    assert.equal(off.online, false);
    assert.equal(off.reason, 'revoked');
    assert.equal(off.version, 2);
    assert.equal(presence.isOnline('dev-1'), false);
    assert.equal(await registry.get('dev-1'), null);
    assert.deepEqual(versions(events), [1, 2]);

    // Provisioned again: a fresh record, but versions keep increasing (no stale status wins).
    await registry.create(record('dev-1'));
    const on = await presence.connected('dev-1', 'mqtt', 's2');
    assert.equal(on?.version, 3);
    assert.equal((await registry.get('dev-1'))?.presenceVersion, 3);
  });

  it('touch + flushSeen moves lastSeen forward, also for traffic without a session', async (t) => {
    const { registry, presence } = await setup(t, ['dev-1', 'dev-2']);
    const on = await presence.connected('dev-1', 'mqtt', 's1');
    assert.ok(on);
    presence.touch('dev-1', on.at + 1000);
    presence.touch('dev-1', on.at + 2000);
    assert.equal((await registry.get('dev-1'))?.lastSeen, on.at, 'touch alone writes nothing');
    await presence.flushSeen();
    assert.equal((await registry.get('dev-1'))?.lastSeen, on.at + 2000, 'the latest touch is written');

    presence.touch('dev-2', 123);
    await presence.flushSeen();
    assert.equal((await registry.get('dev-2'))?.lastSeen, 123, 'traffic without a session (HTTP) is written');

    presence.touch('dev-1', on.at + 3000);
    const off = await presence.disconnected('dev-1', 'mqtt', 's1', 'client_disconnect');
    assert.ok(off);
    await presence.flushSeen();
    assert.equal((await registry.get('dev-1'))?.lastSeen, off.at, 'a touch before going offline is not written after it');

    presence.touch('dev-1', off.at - 1);
    await presence.flushSeen();
    assert.equal((await registry.get('dev-1'))?.lastSeen, off.at, 'an older touch never moves lastSeen back');

    presence.touch('dev-1', off.at + 5000);
    await presence.flushSeen();
    assert.equal((await registry.get('dev-1'))?.lastSeen, off.at + 5000, 'later traffic (e.g. HTTP) is written');

    presence.touch('ghost', 5);
    await presence.flushSeen();
    assert.equal(await registry.get('ghost'), null, 'a touch never creates a record');
  });

  it('close() flushes pending lastSeen', async (t) => {
    const { registry, presence } = await setup(t);
    const on = await presence.connected('dev-1', 'mqtt', 's1');
    assert.ok(on);
    presence.touch('dev-1', on.at + 777);
    await presence.close();
    assert.equal((await registry.get('dev-1'))?.lastSeen, on.at + 777);
  });

  it('emits device.connected / device.disconnected with the resolved event, and a throwing listener harms nothing', async (t) => {
    const { bus, presence, errors } = await setup(t);
    const seen: Event[] = [];
    bus.on('device.connected', (e) => seen.push(e));
    bus.on('device.disconnected', (e) => seen.push(e));
    bus.on('device.connected', () => {
      throw new Error('listener bug');
    });
    const on = await presence.connected('dev-1', 'mqtt-ws', 's1');
    const off = await presence.disconnected('dev-1', 'mqtt-ws', 's1', 'keepalive_timeout');
    assert.ok(on && off);
    assert.deepEqual(seen, [on, off], 'each listener gets the very event the call resolves');
    assert.deepEqual({ ...on }, { deviceId: 'dev-1', protocol: 'mqtt-ws', online: true, reason: 'connected', at: on.at, version: 1 });
    assert.deepEqual({ ...off }, { deviceId: 'dev-1', protocol: 'mqtt-ws', online: false, reason: 'keepalive_timeout', at: off.at, version: 2 });
    assert.equal(errors.length, 1, 'the throw is logged');
    assert.equal(presence.isOnline('dev-1'), false);
  });

  it('a failing store rejects that update but later updates of the device still run', async (t) => {
    const { registry, events, presence } = await setup(t);
    const write = registry.writePresence.bind(registry);
    let fail: 'before' | 'after' | null = 'before';
    registry.writePresence = async (id, change) => {
      if (fail === 'before') throw new Error('store down');
      const res = await write(id, change);
      if (fail === 'after') throw new Error('reply lost');
      return res;
    };
    await assert.rejects(presence.connected('dev-1', 'mqtt', 's1'), /store down/);
    fail = null;
    assert.equal(await presence.disconnected('dev-1', 'mqtt', 's1', 'connection_lost'), null, 'the connect never landed: nothing to take back');
    assert.equal((await registry.get('dev-1'))?.online, false);
    assert.equal((await presence.connected('dev-1', 'mqtt', 's2'))?.version, 1);
    await presence.disconnected('dev-1', 'mqtt', 's2', 'connection_lost');
    // A connect that landed but whose reply was lost is still this gateway's to take back.
    fail = 'after';
    await assert.rejects(presence.connected('dev-1', 'mqtt', 's3'), /reply lost/);
    fail = null;
    const off = await presence.disconnected('dev-1', 'mqtt', 's3', 'connection_lost');
    assert.ok(off);
    const rec = await registry.get('dev-1');
    assert.equal(rec?.online, false);
    assert.equal(rec?.presenceVersion, off.version);
    assert.deepEqual(events.map((e) => [e.online, e.version]), [[true, 1], [false, 2], [false, 4]]);
  });
});

/** Several gateways (one PresenceService and bus each) on one registry. */
async function fleet(t: TestContext, names: string[], ids: string[]) {
  const registry = new MemoryDeviceRegistry();
  for (const id of ids) await registry.create(record(id));
  const log = pino({ level: 'silent' });
  const gateways = names.map((name) => {
    const bus = new EventBus();
    const events: Event[] = [];
    bus.on('device.connected', (e) => events.push(e));
    bus.on('device.disconnected', (e) => events.push(e));
    const presence = new PresenceService(registry, bus, log, { gatewayId: name, flushIntervalMs: 3_600_000 });
    t.after(() => presence.close());
    return { presence, events };
  });
  return { registry, gateways };
}

describe('PresenceService on several gateways', () => {
  it('a late offline from the gateway a device left changes nothing and emits nothing', async (t) => {
    const { registry, gateways } = await fleet(t, ['gw-a', 'gw-b'], ['dev-1']);
    const [a, b] = gateways as [(typeof gateways)[0], (typeof gateways)[0]];
    await a.presence.connected('dev-1', 'mqtt', 'a1');
    const on = await b.presence.connected('dev-1', 'mqtts', 'b1');
    assert.equal(on?.version, 2);
    // A noticed the old connection late (keepalive timeout): not the 'moved' path.
    assert.equal(await a.presence.disconnected('dev-1', 'mqtt', 'a1', 'keepalive_timeout'), null);
    assert.deepEqual(a.events.map((e) => e.online), [true], 'no offline event from A');
    const rec = await registry.get('dev-1');
    assert.equal(rec?.online, true);
    assert.equal(rec?.protocol, 'mqtts');
    assert.equal(rec?.presenceVersion, 2);
    const off = await b.presence.disconnected('dev-1', 'mqtts', 'b1', 'client_disconnect');
    assert.equal(off?.version, 3, 'the holder’s offline applies');
    assert.equal((await registry.get('dev-1'))?.online, false);
  });

  it('the same for a shutdown of the old gateway after the device moved over CoAP', async (t) => {
    const { registry, gateways } = await fleet(t, ['gw-a', 'gw-b'], ['dev-1']);
    const [a, b] = gateways as [(typeof gateways)[0], (typeof gateways)[0]];
    await a.presence.connected('dev-1', 'mqtt', 'a1');
    await b.presence.connected('dev-1', 'coap', 'coap:dev-1');
    assert.equal(await a.presence.disconnected('dev-1', 'mqtt', 'a1', 'shutdown'), null);
    assert.equal((await registry.get('dev-1'))?.protocol, 'coap');
  });

  it('reap: the devices a dead gateway holds go offline exactly once, even with two reapers at once', async (t) => {
    const { registry, gateways } = await fleet(t, ['gw-a', 'gw-b', 'gw-c'], ['dev-1', 'dev-2', 'dev-3', 'dev-4']);
    const [a, b, c] = gateways as [(typeof gateways)[0], (typeof gateways)[0], (typeof gateways)[0]];
    await a.presence.connected('dev-1', 'mqtt', 'a1');
    await a.presence.connected('dev-2', 'coap', 'coap:dev-2');
    await a.presence.connected('dev-3', 'mqtt', 'a3');
    await b.presence.connected('dev-3', 'mqtts', 'b3'); // moved to B before A died
    await a.presence.connected('dev-4', 'mqtt', 'a4');
    await a.presence.disconnected('dev-4', 'mqtt', 'a4', 'client_disconnect'); // left before A died
    const [byB, byC] = await Promise.all([b.presence.reap('gw-a'), c.presence.reap('gw-a')]);
    assert.equal(byB + byC, 2);
    const offline = [...b.events, ...c.events].filter((e) => !e.online) as DeviceDisconnected[];
    assert.deepEqual(offline.map((e) => [e.deviceId, e.protocol, e.reason, e.version]).sort(), [
      ['dev-1', 'mqtt', 'connection_lost', 2],
      ['dev-2', 'coap', 'connection_lost', 2],
    ]);
    assert.equal((await registry.get('dev-1'))?.online, false);
    assert.equal((await registry.get('dev-2'))?.online, false);
    assert.equal((await registry.get('dev-3'))?.online, true, 'the device on B stays online');
    assert.equal((await registry.get('dev-3'))?.protocol, 'mqtts');
    assert.equal((await registry.get('dev-4'))?.presenceVersion, 2, 'an offline device is not touched');
    assert.equal(await b.presence.reap('gw-a'), 0, 'a second reap finds nothing');
    assert.equal(await b.presence.reap('gw-b'), 0, 'a gateway never reaps itself');
    assert.equal((await registry.get('dev-3'))?.online, true);
  });
});
