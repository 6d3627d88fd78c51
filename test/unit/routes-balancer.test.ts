/** Load balancing and passive health of API gateway routes (src/routes/balancer.ts), on a fake clock. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Balancer, type BalancerOptions, type Lease } from '../../src/routes/balancer.js';

const URLS = ['http://a.test/', 'http://b.test/', 'http://c.test/'];

function setup(over: Partial<BalancerOptions> = {}, urls = URLS) {
  const clock = { now: 1_000 };
  const b = new Balancer(urls, { strategy: 'round-robin', failures: 2, cooldownMs: 500, now: () => clock.now, ...over });
  const names = (leases: (Lease | null)[]) => leases.map((l) => (l ? new URL(l.upstream.label).hostname[0] : null));
  const take = () => {
    const lease = b.pick();
    lease?.succeeded();
    lease?.release();
    return lease;
  };
  return { b, clock, names, take };
}

test('round robin visits every upstream in turn', () => {
  const { names, take } = setup();
  assert.deepEqual(names(Array.from({ length: 6 }, take)), ['a', 'b', 'c', 'a', 'b', 'c']);
});

test('least-pending picks the upstream with the fewest requests in flight, round robin among equals', () => {
  const { b, names } = setup({ strategy: 'least-pending' });
  const held = [b.pick(), b.pick()]; // a and b busy
  assert.deepEqual(names(held), ['a', 'b']);
  const third = b.pick();
  assert.deepEqual(names([third]), ['c']);
  held[0]?.succeeded();
  held[0]?.release(); // a is free again
  assert.deepEqual(names([b.pick()]), ['a']);
});

test('N failures in a row take an upstream out; a success in between resets the count', () => {
  const { b, names, take } = setup();
  const a = b.upstreams[0]!;
  const fail = () => {
    const lease = b.pick(new Set([b.upstreams[1]!, b.upstreams[2]!]));
    lease?.failed('connection refused');
    lease?.release();
  };
  fail();
  assert.equal(a.state, 'up');
  const ok = b.pick(new Set([b.upstreams[1]!, b.upstreams[2]!]));
  ok?.succeeded();
  ok?.release();
  assert.equal(a.consecutiveFailures, 0);
  fail();
  fail();
  assert.equal(a.state, 'down');
  assert.equal(a.lastError, 'connection refused');
  assert.deepEqual(names(Array.from({ length: 4 }, take)), ['b', 'c', 'b', 'c'], 'a down upstream gets no traffic');
});

test('after the cool-down one probe is let through: success brings it back, failure starts another cool-down', () => {
  const { b, clock } = setup({}, ['http://a.test/']);
  const a = b.upstreams[0]!;
  for (let i = 0; i < 2; i++) {
    const l = b.pick();
    l?.failed('timeout');
    l?.release();
  }
  assert.equal(a.state, 'down');
  assert.equal(b.pick(), null, 'nothing can serve during the cool-down');
  clock.now += 500;
  const probe = b.pick();
  assert.ok(probe);
  assert.equal(a.state, 'probing');
  assert.equal(b.pick(), null, 'one probe at a time');
  probe.failed('timeout');
  probe.release();
  assert.equal(a.state, 'down');
  assert.equal(b.status()[0]?.retryAt, clock.now + 500);
  clock.now += 500;
  const again = b.pick();
  again?.succeeded();
  again?.release();
  assert.equal(a.state, 'up');
  assert.equal(b.status()[0]?.healthy, true);
});

test('a probe abandoned by its caller leaves the upstream ready for the next probe', () => {
  const { b, clock } = setup({ failures: 1 }, ['http://a.test/']);
  const l = b.pick();
  l?.failed('reset');
  l?.release();
  clock.now += 500;
  b.pick()?.release();
  assert.equal(b.upstreams[0]!.state, 'down');
  assert.ok(b.pick(), 'probed again at once');
});

test('exclusion: a retry never goes to an upstream already tried', () => {
  const { b } = setup();
  const first = b.pick()!;
  const second = b.pick(new Set([first.upstream]))!;
  assert.notEqual(second.upstream, first.upstream);
  assert.equal(b.pick(new Set(b.upstreams)), null);
});

test('with active checks only a passing check brings an upstream back', () => {
  const { b, clock } = setup({ activeChecks: true }, ['http://a.test/']);
  const a = b.upstreams[0]!;
  b.checked(a, false, 'health check answered 503');
  assert.equal(a.state, 'down');
  clock.now += 10_000;
  assert.equal(b.pick(), null, 'no passive probe');
  assert.equal(b.status()[0]?.retryAt, null);
  b.checked(a, true);
  assert.equal(a.state, 'up');
  assert.ok(b.pick());
});

test('a replacing balancer keeps the health of unchanged URLs', () => {
  const { b } = setup({ failures: 1 });
  const l = b.pick();
  l?.failed('refused');
  l?.release();
  const next = new Balancer(['http://a.test/', 'http://d.test/'], { strategy: 'round-robin', failures: 1, cooldownMs: 500 }, b);
  assert.equal(next.upstreams[0]!.state, 'down');
  assert.equal(next.upstreams[0]!.lastError, 'refused');
  assert.equal(next.upstreams[1]!.state, 'up');
});
