/**
 * The JSON form of a protobuf message, driven by the message descriptor:
 *  - `toCanonical` finishes protobufjs' `toObject` output (Timestamps → RFC 3339 strings, anywhere);
 *  - `normalizeJson` brings a JSON payload for the same message to that form (int64 numbers →
 *    strings, enum numbers → names, the oneof discriminator), so both encodings look alike;
 *  - `deriveJsonSchema` writes the JSON Schema of that form, used to validate JSON payloads of
 *    protobuf types that have no .schema.json of their own.
 * Walks follow the descriptor, never the data's shape: only fields that can need work are visited.
 */
import protobuf from 'protobufjs';
import type { Enum, Field, OneOf, Type } from 'protobufjs';
import { escapePointer, parseRfc3339, timestampToIso } from './document.js';

export const TIMESTAMP = '.google.protobuf.Timestamp';

/** Options for `Type.toObject`: int64 as decimal strings, enums as names, bytes as base64, no defaults. */
export const TO_OBJECT: protobuf.IConversionOptions = { longs: String, enums: String, bytes: String, defaults: false, oneofs: true };

/** A data error found while converting (the path is a JSON Pointer). */
export class ConversionError extends Error {
  constructor(
    readonly path: string,
    message: string,
  ) {
    super(message);
  }
}

// protobufjs computes `fullName` by walking the parents on every read: on the decode hot path
// the answer is remembered per Type (a resolved Type never moves).
const timestampTypes = new WeakMap<Type, boolean>();
const isTimestamp = (t: Type): boolean => {
  let r = timestampTypes.get(t);
  if (r === undefined) timestampTypes.set(t, (r = t.fullName === TIMESTAMP));
  return r;
};
const isLong = (f: Field): boolean => f.long;
const messageType = (f: Field): Type | null => (f.resolvedType instanceof protobuf.Type ? f.resolvedType : null);
const enumType = (f: Field): Enum | null => (f.resolvedType instanceof protobuf.Enum ? f.resolvedType : null);

/** proto3 `optional` fields live in a synthetic oneof that is not part of the JSON form. */
export function realOneofs(t: Type): OneOf[] {
  return t.oneofsArray.filter((o) => !(o.fieldsArray.length === 1 && o.fieldsArray[0]?.options?.['proto3_optional'] === true));
}

/** Does `t`, or any message reachable from it, satisfy `pred`? (Cycle-safe.) */
function reaches(t: Type, pred: (t: Type) => boolean, seen = new Set<Type>()): boolean {
  if (seen.has(t)) return false;
  seen.add(t);
  if (pred(t)) return true;
  for (const f of t.fieldsArray) {
    const m = messageType(f);
    if (m && reaches(m, pred, seen)) return true;
  }
  return false;
}

function entries(f: Field, v: unknown, path: string): Array<[unknown, string, (nv: unknown) => void]> {
  if (f.map && typeof v === 'object' && v !== null) {
    const o = v as Record<string, unknown>;
    return Object.keys(o).map((k) => [o[k], `${path}/${escapePointer(k)}`, (nv) => (o[k] = nv)]);
  }
  if (f.repeated && Array.isArray(v)) return v.map((x, i) => [x, `${path}/${i}`, (nv) => (v[i] = nv)]);
  return [];
}

/** A message-typed field that holds a Timestamp, or a message that contains one (see `toCanonical`). */
interface CanonicalField {
  name: string;
  /** `/<escaped name>`, the field's JSON Pointer segment */
  segment: string;
  type: Type;
  /** map or repeated */
  many: boolean;
  field: Field;
}

/** Converts decoded messages of one Telemetry (or CommandResponse) type to their canonical JSON form, in place. */
export class ProtoJson {
  readonly #hasTimestamp = new Map<Type, boolean>();
  readonly #needsNormalize = new Map<Type, boolean>();
  /** Per message type, the only fields `toCanonical` has to visit (null: none). */
  readonly #canonicalFields = new Map<Type, CanonicalField[] | null>();

  #timestamps(t: Type): boolean {
    let r = this.#hasTimestamp.get(t);
    if (r === undefined) this.#hasTimestamp.set(t, (r = !isTimestamp(t) && reaches(t, isTimestamp)));
    return r;
  }

  #normalizes(t: Type): boolean {
    let r = this.#needsNormalize.get(t);
    if (r === undefined) {
      r = reaches(t, (x) => isTimestamp(x) || realOneofs(x).length > 0 || x.fieldsArray.some((f) => isLong(f) || enumType(f) !== null));
      this.#needsNormalize.set(t, r);
    }
    return r;
  }

  #canonicalPlan(t: Type): CanonicalField[] | null {
    let plan = this.#canonicalFields.get(t);
    if (plan === undefined) {
      plan = null;
      if (this.#timestamps(t)) {
        plan = [];
        for (const f of t.fieldsArray) {
          const m = messageType(f);
          if (!m || (!isTimestamp(m) && !this.#timestamps(m))) continue;
          plan.push({ name: f.name, segment: `/${escapePointer(f.name)}`, type: m, many: f.map || f.repeated, field: f });
        }
      }
      this.#canonicalFields.set(t, plan);
    }
    return plan;
  }

  /** Replaces every google.protobuf.Timestamp object under `obj` (a `toObject` result of `t`) by an RFC 3339 string. */
  toCanonical(obj: Record<string, unknown>, t: Type, path = ''): void {
    const plan = this.#canonicalPlan(t);
    if (plan === null) return;
    for (const f of plan) {
      const v = obj[f.name];
      if (v === undefined || v === null) continue;
      const fpath = path + f.segment;
      if (f.many) {
        for (const [x, p, set] of entries(f.field, v, fpath)) set(this.#canonicalValue(x, f.type, p));
      } else obj[f.name] = this.#canonicalValue(v, f.type, fpath);
    }
  }

  #canonicalValue(v: unknown, m: Type, path: string): unknown {
    if (typeof v !== 'object' || v === null) return v;
    const o = v as Record<string, unknown>;
    if (isTimestamp(m)) {
      const iso = timestampToIso(Number(o['seconds'] ?? 0), Number(o['nanos'] ?? 0));
      if (iso === null) throw new ConversionError(path, `${path} is not a valid google.protobuf.Timestamp (seconds ${String(o['seconds'] ?? 0)}, nanos ${String(o['nanos'] ?? 0)})`);
      return iso;
    }
    this.toCanonical(o, m, path);
    return o;
  }

  /**
   * Brings a JSON payload (already validated against the derived schema) to the canonical form, in
   * place: int64 numbers become strings, enum numbers become names, Timestamps become UTC with at
   * least millisecond digits (as from protobuf), each oneof names its set member.
   */
  normalizeJson(obj: Record<string, unknown>, t: Type): void {
    if (!this.#normalizes(t)) return;
    for (const f of t.fieldsArray) {
      const v = obj[f.name];
      if (v === undefined || v === null) continue;
      if (f.map || f.repeated) {
        for (const [x, , set] of entries(f, v, '')) set(this.#normalizeValue(x, f));
      } else obj[f.name] = this.#normalizeValue(v, f);
    }
    for (const o of realOneofs(t)) {
      const member = o.fieldsArray.find((f) => obj[f.name] !== undefined && obj[f.name] !== null);
      if (member) obj[o.name] = member.name;
      else delete obj[o.name];
    }
  }

  #normalizeValue(v: unknown, f: Field): unknown {
    if (isLong(f) && typeof v === 'number') return String(v);
    const e = enumType(f);
    if (e && typeof v === 'number') return e.valuesById[v] ?? v;
    const m = messageType(f);
    if (!m) return v;
    if (isTimestamp(m)) {
      const ts = typeof v === 'string' ? parseRfc3339(v) : null;
      return (ts && timestampToIso(ts.seconds, ts.nanos)) ?? v;
    }
    if (typeof v === 'object' && v !== null && !Array.isArray(v)) this.normalizeJson(v as Record<string, unknown>, m);
    return v;
  }
}

const INT32 = { type: 'integer', minimum: -2147483648, maximum: 2147483647 };
const UINT32 = { type: 'integer', minimum: 0, maximum: 4294967295 };
const INT64 = { type: ['integer', 'string'], pattern: '^-?(0|[1-9][0-9]{0,18})$', minimum: -9223372036854775808, maximum: 9223372036854775807 };
const UINT64 = { type: ['integer', 'string'], pattern: '^(0|[1-9][0-9]{0,19})$', minimum: 0, maximum: 18446744073709551615 };
const SCALARS: Record<string, object> = {
  double: { type: 'number' },
  float: { type: 'number' },
  int32: INT32,
  sint32: INT32,
  sfixed32: INT32,
  uint32: UINT32,
  fixed32: UINT32,
  int64: INT64,
  sint64: INT64,
  sfixed64: INT64,
  uint64: UINT64,
  fixed64: UINT64,
  bool: { type: 'boolean' },
  string: { type: 'string' },
  // Standard or URL-safe base64 (proto3 JSON accepts both).
  bytes: { type: 'string', contentEncoding: 'base64', pattern: '^[A-Za-z0-9+/_-]*={0,2}$' },
};
const MAP_KEYS: Record<string, object> = {
  bool: { type: 'string', enum: ['true', 'false'] },
  string: { type: 'string' },
};

/**
 * JSON Schema (2020-12) of the canonical JSON form of `telemetry`: proto field names, no unknown
 * fields, int64 as integer or decimal string, enums by name or number, Timestamps as RFC 3339
 * strings, bytes as base64, maps as objects, at most one member of each oneof.
 */
export function deriveJsonSchema(telemetry: Type, file: string): Record<string, unknown> {
  const defs: Record<string, object> = {};

  const valueSchema = (f: Field): object => {
    const m = messageType(f);
    if (m) {
      if (isTimestamp(m)) return { type: 'string', format: 'date-time' };
      return messageRef(m);
    }
    const e = enumType(f);
    if (e) return { enum: [...Object.keys(e.values), ...Object.values(e.values)] };
    return SCALARS[f.type] ?? {};
  };

  const messageRef = (m: Type): object => {
    const key = m.fullName.slice(1);
    if (!(key in defs)) {
      defs[key] = {};
      defs[key] = messageSchema(m);
    }
    return { $ref: `#/$defs/${key}` };
  };

  const messageSchema = (m: Type): object => {
    const properties: Record<string, object> = {};
    for (const f of m.fieldsArray) {
      const item = valueSchema(f);
      if (f.map) {
        const keyType = f instanceof protobuf.MapField ? f.keyType : 'string';
        properties[f.name] = { type: 'object', propertyNames: MAP_KEYS[keyType] ?? { type: 'string', pattern: '^-?(0|[1-9][0-9]*)$' }, additionalProperties: item };
      } else if (f.repeated) properties[f.name] = { type: 'array', items: item };
      else properties[f.name] = item;
    }
    const dependentSchemas: Record<string, object> = {};
    for (const o of realOneofs(m)) {
      const names = o.fieldsArray.map((f) => f.name);
      properties[o.name] = { enum: names };
      for (const n of names) {
        dependentSchemas[n] = { type: 'object', properties: Object.fromEntries(names.filter((x) => x !== n).map((x) => [x, false])) };
      }
    }
    const schema: Record<string, unknown> = { type: 'object', properties, additionalProperties: false };
    if (Object.keys(dependentSchemas).length > 0) schema['dependentSchemas'] = dependentSchemas;
    return schema;
  };

  const root = messageRef(telemetry);
  return {
    $schema: 'https://json-schema.org/draft/2020-12/schema',
    $comment: `derived from ${file}: the JSON form of ${telemetry.fullName.slice(1)}`,
    ...root,
    $defs: defs,
  };
}
