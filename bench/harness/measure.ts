/**
 * One measurement: a fresh server process, the load generator's job started (connections and
 * setup are not measured), a warm-up, then a window in which the load generator counts and the
 * harness reads the server's CPU and RSS from outside.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { Histogram } from '../lib/histogram.js';
import type { CredentialRecord } from '../../src/core/model.js';
import type { LoadJob, LoadResult } from '../loadgen/protocol.js';
import type { TargetKind } from '../targets/protocol.js';
import type { Fleet } from './fleet.js';
import { Loadgen, Target } from './processes.js';
import { round } from './report.js';

export interface Timing {
  warmupMs: number;
  measureMs: number;
}

export interface BenchContext {
  quick: boolean;
  timing: Timing;
  /** Alternated repetitions of each throughput/latency measurement (the median is reported). */
  rounds: number;
  fleet: Fleet;
  loadgen: Loadgen;
  redisUrl: string | undefined;
  /** Write a V8 CPU profile of every server process here (--cpu-prof). */
  cpuProfDir: string | undefined;
  /** Measurements kept for other scenarios (a shared baseline, the capacity overload needs). */
  memo: Map<string, Measured>;
  progress(line: string): void;
}

export interface Measured {
  load: LoadResult;
  /** completed per second over the window */
  rate: number;
  p50Ms: number;
  p99Ms: number;
  p999Ms: number;
  cpuPct: number;
  peakRssMB: number;
  rssMB: number;
  loadgenCpuPct: number;
  setup: Record<string, number>;
  /** RSS samples of the window (when asked for), MB by second. */
  rssSamples: { atMs: number; rssMB: number }[];
  info: Record<string, string>;
  /** Rates and p99s of every repetition (see `alternate`). */
  samples?: number[];
  p99Samples?: number[];
  /** The server process died during the measurement or right after it (why), or null. */
  crash: string | null;
  /** Repetitions in which the server crashed (see `alternate`). */
  crashes?: number;
  /** CPU (% of one core) and peak RSS of a second process watched in the same window (the proxy's upstream). */
  companion?: { cpuPct: number; peakRssMB: number };
}

/** The gateway (or baseline) configuration the iotgate target gets as IOTGATE_* keys. */
export function iotgateEnv(ctx: BenchContext, store: 'memory' | 'redis'): Record<string, string> {
  // Rate limits count every message but are set so high that they never refuse: a benchmark of
  // the limiter's refusals is not a benchmark of the gateway.
  const unlimited = JSON.stringify([{ limit: 1_000_000_000, windowMs: 1000 }]);
  return {
    IOTGATE_HOST: '127.0.0.1',
    IOTGATE_HTTP_PORT: '0',
    IOTGATE_MQTT_PORT: '0',
    IOTGATE_MQTTS_PORT: '0',
    IOTGATE_COAP_PORT: '0',
    IOTGATE_CERTS_DIR: ctx.fleet.certsDir,
    IOTGATE_LIMITS_DEVICE_MESSAGES: unlimited,
    IOTGATE_LIMITS_DEVICE_BYTES: unlimited,
    IOTGATE_LIMITS_SERVICE_REQUESTS: unlimited,
    ...(store === 'redis' && ctx.redisUrl !== undefined && { IOTGATE_REDIS_URL: ctx.redisUrl }),
  };
}

export interface TargetSpec {
  kind: TargetKind;
  store?: 'memory' | 'redis';
  /** Device credentials the gateway must know. */
  records?: CredentialRecord[];
  /** More IOTGATE_* keys for iotgate (e.g. IOTGATE_ROUTES); for bare-proxy, UPSTREAM_URL. */
  env?: Record<string, string>;
  keepSamples?: boolean;
}

/** Starts the target, runs `fn`, always stops it. */
export async function withTarget<T>(ctx: BenchContext, spec: TargetSpec, fn: (t: Target) => Promise<T>): Promise<T> {
  const env = spec.kind === 'iotgate' ? { ...iotgateEnv(ctx, spec.store ?? 'memory'), ...spec.env } : spec.env;
  const profile = ctx.cpuProfDir !== undefined;
  const target = await Target.start(spec.kind, env, { keepSamples: spec.keepSamples === true, ...(profile && { cpuProfDir: ctx.cpuProfDir }) });
  if (profile) ctx.progress(`    CPU profile of ${spec.kind}: ${ctx.cpuProfDir}/CPU.*.${target.pid}.*.cpuprofile`);
  let result: T;
  try {
    if (spec.records && spec.records.length > 0) await target.provision(spec.records);
    result = await fn(target);
  } finally {
    await target.stop();
  }
  // A crash while the load wound down or the server shut down belongs to this measurement too.
  if (target.crash !== null && typeof result === 'object' && result !== null && 'crash' in result) {
    const m = result as { crash: string | null };
    m.crash ??= target.crash;
  }
  return result;
}

export function toMeasured(load: LoadResult, w: { cpuPct: number; peakRssBytes: number; rssBytes: number }, target: Target, setup: Record<string, number>): Measured {
  const h = Histogram.from(load.latency);
  const ms = (p: number) => round(h.percentile(p) / 1000, 3);
  return {
    load,
    rate: load.elapsedMs > 0 ? (load.completed * 1000) / load.elapsedMs : 0,
    p50Ms: ms(50),
    p99Ms: ms(99),
    p999Ms: ms(99.9),
    cpuPct: w.cpuPct,
    peakRssMB: w.peakRssBytes / 1048576,
    rssMB: w.rssBytes / 1048576,
    loadgenCpuPct: load.elapsedMs > 0 ? (load.cpuUs / (load.elapsedMs * 1000)) * 100 : 0,
    setup,
    rssSamples: target.watch.samples.map((s) => ({ atMs: s.atMs, rssMB: s.rssBytes / 1048576 })),
    info: target.info,
    crash: target.crash,
  };
}

/**
 * Start the job, warm up, measure a window, stop the job. A `companion` process (the proxy's
 * upstream) is watched in the same window and reported apart; `target` alone is the gateway.
 */
export async function measure(ctx: BenchContext, target: Target, job: LoadJob, timing: Timing = ctx.timing, companion?: Target): Promise<Measured> {
  const setup = await ctx.loadgen.start(job);
  let m: Measured;
  try {
    if (timing.warmupMs > 0) await sleep(timing.warmupMs);
    await Promise.all([target.watch.begin(), ctx.loadgen.mark(), companion?.watch.begin()]);
    await sleep(timing.measureMs);
    const [load, w, c] = await Promise.all([ctx.loadgen.collect(), target.watch.end(), companion?.watch.end()]);
    m = toMeasured(load, w, target, setup);
    if (c) m.companion = { cpuPct: c.cpuPct, peakRssMB: c.peakRssBytes / 1048576 };
  } finally {
    await ctx.loadgen.stop();
  }
  // A server that dies while the load winds down (queues draining) crashed under this load too.
  await sleep(300);
  return { ...m, crash: target.crash };
}
