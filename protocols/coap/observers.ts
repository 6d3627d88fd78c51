/**
 * Observe registrations (RFC 7641) of `/shadow` and `/commands`, per device. Shadow observers get
 * the whole document after every accepted change from any door; command observers get the list of
 * pending commands whenever the command service delivers one (this is the CoAP CommandTransport).
 * A registration ends when the client deregisters, stops acknowledging CON notifications (the
 * `coap` package gives up after its retransmissions), or the device is revoked (a final 4.01).
 */
import type { IncomingMessage, OutgoingMessage } from 'coap';
import type { CommandTransport } from '../../src/core/command-service.js';
import { commandMessage, type CommandRecord } from '../../src/core/commands.js';
import type { ShadowDeleted, ShadowUpdated } from '../../src/core/events.js';
import type { CoapActivity } from './activity.js';
import { setCode } from './reply.js';
import type { CoapEdgeDeps } from './types.js';

type Observer = ({ kind: 'shadow'; name: string } | { kind: 'commands' }) & {
  res: OutgoingMessage;
  /** Client endpoint + token: what identifies a registration (RFC 7641 §3.6, §4.1). */
  key: string;
};

/** The registration key of a request: client endpoint and token. */
export function observationKey(req: IncomingMessage): string {
  return `${req.rsinfo.address}:${req.rsinfo.port}/${req._packet.token?.toString('hex') ?? ''}`;
}

/**
 * A notification after the first goes out as CON (to a CON registration) or NON. The `coap`
 * package's ObserveWriteStream marks those of a NON registration as ACKs (`ack = !confirmable`):
 * an ACK with a message id nobody sent (RFC 7252 §4.2 forbids it), which a client's RST could not
 * match either. Called before every write after the first.
 */
function asNotification(res: OutgoingMessage): OutgoingMessage {
  (res as unknown as { _packet: { ack?: boolean } })._packet.ack = false;
  return res;
}

/** The largest body one message carries (RFC 7252 §4.6); larger ones go block-wise. */
const BLOCK_BYTES = 1024;

/** The package's ETag of a block-wise body (lib/server.js `_toETag`), so follow-up blocks it serves match. */
function etagOf(body: Buffer): Buffer {
  const id = Buffer.of(0, 0);
  for (let i = 0; i < body.length; i += 2) {
    id[0] = id[0]! ^ body[i]!;
    id[1] = id[1]! ^ (body[i + 1] ?? 0);
  }
  return id;
}

/**
 * Writes one representation (the first response of a registration, or a notification) to an
 * Observe stream. The package's stream sends it as one message and cannot exceed 1152 bytes ("Max
 * packet size"): a shadow document over ~1 KiB was never sent. A larger body goes as its first
 * 1024-byte block with Block2 (NUM 0, M), Size2 and an ETag; the client GETs the other blocks
 * (RFC 7959 §2.6, §3.4), which the package serves from a fresh representation.
 */
export function writeRepresentation(res: OutgoingMessage, body: Buffer): void {
  const blockwise = body.length > BLOCK_BYTES;
  res.setOption('Block2', blockwise ? Buffer.of(0x0e) : []); // NUM 0 | M | SZX 6 (1024)
  res.setOption('Size2', blockwise ? body.length : []);
  res.setOption('ETag', blockwise ? etagOf(body) : []);
  res.write(blockwise ? body.subarray(0, BLOCK_BYTES) : body);
}

function clearBlockOptions(res: OutgoingMessage): void {
  for (const name of ['Block2', 'Size2', 'ETag']) res.setOption(name, []);
}

/**
 * A registration can end (RST, deregistration, revocation, the client stopped acknowledging)
 * while a notification is being prepared: writing to its ended stream would raise an unhandled
 * 'error' (write after end) and take the process down.
 */
const isOpen = (o: Observer): boolean => !o.res.writableEnded;

export class CoapObservers {
  private readonly byDevice = new Map<string, Set<Observer>>();
  private readonly detach: (() => void)[] = [];

  constructor(
    private readonly deps: Pick<CoapEdgeDeps, 'bus' | 'remoteBus' | 'shadows' | 'commands' | 'log'>,
    private readonly activity: CoapActivity,
  ) {
    const onUpdated = (e: ShadowUpdated | ShadowDeleted) => this.shadowChanged(e.deviceId, e.name);
    // Changes made here and, with several gateways on one Redis, on the others (remoteBus).
    for (const bus of [deps.bus, ...(deps.remoteBus ? [deps.remoteBus] : [])]) {
      bus.on('shadow.updated', onUpdated);
      bus.on('shadow.deleted', onUpdated);
      this.detach.push(
        () => bus.off('shadow.updated', onUpdated),
        () => bus.off('shadow.deleted', onUpdated),
      );
    }
    const transport: CommandTransport = {
      reachable: (deviceId) => this.has(deviceId, 'commands'),
      deliver: (record) => this.commandDelivered(record),
    };
    this.detach.push(deps.commands.attach(transport));
  }

  get size(): number {
    let n = 0;
    for (const s of this.byDevice.values()) n += s.size;
    return n;
  }

  /**
   * Registers an observer whose first notification the caller already wrote. A registration with
   * the same endpoint and token replaces the earlier one (RFC 7641 §4.1).
   */
  add(deviceId: string, observer: Observer): void {
    this.cancel(deviceId, observer.key);
    let set = this.byDevice.get(deviceId);
    if (!set) this.byDevice.set(deviceId, (set = new Set()));
    set.add(observer);
    this.activity.observing(deviceId, 1);
    observer.res.on('error', (err: Error) => this.deps.log.debug({ err: err.message, deviceId }, 'coap observe stream error'));
    observer.res.once('finish', () => {
      const s = this.byDevice.get(deviceId);
      if (!s?.delete(observer)) return;
      if (s.size === 0) this.byDevice.delete(deviceId);
      this.activity.observing(deviceId, -1);
    });
  }

  /**
   * Ends the registration with this endpoint and token without a further notification: a GET with
   * Observe = 1 (deregistration, RFC 7641 §3.6), or a re-registration.
   */
  cancel(deviceId: string, key: string): void {
    for (const o of [...(this.byDevice.get(deviceId) ?? [])]) if (o.key === key && isOpen(o)) o.res.end();
  }

  /** Ends every registration of the device with a final notification (RFC 7641 §4.2). */
  endDevice(deviceId: string, code: '4.01' | '5.03', diagnostic: string): void {
    for (const o of [...(this.byDevice.get(deviceId) ?? [])].filter(isOpen)) {
      setCode(o.res, code);
      clearBlockOptions(o.res);
      asNotification(o.res).end(Buffer.from(diagnostic));
    }
  }

  close(): void {
    for (const d of this.detach) d();
    for (const id of [...this.byDevice.keys()]) this.endDevice(id, '5.03', 'the gateway is shutting down');
  }

  private has(deviceId: string, kind: Observer['kind']): boolean {
    for (const o of this.byDevice.get(deviceId) ?? []) if (o.kind === kind) return true;
    return false;
  }

  private shadowChanged(deviceId: string, name: string): void {
    const set = this.byDevice.get(deviceId);
    if (!set) return;
    const watching = [...set].filter((o) => o.kind === 'shadow' && o.name === name);
    if (watching.length === 0) return;
    void this.deps.shadows.get(deviceId, name).then(
      (r) => {
        for (const o of watching.filter(isOpen)) {
          if (r.ok) writeRepresentation(asNotification(o.res), Buffer.from(JSON.stringify(r.document)));
          else {
            // The shadow was deleted: a final 4.04 ends the registration (RFC 7641 §4.2).
            setCode(o.res, '4.04');
            clearBlockOptions(o.res);
            asNotification(o.res).end(Buffer.from(r.error.message));
          }
        }
      },
      (err: unknown) => this.deps.log.error({ err, deviceId }, 'could not notify shadow observers'),
    );
  }

  private commandDelivered(record: CommandRecord): boolean {
    const watching = [...(this.byDevice.get(record.deviceId) ?? [])].filter((o) => o.kind === 'commands');
    if (watching.length === 0) return false;
    void this.deps.commands.pending(record.deviceId).then(
      (pending) => {
        const body = Buffer.from(JSON.stringify(pending.map(commandMessage)));
        for (const o of watching.filter(isOpen)) writeRepresentation(asNotification(o.res), body);
      },
      (err: unknown) => this.deps.log.error({ err, deviceId: record.deviceId }, 'could not notify command observers'),
    );
    return true;
  }
}

