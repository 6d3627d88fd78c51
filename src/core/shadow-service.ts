/**
 * Device shadows as a service: the pure logic of shadow.ts over a ShadowStore, for every door
 * (MQTT, CoAP, REST). Updates of one shadow are applied one at a time in this process and written
 * with compare-and-set, so concurrent writers (here or in another gateway) never lose an update:
 * the last writer wins only through versions. Every accepted change goes out on the bus.
 */
import type { Logger } from 'pino';
import type { EventBus } from './events.js';
import type { ShadowStore } from './ports.js';
import { KeyedQueue } from './keyed-queue.js';
import {
  applyDelete,
  applyUpdate,
  deltaDocument,
  fullDocument,
  parseUpdateRequest,
  shadowExists,
  SHADOW_MESSAGES,
  type AcceptedDocument,
  type DeltaDocument,
  type ShadowDocument,
  type ShadowLimits,
  type Writer,
} from './shadow.js';

/** AWS shadow error codes, plus 412 for REST If-Match. */
export interface ShadowFailure {
  code: 400 | 404 | 409 | 412 | 413;
  message: string;
}

/** AWS: shadow names are at most 64 bytes of [a-zA-Z0-9:_-]. */
export const SHADOW_NAME = /^[A-Za-z0-9:_-]{1,64}$/;

const CAS_ATTEMPTS = 5;

export type ShadowResult<T> = ({ ok: true } & T) | { ok: false; error: ShadowFailure; clientToken?: string | undefined };

const missing = (name: string): ShadowFailure => ({ code: 404, message: SHADOW_MESSAGES.noShadow(name || 'classic') });
const exists = shadowExists;

export class ShadowService {
  private readonly queue = new KeyedQueue();

  constructor(
    private readonly deps: { store: ShadowStore; bus: EventBus; limits: ShadowLimits; log: Logger },
  ) {}

  /** Runs `fn` after every earlier write of the same shadow in this process. */
  private serial<T>(key: string, fn: () => Promise<T>): Promise<T> {
    return this.queue.run(key, fn);
  }

  checkName(name: string): ShadowFailure | null {
    return name === '' || SHADOW_NAME.test(name) ? null : { code: 400, message: 'Invalid shadow name' };
  }

  async get(deviceId: string, name: string, clientToken?: string): Promise<ShadowResult<{ document: ShadowDocument; version: number }>> {
    const bad = this.checkName(name);
    if (bad) return { ok: false, error: bad, clientToken };
    const s = await this.deps.store.get(deviceId, name);
    if (!exists(s)) return { ok: false, error: missing(name), clientToken };
    return { ok: true, document: fullDocument(s, clientToken), version: s.version };
  }

  /** The current delta document, or null (no shadow or no difference). */
  async delta(deviceId: string, name: string): Promise<DeltaDocument | null> {
    const s = await this.deps.store.get(deviceId, name);
    return exists(s) ? deltaDocument(s) : null;
  }

  /** Names of the device's named shadows that exist (a deleted one stays stored to keep its version). */
  async names(deviceId: string): Promise<string[]> {
    const names = await this.deps.store.names(deviceId);
    const docs = await Promise.all(names.map((n) => this.deps.store.get(deviceId, n)));
    return names.filter((_, i) => exists(docs[i] ?? null));
  }

  /**
   * Applies an update request (raw JSON or parsed). `ifMatch` (REST If-Match) must equal the
   * current version or the result is 412; a `version` in the request must too (409).
   */
  async update(
    deviceId: string,
    name: string,
    body: unknown,
    writer: Writer,
    opts: { ifMatch?: number } = {},
  ): Promise<ShadowResult<{ version: number; document: ShadowDocument; accepted: AcceptedDocument }>> {
    const bad = this.checkName(name);
    if (bad) return { ok: false, error: bad };
    const parsed = parseUpdateRequest(body, writer, this.deps.limits);
    if (!parsed.ok) return { ok: false, error: parsed.error, clientToken: parsed.clientToken };
    const request = parsed.request;
    return this.serial(`${deviceId}\u0000${name}`, async () => {
      for (let attempt = 0; attempt < CAS_ATTEMPTS; attempt++) {
        const current = await this.deps.store.get(deviceId, name);
        if (opts.ifMatch !== undefined && (current?.version ?? 0) !== opts.ifMatch) {
          return { ok: false as const, error: { code: 412 as const, message: 'Precondition failed: the shadow version does not match If-Match' }, clientToken: request.clientToken };
        }
        const applied = applyUpdate(current, request, Date.now(), this.deps.limits);
        if (!applied.ok) return { ok: false as const, error: applied.error, clientToken: request.clientToken };
        if (await this.deps.store.compareAndSet(deviceId, name, current?.version ?? null, applied.next)) {
          this.emit(() =>
            this.deps.bus.emit('shadow.updated', {
              deviceId,
              name,
              writer,
              version: applied.next.version,
              accepted: applied.accepted,
              documents: applied.documents,
              delta: applied.delta,
            }),
          );
          return { ok: true as const, version: applied.next.version, document: fullDocument(applied.next, request.clientToken), accepted: applied.accepted };
        }
        // Another gateway wrote in between. A request that named its version now conflicts.
        if (request.version !== undefined || opts.ifMatch !== undefined) break;
      }
      return { ok: false as const, error: { code: 409 as const, message: 'Version conflict' }, clientToken: request.clientToken };
    });
  }

  async delete(deviceId: string, name: string, writer: Writer, opts: { clientToken?: string; ifMatch?: number } = {}): Promise<ShadowResult<{ version: number; accepted: { version: number; timestamp: number; clientToken?: string } }>> {
    const bad = this.checkName(name);
    if (bad) return { ok: false, error: bad, clientToken: opts.clientToken };
    return this.serial(`${deviceId}\u0000${name}`, async () => {
      for (let attempt = 0; attempt < CAS_ATTEMPTS; attempt++) {
        const current = await this.deps.store.get(deviceId, name);
        if (!exists(current)) return { ok: false as const, error: missing(name), clientToken: opts.clientToken };
        if (opts.ifMatch !== undefined && current.version !== opts.ifMatch) {
          return { ok: false as const, error: { code: 412 as const, message: 'Precondition failed: the shadow version does not match If-Match' }, clientToken: opts.clientToken };
        }
        const { next, accepted } = applyDelete(current, Date.now(), opts.clientToken);
        if (await this.deps.store.compareAndSet(deviceId, name, current.version, next)) {
          this.emit(() => this.deps.bus.emit('shadow.deleted', { deviceId, name, writer, version: next.version, accepted }));
          return { ok: true as const, version: next.version, accepted };
        }
      }
      return { ok: false as const, error: { code: 409 as const, message: 'Version conflict' }, clientToken: opts.clientToken };
    });
  }

  forgetDevice(deviceId: string): Promise<void> {
    return this.deps.store.forgetDevice(deviceId);
  }

  private emit(fn: () => void): void {
    try {
      fn();
    } catch (err) {
      this.deps.log.error({ err }, 'a shadow listener threw');
    }
  }
}
