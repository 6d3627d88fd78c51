/**
 * ClusterLink (src/cluster/link.ts) on a real redis-server: each gateway's shadow and command
 * events reach the others on their `remote` bus, never their own; and two CommandServices sharing
 * one store behave as one gateway when linked: a command created on B is delivered by A (where
 * the device is) and A's answer wakes B's waiting request.
 */
import { describe, it, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { Redis } from 'ioredis';
import { pino } from 'pino';
import { ClusterLink } from '../../src/cluster/link.js';
import { CommandService, type CommandTransport } from '../../src/core/command-service.js';
import type { CommandRecord } from '../../src/core/commands.js';
import { EventBus, type ShadowUpdated } from '../../src/core/events.js';
import { MemoryCommandStore } from '../../src/stores/memory/commands.js';
import { startRedis, type TestRedis } from '../helpers/redis.js';

const silent = pino({ level: 'silent' });

async function link(t: TestContext, redis: TestRedis, bus = new EventBus()): Promise<{ bus: EventBus; link: ClusterLink }> {
  const publisher = new Redis(redis.url);
  const l = new ClusterLink({ publisher, subscriber: new Redis(redis.url), bus, log: silent });
  await l.start();
  t.after(async () => {
    await l.close();
    publisher.disconnect();
  });
  return { bus, link: l };
}

function once<T>(bus: EventBus, event: 'shadow.updated' | 'command.updated', match: (e: T) => boolean = () => true): Promise<T> {
  return new Promise((resolve) => {
    const on = (e: T) => {
      if (!match(e)) return;
      bus.off(event, on as never);
      resolve(e);
    };
    bus.on(event, on as never);
  });
}

const shadowEvent = (deviceId: string, version: number): ShadowUpdated => ({
  deviceId,
  name: '',
  writer: 'service',
  version,
  accepted: { state: { desired: { heat: version } }, metadata: {}, version, timestamp: 1 } as unknown as ShadowUpdated['accepted'],
  documents: { previous: null, current: { state: {}, metadata: {}, version }, timestamp: 1 } as unknown as ShadowUpdated['documents'],
  delta: null,
});

describe('ClusterLink', () => {
  it("relays shadow events to the other gateways' remote bus, not to its own", async (t) => {
    const redis = await startRedis(t);
    if (!redis) return;
    const a = await link(t, redis);
    const b = await link(t, redis);
    const ownEcho: unknown[] = [];
    a.link.remote.on('shadow.updated', (e) => ownEcho.push(e));
    const atB = once<ShadowUpdated>(b.link.remote, 'shadow.updated');
    a.bus.emit('shadow.updated', shadowEvent('dev-1', 7));
    const got = await atB;
    assert.equal(got.deviceId, 'dev-1');
    assert.equal(got.version, 7);
    // A second event from B comes back to A: by then A's own first event would have arrived too.
    const atA = once<ShadowUpdated>(a.link.remote, 'shadow.updated');
    b.bus.emit('shadow.updated', shadowEvent('dev-2', 1));
    assert.equal((await atA).deviceId, 'dev-2');
    assert.deepEqual(ownEcho.map((e) => (e as ShadowUpdated).deviceId), ['dev-2'], 'a gateway never hears its own events');
  });

  it('ignores garbage on the channel and keeps relaying', async (t) => {
    const redis = await startRedis(t);
    if (!redis) return;
    const a = await link(t, redis);
    const b = await link(t, redis);
    const raw = new Redis(redis.url);
    t.after(() => raw.disconnect());
    await raw.publish('iotgate:cluster', 'not json');
    await raw.publish('iotgate:cluster', JSON.stringify({ o: 'x', t: 'telemetry', e: {} }));
    const atB = once<ShadowUpdated>(b.link.remote, 'shadow.updated');
    a.bus.emit('shadow.updated', shadowEvent('dev-3', 2));
    assert.equal((await atB).deviceId, 'dev-3');
  });

  it('two command services on one store: created on B, delivered by A, answered on A → B’s wait ends with the answer', async (t) => {
    const redis = await startRedis(t);
    if (!redis) return;
    const store = new MemoryCommandStore(); // shared, as Redis is between real gateways
    const service = (bus: EventBus) =>
      new CommandService({ store, bus, log: silent, queueMax: 10, codecOf: () => undefined });
    const a = await link(t, redis);
    const b = await link(t, redis);
    const svcA = service(a.bus);
    const svcB = service(b.bus);
    for (const [svc, l] of [
      [svcA, a.link],
      [svcB, b.link],
    ] as const) {
      l.remote.on('command.updated', (r) => svc.remoteUpdate(r));
      t.after(async () => {
        svc.close();
        await svc.idle();
      });
    }
    // The device is connected to A only.
    let deliveredOnA!: (r: CommandRecord) => void;
    const delivery = new Promise<CommandRecord>((resolve) => (deliveredOnA = resolve));
    const onA: CommandTransport = { reachable: (id) => id === 'dev-1', deliver: (r) => (deliveredOnA(r), true) };
    svcA.attach(onA);
    svcB.attach({ reachable: () => false, deliver: () => false });

    const { record } = await svcB.send('dev-1', { name: 'reboot', params: {}, ttlMs: 60_000 });
    const waiting = svcB.wait('dev-1', record.id, 30_000);
    const delivered = await delivery;
    assert.equal(delivered.id, record.id, 'A delivered the command created on B');
    assert.equal(delivered.state, 'sent');

    const answered = await svcA.respond('dev-1', record.id, { status: 200, payload: { ok: true } });
    assert.equal(answered.ok, true);
    const outcome = await waiting.promise;
    assert.equal(outcome.outcome, 'finished');
    assert.equal(outcome.outcome === 'finished' && outcome.record.state, 'succeeded');
    assert.deepEqual(outcome.outcome === 'finished' && outcome.record.response, { status: 200, payload: { ok: true } });
  });

  it('tells the gateway to resync after its subscriber reconnected (messages of the gap are lost)', async (t) => {
    const redis = await startRedis(t);
    if (!redis) return;
    const subscriber = new Redis(redis.url);
    const publisher = new Redis(redis.url);
    const l = new ClusterLink({ publisher, subscriber, bus: new EventBus(), log: silent });
    t.after(async () => {
      await l.close();
      publisher.disconnect();
    });
    await l.start();
    let resyncs = 0;
    const resynced = new Promise<void>((resolve) =>
      l.onResync(() => {
        resyncs++;
        resolve();
      }),
    );
    assert.equal(resyncs, 0, 'not on the first connection');
    subscriber.disconnect(true); // drop the connection; ioredis reconnects and re-subscribes
    await resynced;
    assert.equal(resyncs, 1);
  });

  it('kickAll delivers open commands of devices reachable here (after a gap in the channel)', async (t) => {
    const store = new MemoryCommandStore();
    const svc = new CommandService({ store, bus: new EventBus(), log: silent, queueMax: 10, codecOf: () => undefined });
    t.after(async () => {
      svc.close();
      await svc.idle();
    });
    // Created elsewhere (straight into the shared store): nobody here was told.
    const now = Date.now();
    const record: CommandRecord = { id: 'c-1', deviceId: 'dev-1', name: 'reboot', params: {}, state: 'queued', createdAt: now, updatedAt: now, expiresAt: now + 60_000 };
    assert.equal((await store.create(record, { maxUndelivered: 10 })).kind, 'created');
    await store.create({ ...record, id: 'c-2', deviceId: 'dev-elsewhere' }, { maxUndelivered: 10 });
    let deliveredHere!: (r: CommandRecord) => void;
    const delivered = new Promise<CommandRecord>((resolve) => (deliveredHere = resolve));
    const seen: string[] = [];
    svc.attach({ reachable: (id) => id === 'dev-1', deliver: (r) => (seen.push(r.id), deliveredHere(r), true) });
    await svc.kickAll();
    assert.equal((await delivered).id, 'c-1');
    await svc.idle();
    assert.deepEqual(seen, ['c-1'], 'only the reachable device');
    assert.equal((await store.get('dev-elsewhere', 'c-2'))?.state, 'queued');
  });
});
