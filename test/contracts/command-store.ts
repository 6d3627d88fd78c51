/**
 * The CommandStore contract: every implementation (memory, Redis) runs
 * `commandStoreContract(name, build)`. `build(opts?)` resolves a fresh, empty store (with
 * `historyMax` when given, else the implementation's default); each test closes it.
 * Nothing here relies on an implementation's internals: only the CommandStore port.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import type { CommandRecord, CommandState } from '../../src/core/commands.js';
import type { CommandStore } from '../../src/core/ports.js';

/** One creation time for every record: creation order must be call order, not time or id order. */
const T0 = Date.now();
let counter = 0;

/**
 * A queued command. Ids sort in the reverse of creation order, so an implementation that orders by
 * id (instead of by creation) fails the order tests.
 */
export function command(deviceId: string, over: Partial<CommandRecord> = {}): CommandRecord {
  const n = ++counter;
  return {
    id: `${String(1_000_000 - n).padStart(7, '0')}-${randomUUID()}`,
    deviceId,
    name: 'reboot',
    params: { n, nested: { delay: 5, tags: ['a', 'b'] } },
    state: 'queued',
    createdAt: T0,
    updatedAt: T0,
    expiresAt: T0 + 3_600_000,
    ...over,
  };
}

const BIG = { maxUndelivered: 1000 };
const ids = (records: readonly CommandRecord[]) => records.map((r) => r.id);

/** Builds a fresh, empty store; `historyMax` bounds the finished records kept per device. */
export type BuildCommandStore = (opts?: { historyMax: number }) => Promise<CommandStore>;

export function commandStoreContract(name: string, build: BuildCommandStore): void {
  describe(`CommandStore contract: ${name}`, () => {
    const open = async (t: { after: (fn: () => Promise<void>) => void }, opts?: { historyMax: number }) => {
      const s = await build(opts);
      t.after(() => s.close());
      return s;
    };

    /** Creates records that must be created (fails the test otherwise). */
    const created = async (s: CommandStore, records: CommandRecord[]) => {
      for (const r of records) {
        const res = await s.create(r, BIG);
        assert.equal(res.kind, 'created', `create ${r.id}`);
      }
      return records;
    };

    const move = (s: CommandStore, r: CommandRecord, from: readonly CommandState[], state: CommandState, updatedAt = T0 + 1) =>
      s.transition(r.deviceId, r.id, from, { state, updatedAt });

    describe('create and get', () => {
      it('round-trips a record, with and without optional fields', async (t) => {
        const s = await open(t);
        const plain = command('d1');
        const keyed = command('d1', { idempotencyKey: 'k-1', params: {} });
        const r1 = await s.create(plain, BIG);
        assert.deepEqual(r1, { kind: 'created', record: plain });
        assert.deepEqual(await s.create(keyed, BIG), { kind: 'created', record: keyed });
        assert.deepEqual(await s.get('d1', plain.id), plain);
        assert.deepEqual(await s.get('d1', keyed.id), keyed);
        assert.equal(await s.get('d1', 'nope'), null, 'unknown id');
        assert.equal(await s.get('d2', plain.id), null, 'another device does not see it');
        assert.equal(await s.get('nobody', plain.id), null, 'unknown device');
      });

      it('returns copies: mutating what went in or came out does not change the store', async (t) => {
        const s = await open(t);
        const input = command('d1', { idempotencyKey: 'k' });
        const pristine = structuredClone(input);
        const res = await s.create(input, BIG);
        assert.equal(res.kind, 'created');
        input.state = 'canceled';
        (input.params.nested as { delay: number }).delay = 99;
        if (res.kind === 'created') {
          res.record.name = 'mutated';
          (res.record.params.nested as { tags: string[] }).tags.push('x');
        }
        const mutateAll = (r: CommandRecord | null | undefined) => {
          assert.ok(r);
          r.state = 'failed';
          r.params.n = -1;
          (r.params.nested as { delay: number }).delay = -1;
          if (r.response) (r.response.payload as { ok: unknown }).ok = 'mutated';
        };
        mutateAll(await s.get('d1', pristine.id));
        mutateAll((await s.list('d1', { limit: 10 })).items[0]);
        mutateAll((await s.open('d1'))[0]);
        mutateAll((await s.openAll())[0]);
        const existing = await s.create(command('d1', { idempotencyKey: 'k' }), BIG);
        assert.equal(existing.kind, 'existing');
        if (existing.kind === 'existing') mutateAll(existing.record);
        assert.deepEqual(await s.get('d1', pristine.id), pristine);

        const moved = await s.transition('d1', pristine.id, ['queued'], { state: 'succeeded', updatedAt: T0 + 5, response: { status: 200, payload: { ok: true } } });
        mutateAll(moved);
        assert.deepEqual(await s.get('d1', pristine.id), { ...pristine, state: 'succeeded', updatedAt: T0 + 5, response: { status: 200, payload: { ok: true } } });
      });

      it('keeps creation order (not id or time order) in open and list', async (t) => {
        const s = await open(t);
        const records = await created(s, Array.from({ length: 6 }, () => command('d1')));
        await created(s, [command('d2')]);
        assert.deepEqual(ids(await s.open('d1')), ids(records));
        assert.deepEqual(ids((await s.list('d1', { limit: 100 })).items), ids(records));
        // A state change does not move a record.
        assert.ok(await move(s, records[2] as CommandRecord, ['queued'], 'sent'));
        assert.ok(await move(s, records[0] as CommandRecord, ['queued'], 'canceled'));
        assert.deepEqual(ids((await s.list('d1', { limit: 100 })).items), ids(records));
        assert.deepEqual(ids(await s.open('d1')), ids(records.slice(1)));
      });
    });

    describe('idempotency keys', () => {
      it('a key the device already used returns the original record, unchanged, and stores nothing', async (t) => {
        const s = await open(t);
        const original = command('d1', { idempotencyKey: 'same' });
        await created(s, [original]);
        const again = command('d1', { idempotencyKey: 'same', name: 'other', params: { different: true } });
        assert.deepEqual(await s.create(again, BIG), { kind: 'existing', record: original });
        assert.equal(await s.get('d1', again.id), null);
        assert.deepEqual(ids((await s.list('d1', { limit: 100 })).items), [original.id]);
        // Still existing after the original changed state: the current record comes back.
        const done = await s.transition('d1', original.id, ['queued'], { state: 'succeeded', updatedAt: T0 + 9, response: { status: 200, payload: null } });
        assert.ok(done);
        assert.deepEqual(await s.create(command('d1', { idempotencyKey: 'same' }), BIG), { kind: 'existing', record: done });
      });

      it('keys are per device: the same key on another device creates a new command', async (t) => {
        const s = await open(t);
        const a = command('d1', { idempotencyKey: 'k' });
        const b = command('d2', { idempotencyKey: 'k' });
        await created(s, [a, b]);
        assert.deepEqual(await s.get('d2', b.id), b);
        assert.deepEqual(await s.create(command('d2', { idempotencyKey: 'k' }), BIG), { kind: 'existing', record: b });
        assert.deepEqual(await s.create(command('d1', { idempotencyKey: 'k' }), BIG), { kind: 'existing', record: a });
      });

      it('records without a key are never merged', async (t) => {
        const s = await open(t);
        const records = await created(s, [command('d1'), command('d1')]);
        assert.equal((await s.open('d1')).length, records.length);
      });

      it('a known key wins over a full queue', async (t) => {
        const s = await open(t);
        const first = command('d1', { idempotencyKey: 'retry' });
        assert.equal((await s.create(first, { maxUndelivered: 1 })).kind, 'created');
        assert.deepEqual(await s.create(command('d1', { idempotencyKey: 'retry' }), { maxUndelivered: 1 }), { kind: 'existing', record: first });
      });

      it('concurrent creates with one key: exactly one is created, the others get it', async (t) => {
        const s = await open(t);
        const attempts = Array.from({ length: 20 }, () => command('d1', { idempotencyKey: 'race' }));
        const results = await Promise.all(attempts.map((r) => s.create(r, BIG)));
        const winners = results.filter((r) => r.kind === 'created');
        assert.equal(winners.length, 1);
        const winner = (winners[0] as { record: CommandRecord }).record;
        for (const r of results) {
          assert.notEqual(r.kind, 'full');
          if (r.kind === 'existing') assert.equal(r.record.id, winner.id);
        }
        assert.deepEqual(ids(await s.open('d1')), [winner.id]);
      });
    });

    describe('queue bound (maxUndelivered)', () => {
      it('counts only queued and sent commands; full stores nothing and reports the count', async (t) => {
        const s = await open(t);
        const max = { maxUndelivered: 2 };
        const [q, snt] = [command('d1'), command('d1')];
        assert.equal((await s.create(q, max)).kind, 'created');
        assert.equal((await s.create(snt, max)).kind, 'created');
        assert.ok(await move(s, snt, ['queued'], 'sent'));

        const refused = command('d1', { idempotencyKey: 'refused' });
        assert.deepEqual(await s.create(refused, max), { kind: 'full', undelivered: 2 });
        assert.equal(await s.get('d1', refused.id), null, 'full stores nothing');
        assert.deepEqual(ids((await s.list('d1', { limit: 100 })).items), [q.id, snt.id]);
        // Another device has its own bound.
        assert.equal((await s.create(command('d2'), max)).kind, 'created');

        // delivered does not count.
        assert.ok(await move(s, snt, ['sent'], 'delivered'));
        const third = command('d1');
        assert.equal((await s.create(third, max)).kind, 'created');
        assert.deepEqual(await s.create(command('d1'), max), { kind: 'full', undelivered: 2 });

        // Finished ones do not count either; the refused key was not remembered.
        assert.ok(await move(s, q, ['queued'], 'expired'));
        const retry = command('d1', { idempotencyKey: 'refused' });
        assert.equal((await s.create(retry, max)).kind, 'created');
        assert.deepEqual(await s.create(command('d1'), max), { kind: 'full', undelivered: 2 });
        for (const r of [third, retry]) assert.ok(await move(s, r, ['queued'], 'canceled'));
        assert.equal((await s.create(command('d1'), max)).kind, 'created');
      });

      it('concurrent creates never exceed the bound', async (t) => {
        const s = await open(t);
        const results = await Promise.all(Array.from({ length: 20 }, () => s.create(command('d1'), { maxUndelivered: 5 })));
        assert.equal(results.filter((r) => r.kind === 'created').length, 5);
        assert.equal(results.filter((r) => r.kind === 'full').length, 15);
        assert.equal((await s.open('d1')).length, 5);
      });
    });

    describe('transition', () => {
      it('moves only from one of the given states, storing state, updatedAt and response', async (t) => {
        const s = await open(t);
        const r = command('d1');
        await created(s, [r]);
        const sent = await s.transition('d1', r.id, ['queued'], { state: 'sent', updatedAt: T0 + 10 });
        assert.deepEqual(sent, { ...r, state: 'sent', updatedAt: T0 + 10 });
        assert.deepEqual(await s.get('d1', r.id), sent);

        assert.equal(await s.transition('d1', r.id, ['queued'], { state: 'delivered', updatedAt: T0 + 20 }), null, 'from-state mismatch');
        assert.equal(await s.transition('d1', r.id, [], { state: 'delivered', updatedAt: T0 + 20 }), null, 'empty from');
        assert.deepEqual(await s.get('d1', r.id), sent, 'a refused transition changes nothing');

        const delivered = await s.transition('d1', r.id, ['queued', 'sent'], { state: 'delivered', updatedAt: T0 + 30 });
        assert.equal(delivered?.state, 'delivered');
        const response = { status: 404, payload: { error: 'no such relay', detail: [1, 2, { deep: null }] } };
        const failed = await s.transition('d1', r.id, ['queued', 'sent', 'delivered'], { state: 'failed', updatedAt: T0 + 40, response });
        assert.deepEqual(failed, { ...r, state: 'failed', updatedAt: T0 + 40, response });
        assert.deepEqual(await s.get('d1', r.id), failed);
        assert.equal(await s.transition('d1', r.id, ['queued', 'sent', 'delivered'], { state: 'canceled', updatedAt: T0 + 50 }), null, 'no change after finish');
        assert.deepEqual(await s.get('d1', r.id), failed);
      });

      it('a response with a null payload is stored as such', async (t) => {
        const s = await open(t);
        const r = command('d1');
        await created(s, [r]);
        const done = await s.transition('d1', r.id, ['queued'], { state: 'succeeded', updatedAt: T0 + 1, response: { status: 204, payload: null } });
        assert.deepEqual(done?.response, { status: 204, payload: null });
        assert.deepEqual((await s.get('d1', r.id))?.response, { status: 204, payload: null });
      });

      it('unknown id or another device: null, nothing changed', async (t) => {
        const s = await open(t);
        const r = command('d1');
        await created(s, [r]);
        assert.equal(await s.transition('d1', 'nope', ['queued'], { state: 'sent', updatedAt: T0 + 1 }), null);
        assert.equal(await s.transition('d2', r.id, ['queued'], { state: 'sent', updatedAt: T0 + 1 }), null);
        assert.equal(await s.transition('nobody', r.id, ['queued'], { state: 'sent', updatedAt: T0 + 1 }), null);
        assert.deepEqual(await s.get('d1', r.id), r);
        assert.equal(await s.get('d2', r.id), null, 'a refused transition creates nothing');
      });

      it('concurrent transitions from one state: exactly one wins', async (t) => {
        const s = await open(t);
        const r = command('d1');
        await created(s, [r]);
        assert.ok(await move(s, r, ['queued'], 'sent'));
        const targets: CommandState[] = ['delivered', 'succeeded', 'failed', 'canceled', 'expired'];
        const results = await Promise.all(
          Array.from({ length: 20 }, (_, i) =>
            s.transition('d1', r.id, ['sent'], {
              state: targets[i % targets.length] as CommandState,
              updatedAt: T0 + 100 + i,
              response: { status: 200 + i, payload: i },
            }),
          ),
        );
        const winners = results.filter((x): x is CommandRecord => x !== null);
        assert.equal(winners.length, 1);
        assert.deepEqual(await s.get('d1', r.id), winners[0]);
      });
    });

    describe('list', () => {
      it('paginates with limit and nextCursor, without gaps or repeats', async (t) => {
        const s = await open(t);
        const records = await created(s, Array.from({ length: 25 }, () => command('d1')));
        await created(s, [command('d2')]);
        const seen: string[] = [];
        const sizes: number[] = [];
        let cursor: string | undefined;
        for (let pages = 0; pages < 10; pages++) {
          const page = await s.list('d1', { limit: 10, ...(cursor !== undefined && { cursor }) });
          sizes.push(page.items.length);
          seen.push(...ids(page.items));
          if (page.nextCursor === null) break;
          assert.equal(typeof page.nextCursor, 'string');
          cursor = page.nextCursor;
        }
        assert.deepEqual(sizes, [10, 10, 5]);
        assert.deepEqual(seen, ids(records));
      });

      it('a page that ends exactly at the last record has no nextCursor', async (t) => {
        const s = await open(t);
        const records = await created(s, Array.from({ length: 4 }, () => command('d1')));
        const all = await s.list('d1', { limit: 4 });
        assert.deepEqual(ids(all.items), ids(records));
        assert.equal(all.nextCursor, null);
        const first = await s.list('d1', { limit: 2 });
        assert.ok(first.nextCursor);
        const second = await s.list('d1', { limit: 2, cursor: first.nextCursor });
        assert.deepEqual(ids(second.items), ids(records.slice(2)));
        assert.equal(second.nextCursor, null);
      });

      it('keeps paging correctly while records change state and new ones are created', async (t) => {
        const s = await open(t);
        const records = await created(s, Array.from({ length: 6 }, () => command('d1')));
        const first = await s.list('d1', { limit: 3 });
        assert.deepEqual(ids(first.items), ids(records.slice(0, 3)));
        assert.ok(first.nextCursor);
        assert.ok(await move(s, records[0] as CommandRecord, ['queued'], 'canceled'));
        assert.ok(await move(s, records[4] as CommandRecord, ['queued'], 'sent'));
        const later = await created(s, [command('d1')]);
        const rest = await s.list('d1', { limit: 100, cursor: first.nextCursor });
        assert.deepEqual(ids(rest.items), [...ids(records.slice(3)), ...ids(later)]);
        assert.equal(rest.items[1]?.state, 'sent');
        assert.equal(rest.nextCursor, null);
      });

      it('filters by states, also across pages', async (t) => {
        const s = await open(t);
        const records = await created(s, Array.from({ length: 12 }, () => command('d1')));
        const states: CommandState[] = ['queued', 'sent', 'delivered', 'succeeded', 'failed', 'canceled'];
        for (const [i, r] of records.entries()) {
          const target = states[i % states.length] as CommandState;
          if (target !== 'queued') assert.ok(await move(s, r, ['queued'], target));
        }
        const byState = (wanted: readonly CommandState[]) => ids(records.filter((_, i) => wanted.includes(states[i % states.length] as CommandState)));

        assert.deepEqual(ids((await s.list('d1', { limit: 100, states: ['sent'] })).items), byState(['sent']));
        const open3 = ['queued', 'sent', 'delivered'] as const;
        const seen: string[] = [];
        let cursor: string | undefined;
        for (let pages = 0; pages < 10; pages++) {
          const page = await s.list('d1', { limit: 2, states: open3, ...(cursor !== undefined && { cursor }) });
          assert.ok(page.items.length <= 2);
          for (const item of page.items) assert.ok(open3.includes(item.state as (typeof open3)[number]), item.state);
          seen.push(...ids(page.items));
          if (page.nextCursor === null) break;
          cursor = page.nextCursor;
        }
        assert.deepEqual(seen, byState(open3));
        assert.deepEqual((await s.list('d1', { limit: 100, states: ['expired'] })).items, []);
        assert.equal((await s.list('d1', { limit: 100, states: ['expired'] })).nextCursor, null);
        assert.deepEqual(ids((await s.list('d1', { limit: 100 })).items), ids(records), 'no states: everything');
      });

      it('an unknown device is an empty page', async (t) => {
        const s = await open(t);
        assert.deepEqual(await s.list('nobody', { limit: 10 }), { items: [], nextCursor: null });
      });

      it('a garbage cursor is an empty page', async (t) => {
        const s = await open(t);
        await created(s, Array.from({ length: 3 }, () => command('d1')));
        for (const cursor of ['garbage', 'not-a-cursor', '%%%', '!!', 'x'.repeat(300), '0', '-1', '{"seq":0}']) {
          assert.deepEqual(await s.list('d1', { limit: 10, cursor }), { items: [], nextCursor: null }, `cursor ${JSON.stringify(cursor)}`);
        }
      });
    });

    describe('open, openAll, forgetDevice', () => {
      it('open returns only queued, sent and delivered, in creation order', async (t) => {
        const s = await open(t);
        const records = await created(s, Array.from({ length: 8 }, () => command('d1')));
        const plan: CommandState[] = ['queued', 'sent', 'delivered', 'succeeded', 'failed', 'timed_out', 'expired', 'canceled'];
        for (const [i, r] of records.entries()) {
          const target = plan[i] as CommandState;
          if (target === 'timed_out') {
            assert.ok(await move(s, r, ['queued'], 'delivered'));
            assert.ok(await move(s, r, ['delivered'], 'timed_out'));
          } else if (target !== 'queued') assert.ok(await move(s, r, ['queued'], target));
        }
        const got = await s.open('d1');
        assert.deepEqual(ids(got), ids(records.slice(0, 3)));
        assert.deepEqual(got.map((r) => r.state), ['queued', 'sent', 'delivered']);
        assert.deepEqual(await s.open('nobody'), []);
      });

      it('openAll returns the open commands of every device', async (t) => {
        const s = await open(t);
        assert.deepEqual(await s.openAll(), []);
        const [a1, a2, b1, c1] = await created(s, [command('a'), command('a'), command('b'), command('c')]);
        assert.ok(await move(s, a2 as CommandRecord, ['queued'], 'succeeded'));
        assert.ok(await move(s, c1 as CommandRecord, ['queued'], 'delivered'));
        const all = await s.openAll();
        const byId = (x: CommandRecord, y: CommandRecord) => (x.id < y.id ? -1 : 1);
        const expected: CommandRecord[] = [a1 as CommandRecord, b1 as CommandRecord, { ...(c1 as CommandRecord), state: 'delivered', updatedAt: T0 + 1 }];
        assert.deepEqual([...all].sort(byId), expected.sort(byId));
        // Per device, creation order still holds.
        const more = await created(s, [command('a')]);
        assert.deepEqual(ids((await s.openAll()).filter((r) => r.deviceId === 'a')), [a1?.id, ...ids(more)]);
      });

      it('forgetDevice removes the records and keys of that device only', async (t) => {
        const s = await open(t);
        const [a, b] = await created(s, [command('d1', { idempotencyKey: 'k' }), command('d2', { idempotencyKey: 'k' })]);
        await created(s, [command('d1')]);
        await s.forgetDevice('d1');
        assert.equal(await s.get('d1', (a as CommandRecord).id), null);
        assert.deepEqual(await s.open('d1'), []);
        assert.deepEqual(await s.list('d1', { limit: 10 }), { items: [], nextCursor: null });
        assert.deepEqual(ids(await s.openAll()), [(b as CommandRecord).id]);
        assert.equal(await move(s, a as CommandRecord, ['queued'], 'sent'), null);
        // d1's key is free again; d2's is not.
        const fresh = command('d1', { idempotencyKey: 'k' });
        assert.deepEqual(await s.create(fresh, BIG), { kind: 'created', record: fresh });
        assert.deepEqual(await s.create(command('d2', { idempotencyKey: 'k' }), BIG), { kind: 'existing', record: b });
        assert.deepEqual(await s.get('d2', (b as CommandRecord).id), b);
        await s.forgetDevice('nobody');
      });
    });

    describe('history bound (historyMax)', () => {
      async function setup(t: { after: (fn: () => Promise<void>) => void }, historyMax: number, n: number, keyed = false) {
        const s = await open(t, { historyMax });
        const records: CommandRecord[] = [];
        for (let i = 0; i < n; i++) {
          const r = command('d1', keyed ? { idempotencyKey: `k${i}` } : {});
          assert.equal((await s.create(r, BIG)).kind, 'created');
          records.push(r);
        }
        const finish = async (r: CommandRecord, state: CommandState = 'succeeded', from: readonly CommandState[] = ['queued']) =>
          assert.ok(await s.transition('d1', r.id, from, { state, updatedAt: Date.now() }), `finish ${r.id}`);
        const listed = async () => ids((await s.list('d1', { limit: 1000 })).items);
        return { s, records, finish, listed };
      }

      it('drops the oldest finished records past the bound; open ones never', async (t) => {
        const { s, records, finish, listed } = await setup(t, 2, 6);
        const [open0, f1, f2, open3, f4, f5] = records as [CommandRecord, CommandRecord, CommandRecord, CommandRecord, CommandRecord, CommandRecord];
        await finish(f1);
        await finish(f2, 'failed');
        assert.deepEqual(await listed(), ids(records), 'at the bound: nothing dropped');
        await finish(f4, 'canceled');
        assert.deepEqual(await listed(), [open0.id, f2.id, open3.id, f4.id, f5.id], 'the oldest finished one went, the older open one stayed');
        assert.equal(await s.get('d1', f1.id), null);
        await finish(f5, 'expired');
        assert.deepEqual(await listed(), [open0.id, open3.id, f4.id, f5.id]);
        assert.deepEqual(ids(await s.open('d1')), [open0.id, open3.id]);
      });

      it('historyMax 0 keeps no finished record, and never drops open ones', async (t) => {
        const { records, finish, listed } = await setup(t, 0, 5);
        await finish(records[1] as CommandRecord);
        await finish(records[3] as CommandRecord, 'sent', ['queued']);
        assert.deepEqual(await listed(), [0, 2, 3, 4].map((i) => (records[i] as CommandRecord).id));
      });

      it('the transition that finishes a record past the bound still returns it', async (t) => {
        const { s, records } = await setup(t, 0, 1);
        const r = records[0] as CommandRecord;
        const done = await s.transition('d1', r.id, ['queued'], { state: 'succeeded', updatedAt: T0 + 3, response: { status: 200, payload: 1 } });
        assert.deepEqual(done, { ...r, state: 'succeeded', updatedAt: T0 + 3, response: { status: 200, payload: 1 } });
        assert.equal(await s.get('d1', r.id), null);
      });

      it('the idempotency keys of dropped records go with them', async (t) => {
        const { s, records, finish } = await setup(t, 1, 3, true);
        await finish(records[0] as CommandRecord);
        await finish(records[1] as CommandRecord);
        assert.equal(await s.get('d1', (records[0] as CommandRecord).id), null);
        // k0's record is gone: the key makes a new command; k1's (kept) and k2's (open) still answer.
        const fresh = command('d1', { idempotencyKey: 'k0' });
        assert.deepEqual(await s.create(fresh, BIG), { kind: 'created', record: fresh });
        const k1 = await s.create(command('d1', { idempotencyKey: 'k1' }), BIG);
        assert.equal(k1.kind, 'existing');
        assert.equal(k1.kind === 'existing' && k1.record.id, (records[1] as CommandRecord).id);
        const k2 = await s.create(command('d1', { idempotencyKey: 'k2' }), BIG);
        assert.equal(k2.kind === 'existing' && k2.record.id, (records[2] as CommandRecord).id);
      });

      it('the bound is per device', async (t) => {
        const s = await open(t, { historyMax: 1 });
        const a = command('a');
        const b = command('b');
        for (const r of [a, b]) {
          await s.create(r, BIG);
          assert.ok(await s.transition(r.deviceId, r.id, ['queued'], { state: 'succeeded', updatedAt: 1 }));
        }
        assert.ok(await s.get('a', a.id));
        assert.ok(await s.get('b', b.id));
      });

      it('forgetDevice starts the device over: its old finished records do not count', async (t) => {
        const { s, records, finish } = await setup(t, 1, 1);
        await finish(records[0] as CommandRecord);
        await s.forgetDevice('d1');
        const again = command('d1');
        await s.create(again, BIG);
        await finish(again);
        assert.ok(await s.get('d1', again.id), 'one finished record: within the bound');
      });

      it('a finished record moved back to an open state no longer counts as finished', async (t) => {
        const { records, finish, listed } = await setup(t, 2, 4);
        await finish(records[0] as CommandRecord);
        await finish(records[1] as CommandRecord);
        // The port allows any compare-and-set; reopening must not leave a stale finished count.
        await finish(records[0] as CommandRecord, 'queued', ['succeeded']);
        await finish(records[2] as CommandRecord);
        assert.deepEqual(await listed(), ids(records), 'two finished records: at the bound, nothing dropped');
      });
    });
  });
}
