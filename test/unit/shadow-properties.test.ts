/**
 * Property-based tests (fast-check) of the shadow merge/delta invariants in src/core/shadow.ts.
 * Keys are drawn from a small set (so requests collide with stored fields) that includes
 * `__proto__`, `constructor` and `timestamp`; shadows are built by applying generated requests.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import {
  applyDelete,
  applyUpdate,
  computeDelta,
  DEFAULT_SHADOW_LIMITS,
  deltaDocument,
  fullDocument,
  parseUpdateRequest,
  type JsonObject,
  type JsonValue,
  type StoredShadow,
  type UpdateRequest,
} from '../../src/core/shadow.js';

const L = DEFAULT_SHADOW_LIMITS;
const NOW = 1_700_000_000_000;
const RUNS = { numRuns: 200 };

// ---- helpers (an independent model of the semantics) ----

const isObj = (v: unknown): v is JsonObject => typeof v === 'object' && v !== null && !Array.isArray(v);
const has = (o: JsonObject, k: string) => Object.hasOwn(o, k);
function set(o: JsonObject, k: string, v: JsonValue): void {
  Object.defineProperty(o, k, { value: v, enumerable: true, writable: true, configurable: true });
}
const clone = <T>(v: T): T => structuredClone(v);

/** Leaves of an object as path (JSON array of keys) → value; arrays and scalars are leaves, so are empty objects. */
function leaves(o: JsonObject | undefined, prefix: string[] = [], out = new Map<string, JsonValue>()): Map<string, JsonValue> {
  for (const k of Object.keys(o ?? {})) {
    const v = (o as JsonObject)[k] as JsonValue;
    if (isObj(v) && Object.keys(v).length > 0) leaves(v, [...prefix, k], out);
    else out.set(JSON.stringify([...prefix, k]), v);
  }
  return out;
}

/** The value at a path, walking own fields of objects only. */
function at(o: JsonValue | undefined, path: string[]): JsonValue | undefined {
  let cur = o;
  for (const k of path) {
    if (!isObj(cur) || !has(cur, k)) return undefined;
    cur = cur[k];
  }
  return cur;
}

/** Reference merge: null deletes, objects merge (pruning what deletions empty), the rest replaces. */
function refMergeObject(cur: JsonObject, patch: JsonObject): JsonObject {
  const out = clone(cur);
  for (const k of Object.keys(patch)) {
    const v = patch[k] as JsonValue;
    const c = has(out, k) ? out[k] : undefined;
    if (v === null) delete out[k];
    else if (isObj(v)) {
      const merged = refMergeObject(isObj(c) ? c : {}, v);
      if (Object.keys(merged).length > 0) set(out, k, merged);
      else if (isObj(c)) delete out[k];
    } else set(out, k, clone(v));
  }
  return out;
}
function refMerge(cur: JsonObject | undefined, patch: JsonObject | null | undefined): JsonObject | undefined {
  if (patch === undefined) return cur;
  if (patch === null) return undefined;
  const out = refMergeObject(cur ?? {}, patch);
  return Object.keys(out).length > 0 ? out : undefined;
}

function noEmptyObjects(v: JsonValue | undefined): boolean {
  if (!isObj(v)) return true;
  return Object.keys(v).length > 0 && Object.values(v).every(noEmptyObjects);
}

/** Metadata mirrors the state: same leaf paths, each a {timestamp: number}. */
function assertMetadataMirrors(s: StoredShadow): void {
  for (const key of ['desired', 'reported'] as const) {
    const state = leaves(s.state[key]);
    const meta = new Map<string, unknown>();
    const walk = (m: object, st: JsonValue, prefix: string[]) => {
      for (const k of Object.keys(m)) {
        const child = (m as Record<string, unknown>)[k];
        const sv = isObj(st) ? st[k] : undefined;
        if (isObj(sv)) walk(child as object, sv, [...prefix, k]);
        else meta.set(JSON.stringify([...prefix, k]), child);
      }
    };
    walk(s.metadata[key] ?? {}, s.state[key] ?? {}, []);
    assert.deepEqual([...meta.keys()].sort(), [...state.keys()].sort(), `${key} metadata paths`);
    for (const m of meta.values()) assert.deepEqual(Object.keys(m as object), ['timestamp']);
    assert.equal(s.metadata[key] === undefined, s.state[key] === undefined);
  }
}

function mustAccept<R extends { ok: boolean }>(r: R): asserts r is Extract<R, { ok: true }> {
  if (!r.ok) assert.fail(`rejected: ${JSON.stringify(r)}`);
}

function deepFreeze<T>(v: T): T {
  if (typeof v === 'object' && v !== null) {
    for (const x of Object.values(v)) deepFreeze(x);
    Object.freeze(v);
  }
  return v;
}

/** Throws if any object reachable from v is frozen, i.e. is (part of) a frozen input. */
function assertNoFrozen(v: unknown): void {
  if (typeof v !== 'object' || v === null) return;
  assert.equal(Object.isFrozen(v), false, 'an output shares an object with an input');
  Object.values(v).forEach(assertNoFrozen);
}

// ---- arbitraries ----

const key = fc.constantFrom('a', 'b', 'c', 'timestamp', '__proto__', 'constructor', 'toString');
const scalar: fc.Arbitrary<JsonValue> = fc.oneof(fc.integer({ min: -2, max: 2 }), fc.boolean(), fc.constantFrom('', 'x', 'é'));

function objectOf(value: fc.Arbitrary<JsonValue>): fc.Arbitrary<JsonObject> {
  return fc.uniqueArray(fc.tuple(key, value), { selector: (e) => e[0], maxLength: 4 }).map((entries) => {
    const o: JsonObject = {};
    for (const [k, v] of entries) set(o, k, v);
    return o;
  });
}

/** Stored-state values: no nulls; arrays may hold objects but never null. */
function value(depth: number): fc.Arbitrary<JsonValue> {
  if (depth === 0) return scalar;
  return fc.oneof(
    { weight: 4, arbitrary: scalar },
    { weight: 1, arbitrary: fc.array(value(depth - 1), { maxLength: 3 }) },
    { weight: 3, arbitrary: objectOf(value(depth - 1)) },
  );
}
const stateObject = objectOf(value(3));

/** Patch values: like state values, plus null (delete) in object fields. */
function patchValue(depth: number): fc.Arbitrary<JsonValue> {
  if (depth === 0) return fc.oneof({ weight: 3, arbitrary: scalar }, { weight: 1, arbitrary: fc.constant(null) });
  return fc.oneof(
    { weight: 3, arbitrary: scalar },
    { weight: 1, arbitrary: fc.constant(null) },
    { weight: 1, arbitrary: fc.array(value(depth - 1), { maxLength: 3 }) },
    { weight: 3, arbitrary: objectOf(patchValue(depth - 1)) },
  );
}
const patchObject = objectOf(patchValue(3));
const section = fc.oneof(
  { weight: 1, arbitrary: fc.constant(undefined) },
  { weight: 1, arbitrary: fc.constant(null) },
  { weight: 5, arbitrary: patchObject },
);

const request: fc.Arbitrary<UpdateRequest> = fc.record({ desired: section, reported: section }).map(({ desired, reported }) => {
  const r: UpdateRequest = {};
  if (desired !== undefined) r.desired = desired;
  if (reported !== undefined) r.reported = reported;
  return r;
});

/** A stored shadow built by up to three accepted device updates (or none: null). */
const shadow: fc.Arbitrary<StoredShadow | null> = fc
  .array(fc.record({ desired: fc.option(stateObject, { nil: undefined }), reported: fc.option(stateObject, { nil: undefined }) }), { maxLength: 1 })
  .chain((first) => fc.array(request, { maxLength: 2 }).map((more) => [...first, ...more]))
  .map((requests) => {
    let s: StoredShadow | null = null;
    requests.forEach((req, i) => {
      const r = applyUpdate(s, JSON.parse(JSON.stringify(req)) as UpdateRequest, NOW + i * 1000, L);
      mustAccept(r);
      s = r.next;
    });
    return s;
  });

/** Round trip through the wire format, as a device would send it. */
function viaWire(req: UpdateRequest): UpdateRequest {
  const state: Record<string, unknown> = {};
  if (req.desired !== undefined) state['desired'] = req.desired;
  if (req.reported !== undefined) state['reported'] = req.reported;
  const parsed = parseUpdateRequest(Buffer.from(JSON.stringify({ state, version: req.version })), 'device', L);
  mustAccept(parsed);
  return parsed.request;
}

// ---- properties ----

describe('shadow properties', () => {
  it('(a) the update merges as the model does, and its delta is the delta of the merged sections', () => {
    fc.assert(
      fc.property(shadow, request, (current, req) => {
        const r = applyUpdate(current, viaWire(req), NOW + 60_000, L);
        mustAccept(r);
        const desired = refMerge(current?.state.desired, req.desired);
        const reported = refMerge(current?.state.reported, req.reported);
        assert.deepEqual(r.next.state.desired, desired);
        assert.deepEqual(r.next.state.reported, reported);
        assert.ok(noEmptyObjects(r.next.state.desired) && noEmptyObjects(r.next.state.reported), 'no empty objects stored');
        assertMetadataMirrors(r.next);
        const delta = computeDelta(desired, reported);
        assert.deepEqual(r.delta?.state ?? null, delta);
        assert.deepEqual(fullDocument(r.next).state.delta, delta ?? undefined);
        assert.deepEqual(deltaDocument(r.next), r.delta);
      }),
      RUNS,
    );
  });

  it('(b) after an update copying desired into reported, there is no delta', () => {
    fc.assert(
      fc.property(shadow, (current) => {
        const r = applyUpdate(current, { reported: clone(current?.state.desired ?? {}) }, NOW + 60_000, L);
        mustAccept(r);
        assert.equal(r.delta, null);
        assert.equal(computeDelta(r.next.state.desired, r.next.state.reported), null);
        assert.equal(fullDocument(r.next).state.delta, undefined);
      }),
      RUNS,
    );
  });

  it('(c) applying the same request twice gives the same state; only the version moves', () => {
    fc.assert(
      fc.property(shadow, request, (current, req) => {
        const once = applyUpdate(current, req, NOW + 60_000, L);
        mustAccept(once);
        const twice = applyUpdate(once.next, req, NOW + 60_000, L);
        mustAccept(twice);
        assert.deepEqual(twice.next.state, once.next.state);
        assert.deepEqual(twice.next.metadata, once.next.metadata);
        assert.equal(twice.next.version, once.next.version + 1);
      }),
      RUNS,
    );
  });

  it('(d) null deletion removes exactly the paths set to null', () => {
    fc.assert(
      fc.property(shadow, fc.array(fc.boolean(), { minLength: 32, maxLength: 32 }), (current, mask) => {
        const before = leaves(current?.state.desired);
        const paths = [...before.keys()];
        const chosen = paths.filter((_, i) => mask[i % mask.length]);
        const patch: JsonObject = {};
        for (const p of chosen) {
          const path = JSON.parse(p) as string[];
          let o = patch;
          for (const k of path.slice(0, -1)) {
            if (!has(o, k)) set(o, k, {});
            o = o[k] as JsonObject;
          }
          set(o, path[path.length - 1] as string, null);
        }
        const r = applyUpdate(current, { desired: patch }, NOW + 60_000, L);
        mustAccept(r);
        const after = leaves(r.next.state.desired);
        const expected = new Map([...before].filter(([p]) => !chosen.includes(p)));
        assert.deepEqual(after, expected);
        assert.ok(noEmptyObjects(r.next.state.desired), 'emptied parents are pruned');
        assertMetadataMirrors(r.next);
        // Untouched leaves keep their metadata.
        for (const p of after.keys()) {
          const path = JSON.parse(p) as string[];
          assert.deepEqual(at(r.next.metadata.desired as JsonObject, path), at(current?.metadata.desired as JsonObject, path));
        }
      }),
      RUNS,
    );
  });

  it('(e) the delta holds exactly the desired leaves that reported does not match, at their full path', () => {
    fc.assert(
      fc.property(stateObject, stateObject, fc.boolean(), (desired, reportedRaw, overlap) => {
        // Half the time reported starts as a copy of desired, so equal values are common.
        const reported = overlap ? refMergeObject(clone(desired), reportedRaw) : reportedRaw;
        const delta = computeDelta(desired, reported);
        const expected = new Map<string, JsonValue>();
        for (const [p, v] of leaves(desired)) {
          const r = at(reported, JSON.parse(p) as string[]);
          const emptyObject = isObj(v);
          const matches = emptyObject ? isObj(r) : r !== undefined && deepEqualJson(v, r);
          if (!matches) expected.set(p, v);
        }
        assert.deepEqual(leaves(delta ?? {}), expected);
        assert.equal(delta === null, expected.size === 0);
        for (const p of leaves(delta ?? {}).keys()) assert.notEqual(at(desired, JSON.parse(p) as string[]), undefined, 'delta path is a desired path');
      }),
      RUNS,
    );
  });

  it('(f) inputs are never mutated nor shared with outputs', () => {
    fc.assert(
      fc.property(shadow, request, fc.option(fc.constantFrom('tok', 'é'), { nil: undefined }), (current, req, token) => {
        const currentCopy = clone(current);
        const reqCopy = clone(req);
        const frozenCurrent = deepFreeze(current);
        const frozenReq = deepFreeze({ ...req, ...(token === undefined ? {} : { clientToken: token }) });
        const r = applyUpdate(frozenCurrent, frozenReq, NOW + 60_000, L);
        mustAccept(r);
        assertNoFrozen(r);
        if (frozenCurrent) {
          assertNoFrozen(fullDocument(frozenCurrent, token));
          assertNoFrozen(deltaDocument(frozenCurrent, token));
          assertNoFrozen(computeDelta(frozenCurrent.state.desired, frozenCurrent.state.reported));
          assertNoFrozen(applyDelete(frozenCurrent, NOW, token));
        }
        const body = deepFreeze({ state: { desired: clone(req.desired ?? {}) }, clientToken: token });
        assert.equal(parseUpdateRequest(body, 'device', L).ok, true);
        assert.deepEqual(current, currentCopy);
        assert.deepEqual(req, reqCopy);
      }),
      RUNS,
    );
  });

  it('(g) the version moves by exactly 1 per accepted update or delete, and not on a conflict', () => {
    const step = fc.oneof(
      { weight: 5, arbitrary: fc.record({ kind: fc.constant('update' as const), req: request, version: fc.constantFrom('none', 'current', 'stale', 'ahead') }) },
      { weight: 1, arbitrary: fc.record({ kind: fc.constant('delete' as const) }) },
    );
    fc.assert(
      fc.property(fc.array(step, { maxLength: 12 }), (steps) => {
        let s: StoredShadow | null = null;
        let accepted = 0;
        steps.forEach((st, i) => {
          const before = s?.version ?? 0;
          if (st.kind === 'delete') {
            if (!s) return;
            s = applyDelete(s, NOW + i * 1000).next;
            accepted++;
          } else {
            const req: UpdateRequest = { ...st.req };
            if (st.version === 'current') req.version = before;
            if (st.version === 'stale' && before > 0) req.version = before - 1;
            if (st.version === 'ahead') req.version = before + 1;
            const r = applyUpdate(s, req, NOW + i * 1000, L);
            if (req.version !== undefined && req.version !== before) {
              assert.deepEqual(r, { ok: false, error: { code: 409, message: 'Version conflict' } });
              return;
            }
            mustAccept(r);
            assert.equal(r.accepted.version, before + 1);
            assert.equal(r.documents.previous.version, before);
            assert.equal(r.documents.current.version, before + 1);
            s = r.next;
            accepted++;
          }
          assert.equal((s as StoredShadow).version, before + 1);
        });
        assert.equal((s as StoredShadow | null)?.version ?? 0, accepted);
      }),
      RUNS,
    );
  });
});

function deepEqualJson(a: JsonValue, b: JsonValue): boolean {
  try {
    assert.deepStrictEqual(a, b);
    return true;
  } catch {
    return false;
  }
}
