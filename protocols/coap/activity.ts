/**
 * Presence of CoAP devices (issue 7): CoAP has no connection, so a device is online while it has
 * an Observe registration or made a request within `presenceWindowMs`, and goes offline
 * (reason `inactive`) after that. It feeds the same PresenceService as MQTT, as one session per
 * device (`coap:<id>`), so registry, retained status topic and events agree across protocols.
 */
import type { DisconnectReason } from '../../src/core/events.js';
import type { DeviceProtocol } from '../../src/core/model.js';
import type { PresenceService } from '../../src/core/presence.js';
import type { Logger } from 'pino';

interface Activity {
  protocol: DeviceProtocol;
  timer: NodeJS.Timeout | null;
  observers: number;
}

export class CoapActivity {
  private readonly devices = new Map<string, Activity>();

  constructor(
    private readonly presence: PresenceService,
    private readonly windowMs: number,
    private readonly log: Logger,
  ) {}

  /** Any authenticated request. */
  seen(deviceId: string, protocol: DeviceProtocol): void {
    let a = this.devices.get(deviceId);
    if (!a) {
      a = { protocol, timer: null, observers: 0 };
      this.devices.set(deviceId, a);
      this.presence.connected(deviceId, protocol, this.session(deviceId)).catch((err: unknown) => this.log.error({ err }, 'presence update failed'));
    } else this.presence.touch(deviceId);
    this.arm(deviceId, a);
  }

  observing(deviceId: string, delta: 1 | -1): void {
    const a = this.devices.get(deviceId);
    if (!a) return;
    a.observers += delta;
    this.arm(deviceId, a);
  }

  /** Ends the device's CoAP presence now (revoked) or every device's (shutdown). */
  end(deviceId: string, reason: DisconnectReason): void {
    const a = this.devices.get(deviceId);
    if (!a) return;
    if (a.timer) clearTimeout(a.timer);
    this.devices.delete(deviceId);
    this.presence.disconnected(deviceId, a.protocol, this.session(deviceId), reason).catch((err: unknown) => this.log.error({ err }, 'presence update failed'));
  }

  close(): void {
    for (const id of [...this.devices.keys()]) this.end(id, 'shutdown');
  }

  private session(deviceId: string): string {
    return `coap:${deviceId}`;
  }

  /** (Re)starts the window: the same timer restarted on every request, none while observing. */
  private arm(deviceId: string, a: Activity): void {
    if (a.observers > 0) {
      if (a.timer) clearTimeout(a.timer);
      a.timer = null;
      return;
    }
    if (a.timer) {
      a.timer.refresh();
      return;
    }
    a.timer = setTimeout(() => this.end(deviceId, 'inactive'), this.windowMs);
    a.timer.unref();
  }
}
