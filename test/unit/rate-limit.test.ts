/**
 * Per-key token buckets over several windows (src/core/rate-limit.ts, contract §10), with `now`
 * injected so refill is exact and nothing sleeps.
 */
import { describe, it, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { describeWindow, RateLimiter, type RateRule } from '../../src/core/rate-limit.js';

function limiter(t: TestContext, rule: RateRule): RateLimiter {
  const l = new RateLimiter(rule);
  t.after(() => l.close());
  return l;
}

const T0 = 1_700_000_000_000;

describe('describeWindow', () => {
  it('names windows in the largest whole unit', () => {
    assert.equal(describeWindow(1000), '1s');
    assert.equal(describeWindow(90_000), '90s');
    assert.equal(describeWindow(60_000), '1m');
    assert.equal(describeWindow(120_000), '2m');
    assert.equal(describeWindow(3_600_000), '1h');
    assert.equal(describeWindow(86_400_000), '24h');
    assert.equal(describeWindow(1500), '1500ms');
    assert.equal(describeWindow(250), '250ms');
  });
});

describe('RateLimiter', () => {
  it('is disabled without windows: every take passes', (t) => {
    const l = limiter(t, { unit: 'messages', windows: [] });
    assert.equal(l.enabled, false);
    for (let i = 0; i < 10_000; i++) assert.equal(l.take('dev-1', 1, T0), null);
    assert.equal(l.take('dev-1', Number.MAX_SAFE_INTEGER, T0), null);
  });

  it('ignores windows with a zero limit or length', (t) => {
    const l = limiter(t, { unit: 'messages', windows: [{ limit: 0, windowMs: 1000 }, { limit: 5, windowMs: 0 }] });
    assert.equal(l.enabled, false);
    assert.equal(l.take('k', 1, T0), null);
  });

  it('allows a burst of the limit, then refuses naming the limit, window and wait', (t) => {
    const l = limiter(t, { unit: 'messages', windows: [{ limit: 5, windowMs: 1000 }] });
    assert.equal(l.enabled, true);
    for (let i = 0; i < 5; i++) assert.equal(l.take('dev-1', 1, T0), null, `message ${i + 1}`);
    assert.deepEqual(l.take('dev-1', 1, T0), { limit: '5 messages per 1s', window: '1s', max: 5, windowMs: 1000, retryAfterMs: 200 });
    assert.deepEqual(l.take('dev-1', 1, T0 + 50), { limit: '5 messages per 1s', window: '1s', max: 5, windowMs: 1000, retryAfterMs: 150 }, 'partly refilled');
  });

  it('refills continuously over time', (t) => {
    const l = limiter(t, { unit: 'messages', windows: [{ limit: 10, windowMs: 1000 }] });
    for (let i = 0; i < 10; i++) assert.equal(l.take('k', 1, T0), null);
    assert.ok(l.take('k', 1, T0 + 99), 'not a whole token after 99 ms');
    assert.equal(l.take('k', 1, T0 + 100), null, 'one token after 100 ms');
    assert.ok(l.take('k', 1, T0 + 100));
    // Idle for longer than the window: full again, never more than full.
    for (let i = 0; i < 10; i++) assert.equal(l.take('k', 1, T0 + 60_000), null);
    assert.ok(l.take('k', 1, T0 + 60_000), 'the bucket does not overfill');
  });

  it('a retry after retryAfterMs succeeds (single window)', (t) => {
    const l = limiter(t, { unit: 'messages', windows: [{ limit: 3, windowMs: 1000 }] });
    for (let i = 0; i < 3; i++) l.take('k', 1, T0);
    const r = l.take('k', 1, T0);
    assert.ok(r);
    assert.equal(r.retryAfterMs, 334);
    assert.ok(l.take('k', 1, T0 + r.retryAfterMs - 1), 'refused just before');
    assert.equal(l.take('k', 1, T0 + r.retryAfterMs), null, 'allowed at retryAfterMs');
  });

  it('checks every window: a take passes only when each has room, and a refusal names the exceeded one', (t) => {
    const l = limiter(t, {
      unit: 'messages',
      windows: [
        { limit: 3, windowMs: 1000 },
        { limit: 5, windowMs: 60_000 },
      ],
    });
    for (let i = 0; i < 3; i++) assert.equal(l.take('k', 1, T0), null);
    assert.equal(l.take('k', 1, T0)?.limit, '3 messages per 1s', 'the short window is exceeded');
    // 1 s later the short window is full again; the minute window has 2 + 1000*5/60000 tokens.
    assert.equal(l.take('k', 1, T0 + 1000), null);
    assert.equal(l.take('k', 1, T0 + 1000), null);
    const r = l.take('k', 1, T0 + 1000);
    assert.ok(r);
    assert.equal(r.limit, '5 messages per 1m', 'now the long window is exceeded');
    assert.equal(r.window, '1m');
    // 1/12 token is there; 11/12 of a token at 5 per minute takes 11 s.
    assert.equal(r.retryAfterMs, 11_000);
    assert.equal(l.take('k', 1, T0 + 1000 + 11_000), null);
  });

  it('a refusal takes nothing from any window', (t) => {
    const l = limiter(t, {
      unit: 'messages',
      windows: [
        { limit: 10, windowMs: 1000 },
        { limit: 2, windowMs: 1000 },
      ],
    });
    assert.equal(l.take('k', 2, T0), null);
    for (let i = 0; i < 50; i++) assert.ok(l.take('k', 1, T0), 'refused by the second window');
    // Had the refusals drained the first window, this would fail after the refill of 2 tokens.
    assert.equal(l.take('k', 2, T0 + 1000), null);
  });

  it('keeps keys apart and forgets a key', (t) => {
    const l = limiter(t, { unit: 'messages', windows: [{ limit: 1, windowMs: 60_000 }] });
    assert.equal(l.take('a', 1, T0), null);
    assert.ok(l.take('a', 1, T0));
    assert.equal(l.take('b', 1, T0), null, 'another key has its own bucket');
    l.forget('a');
    assert.equal(l.take('a', 1, T0), null, 'a forgotten key starts full');
  });

  it('counts bytes: amounts, the exact limit, and amounts larger than the limit', (t) => {
    const l = limiter(t, { unit: 'bytes', windows: [{ limit: 1000, windowMs: 1000 }] });
    assert.equal(l.take('k', 400, T0), null);
    assert.equal(l.take('k', 400, T0), null);
    const r = l.take('k', 400, T0);
    assert.ok(r);
    assert.equal(r.limit, '1000 bytes per 1s');
    assert.equal(r.retryAfterMs, 200, '200 bytes missing at 1000 bytes/s');
    assert.equal(l.take('k', 200, T0), null, 'a smaller amount still fits');
    assert.equal(l.take('k', 1000, T0 + 1000), null, 'exactly the limit passes on a full bucket');
    assert.equal(l.take('k', 0, T0 + 1000), null, 'zero bytes always pass');

    // Larger than the window can ever hold: refused even on a full bucket, and nothing taken.
    const big = l.take('fresh', 1001, T0);
    assert.ok(big, 'an amount above the limit is refused');
    assert.equal(big.limit, '1000 bytes per 1s');
    assert.equal(l.take('fresh', 1000, T0), null, 'the refusal took nothing');
  });

  it(
    'a refusal for an amount larger than the limit does not advise an immediate retry',
    (t) => {
      const l = limiter(t, { unit: 'bytes', windows: [{ limit: 1000, windowMs: 1000 }] });
      const r = l.take('k', 5000, T0);
      assert.ok(r);
      assert.ok(r.retryAfterMs > 0, `retryAfterMs is ${r.retryAfterMs}`);
    },
  );

  it(
    'when several windows are exceeded, retryAfterMs covers the longest wait (a retry then succeeds)',
    (t) => {
      const l = limiter(t, {
        unit: 'messages',
        windows: [
          { limit: 2, windowMs: 1000 },
          { limit: 3, windowMs: 10_000 },
        ],
      });
      assert.equal(l.take('k', 1, T0), null);
      assert.equal(l.take('k', 1, T0), null);
      const first = l.take('k', 1, T0);
      assert.ok(first);
      assert.equal(l.take('k', 1, T0 + first.retryAfterMs), null);
      // Both windows are now short of a token: 1 s window needs 500 ms, the 10 s window 2834 ms.
      const r = l.take('k', 1, T0 + first.retryAfterMs);
      assert.ok(r);
      assert.equal(l.take('k', 1, T0 + first.retryAfterMs + r.retryAfterMs), null, `retry after ${r.retryAfterMs} ms (named ${r.limit})`);
    },
  );

  it('does not refill when the clock goes backwards', (t) => {
    const l = limiter(t, { unit: 'messages', windows: [{ limit: 2, windowMs: 1000 }] });
    assert.equal(l.take('k', 1, T0 + 5000), null);
    assert.equal(l.take('k', 1, T0 + 5000), null);
    assert.ok(l.take('k', 1, T0), 'an earlier time gives no tokens');
  });
});
