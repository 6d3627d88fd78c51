/** Turning measurements into the report's rows. */
import type { Measured } from './measure.js';
import { round, type ScenarioRow } from './report.js';

export interface RowHead {
  name: string;
  unit: string;
  target: string;
  store: string;
}

/** A scenario the gateway cannot run (yet): said so, never a number. */
export class NotBuilt extends Error {
  constructor(reason: string) {
    super(reason);
    this.name = 'NotBuilt';
  }
}

export function emptyRow(head: RowHead, status: 'not built' | 'failed', reason: string): ScenarioRow {
  return {
    name: head.name,
    unit: head.unit,
    value: null,
    baseline: null,
    ratio: null,
    p50Ms: null,
    p99Ms: null,
    p999Ms: null,
    gatewayCpuPct: null,
    gatewayRssMB: null,
    status,
    store: head.store,
    target: head.target,
    met: null,
    reason,
  };
}

/** Latency, CPU and memory of the gateway's window, and its counters. */
export function measuredRow(head: RowHead, gw: Measured, value: number, extra: Record<string, unknown> = {}): ScenarioRow {
  return {
    name: head.name,
    unit: head.unit,
    value: round(value, value < 100 ? 2 : 0),
    baseline: null,
    ratio: null,
    p50Ms: gw.p50Ms,
    p99Ms: gw.p99Ms,
    p999Ms: gw.p999Ms,
    gatewayCpuPct: round(gw.cpuPct),
    gatewayRssMB: round(gw.peakRssMB),
    status: 'ok',
    store: head.store,
    target: head.target,
    met: null,
    loadgenCpuPct: round(gw.loadgenCpuPct),
    completed: gw.load.completed,
    errors: gw.load.errors,
    lost: gw.load.lost,
    windowS: round(gw.load.elapsedMs / 1000, 2),
    ...(gw.samples && gw.samples.length > 1 && { samples: gw.samples, p99Samples: gw.p99Samples }),
    ...(gw.crash !== null && { crashes: gw.crashes ?? 1, crash: gw.crash }),
    ...extra,
  };
}

/** A gateway that crashed under the load misses the target, whatever the numbers say. */
export function judged(row: ScenarioRow, met: boolean | null): ScenarioRow {
  row.met = row['crash'] !== undefined ? false : met;
  return row;
}

/** A throughput row with its baseline measured in the same run. */
export function ratioRow(head: RowHead, gw: Measured, base: Measured, baselineName: string, extra: Record<string, unknown> = {}): ScenarioRow {
  const row = measuredRow(head, gw, gw.rate, {
    baselineName,
    baselineP50Ms: base.p50Ms,
    baselineP99Ms: base.p99Ms,
    baselineCpuPct: round(base.cpuPct),
    baselineRssMB: round(base.peakRssMB),
    baselineLoadgenCpuPct: round(base.loadgenCpuPct),
    ...(base.samples && base.samples.length > 1 && { baselineSamples: base.samples }),
    ...(base.crash !== null && { baselineCrashes: base.crashes ?? 1, baselineCrash: base.crash }),
    ...extra,
  });
  row.baseline = round(base.rate, 0);
  row.ratio = base.rate > 0 ? round(gw.rate / base.rate, 3) : null;
  return row;
}
