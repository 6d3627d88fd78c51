/**
 * Protobuf device types: `<type>.proto` (package `iotgate.<type>`, message `Telemetry`, optional
 * `Command` and `CommandResponse`), parsed once with protobufjs (`keepCase`: JSON uses the proto
 * field names) and decoded to the canonical JSON form described in docs/schemas.md.
 */
import protobuf from 'protobufjs';
import type { Root, Type } from 'protobufjs';
import type { ValidateFunction } from './ajv.js';
import {
  reject,
  type CodecLimits,
  type CommandMessage,
  type CommandResponseResult,
  type DecodeResult,
  type DeviceTypeCodec,
  type Encoding,
  type SchemaDescription,
  type TelemetryRejection,
} from './codec.js';
import { DEVICE_TIME_MAX, DEVICE_TIME_MIN, deviceTimeOf, tooDeepAt } from './document.js';
import { SchemaLoadError, escapeRegExp, lineAt, lineOf } from './errors.js';
import { jsonDeviceTime, parseJsonObject, validateDocument } from './json.js';
import { ConversionError, ProtoJson, TIMESTAMP, TO_OBJECT } from './proto-json.js';

/** A parsed and resolved .proto of one device type. */
export interface ProtoSchema {
  root: Root;
  /** `iotgate.<type>` (dashes in the type name become underscores). */
  packageName: string;
  telemetry: Type;
  command?: Type;
  commandResponse?: Type;
  source: string;
}

/** The proto package of a type: `iotgate.<type>`, with `-` (not allowed in proto identifiers) as `_`. */
export function protoPackageOf(type: string): string {
  return `iotgate.${type.replace(/-/g, '_')}`;
}

/**
 * Parses and resolves the .proto of `type`. Imports may name the well-known types bundled with
 * protobufjs (google/protobuf/timestamp.proto, duration, any, empty, struct, wrappers, field_mask).
 * Any problem throws SchemaLoadError with the file, the line when known and the reason.
 */
export function parseProtoSchema(type: string, file: string, source: string): ProtoSchema {
  const root = new protobuf.Root();
  let parsed: protobuf.IParserResult;
  try {
    parsed = protobuf.parse(source, root, { keepCase: true });
  } catch (err) {
    const msg = err instanceof Error ? err.message : String(err);
    const line = /\bline (\d+)\)?\s*$/.exec(msg)?.[1];
    throw new SchemaLoadError(file, line === undefined ? lineOfDuplicate(source, msg) : Number(line), msg.replace(/\s*\((?:[^()]*, )?line \d+\)\s*$/, ''), {
      cause: err,
    });
  }
  for (const imp of new Set([...(parsed.imports ?? []), ...(parsed.weakImports ?? [])])) {
    const wellKnown = protobuf.common.get(imp);
    if (!wellKnown?.nested) {
      throw new SchemaLoadError(
        file,
        lineOf(source, new RegExp(`import\\s+(?:weak\\s+|public\\s+)?["']${escapeRegExp(imp)}["']`)),
        `cannot import "${imp}": a device type is one self-contained .proto; only the google/protobuf well-known types can be imported`,
      );
    }
    root.addJSON(wellKnown.nested);
  }
  try {
    root.resolveAll();
  } catch (err) {
    const msg = err instanceof Error ? err.message : String(err);
    const name = /no such type: ([\w.]+)/.exec(msg)?.[1] ?? /'([\w.]+)'/.exec(msg)?.[1];
    const line = name === undefined ? undefined : lineOf(source, new RegExp(`(?<![\\w.])${escapeRegExp(name)}(?![\\w])`));
    throw new SchemaLoadError(file, line, msg + importHint(name), { cause: err });
  }

  const packageName = protoPackageOf(type);
  if (parsed.package !== packageName) {
    throw new SchemaLoadError(
      file,
      lineOf(source, /^\s*package\b/m) ?? 1,
      parsed.package ? `package is "${parsed.package}": a ${type} type's .proto must declare "package ${packageName};"` : `missing "package ${packageName};"`,
    );
  }
  const lookup = (name: string): Type | undefined => {
    const found = root.lookup(`${packageName}.${name}`);
    if (found === null) return undefined;
    if (!(found instanceof protobuf.Type)) {
      throw new SchemaLoadError(file, lineOf(source, new RegExp(`\\b${name}\\b`)), `${packageName}.${name} must be a message`);
    }
    return found;
  };
  const telemetry = lookup('Telemetry');
  if (!telemetry) throw new SchemaLoadError(file, undefined, `no message Telemetry in package ${packageName}`);
  const schema: ProtoSchema = { root, packageName, telemetry, source };

  const command = lookup('Command');
  if (command) {
    for (const f of ['id', 'name']) {
      if (command.fields[f]?.type !== 'string' || command.fields[f]?.repeated) {
        throw new SchemaLoadError(file, lineOf(source, /\bmessage\s+Command\b/), `message Command needs a field "string ${f}" (see docs/schemas.md)`);
      }
    }
    schema.command = command;
  }
  const commandResponse = lookup('CommandResponse');
  if (commandResponse) {
    const status = commandResponse.fields['status'];
    if (!status || status.repeated || !['int32', 'sint32', 'uint32', 'sfixed32', 'fixed32'].includes(status.type)) {
      throw new SchemaLoadError(file, lineOf(source, /\bmessage\s+CommandResponse\b/), 'message CommandResponse needs a field "int32 status"');
    }
    schema.commandResponse = commandResponse;
  }
  return schema;
}

/** protobufjs reports duplicate field ids/names without a line: find the second definition in that message. */
function lineOfDuplicate(source: string, msg: string): number | undefined {
  const m = /duplicate (id|name) '?([\w.]+)'? in Type (\w+)/.exec(msg);
  if (!m?.[2] || !m[3]) return undefined;
  const start = new RegExp(`\\bmessage\\s+${m[3]}\\b`).exec(source)?.index;
  if (start === undefined) return undefined;
  const def = m[1] === 'id' ? new RegExp(`=\\s*${m[2]}\\s*[;[]`, 'g') : new RegExp(`\\b${escapeRegExp(m[2])}\\s*=`, 'g');
  def.lastIndex = start;
  def.exec(source);
  const second = def.exec(source);
  return second ? lineAt(source, second.index) : undefined;
}

const WELL_KNOWN_FILES: Record<string, string> = {
  Timestamp: 'timestamp',
  Duration: 'duration',
  Any: 'any',
  Empty: 'empty',
  Struct: 'struct',
  Value: 'struct',
  ListValue: 'struct',
  NullValue: 'struct',
  FieldMask: 'field_mask',
};

function importHint(name: string | undefined): string {
  const m = name === undefined ? null : /^\.?google\.protobuf\.(\w+)$/.exec(name);
  if (!m?.[1]) return '';
  const file = WELL_KNOWN_FILES[m[1]] ?? (m[1].endsWith('Value') ? 'wrappers' : undefined);
  return file === undefined ? '' : ` (add: import "google/protobuf/${file}.proto";)`;
}

export interface ProtobufCodecOptions {
  type: string;
  encoding: Encoding;
  jsonFallback: boolean;
  limits: CodecLimits;
  schema: ProtoSchema;
  file: string;
  /** The type's own .schema.json, applied to every decoded payload (protobuf or JSON). */
  validate?: ValidateFunction | undefined;
  jsonSchema?: unknown;
  /** The schema derived from the .proto, applied to JSON payloads (see proto-json.ts). */
  derivedValidate: ValidateFunction;
  derivedJsonSchema: unknown;
  files: string[];
}

const isJsonSpace = (b: number | undefined): boolean => b === 0x20 || b === 0x09 || b === 0x0a || b === 0x0d;

/** A device type defined by a .proto. */
export class ProtobufCodec implements DeviceTypeCodec {
  readonly type: string;
  readonly encoding: Encoding;
  readonly jsonFallback: boolean;
  readonly #o: ProtobufCodecOptions;
  readonly #json = new ProtoJson();
  /** Top-level non-repeated Timestamp fields, in declaration order: the first one present is the device time. */
  readonly #timeFields: string[];

  constructor(opts: ProtobufCodecOptions) {
    this.type = opts.type;
    this.encoding = opts.encoding;
    this.jsonFallback = opts.jsonFallback;
    this.#o = opts;
    this.#timeFields = opts.schema.telemetry.fieldsArray
      .filter((f) => !f.repeated && !f.map && f.resolvedType instanceof protobuf.Type && f.resolvedType.fullName === TIMESTAMP)
      .map((f) => f.name);
    const self = this as { encodeCommand?: (cmd: CommandMessage) => Buffer; decodeCommandResponse?: (payload: Buffer) => CommandResponseResult };
    if (opts.schema.command) self.encodeCommand = (cmd) => this.#encodeCommand(cmd);
    if (opts.schema.commandResponse) self.decodeCommandResponse = (payload) => this.#decodeCommandResponse(payload);
  }

  // Assigned in the constructor only when the .proto has the message (`declare`: no own property otherwise).
  declare readonly encodeCommand?: (cmd: CommandMessage) => Buffer;
  declare readonly decodeCommandResponse?: (payload: Buffer) => CommandResponseResult;

  decodeTelemetry(payload: Buffer, contentType?: Encoding): DecodeResult {
    const { maxBytes } = this.#o.limits;
    if (payload.length > maxBytes) return reject('too_large', `payload is ${payload.length} bytes; the limit is ${maxBytes}`);
    const as = contentType ?? this.encoding;
    if (as === 'json') return this.#decodeJson(payload);
    if (contentType === undefined && this.jsonFallback) {
      // JSON sniffing (docs/schemas.md): a proto3 message never starts with 0x7B ('{' would be a
      // group start tag), but whitespace bytes are valid tags, so " {" may still be protobuf.
      let i = 0;
      while (isJsonSpace(payload[i])) i++;
      if (payload[i] === 0x7b) {
        const asJson = this.#decodeJson(payload);
        if (i === 0 || asJson.ok || asJson.error.code !== 'undecodable') return asJson;
        const asProto = this.#decodeProtobuf(payload);
        return asProto.ok ? asProto : asJson;
      }
    }
    return this.#decodeProtobuf(payload);
  }

  #decodeProtobuf(payload: Buffer): DecodeResult {
    const { telemetry } = this.#o.schema;
    let deviceTime: number | null = null;
    const decoded = this.#decodeMessage(telemetry, payload, (raw) => (deviceTime = this.#rawDeviceTime(raw)));
    if (!decoded.ok) return decoded;
    const value = decoded.value;
    const deep = tooDeepAt(value, 1, this.#o.limits.maxDepth);
    if (deep !== null) return reject('too_deep', `document nests deeper than the limit of ${this.#o.limits.maxDepth} levels`, deep);
    if (this.#o.validate) {
      const violation = validateDocument(this.#o.validate, value);
      if (violation) return { ok: false, error: violation };
    }
    return { ok: true, value, deviceTime: this.#timeFields.length > 0 ? deviceTime : this.#deviceTime(value) };
  }

  /**
   * The device time from the decoded Timestamps themselves, before they become strings: the same
   * result as `#deviceTime` on the canonical form (RFC 3339 round-trips seconds and nanos exactly)
   * without formatting and re-parsing a date per message.
   */
  #rawDeviceTime(raw: Record<string, unknown>): number | null {
    for (const f of this.#timeFields) {
      const ts = raw[f];
      if (ts === undefined) continue;
      if (typeof ts !== 'object' || ts === null) return null;
      const o = ts as Record<string, unknown>;
      const ms = Number(o['seconds'] ?? 0) * 1000 + Math.floor(Number(o['nanos'] ?? 0) / 1_000_000);
      return Number.isFinite(ms) && ms >= DEVICE_TIME_MIN && ms < DEVICE_TIME_MAX ? Math.floor(ms) : null;
    }
    return null;
  }

  /** Type.decode + toObject + Timestamps, with protobufjs' errors as rejections. `raw` sees toObject's result first. */
  #decodeMessage(
    t: Type,
    payload: Buffer,
    raw?: (value: Record<string, unknown>) => void,
  ): { ok: true; value: Record<string, unknown> } | { ok: false; error: TelemetryRejection } {
    let message: protobuf.Message;
    try {
      message = t.decode(payload);
    } catch (err) {
      const reason = err instanceof Error ? err.message : String(err);
      if (reason === 'max depth exceeded') {
        return reject('too_deep', `document nests deeper than the limit of ${this.#o.limits.maxDepth} levels (protobufjs: ${reason})`);
      }
      return reject('undecodable', `invalid protobuf ${t.fullName.slice(1)}: ${reason}`);
    }
    const value = t.toObject(message, TO_OBJECT);
    raw?.(value);
    try {
      this.#json.toCanonical(value, t);
    } catch (err) {
      if (err instanceof ConversionError) return reject('schema_violation', err.message, err.path);
      throw err;
    }
    return { ok: true, value };
  }

  #decodeJson(payload: Buffer): DecodeResult {
    const parsed = parseJsonObject(payload, this.#o.limits);
    if (!parsed.ok) return parsed;
    const value = parsed.value;
    const violation = validateDocument(this.#o.derivedValidate, value) ?? (this.#o.validate ? validateDocument(this.#o.validate, value) : null);
    if (violation) return { ok: false, error: violation };
    this.#json.normalizeJson(value, this.#o.schema.telemetry);
    return { ok: true, value, deviceTime: this.#deviceTime(value) };
  }

  #deviceTime(value: Record<string, unknown>): number | null {
    if (this.#timeFields.length === 0) return jsonDeviceTime(value);
    for (const f of this.#timeFields) {
      if (value[f] !== undefined) return deviceTimeOf(value[f]);
    }
    return null;
  }

  #encodeCommand(cmd: CommandMessage): Buffer {
    const t = this.#o.schema.command as Type;
    const obj: Record<string, unknown> = { id: cmd.id, name: cmd.name };
    const params = t.fields['params'];
    if (params?.map && params.type === 'string') {
      const m: Record<string, string> = {};
      for (const [k, v] of Object.entries(cmd.params)) m[k] = typeof v === 'string' ? v : JSON.stringify(v);
      obj['params'] = m;
    } else if (params?.type === 'string' && !params.repeated) obj['params'] = JSON.stringify(cmd.params);
    else if (params) obj['params'] = cmd.params;
    if (t.fields['params_json']?.type === 'string') obj['params_json'] = JSON.stringify(cmd.params);
    const expires = t.fields['expires_at'];
    if (expires?.resolvedType instanceof protobuf.Type && expires.resolvedType.fullName === TIMESTAMP) {
      obj['expires_at'] = { seconds: Math.floor(cmd.expiresAt / 1000), nanos: (((cmd.expiresAt % 1000) + 1000) % 1000) * 1_000_000 };
    } else if (expires) obj['expires_at'] = cmd.expiresAt;
    const bytes = t.encode(t.fromObject(obj)).finish();
    return Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  }

  #decodeCommandResponse(payload: Buffer): CommandResponseResult {
    const { maxBytes, maxDepth } = this.#o.limits;
    if (payload.length > maxBytes) return reject('too_large', `payload is ${payload.length} bytes; the limit is ${maxBytes}`);
    const t = this.#o.schema.commandResponse as Type;
    const decoded = this.#decodeMessage(t, payload);
    if (!decoded.ok) return decoded;
    const { status, payload_json: payloadJson, ...rest } = decoded.value;
    let body: unknown = null;
    if (t.fields['payload_json']?.type === 'string') {
      if (typeof payloadJson === 'string' && payloadJson !== '') {
        try {
          body = JSON.parse(payloadJson);
        } catch (err) {
          return reject('undecodable', `payload_json is not valid JSON: ${err instanceof Error ? err.message : String(err)}`, '/payload_json');
        }
      }
    } else if (Object.keys(rest).length > 0) body = rest;
    if (typeof body === 'object' && body !== null) {
      const deep = tooDeepAt(body, 1, maxDepth);
      if (deep !== null) return reject('too_deep', `payload nests deeper than the limit of ${maxDepth} levels`, `/payload${deep}`);
    }
    return { ok: true, value: { status: typeof status === 'number' ? status : 0, payload: body } };
  }

  describe(): SchemaDescription {
    const { schema } = this.#o;
    const messages = ['Telemetry'];
    if (schema.command) messages.push('Command');
    if (schema.commandResponse) messages.push('CommandResponse');
    return {
      type: this.type,
      encoding: this.encoding,
      jsonFallback: this.jsonFallback,
      messages,
      proto: schema.source,
      jsonSchema: this.#o.jsonSchema ?? this.#o.derivedJsonSchema,
      files: [...this.#o.files],
    };
  }
}
