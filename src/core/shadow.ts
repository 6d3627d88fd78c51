/**
 * Device shadow logic (contract §5, AWS IoT Device Shadow semantics), pure: no I/O, inputs are never
 * mutated and results never share objects with them. Callers load a StoredShadow from the
 * ShadowStore, call parseUpdateRequest + applyUpdate (or applyDelete), compare-and-set the result on
 * the version, and publish the returned documents.
 *
 * Decisions where AWS leaves room:
 * - Depth: levels are counted inside `desired`/`reported`; the section object itself is level 1 and
 *   every nested object or array adds one (see jsonDepth). Depth 6: `{"a":{"b":{"c":{"d":{"e":{"f":1}}}}}}`
 *   is accepted, one more nested object is "JSON contains too many levels of nesting; maximum is 6".
 * - Size: UTF-8 bytes of JSON.stringify(desired) + JSON.stringify(reported) of the state that would
 *   be stored (absent sections count 0; metadata, version and the request itself do not count).
 * - Writers: a device may write `desired` and `reported`; a service (REST) only `desired`.
 * - `{"state": null}` (accepted by AWS) clears both sections; a state node other than
 *   desired/reported is 400 "State contains an invalid node", as is an array holding a null.
 * - The stored state never holds empty objects: objects left empty by deletions are pruned, an
 *   emptied section is removed, and an object patch that writes no leaf changes nothing.
 * - A deleted shadow is kept as a tombstone (no sections, version counting on); shadowExists() is
 *   false for it, so GET/DELETE answer 404 and the next update continues the version.
 */
import { deltaDocument, isTree } from './shadow-delta.js';
import { checkJson, isJsonObject, jsonBytes, jsonDepth, own, put, withToken, type JsonObject, type JsonValue } from './shadow-json.js';

export type { JsonObject, JsonValue } from './shadow-json.js';
export { computeDelta, deltaDocument, fullDocument } from './shadow-delta.js';

export type MetadataLeaf = { timestamp: number };
/** Metadata mirrors the state tree; each leaf (incl. arrays, which are leaves) is {timestamp: seconds}. */
export type MetadataTree = { [k: string]: MetadataTree | MetadataLeaf };

export interface StoredShadow {
  /** A section is absent when empty/deleted. */
  state: { desired?: JsonObject; reported?: JsonObject };
  metadata: { desired?: MetadataTree; reported?: MetadataTree };
  /** 0 = never written; increments by 1 per accepted update/delete. */
  version: number;
  /** Seconds, last change. */
  timestamp: number;
}

export interface ShadowLimits {
  maxStateBytes: number;
  maxDepth: number;
}
export const DEFAULT_SHADOW_LIMITS: ShadowLimits = { maxStateBytes: 8192, maxDepth: 6 };

export interface ShadowError {
  code: 400 | 404 | 409 | 413;
  message: string;
}

export interface UpdateRequest {
  desired?: JsonObject | null;
  reported?: JsonObject | null;
  version?: number;
  clientToken?: string;
}

/** 'device': MQTT, CoAP, device HTTP (desired and reported); 'service': REST (desired only). */
export type Writer = 'device' | 'service';

export interface ShadowDocument {
  state: { desired?: JsonObject; reported?: JsonObject; delta?: JsonObject };
  metadata: { desired?: MetadataTree; reported?: MetadataTree };
  version: number;
  timestamp: number;
  clientToken?: string;
}

/** /update/accepted: only the sections sent (as sent, nulls included), with their metadata. */
export interface AcceptedDocument {
  state: { desired?: JsonObject | null; reported?: JsonObject | null };
  /** A timestamp per field sent; a section sent as null gets a single {timestamp}. */
  metadata: { desired?: MetadataTree | MetadataLeaf; reported?: MetadataTree | MetadataLeaf };
  version: number;
  timestamp: number;
  clientToken?: string;
}

export interface DeltaDocument {
  state: JsonObject;
  /** Metadata of the delta's desired leaves. */
  metadata: MetadataTree;
  version: number;
  timestamp: number;
  clientToken?: string;
}

export interface ShadowSnapshot {
  state: { desired?: JsonObject; reported?: JsonObject };
  metadata: { desired?: MetadataTree; reported?: MetadataTree };
  version: number;
}

export interface DocumentsDocument {
  /** The shadow before the update ({state:{}, metadata:{}, version:0} when there was none). */
  previous: ShadowSnapshot;
  current: ShadowSnapshot;
  timestamp: number;
  clientToken?: string;
}

export const SHADOW_MESSAGES = {
  invalidJson: 'Invalid JSON',
  missingState: 'Missing required node: state',
  stateNotObject: 'State node must be an object',
  desiredNotObject: 'Desired node must be an object',
  reportedNotObject: 'Reported node must be an object',
  reportedFromService: 'Reported node must not be written from this API',
  invalidNode: 'State contains an invalid node',
  invalidVersion: 'Invalid version',
  invalidClientToken: 'Invalid clientToken',
  versionConflict: 'Version conflict',
  tooDeep: (max: number) => `JSON contains too many levels of nesting; maximum is ${max}`,
  tooLarge: (size: number, max: number) => `Json document too large. Size is ${size}, max allowed: ${max}`,
  noShadow: (name: string) => `No shadow exists with name: ${name}`,
} as const;

export const MAX_CLIENT_TOKEN_BYTES = 64;

const bad = (message: string): { ok: false; error: ShadowError } => ({ ok: false, error: { code: 400, message } });
const seconds = (nowMs: number): number => Math.floor(nowMs / 1000);

/** The clientToken of a request if it is valid (a string of ≤ 64 UTF-8 bytes), for error documents. */
function validToken(v: unknown): string | undefined {
  return typeof v === 'string' && Buffer.byteLength(v, 'utf8') <= MAX_CLIENT_TOKEN_BYTES ? v : undefined;
}

function decodeBody(body: unknown): { ok: true; value: unknown } | { ok: false } {
  if (typeof body !== 'string' && !(body instanceof Uint8Array)) return { ok: true, value: body };
  try {
    const text = typeof body === 'string' ? body : new TextDecoder('utf-8', { fatal: true }).decode(body);
    return { ok: true, value: JSON.parse(text) as unknown };
  } catch {
    return { ok: false };
  }
}

/**
 * Parses a request body (a Buffer/string of JSON, or an already parsed value) into an UpdateRequest.
 * Checks, in order: JSON (invalid UTF-8 counts as invalid JSON; the top level must be an object),
 * presence of state, clientToken, version, state/desired/reported types, other state nodes, writer,
 * then per section depth, JSON values (non-finite numbers, non-plain objects) and nulls in arrays.
 * JSON outside state/version/clientToken is ignored. The request may share objects with a parsed
 * `body` (applyUpdate copies what it keeps). On failure the request's clientToken, when valid, is
 * returned too so the error document can echo it.
 */
export function parseUpdateRequest(
  body: Buffer | string | unknown,
  writer: Writer,
  limits: ShadowLimits,
): { ok: true; request: UpdateRequest } | { ok: false; error: ShadowError; clientToken?: string } {
  const decoded = decodeBody(body);
  if (!decoded.ok || !isJsonObject(decoded.value)) return bad(SHADOW_MESSAGES.invalidJson);
  const doc = decoded.value as { [k: string]: unknown };
  const token = validToken(own(doc, 'clientToken'));
  const fail = (message: string) => withToken(bad(message), token);

  if (!Object.hasOwn(doc, 'state')) return fail(SHADOW_MESSAGES.missingState);
  const rawToken = own(doc, 'clientToken');
  if (rawToken !== undefined && token === undefined) return fail(SHADOW_MESSAGES.invalidClientToken);
  const version = own(doc, 'version');
  if (version !== undefined && !(typeof version === 'number' && Number.isSafeInteger(version) && version >= 0)) {
    return fail(SHADOW_MESSAGES.invalidVersion);
  }
  const state = own(doc, 'state');
  const request: UpdateRequest = {};
  if (state === null) {
    request.desired = null;
    request.reported = null;
  } else if (isJsonObject(state)) {
    for (const [key, message] of [['desired', SHADOW_MESSAGES.desiredNotObject], ['reported', SHADOW_MESSAGES.reportedNotObject]] as const) {
      if (!Object.hasOwn(state, key)) continue;
      const section: unknown = state[key];
      if (section !== null && !isJsonObject(section)) return fail(message);
      request[key] = section;
    }
    if (Object.keys(state).some((k) => k !== 'desired' && k !== 'reported')) return fail(SHADOW_MESSAGES.invalidNode);
  } else {
    return fail(SHADOW_MESSAGES.stateNotObject);
  }
  if (writer === 'service' && request.reported !== undefined) return fail(SHADOW_MESSAGES.reportedFromService);

  for (const section of [request.desired, request.reported]) {
    if (!section) continue;
    if (jsonDepth(section, limits.maxDepth) > limits.maxDepth) return fail(SHADOW_MESSAGES.tooDeep(limits.maxDepth));
    const problem = checkJson(section);
    if (problem === 'not-json') return fail(SHADOW_MESSAGES.invalidJson);
    if (problem === 'null-in-array') return fail(SHADOW_MESSAGES.invalidNode);
  }
  if (typeof version === 'number') request.version = version;
  if (token !== undefined) request.clientToken = token;
  return { ok: true, request };
}

/**
 * Merges `patch` into `state` (and `meta`) in place; both are private copies. null deletes, objects
 * merge, everything else (arrays included) replaces and gets a fresh timestamp.
 */
function mergeInto(state: JsonObject, meta: MetadataTree, patch: JsonObject, ts: number): void {
  for (const k of Object.keys(patch)) {
    const v = patch[k] as JsonValue;
    if (v === null) {
      delete state[k];
      delete meta[k];
    } else if (isJsonObject(v)) {
      const cur = own(state, k);
      const curMeta = own(meta, k);
      const wasObject = isJsonObject(cur);
      const childState: JsonObject = wasObject ? cur : {};
      const childMeta: MetadataTree = wasObject && isTree(curMeta) ? curMeta : {};
      mergeInto(childState, childMeta, v, ts);
      if (Object.keys(childState).length > 0) {
        put(state, k, childState);
        put(meta, k, childMeta);
      } else if (wasObject) {
        delete state[k];
        delete meta[k];
      }
    } else {
      put(state, k, typeof v === 'object' ? structuredClone(v) : v);
      put(meta, k, { timestamp: ts });
    }
  }
}

/** Metadata for a request section: a timestamp per field sent (nulls included), objects recursed. */
function stamp(patch: JsonObject, ts: number): MetadataTree {
  const out: MetadataTree = {};
  for (const k of Object.keys(patch)) {
    const v = patch[k] as JsonValue;
    put(out, k, isJsonObject(v) ? stamp(v, ts) : { timestamp: ts });
  }
  return out;
}

/** UTF-8 bytes of the stored state: desired + reported serialized, metadata not counted. */
export function stateBytes(state: StoredShadow['state']): number {
  return (state.desired ? jsonBytes(state.desired) : 0) + (state.reported ? jsonBytes(state.reported) : 0);
}

/** False for no shadow and for a deleted one (a tombstone without sections): GET/DELETE → 404. */
export function shadowExists(shadow: StoredShadow | null): shadow is StoredShadow {
  return shadow !== null && (shadow.state.desired !== undefined || shadow.state.reported !== undefined);
}

function snapshot(shadow: StoredShadow | null): ShadowSnapshot {
  const out: ShadowSnapshot = { state: {}, metadata: {}, version: shadow?.version ?? 0 };
  for (const key of ['desired', 'reported'] as const) {
    const section = shadow?.state[key];
    if (!section) continue;
    out.state[key] = structuredClone(section);
    out.metadata[key] = structuredClone(shadow?.metadata[key] ?? {});
  }
  return out;
}

/**
 * Applies a request to the current shadow (null = none yet): 409 when `version` is given and is not
 * the current one (0 for none), 400 when a section is nested too deep, 413 when the resulting state
 * is larger than maxStateBytes. The documents carry the request's clientToken.
 */
export function applyUpdate(
  current: StoredShadow | null,
  request: UpdateRequest,
  nowMs: number,
  limits: ShadowLimits,
):
  | { ok: true; next: StoredShadow; accepted: AcceptedDocument; documents: DocumentsDocument; delta: DeltaDocument | null }
  | { ok: false; error: ShadowError } {
  const currentVersion = current?.version ?? 0;
  if (request.version !== undefined && request.version !== currentVersion) {
    return { ok: false, error: { code: 409, message: SHADOW_MESSAGES.versionConflict } };
  }
  const ts = seconds(nowMs);
  const next: StoredShadow = { state: {}, metadata: {}, version: currentVersion + 1, timestamp: ts };
  const accepted: AcceptedDocument = { state: {}, metadata: {}, version: next.version, timestamp: ts };

  for (const key of ['desired', 'reported'] as const) {
    const patch = request[key];
    const curState = current?.state[key];
    if (patch === null) {
      accepted.state[key] = null;
      accepted.metadata[key] = { timestamp: ts };
      continue;
    }
    if (patch === undefined) {
      if (curState) {
        next.state[key] = structuredClone(curState);
        next.metadata[key] = structuredClone(current?.metadata[key] ?? {});
      }
      continue;
    }
    if (jsonDepth(patch, limits.maxDepth) > limits.maxDepth) {
      return { ok: false, error: { code: 400, message: SHADOW_MESSAGES.tooDeep(limits.maxDepth) } };
    }
    const state: JsonObject = curState ? structuredClone(curState) : {};
    const meta: MetadataTree = curState ? structuredClone(current?.metadata[key] ?? {}) : {};
    mergeInto(state, meta, patch, ts);
    if (Object.keys(state).length > 0) {
      next.state[key] = state;
      next.metadata[key] = meta;
    }
    accepted.state[key] = structuredClone(patch);
    accepted.metadata[key] = stamp(patch, ts);
  }

  const size = stateBytes(next.state);
  if (size > limits.maxStateBytes) {
    return { ok: false, error: { code: 413, message: SHADOW_MESSAGES.tooLarge(size, limits.maxStateBytes) } };
  }
  const token = request.clientToken;
  return {
    ok: true,
    next,
    accepted: withToken(accepted, token),
    documents: withToken({ previous: snapshot(current), current: snapshot(next), timestamp: ts }, token),
    delta: deltaDocument(next, token),
  };
}

/**
 * Delete: state and metadata emptied, version + 1 (AWS never resets it). The caller answers 404
 * (SHADOW_MESSAGES.noShadow) itself when !shadowExists(current).
 */
export function applyDelete(
  current: StoredShadow,
  nowMs: number,
  clientToken?: string,
): { next: StoredShadow; accepted: { version: number; timestamp: number; clientToken?: string } } {
  const ts = seconds(nowMs);
  const next: StoredShadow = { state: {}, metadata: {}, version: current.version + 1, timestamp: ts };
  return { next, accepted: withToken({ version: next.version, timestamp: ts }, clientToken) };
}

/** AWS error document {code, message, timestamp, clientToken?}. */
export function errorDocument(
  error: { code: number; message: string },
  nowMs: number,
  clientToken?: string,
): { code: number; message: string; timestamp: number; clientToken?: string } {
  return withToken({ code: error.code, message: error.message, timestamp: seconds(nowMs) }, clientToken);
}
