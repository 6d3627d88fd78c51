/**
 * Command records in memory (development and single-gateway deployments without Redis). Per
 * device, records keep creation order; finished ones beyond `historyMax` are dropped oldest first.
 */
import { isFinished, UNDELIVERED_STATES, type CommandRecord, type CommandState } from '../../core/commands.js';
import type { CommandCreateResult, CommandListQuery, CommandPage, CommandStore, CommandTransition } from '../../core/ports.js';

interface Entry {
  seq: number;
  record: CommandRecord;
}

interface DeviceCommands {
  /** Insertion order = creation order. */
  byId: Map<string, Entry>;
  byKey: Map<string, string>;
  finished: number;
}

/** Deep: params and response are objects too, and callers must not be able to change stored records. */
const copy = (r: CommandRecord): CommandRecord => structuredClone(r);

function encodeCursor(seq: number): string {
  return Buffer.from(`c${seq}`).toString('base64url');
}

function decodeCursor(cursor: string): number {
  const m = /^c(\d{1,15})$/.exec(Buffer.from(cursor, 'base64url').toString('latin1'));
  return m ? Number(m[1]) : Number.NaN;
}

export class MemoryCommandStore implements CommandStore {
  private readonly devices = new Map<string, DeviceCommands>();
  private seq = 0;

  constructor(private readonly opts: { historyMax: number } = { historyMax: 1000 }) {}

  async create(record: CommandRecord, opts: { maxUndelivered: number }): Promise<CommandCreateResult> {
    let d = this.devices.get(record.deviceId);
    if (!d) {
      d = { byId: new Map(), byKey: new Map(), finished: 0 };
      this.devices.set(record.deviceId, d);
    }
    if (record.idempotencyKey !== undefined) {
      const existingId = d.byKey.get(record.idempotencyKey);
      const existing = existingId === undefined ? undefined : d.byId.get(existingId);
      if (existing) return { kind: 'existing', record: copy(existing.record) };
    }
    let undelivered = 0;
    for (const e of d.byId.values()) if (UNDELIVERED_STATES.includes(e.record.state)) undelivered++;
    if (undelivered >= opts.maxUndelivered) return { kind: 'full', undelivered };
    d.byId.set(record.id, { seq: ++this.seq, record: copy(record) });
    if (record.idempotencyKey !== undefined) d.byKey.set(record.idempotencyKey, record.id);
    if (isFinished(record.state)) this.finishedOne(d);
    return { kind: 'created', record: copy(record) };
  }

  async get(deviceId: string, id: string): Promise<CommandRecord | null> {
    const e = this.devices.get(deviceId)?.byId.get(id);
    return e ? copy(e.record) : null;
  }

  async transition(deviceId: string, id: string, from: readonly CommandState[], change: CommandTransition): Promise<CommandRecord | null> {
    const d = this.devices.get(deviceId);
    const e = d?.byId.get(id);
    if (!d || !e || !from.includes(e.record.state)) return null;
    const wasFinished = isFinished(e.record.state);
    const next: CommandRecord = { ...e.record, state: change.state, updatedAt: change.updatedAt };
    if (change.response !== undefined) next.response = change.response;
    e.record = next;
    if (!wasFinished && isFinished(next.state)) this.finishedOne(d);
    else if (wasFinished && !isFinished(next.state)) d.finished--;
    return copy(next);
  }

  async list(deviceId: string, query: CommandListQuery): Promise<CommandPage> {
    const d = this.devices.get(deviceId);
    const after = query.cursor === undefined ? 0 : decodeCursor(query.cursor);
    if (Number.isNaN(after)) return { items: [], nextCursor: null };
    const items: CommandRecord[] = [];
    let last = 0;
    let more = false;
    for (const e of d?.byId.values() ?? []) {
      if (e.seq <= after) continue;
      if (query.states && !query.states.includes(e.record.state)) continue;
      if (items.length === query.limit) {
        more = true;
        break;
      }
      items.push(copy(e.record));
      last = e.seq;
    }
    return { items, nextCursor: more ? encodeCursor(last) : null };
  }

  async open(deviceId: string): Promise<CommandRecord[]> {
    const out: CommandRecord[] = [];
    for (const e of this.devices.get(deviceId)?.byId.values() ?? []) if (!isFinished(e.record.state)) out.push(copy(e.record));
    return out;
  }

  async openAll(): Promise<CommandRecord[]> {
    const out: CommandRecord[] = [];
    for (const id of this.devices.keys()) out.push(...(await this.open(id)));
    return out;
  }

  async forgetDevice(deviceId: string): Promise<void> {
    this.devices.delete(deviceId);
  }

  async close(): Promise<void> {
    this.devices.clear();
  }

  /** Counts one more finished record and drops the oldest finished ones past the history bound. */
  private finishedOne(d: DeviceCommands): void {
    d.finished++;
    if (d.finished <= this.opts.historyMax) return;
    for (const [id, e] of d.byId) {
      if (d.finished <= this.opts.historyMax) break;
      if (!isFinished(e.record.state)) continue;
      d.byId.delete(id);
      if (e.record.idempotencyKey !== undefined) d.byKey.delete(e.record.idempotencyKey);
      d.finished--;
    }
  }
}
