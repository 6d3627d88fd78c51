/**
 * Presence, protocol-neutral: a device is online while it has at least one session. Every change
 * bumps a per-device version, updates the registry and emits device.connected/disconnected on the
 * bus (the MQTT edge turns those into the retained `devices/{id}/status`). Updates of one device are
 * applied in order; `lastSeen` from traffic (any protocol) is batched so the hot path does no store
 * write.
 *
 * Several gateways on one store: the registry records who holds a device's presence (this
 * gateway's id and the session whose connect wrote it). A connect always takes it over; an offline
 * is a compare-and-set on that owner (`PresenceStore.writePresence`), so a late offline from a
 * gateway the device has left (keepalive timeout, shutdown, a CoAP window ending) changes nothing
 * and emits nothing. When a gateway dies, another one calls `reap(deadGatewayId)`: every device the
 * dead gateway still holds goes offline, exactly once fleet-wide (the compare-and-set decides).
 */
import { randomUUID } from 'node:crypto';
import type { Logger } from 'pino';
import type { DeviceRegistry, PresenceOffline, PresenceOnline, PresenceOwner, PresenceStore, PresenceWrite } from './ports.js';
import { KeyedQueue } from './keyed-queue.js';
import type { DeviceProtocol } from './model.js';
import type { DeviceConnected, DeviceDisconnected, DisconnectReason, EventBus } from './events.js';

export function isPresenceStore(x: unknown): x is PresenceStore {
  const s = x as Partial<PresenceStore> | null;
  return typeof s?.writePresence === 'function' && typeof s.presenceHeldBy === 'function' && typeof s.forgetGateway === 'function';
}

/**
 * For a registry without presence writes (a test double): get + update and the owners in this
 * process. Atomic only within this process, which is all such a registry serves.
 */
export class LocalPresenceStore implements PresenceStore {
  private readonly owners = new Map<string, PresenceOwner>();

  constructor(private readonly registry: DeviceRegistry) {}

  async writePresence(id: string, change: PresenceOnline | PresenceOffline): Promise<PresenceWrite> {
    const current = await this.registry.get(id);
    if (!current) return { status: 'unknown' };
    if (!change.online) {
      const owner = this.owners.get(id);
      if (owner?.gateway !== change.owner.gateway || (change.owner.session !== undefined && owner.session !== change.owner.session)) return { status: 'not_owner' };
    }
    const version = Math.max(current.presenceVersion ?? 0, change.minVersion) + 1;
    const patch = change.online
      ? { online: true, protocol: change.protocol, connectedAt: change.at, lastSeen: change.at, presenceVersion: version }
      : { online: false, protocol: null, presenceVersion: version, ...(change.lastSeen !== undefined && { lastSeen: change.lastSeen }) };
    if (!(await this.registry.update(id, patch))) return { status: 'unknown' };
    if (change.online) this.owners.set(id, { ...change.owner });
    else this.owners.delete(id);
    return { status: 'applied', version, protocol: current.protocol };
  }

  async *presenceHeldBy(gateway: string): AsyncIterable<string[]> {
    yield [...this.owners].filter(([, o]) => o.gateway === gateway).map(([id]) => id);
  }

  async forgetGateway(): Promise<void> {}
}

export interface PresenceOptions {
  /** This gateway's id in the store's owner records (default: a fresh UUID). */
  gatewayId?: string;
  /** How often batched lastSeen values are written (default 5000 ms). */
  flushIntervalMs?: number;
}

export class PresenceService {
  /** This gateway's id as a presence owner (also its MQTT broker id on Redis: see docs/redis.md). */
  readonly gatewayId: string;
  private readonly store: PresenceStore;
  /**
   * Per device, its session here, or the set of them while it has several (a takeover's overlap):
   * a Set per online device would cost ~150 bytes more than the one string.
   */
  private readonly sessions = new Map<string, string | Set<string>>();
  private readonly queue = new KeyedQueue();
  private readonly seen = new Map<string, number>();
  /** Last presence version per device, for when the registry record is already gone (revoked). */
  private readonly versions = new Map<string, number>();
  /** Per device, the session of the last connect this gateway wrote (what its offline compares). */
  private readonly held = new Map<string, string>();
  private readonly timer: NodeJS.Timeout;

  constructor(
    private readonly registry: DeviceRegistry,
    private readonly bus: EventBus,
    private readonly log: Logger,
    opts: number | PresenceOptions = {},
  ) {
    const o = typeof opts === 'number' ? { flushIntervalMs: opts } : opts;
    this.gatewayId = o.gatewayId ?? randomUUID();
    this.store = isPresenceStore(registry) ? registry : new LocalPresenceStore(registry);
    this.timer = setInterval(() => void this.flushSeen(), o.flushIntervalMs ?? 5000).unref();
  }

  /** Runs `fn` after every earlier update of the same device. */
  private inOrder<T>(deviceId: string, fn: () => Promise<T>): Promise<T> {
    return this.queue.run(deviceId, fn);
  }

  isOnline(deviceId: string): boolean {
    return this.sessions.has(deviceId);
  }

  /** A session of the device started. Resolves the event (null when the device is unknown). */
  connected(deviceId: string, protocol: DeviceProtocol, sessionId: string): Promise<DeviceConnected | null> {
    const current = this.sessions.get(deviceId);
    if (current === undefined) this.sessions.set(deviceId, sessionId);
    else if (typeof current !== 'string') current.add(sessionId);
    else if (current !== sessionId) this.sessions.set(deviceId, new Set([current, sessionId]));
    return this.inOrder(deviceId, async () => {
      const at = Date.now();
      // Before the write: if it lands but its reply is lost, the offline still matches it.
      this.held.set(deviceId, sessionId);
      const res = await this.store.writePresence(deviceId, {
        online: true,
        owner: { gateway: this.gatewayId, session: sessionId },
        protocol,
        at,
        minVersion: this.versions.get(deviceId) ?? 0,
      });
      if (res.status !== 'applied') return null;
      this.versions.set(deviceId, res.version);
      const event: DeviceConnected = { deviceId, protocol, online: true, reason: 'connected', at, version: res.version };
      this.safely('device.connected', () => this.bus.emit('device.connected', event));
      return event;
    });
  }

  /**
   * A session ended. The device goes offline when it was its last one here and this gateway still
   * holds its presence (it did not connect elsewhere since).
   */
  disconnected(deviceId: string, protocol: DeviceProtocol, sessionId: string, reason: DisconnectReason): Promise<DeviceDisconnected | null> {
    const current = this.sessions.get(deviceId);
    if (current === undefined || (typeof current === 'string' ? current !== sessionId : !current.delete(sessionId))) return Promise.resolve(null);
    if (typeof current !== 'string' && current.size > 0) {
      if (current.size === 1) this.sessions.set(deviceId, current.values().next().value as string);
      return Promise.resolve(null);
    }
    this.sessions.delete(deviceId);
    // The device connected to another gateway (several on one Redis), which announced it online
    // (or is about to): going offline here would make the status flap.
    if (reason === 'moved') {
      void this.inOrder(deviceId, async () => {
        if (!this.isOnline(deviceId)) this.held.delete(deviceId);
      });
      return Promise.resolve(null);
    }
    return this.inOrder(deviceId, async () => {
      // A session that started meanwhile (a takeover's new connection) wins.
      if (this.isOnline(deviceId)) return null;
      const at = Date.now();
      const session = this.held.get(deviceId) ?? sessionId;
      this.held.delete(deviceId);
      this.seen.delete(deviceId);
      const res = await this.store.writePresence(deviceId, {
        online: false,
        owner: { gateway: this.gatewayId, session },
        lastSeen: at,
        minVersion: this.versions.get(deviceId) ?? 0,
      });
      if (res.status === 'not_owner') {
        this.log.debug({ deviceId, reason }, 'presence: offline not applied, the device connected elsewhere since');
        return null;
      }
      // The record may be gone already (a revoked device is forgotten): the offline status and
      // event still go out, with the version this process last used.
      const version = res.status === 'applied' ? res.version : (this.versions.get(deviceId) ?? 0) + 1;
      this.versions.set(deviceId, version);
      const event: DeviceDisconnected = { deviceId, protocol, online: false, reason, at, version };
      this.safely('device.disconnected', () => this.bus.emit('device.disconnected', event));
      return event;
    });
  }

  /**
   * `gateway` is gone (killed, or stopped and found by another gateway's liveness check): every
   * device it still holds goes offline (reason `connection_lost`), unless it connected elsewhere
   * meanwhile. Several gateways may reap the same one at once; the owner compare-and-set lets one
   * of them change each device and emit its event. Resolves the number of devices changed here.
   */
  async reap(gateway: string): Promise<number> {
    if (gateway === this.gatewayId) return 0;
    let changed = 0;
    for await (const ids of this.store.presenceHeldBy(gateway)) {
      await Promise.all(
        ids.map((deviceId) =>
          this.inOrder(deviceId, async () => {
            const res = await this.store.writePresence(deviceId, { online: false, owner: { gateway }, minVersion: this.versions.get(deviceId) ?? 0 });
            if (res.status !== 'applied') return;
            changed++;
            this.versions.set(deviceId, res.version);
            const event: DeviceDisconnected = { deviceId, protocol: res.protocol ?? 'mqtt', online: false, reason: 'connection_lost', at: Date.now(), version: res.version };
            this.safely('device.disconnected', () => this.bus.emit('device.disconnected', event));
          }),
        ),
      );
    }
    await this.store.forgetGateway(gateway);
    this.log.info({ gateway, devices: changed }, 'presence: devices held by a gateway that is gone are offline');
    return changed;
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
