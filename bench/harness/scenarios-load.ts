/** connections, overload and soak-coap: memory per connection, behaviour past capacity, RSS over time. */
import { setTimeout as sleep } from 'node:timers/promises';
import type { TargetKind } from '../targets/protocol.js';
import { measure, toMeasured, withTarget, type BenchContext, type Measured } from './measure.js';
import type { Target } from './processes.js';
import { round } from './report.js';
import { judged, measuredRow } from './rows.js';
import { bareAedes, checkStore, coapJob, flowJob, HOST, pipelineCapacity, PUBLISHERS, storeOf, TAGS, type Scenario, type Store } from './scenario-kit.js';

interface ConnMeasure {
  kibPerConn: number;
  /** JS heap and external (Buffers) growth per connection, as the process sees it */
  heapKibPerConn: number;
  externalKibPerConn: number;
  connectsPerSec: number;
  connected: number;
  idleRssMB: number;
  m: Measured;
}

async function connectionsOn(ctx: BenchContext, kind: TargetKind, store: Store, n: number): Promise<ConnMeasure> {
  const group = ctx.fleet.group('c', 'generic', n);
  return withTarget(ctx, { kind, store, records: kind === 'iotgate' ? group.records : [] }, async (t) => {
    checkStore(t, store);
    await sleep(200);
    await t.gc();
    const idle = (await t.stats())?.rssBytes ?? 0;
    const idleHeap = await t.heap();
    const devices = group.devices.map((d) => (kind === 'iotgate' ? { clientId: d.id, username: d.id, password: d.token } : { clientId: d.id }));
    await t.watch.begin();
    const setup = await ctx.loadgen.start({ kind: 'connections', host: HOST, port: t.ports.mqtt ?? 0, devices, concurrency: 100 });
    try {
      const w = await t.watch.end();
      const load = await ctx.loadgen.collect();
      // Let presence, retained status messages and socket buffers settle before weighing.
      await sleep(ctx.quick ? 300 : 2000);
      await t.gc();
      const after = (await t.stats())?.rssBytes ?? 0;
      const afterHeap = await t.heap();
      const connected = setup['connected'] ?? 0;
      const perConn = (a: number, b: number) => (connected > 0 ? (a - b) / connected / 1024 : Number.NaN);
      return {
        kibPerConn: perConn(after, idle),
        heapKibPerConn: afterHeap && idleHeap ? perConn(afterHeap.heapUsedBytes, idleHeap.heapUsedBytes) : Number.NaN,
        externalKibPerConn: afterHeap && idleHeap ? perConn(afterHeap.externalBytes, idleHeap.externalBytes) : Number.NaN,
        connectsPerSec: setup['connectsPerSec'] ?? 0,
        connected,
        idleRssMB: idle / 1048576,
        m: toMeasured(load, w, t, setup),
      };
    } finally {
      await ctx.loadgen.stop();
    }
  });
}

export const connections: Scenario = {
  name: 'connections',
  unit: 'KiB/conn',
  target: '≤ 12 KiB RSS per connection, ≥ 1,500 connects/s (10,000 devices)',
  redis: true,
  async run(ctx, head) {
    const n = ctx.quick ? 1000 : 10_000;
    ctx.progress(`  bare aedes, ${n} connections`);
    const base = await connectionsOn(ctx, 'aedes', 'memory', n);
    ctx.progress(`  iotgate (${head.store}), ${n} connections`);
    const gw = await connectionsOn(ctx, 'iotgate', storeOf(head), n);
    const row = measuredRow(head, gw.m, gw.kibPerConn, {
      connections: n,
      connected: gw.connected,
      connectsPerSec: round(gw.connectsPerSec, 0),
      idleRssMB: round(gw.idleRssMB),
      heapKiBPerConn: round(gw.heapKibPerConn, 2),
      externalKiBPerConn: round(gw.externalKibPerConn, 2),
      baselineHeapKiBPerConn: round(base.heapKibPerConn, 2),
      baselineName: 'bare aedes',
      baselineConnectsPerSec: round(base.connectsPerSec, 0),
      baselineIdleRssMB: round(base.idleRssMB),
      note: 'ratio = iotgate KiB/conn ÷ bare aedes KiB/conn (lower is better); p50/p99 are CONNECT → CONNACK',
    });
    row.baseline = round(base.kibPerConn, 2);
    row.ratio = round(gw.kibPerConn / base.kibPerConn, 2);
    judged(row, n >= 10_000 ? gw.connected === n && gw.kibPerConn <= 12 && gw.connectsPerSec >= 1500 : null);
    if (n < 10_000) row['note'] = `${row['note']}; --quick connects ${n}, not 10,000: not judged`;
    return row;
  },
};

/** RSS by the window's samples: the peak in the first quarter vs the last quarter. */
function rssTrend(m: Measured): { startMB: number; endMB: number } {
  const s = m.rssSamples;
  if (s.length === 0) return { startMB: m.rssMB, endMB: m.rssMB };
  const q = Math.max(1, Math.floor(s.length / 4));
  const peak = (xs: typeof s) => Math.max(...xs.map((x) => x.rssMB));
  return { startMB: peak(s.slice(0, q)), endMB: peak(s.slice(-q)) };
}

async function overloadOn(ctx: BenchContext, kind: TargetKind, store: Store, rate: number): Promise<Measured> {
  const records = kind === 'iotgate' ? ctx.fleet.group(TAGS.tracker, 'tracker', PUBLISHERS).records : [];
  return withTarget(ctx, { kind, store, records, keepSamples: true }, (t) => {
    checkStore(t, store);
    // No window: only the broker's back-pressure (its sockets stop reading) holds publishers back.
    const job = flowJob(ctx, kind, t.ports.mqtt ?? 0, 1, kind === 'iotgate' ? 'tracker' : 'generic', { rate, window: 1_000_000_000 });
    return measure(ctx, t, job, { warmupMs: 0, measureMs: ctx.quick ? 2000 : 20_000 });
  });
}

export const overload: Scenario = {
  name: 'overload',
  unit: 'msg/s',
  target: 'delivered ≥ 0.95× capacity, p99 ≤ 1 s, RSS bounded (last quarter ≤ 1.25× first quarter)',
  redis: true,
  async run(ctx, head) {
    const store = storeOf(head);
    ctx.progress(`  capacity: telemetry-pipeline-qos1 (${head.store})`);
    const capacity = (await pipelineCapacity(ctx, store, 'tracker')).rate;
    const rate = Math.round(1.3 * capacity);
    ctx.progress(`  iotgate (${head.store}) at ${rate} msg/s offered`);
    const gw = await overloadOn(ctx, 'iotgate', store, rate);
    const trend = rssTrend(gw);
    const seconds = gw.load.elapsedMs / 1000;
    const extra: Record<string, unknown> = {
      capacity: round(capacity, 0),
      offeredPerSec: round((gw.load.extra['offered'] ?? 0) / seconds, 0),
      sentPerSec: round(gw.load.sent / seconds, 0),
      blockedPerSec: round((gw.load.extra['blocked'] ?? 0) / seconds, 0),
      rssFirstQuarterMB: round(trend.startMB),
      rssLastQuarterMB: round(trend.endMB),
      note: 'baseline = the capacity of telemetry-pipeline-qos1 measured in this run; ratio = delivered ÷ capacity',
    };
    if (!ctx.quick) {
      const aedesCapacity = (await bareAedes(ctx, 1)).rate;
      ctx.progress(`  bare aedes at ${Math.round(1.3 * aedesCapacity)} msg/s offered (for comparison)`);
      const a = await overloadOn(ctx, 'aedes', 'memory', Math.round(1.3 * aedesCapacity));
      const at = rssTrend(a);
      Object.assign(extra, {
        aedesDeliveredFraction: round(a.rate / aedesCapacity, 3),
        aedesP99Ms: a.p99Ms,
        aedesPeakRssMB: round(a.peakRssMB),
        aedesRssLastQuarterMB: round(at.endMB),
        ...(a.crash !== null && { aedesCrash: a.crash }),
      });
    }
    const row = measuredRow(head, gw, gw.rate, extra);
    row.baseline = round(capacity, 0);
    row.ratio = capacity > 0 ? round(gw.rate / capacity, 3) : null;
    const bounded = trend.endMB <= 1.25 * trend.startMB;
    row['rssBounded'] = bounded;
    judged(row, (row.ratio ?? 0) >= 0.95 && gw.p99Ms <= 1000 && bounded);
    return row;
  },
};

function median(xs: number[]): number | null {
  if (xs.length === 0) return null;
  const sorted = [...xs].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 === 1 ? (sorted[mid] as number) : ((sorted[mid - 1] as number) + (sorted[mid] as number)) / 2;
}

export const soakCoap: Scenario = {
  name: 'soak-coap',
  unit: '% RSS growth',
  target: 'RSS growth ≤ 10 % between minute 1 and minute 5',
  redis: false,
  async run(ctx, head) {
    const records = ctx.fleet.group('k', 'generic', 64).records;
    const rate = 2000;
    const measureMs = ctx.quick ? 3000 : 300_000;
    const firstMs = ctx.quick ? 600 : 60_000;
    ctx.progress(`  iotgate (${head.store}), ${rate} CON POST/s for ${measureMs / 1000} s`);
    // Diagnostic, not judged: the live heap after a forced full GC at the end of minute 1 and at
    // the end, which tells retained growth (a leak) from the GC's head-room growing.
    const heapAfterGc: { minute1MB?: number; endMB?: number } = {};
    const liveHeapMB = async (t: Target) => {
      await t.gc();
      const h = await t.heap();
      return h === null ? undefined : round(h.heapUsedBytes / 1048576);
    };
    const gw = await withTarget(ctx, { kind: 'iotgate', store: storeOf(head), records, keepSamples: true }, async (t) => {
      const probe = sleep(firstMs).then(async () => (heapAfterGc.minute1MB = await liveHeapMB(t)));
      const m = await measure(ctx, t, coapJob(ctx, t.ports.coap ?? 0, rate), { warmupMs: 0, measureMs });
      await probe;
      heapAfterGc.endMB = await liveHeapMB(t);
      return m;
    });
    // RSS swings by up to 2x with each major GC under this load, so one sample at 60 s against
    // one at the end compares GC phases as much as levels: the level of each minute is the median
    // of the 100 ms samples of its second half (30-60 s and 270-300 s).
    const samples = gw.rssSamples;
    const endMs = samples.at(-1)?.atMs ?? measureMs;
    const level = (fromMs: number, toMs: number) => median(samples.filter((x) => x.atMs >= fromMs && x.atMs <= toMs).map((x) => x.rssMB)) ?? gw.rssMB;
    const first = level(firstMs / 2, firstMs);
    const last = level(endMs - firstMs / 2, endMs);
    const at = (ms: number) => samples.reduce((best, x) => (Math.abs(x.atMs - ms) < Math.abs(best.atMs - ms) ? x : best), samples[0] ?? { atMs: 0, rssMB: gw.rssMB });
    const growth = first > 0 ? ((last - first) / first) * 100 : Number.NaN;
    const row = measuredRow(head, gw, growth, {
      ratePerSec: rate,
      requests: gw.load.completed,
      rssMinute1MB: round(first),
      rssMinute5MB: round(last),
      rssAt60sMB: round(at(firstMs).rssMB),
      rssAtEndMB: round(samples.at(-1)?.rssMB ?? gw.rssMB),
      ...(heapAfterGc.minute1MB !== undefined && { heapAfterGcMinute1MB: heapAfterGc.minute1MB }),
      ...(heapAfterGc.endMB !== undefined && { heapAfterGcEndMB: heapAfterGc.endMB }),
      ...(ctx.quick && { note: `--quick: ${measureMs / 1000} s (RSS at ${firstMs / 1000} s vs the end), not a soak: not judged` }),
    });
    judged(row, ctx.quick ? null : growth <= 10 && gw.load.errors === 0);
    return row;
  },
};
