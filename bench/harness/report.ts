/**
 * The benchmark's output (contract §10): one JSON document
 * `{"machine":{cpus,node,os},"scenarios":[{name,unit,value,baseline,ratio,p50Ms,p99Ms,p999Ms,
 * gatewayCpuPct,gatewayRssMB,...}]}`, or the same as a table.
 */
import { cpus, loadavg, release, totalmem, type as osType } from 'node:os';

export interface Machine {
  cpus: number;
  node: string;
  os: string;
}

export type ScenarioStatus = 'ok' | 'not built' | 'failed';

/** One row. The first ten fields are the contract's; the rest are scenario-specific. */
export interface ScenarioRow {
  name: string;
  unit: string;
  value: number | null;
  baseline: number | null;
  ratio: number | null;
  p50Ms: number | null;
  p99Ms: number | null;
  p999Ms: number | null;
  gatewayCpuPct: number | null;
  gatewayRssMB: number | null;
  status: ScenarioStatus;
  /** `memory`, or `redis` with --redis */
  store: string;
  /** The issue's target in words, and whether this run met it (null: not judged, e.g. --quick soak). */
  target: string;
  met: boolean | null;
  [key: string]: unknown;
}

export interface RunInfo {
  quick: boolean;
  startedAt: string;
  durationS: number;
  cpuModel: string;
  totalMemMB: number;
  /** 1-minute load average before and after the run: other work on the machine shows here. */
  loadAvgBefore: number;
  loadAvgAfter: number;
}

export interface BenchReport {
  machine: Machine;
  scenarios: ScenarioRow[];
  run: RunInfo;
}

export function machine(): Machine {
  return { cpus: cpus().length, node: process.version, os: `${osType()} ${release()} ${process.arch}` };
}

export function machineExtras(): Pick<RunInfo, 'cpuModel' | 'totalMemMB'> {
  return { cpuModel: cpus()[0]?.model.trim() ?? 'unknown', totalMemMB: Math.round(totalmem() / 1048576) };
}

export function load1(): number {
  return round(loadavg()[0] ?? 0, 2);
}

export function round(n: number, digits = 1): number {
  const f = 10 ** digits;
  return Math.round(n * f) / f;
}

function fmt(n: number | null | undefined, digits = 1): string {
  if (n === null || n === undefined || Number.isNaN(n)) return '-';
  if (Math.abs(n) >= 1000) return Math.round(n).toLocaleString('en-US');
  return String(round(n, digits));
}

const COLUMNS: [string, (r: ScenarioRow) => string][] = [
  ['scenario', (r) => (r.store === 'memory' ? r.name : `${r.name} (${r.store})`)],
  ['value', (r) => (r.status === 'ok' ? `${fmt(r.value)} ${r.unit}` : r.status)],
  ['baseline', (r) => fmt(r.baseline)],
  ['ratio', (r) => (r.ratio === null ? '-' : `${fmt(r.ratio, 2)}×`)],
  ['p50 ms', (r) => fmt(r.p50Ms, 2)],
  ['p99 ms', (r) => fmt(r.p99Ms, 2)],
  ['p999 ms', (r) => fmt(r.p999Ms, 2)],
  ['gw CPU%', (r) => fmt(r.gatewayCpuPct, 0)],
  ['gw RSS MB', (r) => fmt(r.gatewayRssMB, 0)],
  ['loadgen CPU%', (r) => fmt(r['loadgenCpuPct'] as number | null | undefined, 0)],
  ['target', (r) => `${r.met === true ? 'met' : r.met === false ? (r['crash'] !== undefined ? 'MISSED (crashed)' : 'MISSED') : '—'}: ${r.target}`],
];

/** A plain-text table (also valid Markdown). */
export function table(report: BenchReport): string {
  const rows = report.scenarios.map((r) => COLUMNS.map(([, f]) => f(r)));
  const head = COLUMNS.map(([h]) => h);
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]) => `| ${cells.map((c, i) => c.padEnd(widths[i] ?? 0)).join(' | ')} |`;
  const m = report.machine;
  const out = [
    `iotgate bench${report.run.quick ? ' --quick' : ''}: ${m.cpus} × ${report.run.cpuModel}, ${report.run.totalMemMB} MB, ${m.os}, Node ${m.node}; load average ${report.run.loadAvgBefore} → ${report.run.loadAvgAfter}; ${report.run.durationS} s`,
    '',
    line(head),
    `|${widths.map((w) => '-'.repeat(w + 2)).join('|')}|`,
    ...rows.map(line),
  ];
  const notes = report.scenarios.filter((r) => r.status !== 'ok' || typeof r['note'] === 'string' || r['crash'] !== undefined || r['baselineCrash'] !== undefined);
  if (notes.length > 0) {
    out.push('');
    for (const r of notes) {
      const name = `${r.name}${r.store === 'memory' ? '' : ` (${r.store})`}`;
      if (r.status !== 'ok' || typeof r['note'] === 'string') out.push(`- ${name}: ${r.status === 'ok' ? '' : `${r.status}: `}${String(r['reason'] ?? r['note'] ?? '')}`);
      if (r['crash'] !== undefined) out.push(`- ${name}: the gateway crashed in ${String(r['crashes'])} of its runs: ${String(r['crash'])}`);
      if (r['baselineCrash'] !== undefined) out.push(`- ${name}: the baseline crashed in ${String(r['baselineCrashes'])} of its runs: ${String(r['baselineCrash'])}`);
    }
  }
  return out.join('\n');
}
