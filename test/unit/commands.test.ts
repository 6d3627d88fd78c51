/**
 * CommandService (src/core/command-service.ts) on a real MemoryCommandStore and EventBus, with a
 * fake transport; and Deadlines (src/core/deadlines.ts), the one-timer min-heap behind expiry.
 */
import { describe, it, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { pino } from 'pino';
import type { DeviceTypeCodec } from '../../src/codecs/codec.js';
import { CommandService, type CommandTransport, type SendInput, type WaitOutcome } from '../../src/core/command-service.js';
import type { CommandRecord, CommandState } from '../../src/core/commands.js';
import { Deadlines } from '../../src/core/deadlines.js';
import { isGatewayError, type ErrorCode } from '../../src/core/errors.js';
import { EventBus } from '../../src/core/events.js';
import { MemoryCommandStore } from '../../src/stores/memory/commands.js';

/** A door in front of devices: `online` ones are reachable; `accept` false = the device went away mid-delivery. */
class FakeTransport implements CommandTransport {
  readonly online = new Set<string>();
  readonly delivered: { record: CommandRecord; payload: Buffer }[] = [];
  accept = true;

  reachable(deviceId: string): boolean {
    return this.online.has(deviceId);
  }

  deliver(record: CommandRecord, payload: Buffer): boolean {
    this.delivered.push({ record, payload });
    return this.accept;
  }

  ids(deviceId?: string): string[] {
    return this.delivered.filter((d) => deviceId === undefined || d.record.deviceId === deviceId).map((d) => d.record.id);
  }
}

/**
 * Resolves with `p`, or fails after `ms`. The timer is ref'd: it also keeps the process alive while
 * only the service's unref'd expiry timer is pending.
 */
async function within<T>(p: Promise<T>, what: string, ms = 2000): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const limit = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  try {
    return await Promise.race([p, limit]);
  } finally {
    clearTimeout(timer);
  }
}

/** Timers that keep the process alive (a wait's timer is one). */
const refTimers = () => process.getActiveResourcesInfo().filter((r) => r === 'Timeout').length;

/** Settles all pending promise jobs and I/O callbacks once (not a timed sleep). */
const turn = () => new Promise<void>((resolve) => setImmediate(resolve));

function gatewayError(code: ErrorCode, status: number) {
  return (err: unknown) => {
    assert.ok(isGatewayError(err), `expected a GatewayError, got ${String(err)}`);
    assert.equal(err.code, code, err.message);
    assert.equal(err.status, status);
    return true;
  };
}

const input = (over: Partial<SendInput> = {}): SendInput => ({ name: 'reboot', params: { delay: 5, mode: { soft: true } }, ttlMs: 60_000, ...over });

function setup(t: TestContext, opts: { queueMax?: number; now?: () => number; codecOf?: (deviceId: string) => DeviceTypeCodec | undefined } = {}) {
  const store = new MemoryCommandStore();
  const bus = new EventBus();
  const events: CommandRecord[] = [];
  bus.on('command.updated', (r) => events.push(r));
  const svc = new CommandService({
    store,
    bus,
    log: pino({ level: 'silent' }),
    queueMax: opts.queueMax ?? 100,
    codecOf: opts.codecOf ?? (() => undefined),
    ...(opts.now && { now: opts.now }),
  });
  const transport = new FakeTransport();
  svc.attach(transport);
  t.after(async () => {
    svc.close();
    await svc.idle();
    await store.close();
  });
  /** The next `command.updated` matching `match`; register before causing it. */
  const next = (match: (r: CommandRecord) => boolean, what: string, ms?: number) =>
    within(
      new Promise<CommandRecord>((resolve) => {
        const on = (r: CommandRecord) => {
          if (!match(r)) return;
          bus.off('command.updated', on);
          resolve(r);
        };
        bus.on('command.updated', on);
      }),
      what,
      ms,
    );
  const reached = (id: string, state: CommandState, ms?: number) => next((r) => r.id === id && r.state === state, `${id} → ${state}`, ms);
  const stateOf = async (deviceId: string, id: string) => (await store.get(deviceId, id))?.state;
  const statesOf = (id: string) => events.filter((e) => e.id === id).map((e) => e.state);
  return { store, bus, events, svc, transport, next, reached, stateOf, statesOf };
}

describe('CommandService: send and delivery', () => {
  it('stores a queued command and emits it; an unreachable device keeps it queued', async (t) => {
    const { svc, store, events, transport, stateOf } = setup(t);
    const before = Date.now();
    const { created, record } = await svc.send('dev-1', input({ idempotencyKey: 'k1' }));
    assert.equal(created, true);
    assert.match(record.id, /^[0-9a-f-]{36}$/);
    assert.equal(record.deviceId, 'dev-1');
    assert.equal(record.state, 'queued');
    assert.equal(record.name, 'reboot');
    assert.deepEqual(record.params, { delay: 5, mode: { soft: true } });
    assert.equal(record.idempotencyKey, 'k1');
    assert.ok(record.createdAt >= before && record.createdAt <= Date.now());
    assert.equal(record.updatedAt, record.createdAt);
    assert.equal(record.expiresAt, record.createdAt + 60_000);
    await svc.idle();
    assert.deepEqual(events, [record]);
    assert.deepEqual(await store.get('dev-1', record.id), record);
    assert.equal(await stateOf('dev-1', record.id), 'queued');
    assert.deepEqual(transport.delivered, []);
  });

  it('a reachable device gets it at once (sent), in its wire form', async (t) => {
    const { svc, transport, stateOf, statesOf } = setup(t);
    transport.online.add('dev-1');
    const { record } = await svc.send('dev-1', input());
    await svc.idle();
    assert.equal(await stateOf('dev-1', record.id), 'sent');
    assert.deepEqual(statesOf(record.id), ['queued', 'sent']);
    assert.equal(transport.delivered.length, 1);
    const [out] = transport.delivered;
    assert.equal(out?.record.state, 'sent');
    assert.deepEqual(JSON.parse(out?.payload.toString('utf8') ?? ''), { id: record.id, name: 'reboot', params: { delay: 5, mode: { soft: true } }, expiresAt: record.expiresAt });
    assert.deepEqual(transport.ids('dev-2'), [], 'only that device');
  });

  it('delivers in creation order', async (t) => {
    const { svc, transport, stateOf } = setup(t);
    const ids: string[] = [];
    for (let i = 0; i < 6; i++) ids.push((await svc.send('dev-1', input({ params: { i } }))).record.id);
    await svc.idle();
    assert.equal(transport.delivered.length, 0);
    transport.online.add('dev-1');
    svc.kick('dev-1');
    await svc.idle();
    assert.deepEqual(transport.ids(), ids);
    assert.deepEqual(transport.delivered.map((d) => JSON.parse(d.payload.toString()).params.i), [0, 1, 2, 3, 4, 5]);
    for (const id of ids) assert.equal(await stateOf('dev-1', id), 'sent');
  });

  it('concurrent sends to a reachable device still go out in creation order, once each', async (t) => {
    const { svc, transport } = setup(t);
    transport.online.add('dev-1');
    const results = await Promise.all(Array.from({ length: 10 }, (_, i) => svc.send('dev-1', input({ params: { i } }))));
    await svc.idle();
    const list = await svc.list('dev-1', { limit: 100 });
    assert.deepEqual(transport.ids(), list.items.map((r) => r.id));
    assert.deepEqual(new Set(transport.ids()), new Set(results.map((r) => r.record.id)));
  });

  it('resume re-sends sent commands (in order, with the queued ones); kick does not', async (t) => {
    const { svc, transport, events } = setup(t);
    transport.online.add('dev-1');
    const a = (await svc.send('dev-1', input({ params: { n: 'a' } }))).record;
    const b = (await svc.send('dev-1', input({ params: { n: 'b' } }))).record;
    await svc.idle();
    transport.online.delete('dev-1');
    const c = (await svc.send('dev-1', input({ params: { n: 'c' } }))).record;
    await svc.idle();
    assert.deepEqual(transport.ids(), [a.id, b.id]);

    transport.online.add('dev-1');
    svc.kick('dev-1');
    await svc.idle();
    assert.deepEqual(transport.ids(), [a.id, b.id, c.id], 'kick: only the queued one');

    const eventsBefore = events.length;
    svc.resume('dev-1');
    await svc.idle();
    assert.deepEqual(transport.ids(), [a.id, b.id, c.id, a.id, b.id, c.id], 'resume: every sent one again, in order');
    assert.equal(events.length, eventsBefore, 'a re-send is not a state change');

    svc.acknowledged('dev-1', a.id);
    await svc.idle();
    svc.resume('dev-1');
    await svc.idle();
    assert.deepEqual(transport.ids().slice(6), [b.id, c.id], 'delivered ones are not re-sent');
  });

  it('a transport that loses the device ends the round; the rest waits for the next resume', async (t) => {
    const { svc, transport, stateOf } = setup(t);
    const ids: string[] = [];
    for (let i = 0; i < 3; i++) ids.push((await svc.send('dev-1', input())).record.id);
    await svc.idle();
    transport.online.add('dev-1');
    transport.accept = false;
    svc.kick('dev-1');
    await svc.idle();
    assert.deepEqual(transport.ids(), [ids[0]]);
    assert.deepEqual([await stateOf('dev-1', ids[0] as string), await stateOf('dev-1', ids[1] as string), await stateOf('dev-1', ids[2] as string)], ['sent', 'queued', 'queued']);
    transport.accept = true;
    svc.resume('dev-1');
    await svc.idle();
    assert.deepEqual(transport.ids(), [ids[0], ...ids]);
  });

  it('the first reachable transport delivers; a detached one gets nothing', async (t) => {
    const { svc, transport } = setup(t);
    const other = new FakeTransport();
    const detach = svc.attach(other);
    other.online.add('dev-1');
    const first = (await svc.send('dev-1', input())).record;
    await svc.idle();
    assert.deepEqual(other.ids(), [first.id]);
    assert.deepEqual(transport.ids(), []);
    detach();
    await svc.send('dev-1', input());
    await svc.idle();
    assert.deepEqual(other.ids(), [first.id]);
  });
});

describe('CommandService: encode', () => {
  it('JSON {id,name,params,expiresAt} for a device without a protobuf codec', async (t) => {
    const jsonCodec = { type: 'thermo', encoding: 'json', jsonFallback: false } as unknown as DeviceTypeCodec;
    const { svc } = setup(t, { codecOf: (id) => (id === 'json-dev' ? jsonCodec : undefined) });
    for (const deviceId of ['no-codec', 'json-dev']) {
      const { record } = await svc.send(deviceId, input({ idempotencyKey: 'not-on-the-wire' }));
      const wire = svc.encode(record);
      assert.ok(Buffer.isBuffer(wire));
      const parsed = JSON.parse(wire.toString('utf8'));
      assert.deepEqual(parsed, { id: record.id, name: record.name, params: record.params, expiresAt: record.expiresAt });
      assert.deepEqual(Object.keys(parsed), ['id', 'name', 'params', 'expiresAt']);
    }
  });

  it("a protobuf type's Command encoder when it has one; JSON when it has none", async (t) => {
    const seen: unknown[] = [];
    const withCommand = {
      encoding: 'protobuf',
      jsonFallback: false,
      encodeCommand: (cmd: unknown) => {
        seen.push(cmd);
        return Buffer.from([0x0a, 0x01]);
      },
    } as unknown as DeviceTypeCodec;
    const withoutCommand = { encoding: 'protobuf', jsonFallback: false } as unknown as DeviceTypeCodec;
    const { svc } = setup(t, { codecOf: (id) => (id === 'pb' ? withCommand : withoutCommand) });
    const pb = (await svc.send('pb', input())).record;
    assert.deepEqual(svc.encode(pb), Buffer.from([0x0a, 0x01]));
    assert.deepEqual(seen, [{ id: pb.id, name: pb.name, params: pb.params, expiresAt: pb.expiresAt }]);
    const plain = (await svc.send('pb-no-command', input())).record;
    assert.equal(JSON.parse(svc.encode(plain).toString()).id, plain.id);
  });
});

describe('CommandService: acknowledged', () => {
  it('sent → delivered; queued → delivered (a racing ack); nothing from delivered or finished', async (t) => {
    const { svc, transport, stateOf, statesOf } = setup(t);
    transport.online.add('dev-1');
    const sent = (await svc.send('dev-1', input())).record;
    await svc.idle();
    svc.acknowledged('dev-1', sent.id);
    svc.acknowledged('dev-1', sent.id);
    await svc.idle();
    assert.equal(await stateOf('dev-1', sent.id), 'delivered');
    assert.deepEqual(statesOf(sent.id), ['queued', 'sent', 'delivered']);

    transport.online.delete('dev-1');
    const queued = (await svc.send('dev-1', input())).record;
    svc.acknowledged('dev-1', queued.id);
    await svc.idle();
    assert.deepEqual(statesOf(queued.id), ['queued', 'delivered']);

    const done = (await svc.send('dev-1', input())).record;
    assert.equal((await svc.respond('dev-1', done.id, { status: 200 })).ok, true);
    svc.acknowledged('dev-1', done.id);
    svc.acknowledged('dev-1', 'no-such-command');
    svc.acknowledged('dev-2', sent.id);
    await svc.idle();
    assert.equal(await stateOf('dev-1', done.id), 'succeeded');
    assert.deepEqual(statesOf(done.id), ['queued', 'succeeded']);
  });
});

describe('CommandService: respond', () => {
  async function delivered(t: TestContext) {
    const ctx = setup(t);
    ctx.transport.online.add('dev-1');
    const { record } = await ctx.svc.send('dev-1', input());
    await ctx.svc.idle();
    ctx.svc.acknowledged('dev-1', record.id);
    await ctx.svc.idle();
    return { ...ctx, record };
  }

  it('a 2xx JSON answer (Buffer) → succeeded, with the response stored and emitted', async (t) => {
    const { svc, store, record, events } = await delivered(t);
    const res = await svc.respond('dev-1', record.id, Buffer.from(JSON.stringify({ status: 200, payload: { rebooted: true, at: [1, 2] } })));
    assert.ok(res.ok);
    assert.equal(res.record.state, 'succeeded');
    assert.deepEqual(res.record.response, { status: 200, payload: { rebooted: true, at: [1, 2] } });
    assert.deepEqual(await store.get('dev-1', record.id), res.record);
    assert.deepEqual(events.at(-1), res.record);
  });

  for (const status of [404, 500, 302, 100]) {
    it(`status ${status} → failed`, async (t) => {
      const { svc, record } = await delivered(t);
      const res = await svc.respond('dev-1', record.id, Buffer.from(JSON.stringify({ status, payload: 'nope' })));
      assert.ok(res.ok);
      assert.equal(res.record.state, 'failed');
      assert.deepEqual(res.record.response, { status, payload: 'nope' });
    });
  }

  it('answers a queued or sent command too (the device got it)', async (t) => {
    const { svc, transport } = setup(t);
    const queued = (await svc.send('dev-1', input())).record;
    assert.equal((await svc.respond('dev-1', queued.id, Buffer.from('{"status":201}'))).ok, true);
    transport.online.add('dev-1');
    const sent = (await svc.send('dev-1', input())).record;
    await svc.idle();
    const res = await svc.respond('dev-1', sent.id, Buffer.from('{"status":299,"payload":[]}'));
    assert.ok(res.ok);
    assert.equal(res.record.state, 'succeeded');
    assert.equal((await svc.get('dev-1', queued.id))?.state, 'succeeded');
    assert.deepEqual((await svc.get('dev-1', queued.id))?.response, { status: 201, payload: null });
  });

  const invalid: [string, Buffer][] = [
    ['not JSON', Buffer.from('{status: 200')],
    ['empty', Buffer.alloc(0)],
    ['an array', Buffer.from('[200]')],
    ['null', Buffer.from('null')],
    ['a string', Buffer.from('"ok"')],
    ['no status', Buffer.from('{"payload":1}')],
    ['status as a string', Buffer.from('{"status":"200"}')],
    ['status not an integer', Buffer.from('{"status":200.5}')],
    ['status 99', Buffer.from('{"status":99}')],
    ['status 600', Buffer.from('{"status":600}')],
    ['status -200', Buffer.from('{"status":-200}')],
  ];
  it('malformed answers are invalid and change nothing', async (t) => {
    const { svc, record, events, stateOf } = await delivered(t);
    const eventsBefore = events.length;
    for (const [what, payload] of invalid) {
      const res = await svc.respond('dev-1', record.id, payload);
      assert.equal(res.ok, false, what);
      assert.equal(!res.ok && res.reason, 'invalid', what);
      assert.ok(!res.ok && res.message.length > 0);
    }
    assert.equal(await stateOf('dev-1', record.id), 'delivered');
    assert.equal(events.length, eventsBefore);
    // Invalid beats unknown: the answer is refused before the command is looked up.
    const unknown = await svc.respond('dev-1', 'no-such-command', Buffer.from('nope'));
    assert.equal(!unknown.ok && unknown.reason, 'invalid');
  });

  it('unknown id, another device’s command, or a finished command are refused', async (t) => {
    const { svc, record, stateOf, events } = await delivered(t);
    const ok = Buffer.from('{"status":200}');
    const unknown = await svc.respond('dev-1', 'no-such-command', ok);
    assert.deepEqual(unknown.ok ? null : unknown.reason, 'unknown');
    const otherDevice = await svc.respond('dev-2', record.id, ok);
    assert.deepEqual(otherDevice.ok ? null : otherDevice.reason, 'unknown');
    assert.equal(await stateOf('dev-1', record.id), 'delivered', "another device cannot answer dev-1's command");

    assert.equal((await svc.respond('dev-1', record.id, Buffer.from('{"status":500}'))).ok, true);
    const eventsBefore = events.length;
    const again = await svc.respond('dev-1', record.id, ok);
    assert.equal(again.ok ? null : again.reason, 'finished');
    assert.match(again.ok ? '' : again.message, /failed/);
    assert.equal(await stateOf('dev-1', record.id), 'failed');
    assert.equal(events.length, eventsBefore);
  });

  it('accepts already-parsed answers (CoAP/HTTP JSON)', async (t) => {
    const { svc } = setup(t);
    const a = (await svc.send('dev-1', input())).record;
    const b = (await svc.send('dev-1', input())).record;
    const c = (await svc.send('dev-1', input())).record;
    const ra = await svc.respond('dev-1', a.id, { status: 202, payload: { x: 1 } });
    assert.ok(ra.ok);
    assert.deepEqual([ra.record.state, ra.record.response], ['succeeded', { status: 202, payload: { x: 1 } }]);
    const rb = await svc.respond('dev-1', b.id, { status: 404 });
    assert.ok(rb.ok);
    assert.deepEqual([rb.record.state, rb.record.response], ['failed', { status: 404, payload: null }]);
    for (const bad of [{ status: 700 }, { status: '200' }, null, [200], 'ok', 200]) {
      const res = await svc.respond('dev-1', c.id, bad);
      assert.equal(res.ok ? null : res.reason, 'invalid', JSON.stringify(bad));
    }
    assert.equal((await svc.get('dev-1', c.id))?.state, 'queued');
  });

  it("a protobuf type's answer goes through its CommandResponse decoder (JSON when it falls back)", async (t) => {
    const decoded: Buffer[] = [];
    const codec = (jsonFallback: boolean) =>
      ({
        encoding: 'protobuf',
        jsonFallback,
        decodeCommandResponse: (payload: Buffer) => {
          decoded.push(payload);
          return payload[0] === 0x08
            ? { ok: true, value: { status: 200, payload: { from: 'protobuf' } } }
            : { ok: false, error: { code: 'undecodable', message: 'bad protobuf' } };
        },
      }) as unknown as DeviceTypeCodec;
    const strict = codec(false);
    const lenient = codec(true);
    const { svc } = setup(t, { codecOf: (id) => (id === 'pb' ? strict : lenient) });
    const a = (await svc.send('pb', input())).record;
    const bad = await svc.respond('pb', a.id, Buffer.from([0xff]));
    assert.deepEqual(bad, { ok: false, reason: 'invalid', message: 'bad protobuf' });
    const json = await svc.respond('pb', a.id, Buffer.from('{"status":200}'));
    assert.equal(json.ok ? null : json.reason, 'invalid', 'no JSON fallback: JSON bytes go to the protobuf decoder');
    const good = await svc.respond('pb', a.id, Buffer.from([0x08, 0xc8, 0x01]));
    assert.ok(good.ok);
    assert.deepEqual(good.record.response, { status: 200, payload: { from: 'protobuf' } });
    assert.equal(decoded.length, 3);

    const b = (await svc.send('pb-json', input())).record;
    const viaJson = await svc.respond('pb-json', b.id, Buffer.from(' \n{"status":503,"payload":"busy"}'));
    assert.ok(viaJson.ok);
    assert.deepEqual([viaJson.record.state, viaJson.record.response], ['failed', { status: 503, payload: 'busy' }]);
    assert.equal(decoded.length, 3, 'JSON fallback: the protobuf decoder was not used');
  });

  it('concurrent answers: exactly one wins', async (t) => {
    const { svc, record, statesOf } = await delivered(t);
    const results = await Promise.all(Array.from({ length: 10 }, (_, i) => svc.respond('dev-1', record.id, { status: i % 2 ? 200 : 500, payload: i })));
    assert.equal(results.filter((r) => r.ok).length, 1);
    assert.deepEqual(results.filter((r) => !r.ok).map((r) => (r.ok ? null : r.reason)), Array(9).fill('finished'));
    assert.equal(statesOf(record.id).length, 4, 'queued, sent, delivered, and one answer');
  });
});

describe('CommandService: cancel', () => {
  it('cancels a queued, sent or delivered command', async (t) => {
    const { svc, transport, statesOf, stateOf } = setup(t);
    const queued = (await svc.send('dev-2', input())).record;
    transport.online.add('dev-1');
    const sent = (await svc.send('dev-1', input())).record;
    const delivered = (await svc.send('dev-1', input())).record;
    await svc.idle();
    svc.acknowledged('dev-1', delivered.id);
    await svc.idle();
    for (const [deviceId, r, before] of [
      ['dev-2', queued, 'queued'],
      ['dev-1', sent, 'sent'],
      ['dev-1', delivered, 'delivered'],
    ] as const) {
      assert.equal(await stateOf(deviceId, r.id), before);
      const canceled = await svc.cancel(deviceId, r.id);
      assert.equal(canceled.state, 'canceled');
      assert.equal(canceled.id, r.id);
      assert.equal(await stateOf(deviceId, r.id), 'canceled');
      assert.equal(statesOf(r.id).at(-1), 'canceled');
      assert.equal(statesOf(r.id).filter((s) => s === 'canceled').length, 1);
    }
    // After a cancel, an answer and an ack change nothing.
    const late = await svc.respond('dev-1', sent.id, { status: 200 });
    assert.equal(late.ok ? null : late.reason, 'finished');
    svc.acknowledged('dev-1', sent.id);
    await svc.idle();
    assert.equal(await stateOf('dev-1', sent.id), 'canceled');
  });

  it('a finished command is a conflict (with the record); an unknown one is command_not_found', async (t) => {
    const { svc } = setup(t);
    const r = (await svc.send('dev-1', input())).record;
    await svc.respond('dev-1', r.id, { status: 200 });
    await assert.rejects(svc.cancel('dev-1', r.id), (err: unknown) => {
      gatewayError('conflict', 409)(err);
      assert.equal(isGatewayError(err) && err.details?.state, 'succeeded');
      assert.equal(isGatewayError(err) && err.details?.id, r.id);
      return true;
    });
    const other = (await svc.send('dev-1', input())).record;
    await svc.cancel('dev-1', other.id);
    await assert.rejects(svc.cancel('dev-1', other.id), gatewayError('conflict', 409));
    await assert.rejects(svc.cancel('dev-1', 'no-such-command'), gatewayError('command_not_found', 404));
    await assert.rejects(svc.cancel('dev-2', r.id), gatewayError('command_not_found', 404));
  });
});

describe('CommandService: idempotency and the queue bound', () => {
  it('the same key with the same name and params returns the same command', async (t) => {
    const { svc, events, transport } = setup(t);
    transport.online.add('dev-1');
    const first = await svc.send('dev-1', input({ idempotencyKey: 'op-1' }));
    await svc.idle();
    const again = await svc.send('dev-1', input({ idempotencyKey: 'op-1' }));
    await svc.idle();
    assert.equal(first.created, true);
    assert.equal(again.created, false);
    assert.equal(again.record.id, first.record.id);
    assert.equal(again.record.state, 'sent', 'the current record');
    assert.equal((await svc.list('dev-1', { limit: 10 })).items.length, 1);
    assert.deepEqual(events.map((e) => e.state), ['queued', 'sent'], 'a repeat emits nothing');
    assert.equal(transport.delivered.length, 1, 'and is not delivered again');
    // Another device: its own keys.
    const elsewhere = await svc.send('dev-2', input({ idempotencyKey: 'op-1' }));
    assert.equal(elsewhere.created, true);
    assert.notEqual(elsewhere.record.id, first.record.id);
  });

  it('the same key with another name or params is idempotency_conflict', async (t) => {
    const { svc } = setup(t);
    const first = (await svc.send('dev-1', input({ idempotencyKey: 'op-1' }))).record;
    for (const other of [input({ idempotencyKey: 'op-1', params: { delay: 6, mode: { soft: true } } }), input({ idempotencyKey: 'op-1', name: 'reset' }), input({ idempotencyKey: 'op-1', params: {} })]) {
      await assert.rejects(svc.send('dev-1', other), (err: unknown) => {
        gatewayError('idempotency_conflict', 422)(err);
        assert.equal(isGatewayError(err) && err.details?.commandId, first.id);
        return true;
      });
    }
    assert.equal((await svc.list('dev-1', { limit: 10 })).items.length, 1);
  });

  it('a full queue is command_queue_full; delivered and finished commands make room', async (t) => {
    const { svc, transport, events } = setup(t, { queueMax: 2 });
    const a = (await svc.send('dev-1', input())).record;
    const b = (await svc.send('dev-1', input({ idempotencyKey: 'b' }))).record;
    const eventsBefore = events.length;
    await assert.rejects(svc.send('dev-1', input()), gatewayError('command_queue_full', 429));
    assert.equal(events.length, eventsBefore, 'nothing emitted');
    assert.deepEqual((await svc.list('dev-1', { limit: 10 })).items.map((r) => r.id), [a.id, b.id], 'nothing stored');
    // A retry of a stored command is not refused.
    assert.equal((await svc.send('dev-1', input({ idempotencyKey: 'b' }))).record.id, b.id);
    // Another device is not affected.
    assert.equal((await svc.send('dev-2', input())).created, true);

    transport.online.add('dev-1');
    svc.kick('dev-1');
    await svc.idle();
    await assert.rejects(svc.send('dev-1', input()), gatewayError('command_queue_full', 429), 'sent still counts');
    svc.acknowledged('dev-1', a.id);
    await svc.idle();
    const c = (await svc.send('dev-1', input())).record;
    await svc.idle();
    await assert.rejects(svc.send('dev-1', input()), gatewayError('command_queue_full', 429));
    await svc.respond('dev-1', c.id, { status: 200 });
    assert.equal((await svc.send('dev-1', input())).created, true);
  });
});

describe('CommandService: expiry', () => {
  it('a queued command expires when its ttl passes', async (t) => {
    const { svc, reached, statesOf, stateOf } = setup(t);
    const { record } = await svc.send('dev-1', input({ ttlMs: 30 }));
    const r = await reached(record.id, 'expired');
    assert.ok(r.updatedAt >= record.expiresAt);
    assert.equal(await stateOf('dev-1', record.id), 'expired');
    assert.deepEqual(statesOf(record.id), ['queued', 'expired']);
  });

  it('a sent but unacknowledged command expires', async (t) => {
    const { svc, transport, reached, statesOf } = setup(t);
    transport.online.add('dev-1');
    const { record } = await svc.send('dev-1', input({ ttlMs: 40 }));
    await reached(record.id, 'expired');
    assert.deepEqual(statesOf(record.id), ['queued', 'sent', 'expired']);
  });

  it('a delivered command without an answer times out', async (t) => {
    const { svc, transport, reached, statesOf } = setup(t);
    transport.online.add('dev-1');
    const { record } = await svc.send('dev-1', input({ ttlMs: 150 }));
    await svc.idle();
    svc.acknowledged('dev-1', record.id);
    await svc.idle();
    assert.deepEqual(statesOf(record.id), ['queued', 'sent', 'delivered'], 'acknowledged before the ttl');
    await reached(record.id, 'timed_out');
    assert.deepEqual(statesOf(record.id), ['queued', 'sent', 'delivered', 'timed_out']);
  });

  it('an expired command is not delivered by a later resume', async (t) => {
    const { svc, transport, reached, statesOf } = setup(t);
    const { record } = await svc.send('dev-1', input({ ttlMs: 20 }));
    const fresh = (await svc.send('dev-1', input())).record;
    await reached(record.id, 'expired');
    transport.online.add('dev-1');
    svc.resume('dev-1');
    await svc.idle();
    assert.deepEqual(transport.ids(), [fresh.id]);
    assert.deepEqual(statesOf(record.id), ['queued', 'expired']);
  });

  it('a command past its expiresAt is expired, not delivered, even before its timer fires', async (t) => {
    let clock = Date.now();
    const { svc, transport, statesOf, stateOf } = setup(t, { now: () => clock });
    const late = (await svc.send('dev-1', input({ ttlMs: 60_000 }))).record;
    clock += 30_000;
    const fresh = (await svc.send('dev-1', input({ ttlMs: 60_000 }))).record;
    clock += 40_000;
    await svc.idle();
    transport.online.add('dev-1');
    svc.resume('dev-1');
    await svc.idle();
    assert.deepEqual(transport.ids(), [fresh.id]);
    assert.equal(await stateOf('dev-1', late.id), 'expired');
    assert.deepEqual(statesOf(late.id), ['queued', 'expired']);
    assert.equal((await svc.get('dev-1', late.id))?.updatedAt, clock);
  });

  it('start() re-arms expiry for open commands already in the store', async (t) => {
    const { store, bus } = setup(t);
    const now = Date.now();
    const stored: CommandRecord = { id: 'restored-1', deviceId: 'dev-1', name: 'x', params: {}, state: 'sent', createdAt: now, updatedAt: now, expiresAt: now + 30 };
    await store.create(stored, { maxUndelivered: 10 });
    const svc = new CommandService({ store, bus, log: pino({ level: 'silent' }), queueMax: 10, codecOf: () => undefined });
    t.after(() => svc.close());
    const expired = within(new Promise<CommandRecord>((resolve) => bus.once('command.updated', resolve)), 'the restored command to expire');
    await svc.start();
    const r = await expired;
    assert.deepEqual([r.id, r.state], ['restored-1', 'expired']);
  });
});

describe('CommandService: wait', () => {
  it("resolves 'finished' with the record when the device answers", async (t) => {
    const { svc } = setup(t);
    const { record } = await svc.send('dev-1', input());
    const w = svc.wait('dev-1', record.id, 10_000);
    const w2 = svc.wait('dev-1', record.id, 10_000);
    assert.equal(svc.waiting, 2);
    await svc.respond('dev-1', record.id, { status: 200, payload: 'done' });
    const [o1, o2] = await within(Promise.all([w.promise, w2.promise]), 'the waiters');
    for (const o of [o1, o2]) {
      assert.equal(o.outcome, 'finished');
      assert.equal(o.outcome === 'finished' && o.record.state, 'succeeded');
      assert.deepEqual(o.outcome === 'finished' && o.record.response, { status: 200, payload: 'done' });
    }
    assert.equal(svc.waiting, 0);
  });

  it("resolves 'finished' on a cancel or an expiry too", async (t) => {
    const { svc } = setup(t);
    const a = (await svc.send('dev-1', input())).record;
    const b = (await svc.send('dev-1', input({ ttlMs: 30 }))).record;
    const wa = svc.wait('dev-1', a.id, 10_000);
    const wb = svc.wait('dev-1', b.id, 10_000);
    await svc.cancel('dev-1', a.id);
    const oa = await within(wa.promise, 'the cancel');
    assert.equal(oa.outcome === 'finished' && oa.record.state, 'canceled');
    const ob = await within(wb.promise, 'the expiry');
    assert.equal(ob.outcome === 'finished' && ob.record.state, 'expired');
    assert.equal(svc.waiting, 0);
  });

  it("resolves 'timeout' after timeoutMs; the command stays open", async (t) => {
    const { svc, stateOf } = setup(t);
    const { record } = await svc.send('dev-1', input());
    const started = Date.now();
    const w = svc.wait('dev-1', record.id, 40);
    assert.deepEqual(await within(w.promise, 'the wait timeout'), { outcome: 'timeout' });
    assert.ok(Date.now() - started >= 35, `resolved after ${Date.now() - started} ms`);
    assert.equal(svc.waiting, 0);
    assert.equal(await stateOf('dev-1', record.id), 'queued');
  });

  it("resolves 'finished' at once when the command already finished; 'gone' when it does not exist", async (t) => {
    const { svc } = setup(t);
    const { record } = await svc.send('dev-1', input());
    await svc.respond('dev-1', record.id, { status: 500 });
    const o = await within(svc.wait('dev-1', record.id, 60_000).promise, 'an already finished command', 1000);
    assert.equal(o.outcome, 'finished');
    assert.equal(o.outcome === 'finished' && o.record.state, 'failed');
    assert.deepEqual(await within(svc.wait('dev-1', 'no-such-command', 60_000).promise, 'an unknown command', 1000), { outcome: 'gone' });
    assert.deepEqual(await within(svc.wait('dev-2', record.id, 60_000).promise, "another device's command", 1000), { outcome: 'gone' });
    assert.equal(svc.waiting, 0);
  });

  it('cancel() releases the waiter and its timer and settles the wait as aborted', async (t) => {
    const { svc } = setup(t);
    const { record } = await svc.send('dev-1', input());
    const w = svc.wait('dev-1', record.id, 60_000);
    let settled: WaitOutcome | undefined;
    void w.promise.then((o) => (settled = o));
    await turn();
    assert.equal(svc.waiting, 1);
    const timersBefore = refTimers();
    w.cancel();
    assert.equal(svc.waiting, 0);
    assert.equal(refTimers(), timersBefore - 1, "the waiter's timer is cleared");
    w.cancel();
    assert.equal(svc.waiting, 0, 'a second cancel is harmless');
    await turn();
    assert.deepEqual(settled, { outcome: 'aborted' }, 'the handler that waited completes');
    await svc.respond('dev-1', record.id, { status: 200 });
    await turn();
    assert.deepEqual(settled, { outcome: 'aborted' }, 'a later answer does not reach a released waiter');
  });

  it("close() answers every waiter 'shutdown'; later waits and sends are refused", async (t) => {
    const { svc } = setup(t);
    const a = (await svc.send('dev-1', input())).record;
    const b = (await svc.send('dev-2', input())).record;
    const waits = [svc.wait('dev-1', a.id, 60_000), svc.wait('dev-1', a.id, 60_000), svc.wait('dev-2', b.id, 60_000)];
    await turn();
    assert.equal(svc.waiting, 3);
    svc.close();
    const outcomes = await within(Promise.all(waits.map((w) => w.promise)), 'shutdown');
    assert.deepEqual(outcomes, [{ outcome: 'shutdown' }, { outcome: 'shutdown' }, { outcome: 'shutdown' }]);
    assert.equal(svc.waiting, 0);
    assert.deepEqual(await within(svc.wait('dev-1', a.id, 60_000).promise, 'a wait after close', 1000), { outcome: 'shutdown' });
    assert.equal(svc.waiting, 0);
    await assert.rejects(svc.send('dev-1', input()), gatewayError('unavailable', 503));
  });
});

describe('CommandService: forgetDevice', () => {
  it("drops the device's commands and answers its waiters 'gone'; other devices keep theirs", async (t) => {
    const { svc, events } = setup(t);
    const a = (await svc.send('dev-1', input({ idempotencyKey: 'k' }))).record;
    const a2 = (await svc.send('dev-1', input())).record;
    const b = (await svc.send('dev-2', input({ idempotencyKey: 'k' }))).record;
    const wa = svc.wait('dev-1', a.id, 60_000);
    const wa2 = svc.wait('dev-1', a2.id, 60_000);
    const wb = svc.wait('dev-2', b.id, 60_000);
    await turn();
    const eventsBefore = events.length;
    await svc.forgetDevice('dev-1');
    assert.deepEqual(await within(Promise.all([wa.promise, wa2.promise]), 'gone'), [{ outcome: 'gone' }, { outcome: 'gone' }]);
    assert.equal(svc.waiting, 1, "dev-2's waiter is still waiting");
    assert.equal(await svc.get('dev-1', a.id), null);
    assert.deepEqual(await svc.list('dev-1', { limit: 10 }), { items: [], nextCursor: null });
    assert.equal((await svc.get('dev-2', b.id))?.state, 'queued');
    assert.equal(events.length, eventsBefore);
    // The key is free again on dev-1.
    assert.equal((await svc.send('dev-1', input({ idempotencyKey: 'k' }))).created, true);
    wb.cancel();
  });
});

describe('CommandService: events', () => {
  it("every state change emits 'command.updated' exactly once, with the record after the change", async (t) => {
    const { svc, store, transport, events } = setup(t);
    transport.online.add('dev-1');
    const { record } = await svc.send('dev-1', input());
    await svc.idle();
    svc.acknowledged('dev-1', record.id);
    await svc.idle();
    await svc.respond('dev-1', record.id, { status: 200, payload: 1 });
    // Nothing below changes the state.
    svc.acknowledged('dev-1', record.id);
    await svc.respond('dev-1', record.id, { status: 200 });
    await svc.respond('dev-1', record.id, Buffer.from('garbage'));
    await assert.rejects(svc.cancel('dev-1', record.id));
    svc.resume('dev-1');
    svc.kick('dev-1');
    await svc.send('dev-1', { ...input(), name: '' }).then((r) => svc.cancel('dev-1', r.record.id));
    await svc.idle();
    const mine = events.filter((e) => e.id === record.id);
    assert.deepEqual(mine.map((e) => e.state), ['queued', 'sent', 'delivered', 'succeeded']);
    assert.deepEqual(mine.at(-1), await store.get('dev-1', record.id));
    for (let i = 1; i < mine.length; i++) assert.ok((mine[i] as CommandRecord).updatedAt >= (mine[i - 1] as CommandRecord).updatedAt);
    assert.deepEqual(events.filter((e) => e.id !== record.id).map((e) => e.state), ['queued', 'sent', 'canceled']);
  });
});

describe('Deadlines', () => {
  it('fires keys in time order, each once and not before its time', async () => {
    const now = Date.now();
    const plan: [string, number][] = [
      ['c', now + 60],
      ['a', now + 10],
      ['past', now - 1000],
      ['d', now + 80],
      ['b', now + 30],
    ];
    const fired: { key: string; at: number }[] = [];
    let done!: () => void;
    const all = new Promise<void>((resolve) => (done = resolve));
    const d = new Deadlines<string>((key) => {
      fired.push({ key, at: Date.now() });
      if (fired.length === plan.length) done();
    });
    for (const [key, at] of plan) d.add(at, key);
    assert.equal(d.size, plan.length);
    await within(all, 'every deadline');
    assert.deepEqual(fired.map((f) => f.key), ['past', 'a', 'b', 'c', 'd']);
    for (const f of fired) assert.ok(f.at >= (plan.find(([k]) => k === f.key) as [string, number])[1], `${f.key} fired early`);
    assert.equal(d.size, 0);
    d.close();
  });

  it('many keys share one timer', async (t) => {
    const realSet = globalThis.setTimeout;
    const realClear = globalThis.clearTimeout;
    const live = new Set<unknown>();
    let created = 0;
    t.after(() => {
      globalThis.setTimeout = realSet;
      globalThis.clearTimeout = realClear;
    });
    const now = Date.now();
    const n = 500;
    const fired: number[] = [];
    let done!: () => void;
    const all = new Promise<void>((resolve) => (done = resolve));
    const d = new Deadlines<number>((at) => {
      fired.push(at);
      if (fired.length === n) done();
    });
    globalThis.setTimeout = ((fn: (...args: unknown[]) => void, ms?: number, ...args: unknown[]) => {
      created++;
      const h = realSet(() => {
        live.delete(h);
        fn(...args);
      }, ms);
      live.add(h);
      return h;
    }) as unknown as typeof setTimeout;
    globalThis.clearTimeout = ((h: NodeJS.Timeout | undefined) => {
      live.delete(h);
      realClear(h);
    }) as unknown as typeof clearTimeout;
    try {
      // Descending first (every add is earlier than the armed one: re-arms), then scrambled.
      for (let i = 0; i < n / 2; i++) d.add(now + 60 - (i % 50), now + 60 - (i % 50));
      for (let i = 0; i < n / 2; i++) d.add(now + ((i * 37) % 61), now + ((i * 37) % 61));
    } finally {
      globalThis.setTimeout = realSet;
      globalThis.clearTimeout = realClear;
    }
    assert.ok(created >= 1);
    assert.equal(live.size, 1, `${live.size} timers armed for ${n} keys`);
    assert.equal(d.size, n);
    await within(all, 'every deadline');
    assert.deepEqual(fired, [...fired].sort((x, y) => x - y), 'in time order');
    assert.equal(d.size, 0);
    d.close();
  });

  it('a key earlier than the armed one re-arms the timer', async () => {
    const fired: string[] = [];
    let early!: () => void;
    const gotEarly = new Promise<void>((resolve) => (early = resolve));
    const d = new Deadlines<string>((key) => {
      fired.push(key);
      if (key === 'early') early();
    });
    d.add(Date.now() + 60_000, 'late');
    d.add(Date.now() + 20, 'early');
    await within(gotEarly, 'the earlier key', 1000);
    assert.deepEqual(fired, ['early']);
    assert.equal(d.size, 1);
    d.close();
  });

  it('a key added from the callback is armed; one beyond setTimeout’s range does not fire early', async (t) => {
    const warnings: Error[] = [];
    const onWarning = (w: Error) => void warnings.push(w);
    process.on('warning', onWarning);
    t.after(() => void process.off('warning', onWarning));
    const fired: string[] = [];
    let second!: () => void;
    const gotSecond = new Promise<void>((resolve) => (second = resolve));
    const d = new Deadlines<string>((key) => {
      fired.push(key);
      if (key === 'first') d.add(Date.now() + 20, 'second');
      if (key === 'second') second();
    });
    d.add(Date.now() + 40 * 24 * 3_600_000, 'in 40 days');
    d.add(Date.now() + 10, 'first');
    await within(gotSecond, 'the key added from the callback', 1000);
    // Unclamped, the 40-day key would now fire within a millisecond: a later sentinel shows it did not.
    await within(new Promise<void>((resolve) => new Deadlines<string>(() => resolve()).add(Date.now() + 30, 'sentinel')), 'the sentinel', 1000);
    assert.deepEqual(fired, ['first', 'second']);
    assert.equal(d.size, 1);
    assert.deepEqual(warnings.map((w) => w.name), [], 'no TimeoutOverflowWarning: long delays are clamped');
    d.close();
  });

  it('close() stops everything, also later adds', async () => {
    const fired: string[] = [];
    const d = new Deadlines<string>((key) => fired.push(key));
    d.add(Date.now() + 10, 'a');
    d.add(Date.now() + 20, 'b');
    d.add(Date.now() - 5, 'overdue');
    d.close();
    assert.equal(d.size, 0);
    d.add(Date.now() + 5, 'after close');
    assert.equal(d.size, 0);
    // A second, open instance with a later deadline: by the time it fires, the closed one would have.
    const sentinel = new Promise<void>((resolve) => new Deadlines<string>(() => resolve()).add(Date.now() + 60, 'sentinel'));
    await within(sentinel, 'the sentinel deadline', 1000);
    assert.deepEqual(fired, []);
  });
});
