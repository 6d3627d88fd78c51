/**
 * The CredentialLedger contract (style rule 2): the file ledger and the Redis ledger run this
 * suite through `credentialLedgerContract(name, open)`. `open` gives a fresh, empty ledger space
 * and a way to open another instance on the same space (another process: the CLI, a second gateway).
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import type { TestContext } from 'node:test';
import type { CredentialRecord } from '../../src/core/model.js';
import type { CredentialLedger } from '../../src/core/ports.js';
import { withDeadline } from '../helpers/pki.js';

export function credential(id: string, over: Partial<CredentialRecord> = {}): CredentialRecord {
  return { id, type: 'generic', serial: null, notAfter: null, tokenId: 't0', issuedAt: 1000, revokedAt: null, revokedSerials: [], ...over };
}

export interface LedgerSpace {
  ledger: CredentialLedger;
  /** Another instance on the same records (its own connection / file handles). */
  other(): Promise<CredentialLedger>;
}

/** Records the batches a watch delivers and waits for one that matches. */
export class WatchLog {
  readonly batches: CredentialRecord[][] = [];
  private readonly waiters = new Set<() => void>();
  readonly stop: () => void;

  constructor(t: TestContext, ledger: CredentialLedger, intervalMs = 20, opts: { throwing?: boolean } = {}) {
    this.stop = ledger.watch((changed) => {
      this.batches.push(changed);
      for (const w of this.waiters) w();
      if (opts.throwing) throw new Error('callback bug');
    }, intervalMs);
    t.after(() => this.stop());
  }

  /** Every delivered record as `id@revokedAt`, in delivery order. */
  delivered(): string[] {
    return this.batches.flat().map((r) => `${r.id}@${String(r.revokedAt)}`);
  }

  until(pred: (log: WatchLog) => boolean, what: string, ms = 5000): Promise<void> {
    return withDeadline(
      new Promise<void>((resolve) => {
        const check = () => {
          if (!pred(this)) return;
          this.waiters.delete(check);
          resolve();
        };
        this.waiters.add(check);
        check();
      }),
      ms,
      what,
    );
  }

  /** Resolves the first delivered record matching `pred`. */
  async record(pred: (r: CredentialRecord) => boolean, what: string): Promise<CredentialRecord> {
    await this.until((l) => l.batches.flat().some(pred), what);
    return this.batches.flat().find(pred) as CredentialRecord;
  }
}

export function credentialLedgerContract(name: string, open: (t: TestContext) => Promise<LedgerSpace>): void {
  describe(`CredentialLedger contract: ${name}`, () => {
    it('puts, gets an equal copy, lists in id order; unknown and invalid ids give null', async (t) => {
      const { ledger } = await open(t);
      assert.equal(await ledger.get('nobody'), null);
      assert.equal(await ledger.get('../etc'), null);
      assert.deepEqual(await ledger.list(), []);
      await ledger.put(credential('b:2'));
      await ledger.put(credential('a-1', { serial: 'AB', notAfter: '2030-01-01T00:00:00.000Z', tokenId: 't1', issuedAt: 1_700_000_000_123 }));
      await ledger.put(credential('B.3'));
      assert.deepEqual(await ledger.get('a-1'), credential('a-1', { serial: 'AB', notAfter: '2030-01-01T00:00:00.000Z', tokenId: 't1', issuedAt: 1_700_000_000_123 }));
      assert.deepEqual((await ledger.list()).map((r) => r.id), ['B.3', 'a-1', 'b:2']);
      const copy = await ledger.get('b:2');
      copy!.revokedSerials.push('FF');
      assert.deepEqual((await ledger.get('b:2'))?.revokedSerials, [], 'a result is a copy');
    });

    it('refuses a record that is not one', async (t) => {
      const { ledger } = await open(t);
      await assert.rejects(ledger.put({ ...credential('x'), id: '../x' }), /not a valid credential record/);
      await assert.rejects(ledger.put({ ...credential('x'), revokedSerials: [1] } as unknown as CredentialRecord), /not a valid credential record/);
      assert.deepEqual(await ledger.list(), []);
    });

    it('revoke of an unknown or invalid id resolves null and writes nothing', async (t) => {
      const { ledger } = await open(t);
      assert.equal(await ledger.revoke('unknown', 5), null);
      assert.equal(await ledger.revoke('{bad}', 5), null);
      assert.equal(await ledger.get('unknown'), null);
      assert.deepEqual(await ledger.list(), []);
    });

    it('revoke keeps the first date, adds the current serial once (normalised), and is seen by another instance', async (t) => {
      const { ledger, other } = await open(t);
      await ledger.put(credential('dev-1', { serial: '00ab:cd', notAfter: '2030-01-01T00:00:00.000Z' }));
      const revoked = await ledger.revoke('dev-1', 123_000);
      const expected = credential('dev-1', { serial: '00ab:cd', notAfter: '2030-01-01T00:00:00.000Z', revokedAt: 123_000, revokedSerials: ['ABCD'] });
      assert.deepEqual(revoked, expected);
      assert.deepEqual(await ledger.revoke('dev-1', 999_000), expected, 'twice: the first date, the serial once');
      const second = await other();
      assert.deepEqual(await second.get('dev-1'), expected);
      assert.deepEqual(await second.revoke('dev-1', 5), expected);
      // A device with only a token: revoked, no serial.
      await ledger.put(credential('tok-only'));
      assert.deepEqual(await second.revoke('tok-only', 7), credential('tok-only', { revokedAt: 7 }));
    });

    it('put keeps the serials revoked earlier (union, old first) and replaces everything else', async (t) => {
      const { ledger } = await open(t);
      await ledger.put(credential('dev-2', { serial: 'A1', revokedSerials: ['0F'] }));
      await ledger.revoke('dev-2', 50);
      assert.deepEqual((await ledger.get('dev-2'))?.revokedSerials, ['0F', 'A1']);
      // Re-provisioned: a new serial and token, live again, the old serials stay revoked.
      await ledger.put(credential('dev-2', { serial: 'B2', tokenId: 't2', issuedAt: 60, revokedSerials: ['a1', 'c3'] }));
      assert.deepEqual(await ledger.get('dev-2'), credential('dev-2', { serial: 'B2', tokenId: 't2', issuedAt: 60, revokedSerials: ['0F', 'A1', 'C3'] }));
      // A put with no serials never forgets any.
      await ledger.put(credential('dev-2', { serial: 'B2', tokenId: 't3', issuedAt: 70 }));
      assert.deepEqual((await ledger.get('dev-2'))?.revokedSerials, ['0F', 'A1', 'C3']);
      await ledger.revoke('dev-2', 80);
      assert.deepEqual(await ledger.get('dev-2'), credential('dev-2', { serial: 'B2', tokenId: 't3', issuedAt: 70, revokedAt: 80, revokedSerials: ['0F', 'A1', 'C3', 'B2'] }));
    });

    it('watch on an empty ledger delivers one empty batch first', async (t) => {
      const { ledger } = await open(t);
      const log = new WatchLog(t, ledger);
      await log.until((l) => l.batches.length === 1, 'the first delivery');
      assert.deepEqual(log.batches, [[]]);
    });

    it('watch delivers every record first, then only what changes, also written by another instance', async (t) => {
      const { ledger, other } = await open(t);
      await ledger.put(credential('early-1'));
      await ledger.put(credential('early-2', { serial: 'AA' }));
      const log = new WatchLog(t, ledger);
      await log.until((l) => l.batches.length >= 1, 'the initial delivery');
      assert.deepEqual(log.batches[0]?.map((r) => r.id).sort(), ['early-1', 'early-2']);

      const cli = await other();
      await cli.put(credential('dev-9', { tokenId: 'tok-9' }));
      assert.equal((await log.record((r) => r.id === 'dev-9', 'the other instance’s write')).tokenId, 'tok-9');
      await cli.revoke('dev-9', 42);
      await log.record((r) => r.id === 'dev-9' && r.revokedAt === 42, 'the other instance’s revocation');
      await cli.revoke('early-2', 43);
      const early2 = await log.record((r) => r.id === 'early-2' && r.revokedAt === 43, 'the revocation of a record delivered at first');
      assert.deepEqual(early2.revokedSerials, ['AA']);
      // A write through the watching instance itself is delivered too.
      await ledger.put(credential('late', { tokenId: 'x' }));
      await log.record((r) => r.id === 'late', 'the own write');
      // Each change once; untouched records never again.
      const delivered = log.delivered();
      assert.deepEqual(delivered.slice(0, 2).sort(), ['early-1@null', 'early-2@null']);
      assert.deepEqual(delivered.slice(2), ['dev-9@null', 'dev-9@42', 'early-2@43', 'late@null']);
      assert.ok(log.batches.slice(1).every((b) => b.length > 0), 'no empty batch after the first');
    });

    it('watch keeps going when the callback throws, and stops when told', async (t) => {
      const { ledger } = await open(t);
      await ledger.put(credential('ok-1'));
      const log = new WatchLog(t, ledger, 20, { throwing: true });
      await log.record((r) => r.id === 'ok-1', 'ok-1');
      await ledger.put(credential('ok-2'));
      await log.record((r) => r.id === 'ok-2', 'ok-2 after a throwing callback');
      log.stop();
      const count = log.batches.length;
      await ledger.put(credential('ok-3'));
      // Several poll intervals: nothing is delivered after stop.
      await new Promise((r) => setTimeout(r, 150));
      assert.equal(log.batches.length, count);
    });
  });
}
