/**
 * JSON helpers for the device shadow (src/core/shadow.ts): type guards, deep equality, nesting depth
 * and safe own-property access. Keys come from untrusted JSON, so a key such as `__proto__` or
 * `constructor` must be read only as an own property and written with defineProperty, never through
 * plain `obj[k] = v` (which would change the prototype instead of adding a field).
 */

export type JsonObject = { [k: string]: JsonValue };
export type JsonValue = null | boolean | number | string | JsonValue[] | JsonObject;

/** A plain JSON object: not null, not an array. */
export function isJsonObject(v: unknown): v is JsonObject {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** The own property `k` of `obj`, or undefined (never an inherited one). */
export function own<T>(obj: { [k: string]: T }, k: string): T | undefined {
  return Object.hasOwn(obj, k) ? obj[k] : undefined;
}

/** Sets an own, enumerable property, also for `__proto__`. */
export function put<T>(obj: { [k: string]: T }, k: string, v: T): void {
  if (k === '__proto__') Object.defineProperty(obj, k, { value: v, enumerable: true, writable: true, configurable: true });
  else obj[k] = v;
}

/** Deep equality of JSON values; object key order does not matter, arrays compare element-wise. */
export function jsonEqual(a: JsonValue, b: JsonValue): boolean {
  if (a === b) return true;
  if (typeof a !== 'object' || typeof b !== 'object' || a === null || b === null) return false;
  if (Array.isArray(a) || Array.isArray(b)) {
    if (!Array.isArray(a) || !Array.isArray(b) || a.length !== b.length) return false;
    return a.every((x, i) => jsonEqual(x, b[i] as JsonValue));
  }
  const ka = Object.keys(a);
  if (ka.length !== Object.keys(b).length) return false;
  return ka.every((k) => Object.hasOwn(b, k) && jsonEqual(a[k] as JsonValue, b[k] as JsonValue));
}

/**
 * Nesting levels of a value: a scalar (or null) is 0, an object or array is 1 + the deepest of its
 * members. So `{"a":1}` is 1 and `{"a":{"b":[1]}}` is 3. A `desired`/`reported` section of depth
 * ≤ maxDepth is accepted: with the default 6, a leaf may sit 6 keys (or array indices) deep.
 * Descent stops below `cap`: a deeper value gives some number > cap, so hostile nesting (or a
 * cyclic parsed value) costs at most `cap` stack frames.
 */
export function jsonDepth(v: unknown, cap = Number.POSITIVE_INFINITY): number {
  if (typeof v !== 'object' || v === null) return 0;
  if (cap <= 0) return 1;
  let deepest = 0;
  for (const x of Array.isArray(v) ? v : Object.values(v)) {
    deepest = Math.max(deepest, jsonDepth(x, cap - 1));
    if (deepest >= cap) break;
  }
  return 1 + deepest;
}

export type InvalidJson = 'not-json' | 'null-in-array';

/**
 * Checks that an already parsed value is JSON (finite numbers, plain objects and arrays only) and
 * that no array holds a null. Returns the first problem, or null. Recursive: bound the depth first.
 */
export function checkJson(v: unknown, inArray = false): InvalidJson | null {
  if (v === null) return inArray ? 'null-in-array' : null;
  switch (typeof v) {
    case 'string':
    case 'boolean':
      return null;
    case 'number':
      return Number.isFinite(v) ? null : 'not-json';
    case 'object': {
      if (Array.isArray(v)) {
        for (const x of v) {
          const bad = checkJson(x, true);
          if (bad) return bad;
        }
        return null;
      }
      const proto = Object.getPrototypeOf(v) as unknown;
      if (proto !== Object.prototype && proto !== null) return 'not-json';
      for (const x of Object.values(v)) {
        const bad = checkJson(x);
        if (bad) return bad;
      }
      return null;
    }
    default:
      return 'not-json';
  }
}

/** UTF-8 bytes of the compact JSON serialization. */
export function jsonBytes(v: JsonValue): number {
  return Buffer.byteLength(JSON.stringify(v), 'utf8');
}

/** `doc` with `clientToken` added when there is one (the key is absent otherwise). */
export function withToken<T extends object>(doc: T, clientToken: string | undefined): T & { clientToken?: string } {
  return clientToken === undefined ? doc : { ...doc, clientToken };
}
