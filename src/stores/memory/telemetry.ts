/**
 * In-memory TelemetryStore: per device a ring buffer of the newest `retentionCount` records;
 * records older than `retentionMs` are pruned on every append and read. Appends are synchronous.
 */
import type { TelemetryQuery, TelemetryStore } from '../../core/ports.js';
import type { TelemetryRecord } from '../../core/model.js';

class Ring {
  private readonly items: (TelemetryRecord | undefined)[];
  private head = 0;
  size = 0;

  constructor(readonly capacity: number) {
    this.items = new Array<TelemetryRecord | undefined>(capacity);
  }

  push(r: TelemetryRecord): void {
    this.items[(this.head + this.size) % this.capacity] = r;
    if (this.size < this.capacity) this.size++;
    else this.head = (this.head + 1) % this.capacity;
  }

  /** i = 0 is the oldest. */
  at(i: number): TelemetryRecord {
    return this.items[(this.head + i) % this.capacity] as TelemetryRecord;
  }

  dropOlderThan(cutoff: number): void {
    while (this.size > 0 && this.at(0).receivedAt < cutoff) {
      this.items[this.head] = undefined;
      this.head = (this.head + 1) % this.capacity;
      this.size--;
    }
  }
}

export class MemoryTelemetryStore implements TelemetryStore {
  private readonly rings = new Map<string, Ring>();

  constructor(private readonly retention: { retentionCount: number; retentionMs: number }) {}

  append(record: TelemetryRecord): void {
    let ring = this.rings.get(record.deviceId);
    if (!ring) this.rings.set(record.deviceId, (ring = new Ring(this.retention.retentionCount)));
    ring.push(record);
    ring.dropOlderThan(record.receivedAt - this.retention.retentionMs);
  }

  private ring(deviceId: string): Ring | undefined {
    const ring = this.rings.get(deviceId);
    ring?.dropOlderThan(Date.now() - this.retention.retentionMs);
    return ring;
  }

  async history(deviceId: string, q: TelemetryQuery): Promise<TelemetryRecord[]> {
    const ring = this.ring(deviceId);
    if (!ring) return [];
    const out: TelemetryRecord[] = [];
    for (let i = ring.size - 1; i >= 0 && out.length < q.limit; i--) {
      const r = ring.at(i);
      if (q.until !== undefined && r.receivedAt > q.until) continue;
      if (q.since !== undefined && r.receivedAt < q.since) break;
      out.push(r);
    }
    return out.reverse();
  }

  async latest(deviceId: string): Promise<TelemetryRecord | null> {
    const ring = this.ring(deviceId);
    return ring && ring.size > 0 ? ring.at(ring.size - 1) : null;
  }

  async forget(deviceId: string): Promise<void> {
    this.rings.delete(deviceId);
  }

  async close(): Promise<void> {
    this.rings.clear();
  }
}
