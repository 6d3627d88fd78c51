/**
 * Reading side of the device shadow (re-exported by shadow.ts): the delta between desired and
 * reported, the GET document and the /update/delta document. Pure; results never share objects
 * with the stored shadow.
 */
import { isJsonObject, jsonEqual, own, put, withToken, type JsonObject, type JsonValue } from './shadow-json.js';
import type { DeltaDocument, MetadataTree, ShadowDocument, StoredShadow } from './shadow.js';

/** A metadata node that mirrors an object in the state (not a {timestamp: number} leaf). */
export function isTree(m: unknown): m is MetadataTree {
  return isJsonObject(m) && typeof (m as { timestamp?: unknown }).timestamp !== 'number';
}

/**
 * Delta: the desired fields whose value differs from reported, nested with the full path kept.
 * Arrays (and any non-object) compare whole by deep equality; a desired object facing a reported
 * non-object is in the delta whole; fields only in reported are excluded. null when empty.
 */
export function computeDelta(desired: JsonObject | undefined, reported: JsonObject | undefined): JsonObject | null {
  if (!desired) return null;
  const out: JsonObject = {};
  for (const k of Object.keys(desired)) {
    const d = desired[k] as JsonValue;
    const r = reported ? own(reported, k) : undefined;
    if (r === undefined) {
      put(out, k, structuredClone(d));
    } else if (isJsonObject(d) && isJsonObject(r)) {
      const sub = computeDelta(d, r);
      if (sub) put(out, k, sub);
    } else if (!jsonEqual(d, r)) {
      put(out, k, structuredClone(d));
    }
  }
  return Object.keys(out).length > 0 ? out : null;
}

/** The metadata of `delta`'s leaves, taken from the desired metadata (`fallback` where missing). */
function deltaMetadata(delta: JsonObject, meta: MetadataTree | undefined, fallback: number): MetadataTree {
  const out: MetadataTree = {};
  for (const k of Object.keys(delta)) {
    const v = delta[k] as JsonValue;
    const m = meta ? own(meta, k) : undefined;
    if (isJsonObject(v)) put(out, k, deltaMetadata(v, isTree(m) ? m : undefined, fallback));
    else put(out, k, { timestamp: m && !isTree(m) ? m.timestamp : fallback });
  }
  return out;
}

/** GET document: {state:{desired?, reported?, delta?}, metadata:{desired?, reported?}, version, timestamp, clientToken?}. */
export function fullDocument(shadow: StoredShadow, clientToken?: string): ShadowDocument {
  const { desired, reported } = shadow.state;
  const state: ShadowDocument['state'] = {};
  const metadata: ShadowDocument['metadata'] = {};
  if (desired) {
    state.desired = structuredClone(desired);
    metadata.desired = structuredClone(shadow.metadata.desired ?? {});
  }
  if (reported) {
    state.reported = structuredClone(reported);
    metadata.reported = structuredClone(shadow.metadata.reported ?? {});
  }
  const delta = computeDelta(desired, reported);
  if (delta) state.delta = delta;
  return withToken({ state, metadata, version: shadow.version, timestamp: shadow.timestamp }, clientToken);
}

/** The /update/delta document, or null when desired and reported agree. */
export function deltaDocument(shadow: StoredShadow, clientToken?: string): DeltaDocument | null {
  const delta = computeDelta(shadow.state.desired, shadow.state.reported);
  if (!delta) return null;
  const metadata = deltaMetadata(delta, shadow.metadata.desired, shadow.timestamp);
  return withToken({ state: delta, metadata, version: shadow.version, timestamp: shadow.timestamp }, clientToken);
}

