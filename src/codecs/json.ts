/**
 * JSON telemetry: size → UTF-8 → one JSON.parse → object → depth → JSON Schema. The parsed object
 * is the result: no copies, no re-serialisation, and the validator never modifies it.
 */
import { isUtf8 } from 'node:buffer';
import type { ValidateFunction } from './ajv.js';
import { describeValidationError } from './ajv.js';
import { reject, type CodecLimits, type DecodeResult, type DeviceTypeCodec, type Encoding, type SchemaDescription, type TelemetryRejection } from './codec.js';
import { deviceTimeOf, tooDeepAt } from './document.js';

/** Top-level fields read as the device time of JSON telemetry, in this order. */
export const JSON_DEVICE_TIME_FIELDS = ['ts', 'timestamp'] as const;

export type ParsedJson = { ok: true; value: Record<string, unknown> } | { ok: false; error: TelemetryRejection };

/** Size, UTF-8, parse, "is an object" and depth checks: everything but the schema. */
export function parseJsonObject(payload: Buffer, limits: CodecLimits): ParsedJson {
  if (payload.length > limits.maxBytes) {
    return reject('too_large', `payload is ${payload.length} bytes; the limit is ${limits.maxBytes}`);
  }
  if (!isUtf8(payload)) return reject('undecodable', 'invalid JSON: payload is not valid UTF-8');
  // RFC 8259 §8.1: a parser may ignore a byte order mark.
  const bom = payload.length >= 3 && payload[0] === 0xef && payload[1] === 0xbb && payload[2] === 0xbf;
  let doc: unknown;
  try {
    doc = JSON.parse(payload.toString('utf8', bom ? 3 : 0));
  } catch (err) {
    return reject('undecodable', `invalid JSON: ${err instanceof Error ? err.message : String(err)}`);
  }
  if (typeof doc !== 'object' || doc === null || Array.isArray(doc)) {
    return reject('schema_violation', `telemetry must be a JSON object, got ${kindOf(doc)}`, '');
  }
  const deep = tooDeepAt(doc, 1, limits.maxDepth);
  if (deep !== null) {
    return reject('too_deep', `document nests deeper than the limit of ${limits.maxDepth} levels`, deep);
  }
  return { ok: true, value: doc as Record<string, unknown> };
}

/** Runs a compiled validator; the first error as a rejection, or null when the document is valid. */
export function validateDocument(validate: ValidateFunction, value: unknown): TelemetryRejection | null {
  if (validate(value)) return null;
  const { path, message } = describeValidationError(validate.errors);
  return { code: 'schema_violation', message, path };
}

function kindOf(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'an array';
  return `a ${typeof v}`;
}

export interface JsonCodecOptions {
  type: string;
  limits: CodecLimits;
  /** Compiled JSON Schema of telemetry; absent = any object within the limits. */
  validate?: ValidateFunction | undefined;
  /** The schema (for describe()). */
  jsonSchema?: unknown;
  files?: string[];
}

/** A device type whose devices send JSON, validated by its .schema.json when it has one. */
export class JsonCodec implements DeviceTypeCodec {
  readonly type: string;
  readonly encoding: Encoding = 'json';
  readonly jsonFallback = false;
  readonly #limits: CodecLimits;
  readonly #validate: ValidateFunction | undefined;
  readonly #jsonSchema: unknown;
  readonly #files: string[];

  constructor(opts: JsonCodecOptions) {
    this.type = opts.type;
    this.#limits = opts.limits;
    this.#validate = opts.validate;
    this.#jsonSchema = opts.jsonSchema;
    this.#files = opts.files ?? [];
  }

  decodeTelemetry(payload: Buffer, contentType?: Encoding): DecodeResult {
    if (contentType === 'protobuf') {
      return reject('unsupported_content_type', `device type "${this.type}" has no .proto: send JSON`);
    }
    const parsed = parseJsonObject(payload, this.#limits);
    if (!parsed.ok) return parsed;
    if (this.#validate) {
      const violation = validateDocument(this.#validate, parsed.value);
      if (violation) return { ok: false, error: violation };
    }
    return { ok: true, value: parsed.value, deviceTime: jsonDeviceTime(parsed.value) };
  }

  describe(): SchemaDescription {
    const d: SchemaDescription = { type: this.type, encoding: 'json', jsonFallback: false, messages: ['Telemetry'], files: [...this.#files] };
    if (this.#jsonSchema !== undefined) d.jsonSchema = this.#jsonSchema;
    return d;
  }
}

/** The device time of a JSON document: the first sane `ts` or `timestamp` (epoch ms or RFC 3339). */
export function jsonDeviceTime(doc: Record<string, unknown>): number | null {
  for (const f of JSON_DEVICE_TIME_FIELDS) {
    const t = deviceTimeOf(doc[f]);
    if (t !== null) return t;
  }
  return null;
}
