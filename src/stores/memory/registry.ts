/** In-memory DeviceRegistry (embedded mode). Records are copied in and out. */
import type { DeviceListQuery, DevicePage, DeviceRegistry } from '../../core/ports.js';
import type { DeviceRecord } from '../../core/model.js';
import { GatewayError } from '../../core/errors.js';

const clone = (r: DeviceRecord): DeviceRecord => structuredClone(r);

export class MemoryDeviceRegistry implements DeviceRegistry {
  private readonly devices = new Map<string, DeviceRecord>();

  async get(id: string): Promise<DeviceRecord | null> {
    const r = this.devices.get(id);
    return r ? clone(r) : null;
  }

  async create(record: DeviceRecord): Promise<boolean> {
    if (this.devices.has(record.id)) return false;
    this.devices.set(record.id, clone(record));
    return true;
  }

  async update(id: string, patch: Partial<Omit<DeviceRecord, 'id'>>): Promise<DeviceRecord | null> {
    const r = this.devices.get(id);
    if (!r) return null;
    const next = { ...r, ...structuredClone(patch), id };
    this.devices.set(id, next);
    return clone(next);
  }

  async delete(id: string): Promise<boolean> {
    return this.devices.delete(id);
  }

  async list(q: DeviceListQuery): Promise<DevicePage> {
    const after = q.cursor === undefined ? null : decodeCursor(q.cursor);
    const ids = [...this.devices.keys()].sort();
    const items: DeviceRecord[] = [];
    for (const id of ids) {
      if (after !== null && id <= after) continue;
      const r = this.devices.get(id) as DeviceRecord;
      if (q.type !== undefined && r.type !== q.type) continue;
      if (q.online !== undefined && r.online !== q.online) continue;
      if (items.length === q.limit) {
        return { items, nextCursor: encodeCursor((items[items.length - 1] as DeviceRecord).id) };
      }
      items.push(clone(r));
    }
    return { items, nextCursor: null };
  }

  async close(): Promise<void> {}
}

export function encodeCursor(lastId: string): string {
  return Buffer.from(lastId, 'utf8').toString('base64url');
}

/** Throws GatewayError bad_request for a cursor that is not one of ours. */
export function decodeCursor(cursor: string): string {
  const id = Buffer.from(cursor, 'base64url').toString('utf8');
  if (id.length === 0 || encodeCursor(id) !== cursor) throw new GatewayError('bad_request', 'invalid cursor');
  return id;
}
