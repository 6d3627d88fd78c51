/** Shared state of the MQTT edge's hooks: deps, the session table, the broker, and counters. */
import type { Aedes, Client, PublishPacket } from 'aedes';
import { Counter } from 'prom-client';
import type { SessionTable } from './sessions.js';
import type { MqttEdgeDeps } from './types.js';

export type RejectionReason =
  | 'auth_failed'
  | 'identifier_rejected'
  | 'will_not_authorized'
  | 'keepalive_refused'
  | 'publish_not_authorized'
  | 'subscribe_not_authorized'
  | 'topic_invalid'
  | 'rate_limited'
  | 'telemetry_rejected'
  | 'command_response_rejected'
  | 'protocol_error'
  | 'offline_queue_full'
  /** The store (Redis) is unreachable: CONNECT refused with 3 / server unavailable. */
  | 'unavailable';

export interface EdgeContext {
  deps: MqttEdgeDeps;
  sessions: SessionTable;
  /** Set once the broker exists (hooks run only after that). */
  aedes: Aedes;
  /** A QoS 2 PUBLISH whose id is already stored: a retransmission aedes answers without publishing. */
  isQos2Retransmission(client: Client, packet: PublishPacket): Promise<boolean>;
  /** aedes replaying its stored copy of a command the command bridge sent (the bridge re-sends it). */
  isCommandReplay(packet: { brokerId?: string }): boolean;
  messagesIn: Counter<'listener'>;
  messagesOut: Counter;
  rejections: Counter<'reason'>;
}

export function createCounters(deps: MqttEdgeDeps): Pick<EdgeContext, 'messagesIn' | 'messagesOut' | 'rejections'> {
  const registers = [deps.metrics];
  return {
    messagesIn: new Counter({ name: 'iotgate_mqtt_messages_in_total', help: 'PUBLISH packets accepted from clients', labelNames: ['listener'], registers }),
    messagesOut: new Counter({ name: 'iotgate_mqtt_messages_out_total', help: 'PUBLISH packets forwarded to subscribers', registers }),
    rejections: new Counter({ name: 'iotgate_mqtt_rejections_total', help: 'Refused MQTT operations by reason', labelNames: ['reason'], registers }),
  };
}
