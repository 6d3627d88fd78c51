/**
 * The internal event bus (typed EventEmitter, style rule 11). Doors and services emit here; later
 * issues fan these out as CloudEvents (SSE, Redis Stream, webhooks). Listeners must not throw.
 */
import { EventEmitter } from 'node:events';
import type { DeviceProtocol, TelemetryRecord } from './model.js';
import type { CommandRecord } from './commands.js';
import type { FirmwareJob } from './firmware.js';
import type { AcceptedDocument, DeltaDocument, DocumentsDocument, Writer } from './shadow.js';

export type DisconnectReason =
  | 'client_disconnect'
  | 'keepalive_timeout'
  | 'connection_lost'
  | 'protocol_error'
  | 'takeover'
  | 'revoked'
  | 'shutdown'
  /** CoAP: no request and no Observe registration within coap.presenceWindowMs. */
  | 'inactive'
  /** The same client id connected to another gateway on the same Redis (no offline event here). */
  | 'moved';

/** The retained `devices/{id}/status` document (contract §4). */
export interface DeviceStatus {
  online: boolean;
  reason: string;
  /** epoch ms */
  at: number;
  /** Increases with every change of this device's presence. */
  version: number;
}

export interface DeviceConnected extends DeviceStatus {
  deviceId: string;
  protocol: DeviceProtocol;
  online: true;
}

export interface DeviceDisconnected extends DeviceStatus {
  deviceId: string;
  protocol: DeviceProtocol;
  online: false;
  reason: DisconnectReason;
}

/** An accepted shadow update (any door); the MQTT edge publishes accepted/documents/delta from it. */
export interface ShadowUpdated {
  deviceId: string;
  /** '' for the classic shadow */
  name: string;
  writer: Writer;
  version: number;
  accepted: AcceptedDocument;
  documents: DocumentsDocument;
  delta: DeltaDocument | null;
}

export interface ShadowDeleted {
  deviceId: string;
  name: string;
  writer: Writer;
  version: number;
  accepted: { version: number; timestamp: number; clientToken?: string };
}

export interface FirmwareUpdated {
  deviceId: string;
  job: FirmwareJob;
}

export interface GatewayEvents {
  'device.connected': [event: DeviceConnected];
  'device.disconnected': [event: DeviceDisconnected];
  /** Accepted telemetry, after it is stored; `json` is the record's JSON when the store made it. */
  telemetry: [record: TelemetryRecord, json?: string | undefined];
  'shadow.updated': [event: ShadowUpdated];
  'shadow.deleted': [event: ShadowDeleted];
  'firmware.updated': [event: FirmwareUpdated];
  /** A command was created or changed state (the record after the change). */
  'command.updated': [record: CommandRecord];
}

export class EventBus extends EventEmitter<GatewayEvents> {}
