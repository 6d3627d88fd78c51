/**
 * The schema layer's vocabulary (contract §6): a device type's codec turns the bytes a device sent
 * into one canonical JSON object, or says precisely why it cannot. Codecs never throw for bad input.
 */

/** Wire encodings a device type can use. */
export type Encoding = 'json' | 'protobuf';

/**
 * Why telemetry was refused, and the outcome of decoding one payload: core's types (the pipeline
 * consumes them). `value` is a fresh plain JSON object owned by the caller; `deviceTime` is the
 * device's own timestamp (epoch ms) when the payload carried a sane one.
 */
import type { TelemetryDecodeResult, TelemetryRejection } from '../core/ports.js';

export type { TelemetryRejection };
export type DecodeResult = TelemetryDecodeResult;

/** Size and depth bounds applied to every payload (config `limits.telemetryBytes` / `telemetryDepth`). */
export interface CodecLimits {
  /** Largest payload accepted, in raw bytes as received. */
  maxBytes: number;
  /** Deepest nesting accepted: the top-level object is depth 1, each nested object or array adds 1. */
  maxDepth: number;
}

/** A command as the gateway sends it to a device (the JSON form is `{"id","name","params","expiresAt"}`). */
export interface CommandMessage {
  id: string;
  name: string;
  params: Record<string, unknown>;
  /** Epoch milliseconds. */
  expiresAt: number;
}

/** A device's answer to a command, in the contract's JSON form `{"status": <int>, "payload": <any>}`. */
export interface CommandResponseMessage {
  status: number;
  payload: unknown;
}

export type CommandResponseResult =
  | { ok: true; value: CommandResponseMessage }
  | { ok: false; error: TelemetryRejection };

/** What `GET /v1/schemas/{type}` shows about a loaded type. */
export interface SchemaDescription {
  type: string;
  encoding: Encoding;
  jsonFallback: boolean;
  /** Message names of the .proto (`Telemetry`, `Command`, `CommandResponse`); `['Telemetry']` for JSON-only types. */
  messages: string[];
  /** The .proto source text, when the type has one. */
  proto?: string;
  /**
   * The JSON Schema telemetry is validated against: the type's .schema.json, or, for a protobuf type
   * without one, the schema derived from the .proto (it carries a `$comment` saying so).
   */
  jsonSchema?: unknown;
  /** The schema files the type was loaded from (base names); empty for the built-in `generic`. */
  files: string[];
}

/** One device type: how its devices' payloads are decoded, validated and (for commands) encoded. */
export interface DeviceTypeCodec {
  readonly type: string;
  /** What the device sends when the transport does not say (MQTT 5 content-type, CoAP content-format, HTTP Content-Type). */
  readonly encoding: Encoding;
  /** Protobuf type that also accepts JSON payloads without an explicit content type (sniffed: see docs/schemas.md). */
  readonly jsonFallback: boolean;
  /**
   * Decodes and validates one telemetry payload. An explicit `contentType` (from the transport)
   * wins over the type's encoding and over JSON sniffing. Never throws for bad input.
   */
  decodeTelemetry(payload: Buffer, contentType?: Encoding): DecodeResult;
  /** Encodes a command as the type's protobuf `Command` (present only when the .proto defines one). */
  encodeCommand?(cmd: CommandMessage): Buffer;
  /** Decodes a protobuf `CommandResponse` (present only when the .proto defines one). Never throws for bad input. */
  decodeCommandResponse?(payload: Buffer): CommandResponseResult;
  describe(): SchemaDescription;
}

/** Builds a failed DecodeResult. */
export function reject(code: TelemetryRejection['code'], message: string, path?: string): { ok: false; error: TelemetryRejection } {
  return { ok: false, error: path === undefined ? { code, message } : { code, message, path } };
}
