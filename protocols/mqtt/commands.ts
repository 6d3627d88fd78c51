/**
 * Commands over MQTT (contract §4): the gateway publishes `devices/{id}/commands/{commandId}` to
 * the device's own connection at QoS 1 (or the QoS it subscribed with, if lower), and learns of
 * the device's PUBACK to mark the command delivered. The device answers on `…/response`.
 *
 * The command service, not the broker, owns redelivery: commands go to the device as soon as it
 * subscribes (or reconnects with a persistent subscription), in creation order, and copies that
 * aedes stored for a persistent session are dropped when aedes replays them, so a command arrives
 * once per delivery attempt. (An admin's raw publish on a commands topic is plain MQTT: forwarded,
 * with no command record behind it.)
 *
 * aedes tells nobody which PUBACK answers which PUBLISH for clean sessions ('ack' gives no packet
 * then), so this module chooses the packet identifier itself: the next one of the client's own
 * sequence, exactly as aedes' QoSPacket would, and watches PUBACKs where aedes clears them from
 * the persistence. The aedes internals it touches are typed in `ClientInternals` below.
 */
import type { Aedes, Client, Subscription } from 'aedes';
import type { CommandRecord } from '../../src/core/commands.js';
import type { CommandService, CommandTransport } from '../../src/core/command-service.js';
import type { Persistence } from './offline-queue.js';
import type { SessionTable } from './sessions.js';
import { topicMatches } from './shadow.js';
import { DEVICES_PREFIX } from './topics.js';

/** aedes 1.x Client members used here (lib/client.js): the packet id sequence and the QoS>0 writer. */
interface ClientInternals {
  _nextId: number;
  deliverQoS(packet: object, done: () => void): void;
  subscriptions: Record<string, { qos?: number } | undefined>;
}

interface CommandPacket {
  cmd: 'publish';
  topic: string;
  payload: Buffer;
  qos: 0 | 1;
  retain: false;
  dup: false;
  messageId?: number;
  brokerId?: string;
  brokerCounter?: number;
}

interface ClientCommands {
  /** Granted QoS of each of the client's filters that cover its commands topic. */
  filters: Map<string, number>;
  /** Packet id → command, for commands published at QoS 1 and not acknowledged yet. */
  inflight: Map<number, string>;
  /** Whether this connection already received the device's unacknowledged commands. */
  resumed: boolean;
}

const RESPONSE = /^commands\/([^/]+)\/response$/;
const COMMAND = /^commands\/[^/]+$/;
const noop = () => undefined;
/** Marks the packets this bridge publishes (aedes ids never end like this: they are UUIDs). */
const BRIDGE_SUFFIX = ':commands';

export const commandTopic = (deviceId: string, commandId: string): string => `${DEVICES_PREFIX}${deviceId}/commands/${commandId}`;

/** `commands/{id}/response` (relative to the device's subtree) → the command id. */
export function parseResponseTopic(relative: string): string | null {
  return RESPONSE.exec(relative)?.[1] ?? null;
}

export function isCommandTopic(relative: string): boolean {
  return COMMAND.test(relative);
}

export interface CommandBridge {
  /** authorizeForward: is this aedes replaying its stored copy of a command this bridge sent? */
  isReplay(packet: { brokerId?: string }): boolean;
  detach(): void;
}

export function attachCommandBridge(opts: {
  aedes: Aedes;
  sessions: SessionTable;
  persistence: Persistence;
  commands: CommandService;
}): CommandBridge {
  const { aedes, sessions, persistence, commands } = opts;
  const state = new WeakMap<Client, ClientCommands>();
  const live = new WeakSet<object>();
  const brokerId = `${aedes.id}${BRIDGE_SUFFIX}`;
  let counter = 0;

  const deviceOf = (client: Client): string | null => {
    const p = sessions.principal(client);
    return p?.kind === 'device' ? p.deviceId : null;
  };
  const stateOf = (client: Client): ClientCommands => {
    let s = state.get(client);
    if (!s) state.set(client, (s = { filters: new Map(), inflight: new Map(), resumed: false }));
    return s;
  };
  const covers = (deviceId: string, filter: string) => topicMatches(filter, commandTopic(deviceId, '_'));

  /** New or restored filters: deliver what is pending (all unacknowledged ones on first coverage). */
  const track = (client: Client, deviceId: string, subs: { topic: string; qos: number }[]) => {
    const s = stateOf(client);
    const before = s.filters.size;
    for (const sub of subs) if (sub.qos <= 2 && covers(deviceId, sub.topic)) s.filters.set(sub.topic, sub.qos);
    if (s.filters.size === before) return;
    if (!s.resumed) {
      s.resumed = true;
      commands.resume(deviceId);
    } else if (before === 0) commands.kick(deviceId);
  };

  const onSubscribe = (subs: Subscription[], client: Client) => {
    const deviceId = deviceOf(client);
    if (deviceId === null) return;
    // aedes handles packets as soon as the CONNACK is written, before its `clientReady` (it first
    // replays a persistent session's queue, which with Redis takes a round trip): a SUBSCRIBE
    // right after the CONNACK comes before the session table knows the device, and delivering
    // now would find it unreachable. Its commands go out once the connection is ready.
    if (client.connected) track(client, deviceId, subs);
    // Only what is still subscribed by then (an UNSUBSCRIBE may have come in between).
    else client.once('connected', () => track(client, deviceId, subs.filter((s) => s.topic in (client as unknown as ClientInternals).subscriptions)));
  };
  const onUnsubscribe = (filters: string[], client: Client) => {
    const s = state.get(client);
    if (s) for (const f of filters) s.filters.delete(f);
  };
  // A persistent session's subscriptions come back without a SUBSCRIBE (no 'subscribe' event).
  const onReady = (client: Client) => {
    const deviceId = deviceOf(client);
    if (deviceId === null || client.clean) return;
    const restored = (client as unknown as ClientInternals).subscriptions;
    track(
      client,
      deviceId,
      Object.keys(restored).map((topic) => ({ topic, qos: restored[topic]?.qos ?? 0 })),
    );
  };

  // Every PUBACK passes here (aedes clears the acknowledged packet from the persistence).
  const clear = persistence.outgoingClearMessageId.bind(persistence);
  persistence.outgoingClearMessageId = (client: Client, packet: { cmd?: string; messageId?: number }) => {
    if (packet.cmd === 'puback' && packet.messageId !== undefined) {
      const s = state.get(client);
      const commandId = s?.inflight.get(packet.messageId);
      const deviceId = commandId === undefined ? null : deviceOf(client);
      if (commandId !== undefined && deviceId !== null) {
        s?.inflight.delete(packet.messageId);
        commands.acknowledged(deviceId, commandId);
      }
    }
    return clear(client, packet);
  };

  const transport: CommandTransport = {
    reachable(deviceId) {
      const client = sessions.deviceClient(deviceId);
      return client !== undefined && !client.closed && (state.get(client)?.filters.size ?? 0) > 0;
    },
    deliver(record: CommandRecord, payload: Buffer) {
      const client = sessions.deviceClient(record.deviceId);
      const s = client && state.get(client);
      if (!client || client.closed || !s || s.filters.size === 0) return false;
      const qos = Math.min(1, Math.max(...s.filters.values())) as 0 | 1;
      const packet: CommandPacket = { cmd: 'publish', topic: commandTopic(record.deviceId, record.id), payload, qos, retain: false, dup: false };
      live.add(packet);
      if (qos === 0) {
        client.publish(packet, noop);
        return true;
      }
      const c = client as unknown as ClientInternals;
      const messageId = c._nextId;
      c._nextId = messageId >= 65535 ? 1 : messageId + 1;
      packet.messageId = messageId;
      packet.brokerId = brokerId;
      packet.brokerCounter = ++counter;
      s.inflight.set(messageId, record.id);
      // A persistent session's outgoing packets must be in the persistence before aedes records
      // their packet id (its outgoingUpdate); a clean session's are written directly.
      if (client.clean) c.deliverQoS(packet, noop);
      else persistence.outgoingEnqueue({ clientId: client.id }, packet).then(() => c.deliverQoS(packet, noop), noop);
      return true;
    },
  };

  const detachTransport = commands.attach(transport);
  aedes.on('subscribe', onSubscribe);
  aedes.on('unsubscribe', onUnsubscribe);
  aedes.on('clientReady', onReady);
  return {
    // Any command bridge's copy, not only this one's: with a shared persistence (Redis) the copy
    // may come from another gateway or from this gateway before a restart (another aedes id).
    isReplay: (packet) => packet.brokerId?.endsWith(BRIDGE_SUFFIX) === true && !live.has(packet),
    detach() {
      detachTransport();
      aedes.off('subscribe', onSubscribe);
      aedes.off('unsubscribe', onUnsubscribe);
      aedes.off('clientReady', onReady);
      persistence.outgoingClearMessageId = clear;
    },
  };
}
