/**
 * In-memory DeviceRegistry (embedded mode). Records are copied in and out. Presence writes are the
 * same compare-and-set on the owner as the Redis store's (src/core/presence.ts), synchronous here.
 */
import type { DeviceListQuery, DevicePage, DeviceRegistry, PresenceOffline, PresenceOnline, PresenceOwner, PresenceStore, PresenceWrite } from '../../core/ports.js';
import type { DeviceRecord } from '../../core/model.js';
import { GatewayError } from '../../core/errors.js';

const clone = (r: DeviceRecord): DeviceRecord => structuredClone(r);

export class MemoryDeviceRegistry implements DeviceRegistry, PresenceStore {
  private readonly devices = new Map<string, DeviceRecord>();
  /** Who holds each device's presence (kept beside the record, like the Redis `:presence` hash). */
  private readonly owners = new Map<string, PresenceOwner>();
  /** Per gateway, the devices whose presence it may hold. */
  private readonly held = new Map<string, Set<string>>();

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
    this.owners.delete(id);
    return this.devices.delete(id);
  }

  async writePresence(id: string, change: PresenceOnline | PresenceOffline): Promise<PresenceWrite> {
    const r = this.devices.get(id);
    if (change.online) {
      let set = this.held.get(change.owner.gateway);
      if (!set) this.held.set(change.owner.gateway, (set = new Set()));
      set.add(id);
    }
    if (!r) return { status: 'unknown' };
    if (!change.online) {
      const owner = this.owners.get(id);
      if (owner?.gateway !== change.owner.gateway || (change.owner.session !== undefined && owner.session !== change.owner.session)) return { status: 'not_owner' };
    }
    const version = Math.max(r.presenceVersion ?? 0, change.minVersion) + 1;
    const previous = r.protocol;
    if (change.online) {
      this.devices.set(id, { ...r, online: true, protocol: change.protocol, connectedAt: change.at, lastSeen: change.at, presenceVersion: version });
      this.owners.set(id, { ...change.owner });
    } else {
      this.devices.set(id, { ...r, online: false, protocol: null, presenceVersion: version, ...(change.lastSeen !== undefined && { lastSeen: change.lastSeen }) });
      this.owners.delete(id);
      this.held.get(change.owner.gateway)?.delete(id);
    }
    return { status: 'applied', version, protocol: previous };
  }

  async *presenceHeldBy(gateway: string): AsyncIterable<string[]> {
    const ids = [...(this.held.get(gateway) ?? [])];
    if (ids.length > 0) yield ids;
  }

  async forgetGateway(gateway: string): Promise<void> {
    this.held.delete(gateway);
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
