/**
 * What the scenarios share: the scenario shape, the load of the MQTT scenarios, alternated
 * repetitions, and measurements kept for the run (baselines, capacities).
 */
import type { PayloadKind } from '../lib/payloads.js';
import type { LoadJob, MqttFlowJob, MqttIdentity } from '../loadgen/protocol.js';
import type { TargetKind } from '../targets/protocol.js';
import { measure, withTarget, type BenchContext, type Measured } from './measure.js';
import type { Target } from './processes.js';
import { round, type ScenarioRow } from './report.js';
import { NotBuilt, type RowHead } from './rows.js';

export type Store = 'memory' | 'redis';

export interface Scenario {
  name: string;
  unit: string;
  target: string;
  /** Also run against a Redis-backed gateway with --redis. */
  redis: boolean;
  run(ctx: BenchContext, head: RowHead): Promise<ScenarioRow>;
}

export const HOST = '127.0.0.1';
export const PUBLISHERS = 8;
/** Messages per publisher between send and delivery (closed loop). */
export const WINDOW = 32;
export const ROUNDTRIP_RATE = 1000;

export function storeOf(head: RowHead): Store {
  return head.store === 'redis' ? 'redis' : 'memory';
}

/** The gateway must run the store asked for; a Redis run on a gateway without Redis is "not built". */
export function checkStore(t: Target, store: Store): void {
  if (t.info['store'] !== undefined && store === 'redis' && t.info['store'] !== 'redis') {
    throw new NotBuilt(`the gateway keeps its state in ${t.info['store']} even with redis.url set: the Redis store is not built yet`);
  }
}

/** Devices of a payload kind: generic (g), tracker (t), thermostat (p). */
export const TAGS: Record<PayloadKind, string> = { generic: 'g', tracker: 't', thermostat: 'p' };

export function flowJob(ctx: BenchContext, kind: TargetKind, port: number, qos: 0 | 1, payload: PayloadKind, extra: Partial<MqttFlowJob> = {}): MqttFlowJob {
  // Only iotgate authenticates; the baselines take anyone.
  const group = ctx.fleet.group(TAGS[payload], payload, PUBLISHERS);
  const publishers = group.devices.map((d) => ({
    topic: `devices/${d.id}/telemetry`,
    ...(kind === 'iotgate' ? { clientId: d.id, username: d.id, password: d.token } : { clientId: d.id }),
  }));
  const subscriber: MqttIdentity = kind === 'iotgate' ? { clientId: 'bench-subscriber', username: 'service:bench', password: ctx.fleet.serviceToken } : { clientId: 'bench-subscriber' };
  return { kind: 'mqtt-flow', host: HOST, port, qos, payload, publishers, subscriber, filter: 'devices/+/telemetry', window: WINDOW, ...extra };
}

export async function flow(ctx: BenchContext, kind: TargetKind, store: Store, qos: 0 | 1, payload: PayloadKind): Promise<Measured> {
  const records = kind === 'iotgate' ? ctx.fleet.group(TAGS[payload], payload, PUBLISHERS).records : [];
  return withTarget(ctx, { kind, store, records }, (t) => {
    checkStore(t, store);
    return measure(ctx, t, flowJob(ctx, kind, t.ports.mqtt ?? 0, qos, payload));
  });
}

/** A measurement shared by scenarios of one run (baselines, capacities). */
export async function memo(ctx: BenchContext, key: string, fn: () => Promise<Measured>): Promise<Measured> {
  const known = ctx.memo.get(key);
  if (known) return known;
  const m = await fn();
  ctx.memo.set(key, m);
  return m;
}

/**
 * Runs each measurement `rounds` times, alternating (A B A B …) so that other work on the machine
 * falls on both alike, and reports each one's median run (by rate, or by p99 for fixed-rate
 * scenarios); every run's figure is kept in `samples` / `p99Samples`, crashes in `crashes`.
 */
export async function alternate(ctx: BenchContext, fns: (() => Promise<Measured>)[], by: 'rate' | 'p99' = 'rate'): Promise<Measured[]> {
  const runs: Measured[][] = fns.map(() => []);
  for (let r = 0; r < ctx.rounds; r++) {
    for (let i = 0; i < fns.length; i++) runs[i]?.push(await (fns[i] as () => Promise<Measured>)());
  }
  return runs.map((ms) => {
    const sorted = [...ms].sort((a, b) => (by === 'rate' ? a.rate - b.rate : a.p99Ms - b.p99Ms));
    const median = sorted[Math.floor((sorted.length - 1) / 2)] as Measured;
    const crashed = ms.filter((m) => m.crash !== null);
    return {
      ...median,
      samples: ms.map((m) => round(m.rate, 0)),
      p99Samples: ms.map((m) => m.p99Ms),
      crashes: crashed.length,
      crash: crashed[0]?.crash ?? null,
    };
  });
}

/** A shared baseline and a gateway measurement, alternated; the baseline measured once per run. */
export async function withBaseline(ctx: BenchContext, key: string, base: () => Promise<Measured>, gw: () => Promise<Measured>): Promise<[Measured, Measured]> {
  const known = ctx.memo.get(key);
  if (known) return [known, (await alternate(ctx, [gw]))[0] as Measured];
  const [b, g] = (await alternate(ctx, [base, gw])) as [Measured, Measured];
  ctx.memo.set(key, b);
  return [b, g];
}

export function bareAedes(ctx: BenchContext, qos: 0 | 1): Promise<Measured> {
  return memo(ctx, `aedes:qos${qos}`, () => {
    ctx.progress(`  bare aedes, QoS ${qos}`);
    return flow(ctx, 'aedes', 'memory', qos, 'generic');
  });
}

export function pipelineCapacity(ctx: BenchContext, store: Store, payload: PayloadKind): Promise<Measured> {
  return memo(ctx, `iotgate:${store}:pipeline:${payload}`, () => flow(ctx, 'iotgate', store, 1, payload));
}

export function coapJob(ctx: BenchContext, port: number, rate?: number): LoadJob {
  const group = ctx.fleet.group('k', 'generic', 64);
  return { kind: 'coap-flow', host: HOST, port, tokens: group.devices.map((d) => d.token), sockets: 8, window: 16, ...(rate !== undefined && { rate }) };
}
