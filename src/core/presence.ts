/**
 * Presence, protocol-neutral: a device is online while it has at least one session. Every change
 * bumps a per-device version, updates the registry and emits device.connected/disconnected on the
 * bus (the MQTT edge turns those into the retained `devices/{id}/status`). Updates of one device are
 * applied in order; `lastSeen` from traffic (any protocol) is batched so the hot path does no store
 * write.
 */
import type { Logger } from 'pino';
import type { DeviceRegistry } from './ports.js';
import { KeyedQueue } from './keyed-queue.js';
import type { DeviceProtocol } from './model.js';
import type { DeviceConnected, DeviceDisconnected, DisconnectReason, EventBus } from './events.js';

export class PresenceService {
  private readonly sessions = new Map<string, Set<string>>();
  private readonly queue = new KeyedQueue();
  private readonly seen = new Map<string, number>();
  /** Last presence version per device, for when the registry record is already gone (revoked). */
  private readonly versions = new Map<string, number>();
  private readonly timer: NodeJS.Timeout;

  constructor(
    private readonly registry: DeviceRegistry,
    private readonly bus: EventBus,
    private readonly log: Logger,
    flushIntervalMs = 5000,
  ) {
    this.timer = setInterval(() => void this.flushSeen(), flushIntervalMs).unref();
  }

  /** Runs `fn` after every earlier update of the same device. */
  private inOrder<T>(deviceId: string, fn: () => Promise<T>): Promise<T> {
    return this.queue.run(deviceId, fn);
  }

  isOnline(deviceId: string): boolean {
    return (this.sessions.get(deviceId)?.size ?? 0) > 0;
  }

  /** A session of the device started. Resolves the event (null when the device is unknown). */
  connected(deviceId: string, protocol: DeviceProtocol, sessionId: string): Promise<DeviceConnected | null> {
    let set = this.sessions.get(deviceId);
    if (!set) this.sessions.set(deviceId, (set = new Set()));
    set.add(sessionId);
    return this.inOrder(deviceId, async () => {
      const current = await this.registry.get(deviceId);
      if (!current) return null;
      const at = Date.now();
      const version = Math.max(current.presenceVersion ?? 0, this.versions.get(deviceId) ?? 0) + 1;
      this.versions.set(deviceId, version);
      await this.registry.update(deviceId, { online: true, protocol, connectedAt: at, lastSeen: at, presenceVersion: version });
      const event: DeviceConnected = { deviceId, protocol, online: true, reason: 'connected', at, version };
      this.safely('device.connected', () => this.bus.emit('device.connected', event));
      return event;
    });
  }

  /** A session ended. The device goes offline when it was its last one. */
  disconnected(deviceId: string, protocol: DeviceProtocol, sessionId: string, reason: DisconnectReason): Promise<DeviceDisconnected | null> {
    const set = this.sessions.get(deviceId);
    if (!set?.delete(sessionId)) return Promise.resolve(null);
    if (set.size > 0) return Promise.resolve(null);
    this.sessions.delete(deviceId);
    // The device connected to another gateway (several on one Redis), which announced it online
    // (or is about to): going offline here would make the status flap.
    if (reason === 'moved') return Promise.resolve(null);
    return this.inOrder(deviceId, async () => {
      // A session that started meanwhile (a takeover's new connection) wins.
      if (this.isOnline(deviceId)) return null;
      // The record may be gone already (a revoked device is forgotten): the offline status and
      // event still go out, with the version this process last used.
      const current = await this.registry.get(deviceId);
      const at = Date.now();
      const version = Math.max(current?.presenceVersion ?? 0, this.versions.get(deviceId) ?? 0) + 1;
      this.seen.delete(deviceId);
      this.versions.set(deviceId, version);
      if (current) await this.registry.update(deviceId, { online: false, protocol: null, lastSeen: at, presenceVersion: version });
      const event: DeviceDisconnected = { deviceId, protocol, online: false, reason, at, version };
      this.safely('device.disconnected', () => this.bus.emit('device.disconnected', event));
      return event;
    });
  }

  /** Traffic from the device: recorded in memory, written to the registry in batches. */
  touch(deviceId: string, at = Date.now()): void {
    this.seen.set(deviceId, at);
  }

  private safely(name: string, fn: () => void): void {
    try {
      fn();
    } catch (err) {
      this.log.error({ err, event: name }, 'an event listener threw');
    }
  }

  async flushSeen(): Promise<void> {
    const batch = [...this.seen];
    this.seen.clear();
    for (const [deviceId, at] of batch) {
      // Traffic without a session (HTTP ingestion) counts too; only ever move lastSeen forward.
      await this.inOrder(deviceId, async () => {
        const current = await this.registry.get(deviceId);
        if (current && (current.lastSeen ?? 0) < at) await this.registry.update(deviceId, { lastSeen: at });
      }).catch((err: unknown) => this.log.warn({ err, deviceId }, 'could not record lastSeen'));
    }
  }

  async close(): Promise<void> {
    clearInterval(this.timer);
    await this.flushSeen();
    await this.queue.idle();
  }
}
