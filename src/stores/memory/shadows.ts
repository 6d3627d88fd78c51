/** In-memory ShadowStore: a map per device, compare-and-set on the version. Documents are copied. */
import type { ShadowStore } from '../../core/ports.js';
import type { StoredShadow } from '../../core/shadow.js';

export class MemoryShadowStore implements ShadowStore {
  private readonly devices = new Map<string, Map<string, StoredShadow>>();

  async get(deviceId: string, name: string): Promise<StoredShadow | null> {
    const s = this.devices.get(deviceId)?.get(name);
    return s ? structuredClone(s) : null;
  }

  async compareAndSet(deviceId: string, name: string, expectedVersion: number | null, next: StoredShadow): Promise<boolean> {
    let shadows = this.devices.get(deviceId);
    const current = shadows?.get(name);
    if ((current?.version ?? null) !== expectedVersion) return false;
    if (!shadows) this.devices.set(deviceId, (shadows = new Map()));
    shadows.set(name, structuredClone(next));
    return true;
  }

  async names(deviceId: string): Promise<string[]> {
    return [...(this.devices.get(deviceId)?.keys() ?? [])].filter((n) => n !== '').sort();
  }

  async forgetDevice(deviceId: string): Promise<void> {
    this.devices.delete(deviceId);
  }

  async close(): Promise<void> {
    this.devices.clear();
  }
}
