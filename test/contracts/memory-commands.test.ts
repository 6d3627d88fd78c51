import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import type { CommandRecord, CommandState } from '../../src/core/commands.js';
import { MemoryCommandStore } from '../../src/stores/memory/commands.js';
import { command, commandStoreContract } from './command-store.js';

commandStoreContract('memory', async () => new MemoryCommandStore());

describe('MemoryCommandStore: historyMax', () => {
  const BIG = { maxUndelivered: 1000 };

  async function setup(historyMax: number, n: number, keyed = false) {
    const s = new MemoryCommandStore({ historyMax });
    const records: CommandRecord[] = [];
    for (let i = 0; i < n; i++) {
      const r = command('d1', keyed ? { idempotencyKey: `k${i}` } : {});
      assert.equal((await s.create(r, BIG)).kind, 'created');
      records.push(r);
    }
    const finish = async (r: CommandRecord, state: CommandState = 'succeeded', from: readonly CommandState[] = ['queued']) =>
      assert.ok(await s.transition('d1', r.id, from, { state, updatedAt: Date.now() }), `finish ${r.id}`);
    const listed = async () => (await s.list('d1', { limit: 1000 })).items.map((r) => r.id);
    return { s, records, finish, listed };
  }

  it('drops the oldest finished records past the bound; open ones never', async (t) => {
    const { s, records, finish, listed } = await setup(2, 6);
    t.after(() => s.close());
    const [open0, f1, f2, open3, f4, f5] = records as [CommandRecord, CommandRecord, CommandRecord, CommandRecord, CommandRecord, CommandRecord];
    await finish(f1);
    await finish(f2, 'failed');
    assert.deepEqual(await listed(), records.map((r) => r.id), 'at the bound: nothing dropped');
    await finish(f4, 'canceled');
    assert.deepEqual(await listed(), [open0.id, f2.id, open3.id, f4.id, f5.id], 'the oldest finished one went, the older open one stayed');
    assert.equal(await s.get('d1', f1.id), null);
    await finish(f5, 'expired');
    assert.deepEqual(await listed(), [open0.id, open3.id, f4.id, f5.id]);
    assert.deepEqual((await s.open('d1')).map((r) => r.id), [open0.id, open3.id]);
  });

  it('historyMax 0 keeps no finished record, and never drops open ones', async (t) => {
    const { s, records, finish, listed } = await setup(0, 5);
    t.after(() => s.close());
    await finish(records[1] as CommandRecord);
    await finish(records[3] as CommandRecord, 'sent', ['queued']);
    assert.deepEqual(await listed(), [0, 2, 3, 4].map((i) => (records[i] as CommandRecord).id));
  });

  it('the idempotency keys of dropped records go with them', async (t) => {
    const { s, records, finish } = await setup(1, 3, true);
    t.after(() => s.close());
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
    const s = new MemoryCommandStore({ historyMax: 1 });
    t.after(() => s.close());
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
    const { s, records, finish } = await setup(1, 1);
    t.after(() => s.close());
    await finish(records[0] as CommandRecord);
    await s.forgetDevice('d1');
    const again = command('d1');
    await s.create(again, BIG);
    await finish(again);
    assert.ok(await s.get('d1', again.id), 'one finished record: within the bound');
  });

  it('a finished record moved back to an open state no longer counts as finished', async (t) => {
    const { s, records, finish, listed } = await setup(2, 4);
    t.after(() => s.close());
    await finish(records[0] as CommandRecord);
    await finish(records[1] as CommandRecord);
    // The port allows any compare-and-set; reopening must not leave a stale finished count.
    await finish(records[0] as CommandRecord, 'queued', ['succeeded']);
    await finish(records[2] as CommandRecord);
    assert.deepEqual(await listed(), records.map((r) => r.id), 'two finished records: at the bound, nothing dropped');
  });
});
