/**
 * Rate limits shared by every gateway through Redis, with the synchronous surface of the in-memory
 * RateLimiter (core/rate-limit.ts): `take` never waits for Redis.
 *
 * Each gateway keeps the same token buckets as RateLimiter and decides locally. Every `flushMs`
 * (default 100 ms) it sends, for each key it took from since the last flush, one Lua call per key
 * that adds its consumption to window-aligned counters (`iotgate:{key}:rate:<unit>:<limit>/<ms>:
 * <slot start>`, INCRBY + PEXPIRE 2 windows) and reads back the fleet totals; whatever the other
 * gateways consumed since the last look is debited from the local bucket. So every gateway's bucket
 * follows the fleet's consumption, late by at most two flush intervals and a round trip (one for
 * the consumer to push, one for the others to pull).
 *
 * The bound (docs/redis.md, "Shared rate limits"): in any window the fleet admits at most what one
 * gateway with the whole traffic would admit, plus what the other N−1 gateways admit within those
 * 2 × flushMs + RTT before they see each other. For a steady flow of r units/s per gateway the
 * overshoot is about (N−1)·r·(2·flushMs + RTT); its worst case is a key idle everywhere that bursts
 * on all N gateways at the same instant: each has a full bucket, so up to N × limit get through
 * once, after which the fleet is held to the limit. While Redis is unreachable every gateway
 * limits alone (what it took is sent when Redis is back, as long as the window is still current).
 */
import type { ClientContext, Redis, Result } from 'ioredis';
import type { Logger } from 'pino';
import { refusalFor, type Limiter, type RateRefusal, type RateRule, type RateWindow } from '../../core/rate-limit.js';
import type { RedisKeys } from './keys.js';
import { defineScripts } from './scripts.js';

declare module 'ioredis' {
  interface RedisCommander<Context extends ClientContext = { type: 'default' }> {
    /** KEYS: n slot counters; ARGV: n amounts, n ttls (ms). Returns the n totals. */
    iotgateRateSync(numKeys: number, ...args: string[]): Result<unknown, Context>;
  }
}

const SCRIPTS = {
  iotgateRateSync: {
    // No numberOfKeys: each call passes its key count first (rules have different window counts).
    lua: `
local n = #KEYS
local out = {}
for i = 1, n do
  local amount = tonumber(ARGV[i])
  if amount > 0 then
    out[i] = redis.call('INCRBY', KEYS[i], amount)
    redis.call('PEXPIRE', KEYS[i], ARGV[n + i])
  else
    out[i] = tonumber(redis.call('GET', KEYS[i]) or '0')
  end
end
return out`,
  },
};

/** One window of one key: the aligned slot the gateway is in and what it knows of it. */
interface Track {
  slot: number;
  /** Taken here in `slot`, not sent yet. */
  pending: number;
  /** Taken here in `slot` and added to the Redis counter. */
  flushed: number;
  /** Other gateways' units in `slot` already debited from the bucket. */
  seen: number;
}

/** Units for a counter that no track sends any more (its slot ended, or the key was forgotten). */
interface Carry {
  units: number;
  ttl: number;
  /** When the counter expires in Redis anyway. */
  until: number;
}

interface KeyState {
  tokens: Float64Array;
  at: number;
  tracks: Track[];
}

export interface RedisRateLimiterOptions {
  /** How often consumption is sent and fleet totals read (ms); default 100. */
  flushMs?: number;
  log?: Logger;
  /** The clock (tests); `take`'s `now` defaults to it and debits happen at its time. */
  clock?: () => number;
}

export class RedisRateLimiter implements Limiter {
  private readonly states = new Map<string, KeyState>();
  /** Keys taken from since the last flush. */
  private active = new Set<string>();
  /** Units of past slots (or forgotten keys) still to send: counter key → units. */
  private carries = new Map<string, Carry>();
  private readonly windows: RateWindow[];
  private readonly timers: NodeJS.Timeout[] = [];
  private flushing: Promise<void> | null = null;
  private readonly clock: () => number;
  private lastWarn = 0;
  private closed = false;

  constructor(
    private readonly client: Redis,
    private readonly keys: RedisKeys,
    private readonly rule: RateRule,
    private readonly opts: RedisRateLimiterOptions = {},
  ) {
    this.windows = rule.windows.filter((w) => w.limit > 0 && w.windowMs > 0);
    this.clock = opts.clock ?? Date.now;
    if (this.windows.length === 0) return;
    defineScripts(client, SCRIPTS);
    const longest = Math.max(1000, ...this.windows.map((w) => w.windowMs));
    this.timers.push(setInterval(() => void this.flushNow(), opts.flushMs ?? 100).unref());
    // Idle for two longest windows, a bucket is full again even from the deepest debit (−limit),
    // and its slots are over: forgetting it changes nothing.
    this.timers.push(setInterval(() => this.sweep(2 * longest), longest).unref());
  }

  get enabled(): boolean {
    return this.windows.length > 0;
  }

  /** Takes `amount` units for `key`; null when allowed, else what was exceeded (synchronous). */
  take(key: string, amount = 1, now = this.clock()): RateRefusal | null {
    const n = this.windows.length;
    if (n === 0) return null;
    let state = this.states.get(key);
    if (!state) {
      state = { tokens: new Float64Array(n), at: now, tracks: [] };
      for (let i = 0; i < n; i++) {
        const w = this.windows[i] as RateWindow;
        state.tokens[i] = w.limit;
        state.tracks.push({ slot: slotOf(now, w.windowMs), pending: 0, flushed: 0, seen: 0 });
      }
      this.states.set(key, state);
    }
    this.refill(state, now);
    // The same decision as RateLimiter.take, on a bucket that also carries the others' consumption.
    const refusal = refusalFor(this.windows, state.tokens, amount, this.rule.unit);
    if (refusal) return refusal;
    for (let i = 0; i < n; i++) {
      state.tokens[i] = (state.tokens[i] as number) - amount;
      const track = state.tracks[i] as Track;
      const slot = slotOf(now, (this.windows[i] as RateWindow).windowMs);
      if (slot !== track.slot) this.roll(key, i, track, slot);
      track.pending += amount;
    }
    this.active.add(key);
    return null;
  }

  forget(key: string): void {
    const state = this.states.get(key);
    if (!state) return;
    for (const [i, track] of state.tracks.entries()) this.carry(key, i, track);
    this.states.delete(key);
    this.active.delete(key);
  }

  /** Sends what was taken and pulls the fleet totals now (the timer does it every flushMs). */
  flushNow(): Promise<void> {
    if (!this.flushing) this.flushing = this.flush().finally(() => (this.flushing = null));
    return this.flushing;
  }

  /** Stops the timers; what was taken is sent once more (await flushNow() to know it was). */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const t of this.timers) clearInterval(t);
    void this.flushNow();
  }

  private refill(state: KeyState, now: number): void {
    const elapsed = Math.max(0, now - state.at);
    state.at = Math.max(state.at, now);
    if (elapsed === 0) return;
    for (let i = 0; i < this.windows.length; i++) {
      const w = this.windows[i] as RateWindow;
      state.tokens[i] = Math.min(w.limit, (state.tokens[i] as number) + (elapsed * w.limit) / w.windowMs);
    }
  }

  private counterKey(key: string, i: number, slot: number): string {
    const w = this.windows[i] as RateWindow;
    return this.keys.rate(key, this.rule.unit, w.limit, w.windowMs, slot);
  }

  private ttl(i: number): number {
    return Math.max(1000, 2 * (this.windows[i] as RateWindow).windowMs);
  }

  /** Moves a track to a new slot; what it had not sent yet goes out with the next flush. */
  private roll(key: string, i: number, track: Track, slot: number): void {
    this.carry(key, i, track);
    track.slot = slot;
    track.pending = 0;
    track.flushed = 0;
    track.seen = 0;
  }

  private carry(key: string, i: number, track: Track): void {
    if (track.pending <= 0) return;
    this.addCarry(key, i, track.slot, track.pending);
    track.pending = 0;
  }

  private addCarry(key: string, i: number, slot: number, units: number): void {
    const counter = this.counterKey(key, i, slot);
    const c = this.carries.get(counter);
    if (c) c.units += units;
    else this.carries.set(counter, { units, ttl: this.ttl(i), until: slot + this.ttl(i) });
  }

  private async flush(): Promise<void> {
    if (this.client.status !== 'ready') return; // keep everything for when Redis is back
    const keys = [...this.active];
    this.active = new Set();
    const carries = this.carries;
    this.carries = new Map();
    const jobs: Promise<void>[] = [];
    for (const [counter, c] of carries) {
      const units = Math.trunc(c.units);
      if (units <= 0) continue;
      jobs.push(
        this.client.iotgateRateSync(1, counter, String(units), String(c.ttl)).then(
          () => undefined,
          (err: unknown) => {
            const again = this.carries.get(counter);
            if (again) again.units += units;
            else this.carries.set(counter, { ...c, units });
            this.warn(err);
          },
        ),
      );
    }
    for (const key of keys) {
      const state = this.states.get(key);
      if (state) jobs.push(this.sync(key, state));
    }
    await Promise.all(jobs);
  }

  /** One round trip for all windows of a key (its counters share the key's hash tag). */
  private async sync(key: string, state: KeyState): Promise<void> {
    const n = this.windows.length;
    const slots: number[] = [];
    const sent: number[] = [];
    const args: string[] = [];
    for (let i = 0; i < n; i++) {
      const t = state.tracks[i] as Track;
      const units = Math.trunc(t.pending);
      t.pending -= units;
      t.flushed += units;
      slots.push(t.slot);
      sent.push(units);
      args.push(this.counterKey(key, i, t.slot));
    }
    for (let i = 0; i < n; i++) args.push(String(sent[i]));
    for (let i = 0; i < n; i++) args.push(String(this.ttl(i)));
    let totals: unknown;
    try {
      totals = await this.client.iotgateRateSync(n, ...args);
    } catch (err) {
      for (let i = 0; i < n; i++) {
        const t = state.tracks[i] as Track;
        if (t.slot === slots[i]) {
          t.pending += sent[i] as number;
          t.flushed -= sent[i] as number;
        } else {
          this.addCarry(key, i, slots[i] as number, sent[i] as number);
        }
      }
      if (this.states.get(key) === state) this.active.add(key);
      this.warn(err);
      return;
    }
    if (!Array.isArray(totals) || this.states.get(key) !== state) return;
    this.refill(state, this.clock());
    for (let i = 0; i < n; i++) {
      const t = state.tracks[i] as Track;
      if (t.slot !== slots[i]) continue; // the slot ended meanwhile: its totals no longer matter
      const others = Number(totals[i]) - t.flushed;
      if (others > t.seen) {
        const w = this.windows[i] as RateWindow;
        state.tokens[i] = Math.max(-w.limit, (state.tokens[i] as number) - (others - t.seen));
      }
      // Lower than before: the counter expired or Redis lost it; count from here.
      t.seen = others;
    }
  }

  private sweep(idleMs: number): void {
    const now = this.clock();
    for (const [key, s] of this.states) if (s.at < now - idleMs && !this.active.has(key)) this.forget(key);
    // A counter past its expiry no longer limits anything: units for it (Redis was down) are dropped.
    for (const [counter, c] of this.carries) if (c.until < now) this.carries.delete(counter);
  }

  private warn(err: unknown): void {
    const now = Date.now();
    if (now - this.lastWarn < 30_000) return;
    this.lastWarn = now;
    this.opts.log?.warn({ err }, 'shared rate limits: Redis sync failed; limiting locally meanwhile');
  }
}

function slotOf(now: number, windowMs: number): number {
  return Math.floor(now / windowMs) * windowMs;
}
