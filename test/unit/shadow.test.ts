/**
 * Pure device-shadow logic (src/core/shadow.ts) against the AWS IoT Device Shadow examples and rules
 * of reference.md §2.1: partial merge, null deletion, delta, metadata, versions, clientToken, every
 * 400 message, the depth and size limits, writers and delete.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import {
  applyDelete,
  applyUpdate,
  computeDelta,
  DEFAULT_SHADOW_LIMITS,
  deltaDocument,
  errorDocument,
  fullDocument,
  parseUpdateRequest,
  shadowExists,
  stateBytes,
  type JsonObject,
  type ShadowLimits,
  type StoredShadow,
  type UpdateRequest,
  type Writer,
} from '../../src/core/shadow.js';

const L: ShadowLimits = DEFAULT_SHADOW_LIMITS;
const T0 = 1_700_000_000_000; // ms
const S0 = 1_700_000_000; // s

function parse(body: unknown, writer: Writer = 'device', limits: ShadowLimits = L): UpdateRequest {
  const r = parseUpdateRequest(typeof body === 'string' || Buffer.isBuffer(body) ? body : JSON.stringify(body), writer, limits);
  if (!r.ok) assert.fail(`rejected: ${r.error.message}`);
  return r.request;
}

function rejected(body: unknown, writer: Writer = 'device', limits: ShadowLimits = L) {
  const r = parseUpdateRequest(body, writer, limits);
  if (r.ok) assert.fail('accepted');
  return r;
}

/**
 * Narrows a result to its ok branch. (Not assert.ok(r.ok): on failure, Node 20's assert.ok parses
 * the test source to build its message, and under tsx that can spin forever instead of failing.)
 */
function mustAccept<R extends { ok: boolean }>(r: R): asserts r is Extract<R, { ok: true }> {
  if (!r.ok) assert.fail(`rejected: ${JSON.stringify(r)}`);
}

/** Applies JSON request bodies in turn (one second apart), asserting each is accepted. */
function run(bodies: unknown[], start: StoredShadow | null = null, writer: Writer = 'device') {
  let shadow = start;
  let last;
  bodies.forEach((body, i) => {
    const r = applyUpdate(shadow, parse(body, writer), T0 + i * 1000, L);
    if (!r.ok) assert.fail(`update ${i} rejected: ${r.error.message}`);
    shadow = r.next;
    last = r;
  });
  return last as unknown as Extract<ReturnType<typeof applyUpdate>, { ok: true }>;
}

const nest = (levels: number, leaf: unknown = 1): JsonObject => {
  let v: unknown = leaf;
  for (let i = levels; i >= 1; i--) v = { [`l${i}`]: v };
  return v as JsonObject;
};

describe('shadow: partial merge and null deletion', () => {
  it('changes only the fields sent', () => {
    const r = run([
      { state: { desired: { color: 'red', power: 'on', light: { r: 1, g: 2 } } } },
      { state: { desired: { color: 'blue', light: { g: 3 } } } },
    ]);
    assert.deepEqual(r.next.state, { desired: { color: 'blue', power: 'on', light: { r: 1, g: 3 } } });
    assert.equal(r.next.version, 2);
  });

  it('deletes a leaf set to null and prunes the parents it leaves empty', () => {
    const r = run([
      { state: { desired: { a: { b: { c: 1 } }, keep: { x: 1, y: 2 } } } },
      { state: { desired: { a: { b: { c: null } }, keep: { x: null } } } },
    ]);
    assert.deepEqual(r.next.state, { desired: { keep: { y: 2 } } });
    assert.deepEqual(r.next.metadata, { desired: { keep: { y: { timestamp: S0 } } } });
  });

  it('removes a whole section with desired: null / reported: null, and an emptied section', () => {
    const base = run([{ state: { desired: { a: 1 }, reported: { a: 2, b: 3 } } }]).next;
    const r1 = run([{ state: { desired: null } }], base);
    assert.deepEqual(r1.next.state, { reported: { a: 2, b: 3 } });
    assert.equal(r1.next.metadata.desired, undefined);
    assert.deepEqual(r1.accepted.state, { desired: null });
    assert.deepEqual(r1.accepted.metadata, { desired: { timestamp: S0 } });
    const r2 = run([{ state: { reported: { a: null, b: null } } }], r1.next);
    assert.deepEqual(r2.next.state, {});
    assert.deepEqual(r2.next.metadata, {});
    assert.equal(r2.next.version, 3);
    assert.equal(shadowExists(r2.next), false);
  });

  it('{"state": null} from a device clears both sections', () => {
    const base = run([{ state: { desired: { a: 1 }, reported: { a: 2 } } }]).next;
    assert.deepEqual(parse({ state: null }), { desired: null, reported: null });
    const r = run([{ state: null }], base);
    assert.deepEqual(r.next.state, {});
    assert.equal(r.next.version, 2);
  });

  it('deleting a field that does not exist is a no-op that still bumps the version', () => {
    const base = run([{ state: { desired: { a: 1 } } }]).next;
    const r = run([{ state: { desired: { missing: null, a: { deeper: null } } } }], base);
    assert.deepEqual(r.next.state, base.state);
    assert.deepEqual(r.next.metadata, base.metadata);
    assert.equal(r.next.version, 2);
    const fresh = run([{ state: { reported: { x: null } } }]);
    assert.deepEqual(fresh.next.state, {});
    assert.equal(fresh.next.version, 1);
  });

  it('replaces arrays whole and replaces scalars by objects and back', () => {
    const r = run([
      { state: { desired: { list: [1, 2, 3], obj: { a: 1 }, s: 5 } } },
      { state: { desired: { list: [9], obj: 'flat', s: { now: 'nested' } } } },
    ]);
    assert.deepEqual(r.next.state.desired, { list: [9], obj: 'flat', s: { now: 'nested' } });
    assert.deepEqual(r.next.metadata.desired, { list: { timestamp: S0 + 1 }, obj: { timestamp: S0 + 1 }, s: { now: { timestamp: S0 + 1 } } });
  });

  it('an object patch that writes nothing leaves a scalar alone; {} changes nothing', () => {
    const base = run([{ state: { desired: { s: 5, o: { a: 1 } } } }]).next;
    const r = run([{ state: { desired: { s: { x: null }, o: {}, n: {} } } }], base);
    assert.deepEqual(r.next.state, base.state);
  });

  it('keeps awkward keys as plain fields (__proto__, constructor, timestamp)', () => {
    const r = run([
      '{"state":{"desired":{"__proto__":{"polluted":true},"constructor":1,"timestamp":{"timestamp":2}}}}',
      '{"state":{"reported":{"constructor":1}}}',
    ]);
    const desired = r.next.state.desired!;
    assert.equal(Object.getPrototypeOf(desired), Object.prototype);
    assert.deepEqual(JSON.parse(JSON.stringify(desired)), JSON.parse('{"__proto__":{"polluted":true},"constructor":1,"timestamp":{"timestamp":2}}'));
    assert.equal(({} as Record<string, unknown>)['polluted'], undefined);
    assert.deepEqual(JSON.parse(JSON.stringify(r.next.metadata.desired)), JSON.parse(`{"__proto__":{"polluted":{"timestamp":${S0}}},"constructor":{"timestamp":${S0}},"timestamp":{"timestamp":{"timestamp":${S0}}}}`));
    assert.deepEqual(JSON.parse(JSON.stringify(r.delta?.state)), JSON.parse('{"__proto__":{"polluted":true},"timestamp":{"timestamp":2}}'));
  });
});

describe('shadow: delta', () => {
  it('AWS example: nested delta keeps the full path to the differing leaf', () => {
    const desired = { lights: { color: 'RED' }, engine: 'ON' };
    const reported = { lights: { color: 'GREEN' }, engine: 'ON' };
    assert.deepEqual(computeDelta(desired, reported), { lights: { color: 'RED' } });
    const deep = { a: { b: { c: { d: 1, same: 2 } }, other: 3 } };
    assert.deepEqual(computeDelta(deep, { a: { b: { c: { d: 0, same: 2 } }, other: 3 } }), { a: { b: { c: { d: 1 } } } });
  });

  it('a field in desired only is in the delta; a field in reported only is not', () => {
    assert.deepEqual(computeDelta({ a: 1, b: { c: 2 } }, { x: 9 }), { a: 1, b: { c: 2 } });
    assert.deepEqual(computeDelta({ a: 1 }, undefined), { a: 1 });
    assert.equal(computeDelta(undefined, { a: 1 }), null);
    assert.equal(computeDelta({ a: 1 }, { a: 1, extra: 2 }), null);
  });

  it('equal values give no delta (key order, nested arrays and objects compared deeply)', () => {
    assert.equal(computeDelta({ o: { x: 1, y: [1, { z: 2 }] } }, { o: { y: [1, { z: 2 }], x: 1 } }), null);
  });

  it('an array mismatch puts the entire desired array in the delta', () => {
    assert.deepEqual(computeDelta({ list: [1, 2, 3], same: [1] }, { list: [1, 2], same: [1] }), { list: [1, 2, 3] });
    assert.deepEqual(computeDelta({ list: [1, 2] }, { list: [2, 1] }), { list: [1, 2] });
    assert.deepEqual(computeDelta({ list: [1] }, { list: [1, 2] }), { list: [1] }, 'a longer reported array differs');
    // Objects inside arrays compare on own keys only: {"__proto__":{}} is not {"x":{}}.
    const desired = JSON.parse('{"l":[{"__proto__":{}}]}') as JsonObject;
    assert.deepEqual(JSON.stringify(computeDelta(desired, { l: [{ x: {} }] })), '{"l":[{"__proto__":{}}]}');
    assert.deepEqual(computeDelta({ list: [] }, { list: {} as JsonObject }), { list: [] });
  });

  it('a desired object facing a reported scalar (or the reverse) is in the delta whole', () => {
    assert.deepEqual(computeDelta({ a: { b: 1, c: 2 } }, { a: 5 }), { a: { b: 1, c: 2 } });
    assert.deepEqual(computeDelta({ a: 5 }, { a: { b: 1 } }), { a: 5 });
    assert.deepEqual(computeDelta({ a: 1 }, { a: '1' }), { a: 1 });
  });

  it('the /update/delta document carries every differing field and its desired metadata', () => {
    const r = run([
      { state: { reported: { color: 'green', temp: 20 } } },
      { state: { desired: { color: 'red', fan: { speed: 2, mode: 'auto' } } } },
      { state: { desired: { temp: 20 } }, clientToken: 'tok' },
    ]);
    // color and fan did not change in the last update, they still are in the delta (AWS).
    assert.deepEqual(r.delta, {
      state: { color: 'red', fan: { speed: 2, mode: 'auto' } },
      metadata: { color: { timestamp: S0 + 1 }, fan: { speed: { timestamp: S0 + 1 }, mode: { timestamp: S0 + 1 } } },
      version: 3,
      timestamp: S0 + 2,
      clientToken: 'tok',
    });
    const { clientToken: _token, ...withoutToken } = r.delta!;
    assert.deepEqual(deltaDocument(r.next), withoutToken);
  });

  it('reported catching up removes the delta', () => {
    const r = run([
      { state: { desired: { color: 'red', list: [1, 2] } } },
      { state: { reported: { color: 'red', list: [1, 2], extra: true } } },
    ]);
    assert.equal(r.delta, null);
    assert.equal(deltaDocument(r.next), null);
    assert.equal(fullDocument(r.next).state.delta, undefined);
  });
});

describe('shadow: documents, metadata and versions', () => {
  it('metadata has a timestamp (seconds) per leaf written; untouched leaves keep theirs', () => {
    const r = run([
      { state: { desired: { a: 1, o: { x: [1, 2], y: 'y' } } } },
      { state: { desired: { o: { y: 'z' } } } },
    ]);
    assert.deepEqual(r.next.metadata.desired, { a: { timestamp: S0 }, o: { x: { timestamp: S0 }, y: { timestamp: S0 + 1 } } });
    assert.equal(r.next.timestamp, S0 + 1);
  });

  it('/update/accepted has only the sections sent, as sent, with metadata for every field sent', () => {
    const base = run([{ state: { desired: { a: 1 }, reported: { z: 1 } } }]).next;
    const r = applyUpdate(base, parse({ state: { desired: { a: null, b: { c: [1] } } }, clientToken: 'abc', version: 1, ignored: 1 }), T0 + 5000, L);
    mustAccept(r);
    assert.deepEqual(r.accepted, {
      state: { desired: { a: null, b: { c: [1] } } },
      metadata: { desired: { a: { timestamp: S0 + 5 }, b: { c: { timestamp: S0 + 5 } } } },
      version: 2,
      timestamp: S0 + 5,
      clientToken: 'abc',
    });
  });

  it('/update/documents carries previous and current with metadata and versions', () => {
    const first = applyUpdate(null, parse({ state: { reported: { a: 1 } } }), T0, L);
    mustAccept(first);
    assert.deepEqual(first.documents, {
      previous: { state: {}, metadata: {}, version: 0 },
      current: { state: { reported: { a: 1 } }, metadata: { reported: { a: { timestamp: S0 } } }, version: 1 },
      timestamp: S0,
    });
    const second = applyUpdate(first.next, parse({ state: { desired: { a: 2 } }, clientToken: 'c' }), T0 + 1000, L);
    mustAccept(second);
    assert.deepEqual(second.documents.previous, first.documents.current);
    assert.deepEqual(second.documents.current, {
      state: { desired: { a: 2 }, reported: { a: 1 } },
      metadata: { desired: { a: { timestamp: S0 + 1 } }, reported: { a: { timestamp: S0 } } },
      version: 2,
    });
    assert.equal(second.documents.clientToken, 'c');
  });

  it('the GET document has desired, reported, delta, metadata, version, timestamp and clientToken', () => {
    const r = run([{ state: { desired: { a: 2, b: 1 }, reported: { a: 1, b: 1 } } }]);
    assert.deepEqual(fullDocument(r.next, 'get-1'), {
      state: { desired: { a: 2, b: 1 }, reported: { a: 1, b: 1 }, delta: { a: 2 } },
      metadata: { desired: { a: { timestamp: S0 }, b: { timestamp: S0 } }, reported: { a: { timestamp: S0 }, b: { timestamp: S0 } } },
      version: 1,
      timestamp: S0,
      clientToken: 'get-1',
    });
    const onlyReported = run([{ state: { reported: { a: 1 } } }]);
    assert.deepEqual(fullDocument(onlyReported.next), {
      state: { reported: { a: 1 } },
      metadata: { reported: { a: { timestamp: S0 } } },
      version: 1,
      timestamp: S0,
    });
    assert.equal('clientToken' in fullDocument(onlyReported.next), false);
  });

  it('version: +1 per accepted update; a request version must equal the current one (409)', () => {
    const v1 = run([{ state: { desired: { a: 1 } } }]).next;
    const ok = applyUpdate(v1, parse({ state: { desired: { a: 2 } }, version: 1 }), T0, L);
    mustAccept(ok);
    assert.equal(ok.next.version, 2);
    for (const version of [0, 2, 7]) {
      assert.deepEqual(applyUpdate(v1, parse({ state: { desired: { a: 3 } }, version }), T0, L), {
        ok: false,
        error: { code: 409, message: 'Version conflict' },
      });
    }
    // No shadow yet: the current version is 0.
    mustAccept(applyUpdate(null, parse({ state: { desired: { a: 1 } }, version: 0 }), T0, L));
    assert.equal((applyUpdate(null, parse({ state: { desired: { a: 1 } }, version: 1 }), T0, L) as { ok: boolean }).ok, false);
  });

  it('clientToken is echoed on accepted, documents, delta and error documents; up to 64 bytes', () => {
    const token64 = 'é'.repeat(32); // 64 UTF-8 bytes
    const r = applyUpdate(null, parse({ state: { desired: { a: 1 } }, clientToken: token64 }), T0, L);
    mustAccept(r);
    assert.equal(r.accepted.clientToken, token64);
    assert.equal(r.documents.clientToken, token64);
    assert.equal(r.delta?.clientToken, token64);
    const long = rejected(JSON.stringify({ state: { desired: { a: 1 } }, clientToken: token64 + 'x' }));
    assert.deepEqual(long.error, { code: 400, message: 'Invalid clientToken' });
    assert.equal(long.clientToken, undefined);
    assert.deepEqual(rejected({ state: {}, clientToken: 5 }).error.message, 'Invalid clientToken');
    // A valid token is handed back with a rejection so the error document can echo it.
    const bad = rejected({ state: { desired: [] }, clientToken: 'mine' });
    assert.equal(bad.clientToken, 'mine');
    assert.deepEqual(errorDocument(bad.error, T0 + 1999, bad.clientToken), {
      code: 400,
      message: 'Desired node must be an object',
      timestamp: S0 + 1,
      clientToken: 'mine',
    });
    assert.deepEqual(errorDocument({ code: 409, message: 'Version conflict' }, T0), { code: 409, message: 'Version conflict', timestamp: S0 });
  });
});

describe('shadow: request validation (400)', () => {
  const cases: [string, unknown, string][] = [
    ['not JSON', '{"state":', 'Invalid JSON'],
    ['empty body', '', 'Invalid JSON'],
    ['invalid UTF-8', Buffer.from([0x7b, 0xff, 0x7d]), 'Invalid JSON'],
    ['top level not an object', '[1]', 'Invalid JSON'],
    ['a number beyond double range', '{"state":{"desired":{"a":1e400}}}', 'Invalid JSON'],
    ['parsed value that is not JSON', { state: { desired: { a: new Date(0) } } }, 'Invalid JSON'],
    ['parsed NaN', { state: { desired: { a: Number.NaN } } }, 'Invalid JSON'],
    ['no state', '{"desired":{"a":1}}', 'Missing required node: state'],
    ['state a string', '{"state":"on"}', 'State node must be an object'],
    ['state an array', '{"state":[]}', 'State node must be an object'],
    ['desired an array', '{"state":{"desired":[1]}}', 'Desired node must be an object'],
    ['desired a number', '{"state":{"desired":1}}', 'Desired node must be an object'],
    ['reported a string', '{"state":{"reported":"x"}}', 'Reported node must be an object'],
    ['another state node', '{"state":{"desired":{},"delta":{"a":1}}}', 'State contains an invalid node'],
    ['null in an array', '{"state":{"desired":{"a":[1,null]}}}', 'State contains an invalid node'],
    ['null in a nested array', '{"state":{"reported":{"a":{"b":[[null]]}}}}', 'State contains an invalid node'],
    ['version a string', '{"state":{},"version":"1"}', 'Invalid version'],
    ['version negative', '{"state":{},"version":-1}', 'Invalid version'],
    ['version fractional', '{"state":{},"version":1.5}', 'Invalid version'],
    ['version null', '{"state":{},"version":null}', 'Invalid version'],
    ['clientToken not a string', '{"state":{},"clientToken":{}}', 'Invalid clientToken'],
  ];
  for (const [name, body, message] of cases) {
    it(`${name} → 400 "${message}"`, () => {
      assert.deepEqual(rejected(body).error, { code: 400, message });
    });
  }

  it('ignores JSON outside state/version/clientToken and takes Buffers, strings and parsed values', () => {
    const want = { desired: { a: 1 }, version: 3, clientToken: 'x' };
    const body = { state: { desired: { a: 1 } }, version: 3, clientToken: 'x', metadata: { junk: 1 }, timestamp: 'no' };
    assert.deepEqual(parse(body), want);
    assert.deepEqual(parseUpdateRequest(Buffer.from(JSON.stringify(body)), 'device', L), { ok: true, request: want });
    assert.deepEqual(parseUpdateRequest(body, 'device', L), { ok: true, request: want });
    assert.deepEqual(parse({ state: {} }), {});
  });

  it('a service (REST) writes only desired: reported → 400', () => {
    assert.deepEqual(parse({ state: { desired: { a: 1 } } }, 'service'), { desired: { a: 1 } });
    for (const state of [{ reported: { a: 1 } }, { desired: { a: 1 }, reported: null }, null]) {
      assert.deepEqual(rejected({ state }, 'service').error, { code: 400, message: 'Reported node must not be written from this API' });
    }
    assert.deepEqual(parse({ state: { desired: { a: 1 }, reported: { b: 2 } } }, 'device'), { desired: { a: 1 }, reported: { b: 2 } });
  });

  it('depth: 6 levels inside desired/reported are accepted, 7 rejected (objects and arrays count)', () => {
    const tooDeep = { code: 400, message: 'JSON contains too many levels of nesting; maximum is 6' };
    // {"l1":{"l2":{"l3":{"l4":{"l5":{"l6":1}}}}}}: the section object is level 1, l6's value sits 6 keys deep.
    parse({ state: { desired: nest(5, { l6: 1 }), reported: nest(6) } });
    assert.deepEqual(rejected({ state: { desired: nest(6, { l7: 1 }) } }).error, tooDeep);
    assert.deepEqual(rejected({ state: { reported: nest(7) } }).error, tooDeep);
    parse({ state: { desired: nest(5, [1]) } });
    assert.deepEqual(rejected({ state: { desired: nest(5, [[1]]) } }).error, tooDeep);
    assert.deepEqual(rejected({ state: { desired: nest(6, {}) } }).error, tooDeep, 'an empty object is a level too');
    parse({ state: { desired: nest(6, null) } });
    assert.deepEqual(rejected({ state: { desired: nest(3) } }, 'device', { ...L, maxDepth: 2 }).error.message, 'JSON contains too many levels of nesting; maximum is 2');
    // Hostile nesting and cyclic parsed values are refused without exhausting the stack.
    const n = 200_000;
    assert.deepEqual(rejected(`{"state":{"desired":{"a":${'['.repeat(n)}${']'.repeat(n)}}}}`).error, tooDeep);
    const cyclic: Record<string, unknown> = {};
    cyclic['self'] = cyclic;
    assert.deepEqual(rejected({ state: { reported: cyclic } }).error, tooDeep);
    const r = applyUpdate(null, { desired: nest(7) }, T0, L);
    assert.deepEqual(r, { ok: false, error: tooDeep }, 'applyUpdate checks depth too');
  });
});

describe('shadow: size limit (413)', () => {
  // {"a":"xxx…"} is 8 bytes of JSON around the string.
  const sized = (bytes: number, key = 'a'): JsonObject => ({ [key]: 'x'.repeat(bytes - 8) });

  it('8192 bytes of state are accepted, 8193 are 413 with AWS wording', () => {
    assert.equal(stateBytes({ desired: sized(8192) }), 8192);
    mustAccept(applyUpdate(null, { desired: sized(8192) }, T0, L));
    assert.deepEqual(applyUpdate(null, { desired: sized(8193) }, T0, L), {
      ok: false,
      error: { code: 413, message: 'Json document too large. Size is 8193, max allowed: 8192' },
    });
  });

  it('desired and reported count together, UTF-8 bytes, metadata not at all', () => {
    const base = applyUpdate(null, { reported: sized(4096, 'r') }, T0, L);
    mustAccept(base);
    mustAccept(applyUpdate(base.next, { desired: sized(4096, 'd') }, T0, L));
    assert.equal((applyUpdate(base.next, { desired: sized(4097, 'd') }, T0, L) as { ok: boolean }).ok, false);
    // 'é' is 2 bytes: 8 + 2 × 4092 = 8192.
    mustAccept(applyUpdate(null, { desired: { a: 'é'.repeat(4092) } }, T0, L));
    assert.equal((applyUpdate(null, { desired: { a: 'é'.repeat(4092) + 'x' } }, T0, L) as { ok: boolean }).ok, false);
    // Many leaves: the metadata (~14 KB) is far bigger than the state (~4 KB), which alone counts.
    const many: JsonObject = {};
    for (let i = 0; i < 500; i++) many[`k${i}`] = 1;
    mustAccept(applyUpdate(null, { desired: many }, T0, L));
  });

  it('counts the state after the merge (a request that frees room is accepted) and is configurable', () => {
    const full = applyUpdate(null, { desired: sized(8000) }, T0, L);
    mustAccept(full);
    assert.equal((applyUpdate(full.next, { desired: { b: 'x'.repeat(500) } }, T0, L) as { ok: boolean }).ok, false);
    mustAccept(applyUpdate(full.next, { desired: { a: null, b: 'x'.repeat(500) } }, T0, L));
    const small = applyUpdate(null, { desired: sized(101) }, T0, { ...L, maxStateBytes: 100 });
    assert.deepEqual(small, { ok: false, error: { code: 413, message: 'Json document too large. Size is 101, max allowed: 100' } });
  });
});

describe('shadow: delete', () => {
  it('empties state and metadata, keeps counting versions, and the next update continues them', () => {
    const v2 = run([{ state: { desired: { a: 1 } } }, { state: { reported: { a: 1 } } }]).next;
    const del = applyDelete(v2, T0 + 10_000, 'del-1');
    assert.deepEqual(del.accepted, { version: 3, timestamp: S0 + 10, clientToken: 'del-1' });
    assert.deepEqual(del.next, { state: {}, metadata: {}, version: 3, timestamp: S0 + 10 });
    assert.equal(shadowExists(del.next), false);
    assert.equal(shadowExists(null), false);
    assert.equal(shadowExists(v2), true);
    assert.deepEqual(applyDelete(v2, T0).accepted, { version: 3, timestamp: S0 });
    const again = applyUpdate(del.next, parse({ state: { desired: { b: 2 } }, version: 3 }), T0 + 11_000, L);
    mustAccept(again);
    assert.equal(again.next.version, 4);
    assert.deepEqual(again.next.state, { desired: { b: 2 } }, 'nothing of the deleted state comes back');
    assert.deepEqual(again.documents.previous, { state: {}, metadata: {}, version: 3 });
  });
});

describe('shadow: purity', () => {
  it('never mutates its inputs and never shares objects with them', () => {
    const deepFreeze = <T>(v: T): T => {
      if (typeof v === 'object' && v !== null) {
        for (const x of Object.values(v)) deepFreeze(x);
        Object.freeze(v);
      }
      return v;
    };
    const base = run([{ state: { desired: { a: { b: [1, 2] }, c: 1 }, reported: { a: { b: [1] } } } }]).next;
    const current = deepFreeze(structuredClone(base));
    const request = deepFreeze({ desired: { a: { b: [3], n: { m: 1 } }, c: null }, reported: { z: [1] }, clientToken: 't' } as UpdateRequest);
    const r = applyUpdate(current, request, T0, L);
    mustAccept(r);
    assert.deepEqual(current, base);
    // Every output object is writable: none of them is one of the frozen inputs.
    const writable = (v: unknown): void => {
      if (typeof v !== 'object' || v === null) return;
      assert.equal(Object.isFrozen(v), false);
      Object.values(v).forEach(writable);
    };
    writable(r);
    writable(fullDocument(current));
    writable(deltaDocument(current));
    writable(computeDelta(current.state.desired, current.state.reported));
    writable(applyDelete(current, T0));
    mustAccept(parseUpdateRequest(deepFreeze({ state: { desired: { a: 1 } } }), 'device', L));
  });
});
