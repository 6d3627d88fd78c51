/**
 * Commands as a service (contract §4, §8): REST creates them, transports (MQTT now, CoAP in its
 * issue) deliver them in creation order to devices that can receive them, and devices answer.
 * Every state change is compare-and-set in the store, serialized per device in this process, and
 * published on the bus (`command.updated`). Expiry uses one timer for all commands; a waiting
 * request costs one timer and one promise.
 */
import { randomUUID } from 'node:crypto';
import { isDeepStrictEqual } from 'node:util';
import type { Logger } from 'pino';
import type { DeviceTypeCodec } from '../codecs/codec.js';
import {
  commandMessage,
  isFinished,
  parseCommandResponse,
  stateAtExpiry,
  stateForResponse,
  type CommandRecord,
  type CommandResponse,
  type CommandState,
} from './commands.js';
import { Deadlines } from './deadlines.js';
import { GatewayError } from './errors.js';
import type { EventBus } from './events.js';
import { KeyedQueue } from './keyed-queue.js';
import type { CommandListQuery, CommandPage, CommandStore, CommandTransition } from './ports.js';

/** A door that can put a command in front of a device (MQTT edge, CoAP observe). */
export interface CommandTransport {
  /** Can the device receive a command on this transport right now? */
  reachable(deviceId: string): boolean;
  /**
   * Publishes one command (`payload` already in the device type's wire form). Resolves false
   * when the device went away. The transport reports the device's acknowledgement with
   * CommandService.acknowledged().
   */
  deliver(record: CommandRecord, payload: Buffer): boolean;
}

export interface SendInput {
  name: string;
  params: Record<string, unknown>;
  ttlMs: number;
  idempotencyKey?: string | undefined;
}

/** `aborted`: the caller went away (`cancel()`); the command itself is untouched. */
export type WaitOutcome = { outcome: 'finished'; record: CommandRecord } | { outcome: 'timeout' | 'shutdown' | 'gone' | 'aborted' };

export type RespondResult =
  | { ok: true; record: CommandRecord }
  | { ok: false; reason: 'unknown' | 'finished' | 'invalid'; message: string };

export interface CommandServiceDeps {
  store: CommandStore;
  bus: EventBus;
  log: Logger;
  /** Queued-or-sent commands per device before a new one is refused (429). */
  queueMax: number;
  /** The codec of a device's type (commands use its protobuf `Command` when it has one). */
  codecOf(deviceId: string): DeviceTypeCodec | undefined;
  now?: () => number;
}

interface Waiter {
  resolve(outcome: WaitOutcome): void;
  timer: NodeJS.Timeout;
}

/** Same name and params (key order does not matter). */
const sameRequest = (r: CommandRecord, input: SendInput) => r.name === input.name && isDeepStrictEqual(r.params, input.params);

export class CommandService {
  private readonly queue = new KeyedQueue();
  private readonly transports: CommandTransport[] = [];
  private readonly waiters = new Map<string, Set<Waiter>>();
  private readonly deadlines: Deadlines<{ deviceId: string; id: string }>;
  private readonly now: () => number;
  private closed = false;

  constructor(private readonly deps: CommandServiceDeps) {
    this.now = deps.now ?? Date.now;
    this.deadlines = new Deadlines((key) => void this.expire(key.deviceId, key.id), this.now);
  }

  /** Re-arms expiry for open commands already in the store (a restart with a persistent store). */
  async start(): Promise<void> {
    for (const r of await this.deps.store.openAll()) this.deadlines.add(r.expiresAt, { deviceId: r.deviceId, id: r.id });
  }

  attach(transport: CommandTransport): () => void {
    this.transports.push(transport);
    return () => {
      const i = this.transports.indexOf(transport);
      if (i >= 0) this.transports.splice(i, 1);
    };
  }

  /**
   * Creates a command (state queued) and delivers it at once when the device can receive it.
   * The same idempotency key returns the existing command; reused with another name or params it
   * is a 422. A full queue is a 429.
   */
  async send(deviceId: string, input: SendInput): Promise<{ created: boolean; record: CommandRecord }> {
    if (this.closed) throw new GatewayError('unavailable', 'the gateway is shutting down');
    const now = this.now();
    const record: CommandRecord = {
      id: randomUUID(),
      deviceId,
      name: input.name,
      params: input.params,
      state: 'queued',
      createdAt: now,
      updatedAt: now,
      expiresAt: now + input.ttlMs,
    };
    if (input.idempotencyKey !== undefined) record.idempotencyKey = input.idempotencyKey;
    const result = await this.deps.store.create(record, { maxUndelivered: this.deps.queueMax });
    if (result.kind === 'full') {
      throw new GatewayError('command_queue_full', `device ${deviceId} already has ${result.undelivered} undelivered commands (the limit is ${this.deps.queueMax}); retry when it has taken some`, {
        details: { limit: `${this.deps.queueMax} undelivered commands per device` },
      });
    }
    if (result.kind === 'existing') {
      if (!sameRequest(result.record, input)) {
        throw new GatewayError('idempotency_conflict', `idempotencyKey "${input.idempotencyKey}" was already used for another command (${result.record.id}) with a different name or params`, {
          details: { commandId: result.record.id },
        });
      }
      return { created: false, record: result.record };
    }
    this.deps.bus.emit('command.updated', result.record);
    this.deadlines.add(record.expiresAt, { deviceId, id: record.id });
    this.pump(deviceId, false);
    return { created: true, record: result.record };
  }

  get(deviceId: string, id: string): Promise<CommandRecord | null> {
    return this.deps.store.get(deviceId, id);
  }

  list(deviceId: string, query: CommandListQuery): Promise<CommandPage> {
    return this.deps.store.list(deviceId, query);
  }

  /** Cancels an open command; a finished one is a 409 (with the record), an unknown one a 404. */
  cancel(deviceId: string, id: string): Promise<CommandRecord> {
    return this.queue.run(deviceId, async () => {
      const moved = await this.move(deviceId, id, ['queued', 'sent', 'delivered'], { state: 'canceled' });
      if (moved) return moved;
      const current = await this.deps.store.get(deviceId, id);
      if (!current) throw notFound(deviceId, id);
      throw new GatewayError('conflict', `command ${id} is already ${current.state}; only an unfinished command can be canceled`, { details: { ...current } });
    });
  }

  /** The device acknowledged the command (MQTT PUBACK): sent (or queued, if racing) → delivered. */
  acknowledged(deviceId: string, id: string): void {
    void this.queue.run(deviceId, () => this.move(deviceId, id, ['queued', 'sent'], { state: 'delivered' })).catch((err: unknown) => {
      this.deps.log.error({ err, deviceId, commandId: id }, 'could not record a command delivery');
    });
  }

  /**
   * A device's answer, raw from the wire (JSON `{status, payload}`, or protobuf `CommandResponse`
   * for a protobuf type) or already parsed (CoAP/HTTP JSON). Unknown or finished commands and
   * malformed answers are refused with a reason for the device.
   */
  respond(deviceId: string, id: string, answer: Buffer | unknown): Promise<RespondResult> {
    const parsed = Buffer.isBuffer(answer) ? this.decodeResponse(deviceId, answer) : parseCommandResponse(answer);
    if (!parsed.ok) return Promise.resolve({ ok: false, reason: 'invalid', message: parsed.message });
    const response: CommandResponse = parsed.value;
    return this.queue.run(deviceId, async () => {
      const moved = await this.move(deviceId, id, ['queued', 'sent', 'delivered'], { state: stateForResponse(response.status), response });
      if (moved) return { ok: true, record: moved } as const;
      const current = await this.deps.store.get(deviceId, id);
      if (!current) return { ok: false, reason: 'unknown', message: `no command ${id} for device ${deviceId}` } as const;
      return { ok: false, reason: 'finished', message: `command ${id} is already ${current.state}` } as const;
    });
  }

  /**
   * The device can receive commands again (it subscribed to its commands topic, or reconnected
   * with such a subscription): everything not acknowledged yet goes out again, in order.
   */
  resume(deviceId: string): void {
    this.pump(deviceId, true);
  }

  /** The device can receive commands (again) on a connection that already got the unacknowledged ones. */
  kick(deviceId: string): void {
    this.pump(deviceId, false);
  }

  /**
   * A command changed on another gateway sharing the store (the cluster link): a new one may be
   * for a device connected here (deliver it, and watch its expiry here too — expiring is a
   * compare-and-set, so two gateways cannot both do it); a finished one answers the requests
   * waiting here.
   */
  remoteUpdate(record: CommandRecord): void {
    if (this.closed) return;
    if (isFinished(record.state)) {
      this.notify(record.id, { outcome: 'finished', record });
      return;
    }
    if (record.state === 'queued') {
      this.deadlines.add(record.expiresAt, { deviceId: record.deviceId, id: record.id });
      this.pump(record.deviceId, false);
    }
  }

  /**
   * After a gap in the cluster channel (its subscriber reconnected): commands created elsewhere
   * meanwhile for devices connected here are delivered now instead of at their next subscription.
   */
  async kickAll(): Promise<void> {
    if (this.closed) return;
    const devices = new Set((await this.deps.store.openAll()).map((r) => r.deviceId));
    for (const deviceId of devices) if (this.transports.some((t) => t.reachable(deviceId))) this.pump(deviceId, false);
  }

  /** The device's unfinished, unexpired commands in creation order (no state change). */
  async pending(deviceId: string): Promise<CommandRecord[]> {
    const now = this.now();
    return (await this.deps.store.open(deviceId)).filter((r) => r.expiresAt > now);
  }

  /**
   * The device's unfinished commands in creation order, for a door that hands them over as a list
   * (CoAP `GET /commands`): queued ones become sent, expired ones are finished and left out.
   */
  takePending(deviceId: string): Promise<CommandRecord[]> {
    return this.queue.run(deviceId, async () => {
      const out: CommandRecord[] = [];
      for (const r of await this.deps.store.open(deviceId)) {
        if (r.expiresAt <= this.now()) {
          await this.move(deviceId, r.id, [r.state], { state: stateAtExpiry(r.state) });
          continue;
        }
        out.push(r.state === 'queued' ? ((await this.move(deviceId, r.id, ['queued'], { state: 'sent' })) ?? r) : r);
      }
      return out;
    });
  }

  /**
   * Waits until the command is finished or `timeoutMs` passes. `cancel()` (the caller went away)
   * releases the timer and settles the promise with `aborted`. Costs one timer and one promise.
   */
  wait(deviceId: string, id: string, timeoutMs: number): { promise: Promise<WaitOutcome>; cancel(): void } {
    let waiter!: Waiter;
    const promise = new Promise<WaitOutcome>((resolve) => {
      waiter = {
        resolve: (outcome) => {
          clearTimeout(waiter.timer);
          this.dropWaiter(id, waiter);
          resolve(outcome);
        },
        timer: setTimeout(() => waiter.resolve({ outcome: 'timeout' }), timeoutMs),
      };
    });
    if (this.closed) waiter.resolve({ outcome: 'shutdown' });
    else {
      let set = this.waiters.get(id);
      if (!set) this.waiters.set(id, (set = new Set()));
      set.add(waiter);
      // It may have finished before the waiter was registered.
      void this.deps.store.get(deviceId, id).then(
        (r) => {
          if (!r) waiter.resolve({ outcome: 'gone' });
          else if (isFinished(r.state)) waiter.resolve({ outcome: 'finished', record: r });
        },
        () => undefined,
      );
    }
    return {
      promise,
      cancel: () => waiter.resolve({ outcome: 'aborted' }),
    };
  }

  get waiting(): number {
    let n = 0;
    for (const s of this.waiters.values()) n += s.size;
    return n;
  }

  /** The device was deleted: its commands are gone and waiting requests are answered. */
  async forgetDevice(deviceId: string): Promise<void> {
    await this.queue.run(deviceId, async () => {
      const open = await this.deps.store.open(deviceId);
      await this.deps.store.forgetDevice(deviceId);
      for (const r of open) this.notify(r.id, { outcome: 'gone' });
    });
  }

  /** Answers every waiting request ('shutdown') and stops the expiry timer. */
  close(): void {
    this.closed = true;
    this.deadlines.close();
    for (const id of [...this.waiters.keys()]) this.notify(id, { outcome: 'shutdown' });
  }

  /** Idle when every per-device operation queued so far has settled (tests, shutdown). */
  idle(): Promise<void> {
    return this.queue.idle();
  }

  /** The command as the device's type puts it on the wire: protobuf `Command`, or JSON. */
  encode(record: CommandRecord): Buffer {
    const codec = this.deps.codecOf(record.deviceId);
    if (codec?.encoding === 'protobuf' && codec.encodeCommand) return codec.encodeCommand(commandMessage(record));
    return Buffer.from(JSON.stringify(commandMessage(record)));
  }

  private decodeResponse(deviceId: string, payload: Buffer): ReturnType<typeof parseCommandResponse> {
    const codec = this.deps.codecOf(deviceId);
    if (codec?.encoding === 'protobuf' && codec.decodeCommandResponse && !(codec.jsonFallback && startsJson(payload))) {
      const r = codec.decodeCommandResponse(payload);
      return r.ok ? parseCommandResponse(r.value) : { ok: false, message: r.error.message };
    }
    let value: unknown;
    try {
      value = JSON.parse(payload.toString('utf8'));
    } catch {
      return { ok: false, message: 'the command response is not valid JSON: expected {"status": <int>, "payload": <any>}' };
    }
    return parseCommandResponse(value);
  }

  /** Delivers the device's queued commands (and, on `resend`, the sent ones) in creation order. */
  private pump(deviceId: string, resend: boolean): void {
    if (this.closed) return;
    void this.queue
      .run(deviceId, async () => {
        const transport = this.transports.find((t) => t.reachable(deviceId));
        if (!transport) return;
        for (const r of await this.deps.store.open(deviceId)) {
          if (r.state === 'delivered' || (r.state === 'sent' && !resend)) continue;
          if (r.expiresAt <= this.now()) {
            await this.move(deviceId, r.id, [r.state], { state: stateAtExpiry(r.state) });
            continue;
          }
          const sent = r.state === 'sent' ? r : await this.move(deviceId, r.id, ['queued'], { state: 'sent' });
          if (!sent) continue;
          // false: the device went away meanwhile; the record stays sent and the next
          // (re)subscription resends it (resume → resend).
          if (!transport.deliver(sent, this.encode(sent))) break;
        }
      })
      .catch((err: unknown) => this.deps.log.error({ err, deviceId }, 'command delivery failed'));
  }

  private expire(deviceId: string, id: string): void {
    void this.queue
      .run(deviceId, async () => {
        const r = await this.deps.store.get(deviceId, id);
        if (!r || isFinished(r.state)) return;
        if (r.expiresAt > this.now()) {
          this.deadlines.add(r.expiresAt, { deviceId, id });
          return;
        }
        await this.move(deviceId, id, [r.state], { state: stateAtExpiry(r.state) });
      })
      .catch((err: unknown) => this.deps.log.error({ err, deviceId, commandId: id }, 'command expiry failed'));
  }

  /** One state change: CAS in the store, then the event and any waiting requests. */
  private async move(deviceId: string, id: string, from: readonly CommandState[], change: Omit<CommandTransition, 'updatedAt'>): Promise<CommandRecord | null> {
    const next = await this.deps.store.transition(deviceId, id, from, { ...change, updatedAt: this.now() });
    if (!next) return null;
    this.deps.bus.emit('command.updated', next);
    if (isFinished(next.state)) this.notify(id, { outcome: 'finished', record: next });
    return next;
  }

  private notify(id: string, outcome: WaitOutcome): void {
    const set = this.waiters.get(id);
    if (!set) return;
    for (const w of [...set]) w.resolve(outcome);
  }

  private dropWaiter(id: string, w: Waiter): void {
    const set = this.waiters.get(id);
    if (!set) return;
    set.delete(w);
    if (set.size === 0) this.waiters.delete(id);
  }
}

function startsJson(payload: Buffer): boolean {
  let i = 0;
  while (payload[i] === 0x20 || payload[i] === 0x0a || payload[i] === 0x0d || payload[i] === 0x09) i++;
  return payload[i] === 0x7b;
}

export function notFound(deviceId: string, id: string): GatewayError {
  return new GatewayError('command_not_found', `device ${deviceId} has no command ${id}`);
}
