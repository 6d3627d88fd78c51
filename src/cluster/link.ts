/**
 * The cluster link: several gateways sharing one Redis act as one. State is in Redis already (the
 * stores); what does not travel through the stores are the *moments* — a command created on
 * gateway B must be delivered by gateway A, where its device is connected, and A's answer must
 * wake the REST request waiting on B; a shadow PATCH through B must notify A's CoAP observers.
 *
 * Every gateway publishes its own `shadow.updated`, `shadow.deleted` and `command.updated` events
 * on one Redis pub/sub channel and re-emits the other gateways' ones on a separate `remote` bus.
 * The local bus stays local on purpose: webhooks, the event stream and MQTT fan-out (which crosses
 * gateways through the shared MQTT emitter) must see each event exactly once, from the gateway
 * where it happened. Only listeners that serve this gateway's own connections (CoAP observers,
 * command waiters and delivery) also listen to `remote`.
 *
 * Pub/sub is at-most-once: a message lost while the subscriber reconnects costs latency, not
 * correctness — command records and shadows are in Redis, a reconnecting device gets its queued
 * commands on (re)subscription, and a REST waiter re-reads the record when its wait ends.
 */
import { randomUUID } from 'node:crypto';
import type { Redis } from 'ioredis';
import type { Logger } from 'pino';
import { EventBus, type GatewayEvents } from '../core/events.js';

export const CLUSTER_CHANNEL = 'iotgate:cluster';

const RELAYED = ['shadow.updated', 'shadow.deleted', 'command.updated'] as const;
type Relayed = (typeof RELAYED)[number];

interface Envelope {
  /** origin gateway */
  o: string;
  t: Relayed;
  e: GatewayEvents[Relayed][0];
}

export interface ClusterLinkDeps {
  /** A connection for PUBLISH (the stores' client is fine). */
  publisher: Redis;
  /** A dedicated connection: a subscribed connection can do nothing else. */
  subscriber: Redis;
  bus: EventBus;
  log: Logger;
  channel?: string;
}

export class ClusterLink {
  readonly id = randomUUID();
  /** The other gateways' events, for listeners that serve this gateway's own connections. */
  readonly remote = new EventBus();
  private readonly channel: string;
  private readonly detach: (() => void)[] = [];
  private closed = false;
  private relayFailures = 0;

  constructor(private readonly deps: ClusterLinkDeps) {
    this.channel = deps.channel ?? CLUSTER_CHANNEL;
    for (const type of RELAYED) {
      const listener = (event: GatewayEvents[Relayed][0]) => this.publish(type, event);
      deps.bus.on(type, listener as never);
      this.detach.push(() => deps.bus.off(type, listener as never));
    }
    // ioredis re-subscribes after a reconnect; whatever was published in the gap is lost, so the
    // gateway is told (onResync) to catch up from the stores.
    let connectedOnce = deps.subscriber.status === 'ready';
    const onReady = () => {
      if (connectedOnce && !this.closed) this.resyncListener?.();
      connectedOnce = true;
    };
    deps.subscriber.on('ready', onReady);
    this.detach.push(() => deps.subscriber.off('ready', onReady));
    const onMessage = (channel: string, message: string) => {
      if (channel === this.channel) this.receive(message);
    };
    // Connection errors while Redis is away: ioredis reconnects and re-subscribes by itself;
    // readiness reports the outage (the stores' client), so a debug line is enough here.
    const onError = (err: Error) => this.deps.log.debug({ err: err.message }, 'cluster subscriber: redis connection error');
    deps.subscriber.on('message', onMessage);
    deps.subscriber.on('error', onError);
    this.detach.push(
      () => deps.subscriber.off('message', onMessage),
      () => deps.subscriber.off('error', onError),
    );
  }

  private resyncListener: (() => void) | undefined;

  /** Called after the subscriber reconnected (messages of the gap are lost). */
  onResync(listener: () => void): void {
    this.resyncListener = listener;
  }

  /** Subscribes; resolves once Redis confirmed (ioredis re-subscribes by itself after a reconnect). */
  async start(): Promise<void> {
    await this.deps.subscriber.subscribe(this.channel);
  }

  private publish(t: Relayed, e: GatewayEvents[Relayed][0]): void {
    if (this.closed) return;
    const envelope: Envelope = { o: this.id, t, e };
    this.deps.publisher.publish(this.channel, JSON.stringify(envelope)).catch((err: unknown) => {
      // Redis is down: the other gateways learn the state from the stores later (see above).
      // One line per 100 failures, not one per event.
      if (this.relayFailures++ % 100 === 0) {
        this.deps.log.warn({ err: err instanceof Error ? err.message : String(err), event: t, failures: this.relayFailures }, 'could not relay an event to the other gateways');
      }
    });
  }

  private receive(message: string): void {
    let envelope: Envelope;
    try {
      envelope = JSON.parse(message) as Envelope;
    } catch {
      this.deps.log.warn('ignored an unreadable cluster message');
      return;
    }
    if (envelope.o === this.id || !RELAYED.includes(envelope.t)) return;
    try {
      this.remote.emit(envelope.t, envelope.e as never);
    } catch (err) {
      this.deps.log.error({ err, event: envelope.t }, 'a cluster event listener threw');
    }
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const d of this.detach) d();
    this.remote.removeAllListeners();
    await this.deps.subscriber.quit().catch(() => this.deps.subscriber.disconnect());
  }
}
