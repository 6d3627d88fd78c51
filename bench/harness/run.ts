/**
 * `iotgate bench`: runs the scenarios one after another on loopback (a fresh server process per
 * measurement, one load-generator process for the run) and returns the report.
 */
import { Fleet } from './fleet.js';
import type { BenchContext } from './measure.js';
import { Loadgen } from './processes.js';
import { load1, machine, machineExtras, round, type BenchReport, type ScenarioRow } from './report.js';
import { emptyRow, NotBuilt, type RowHead } from './rows.js';
import { SCENARIOS } from './scenarios.js';

export interface BenchOptions {
  quick?: boolean;
  /** Scenario names to run (default all). */
  scenarios?: string[];
  /** Alternated repetitions per measurement, the median reported (default 1 with quick, else 3). */
  rounds?: number;
  /** Also measure a gateway with IOTGATE_REDIS_URL set to this. */
  redisUrl?: string;
  /** Write a V8 CPU profile of every server process (iotgate and baselines) into this directory. */
  cpuProfDir?: string;
  /** Progress lines (stderr in the CLI). */
  progress?: (line: string) => void;
}

export const SCENARIO_NAMES: readonly string[] = SCENARIOS.map((s) => s.name);

export async function runBench(opts: BenchOptions = {}): Promise<BenchReport> {
  const quick = opts.quick === true;
  const wanted = opts.scenarios && opts.scenarios.length > 0 ? opts.scenarios : SCENARIO_NAMES;
  const unknown = wanted.filter((n) => !SCENARIO_NAMES.includes(n));
  if (unknown.length > 0) throw new Error(`unknown scenario ${unknown.join(', ')}; known: ${SCENARIO_NAMES.join(', ')}`);
  const progress = opts.progress ?? (() => undefined);
  const started = Date.now();
  const loadAvgBefore = load1();

  const fleet = await Fleet.create();
  const ctx: BenchContext = {
    quick,
    timing: quick ? { warmupMs: 300, measureMs: 1000 } : { warmupMs: 2000, measureMs: 8000 },
    rounds: opts.rounds ?? (quick ? 1 : 3),
    fleet,
    loadgen: new Loadgen(),
    redisUrl: opts.redisUrl,
    cpuProfDir: opts.cpuProfDir,
    memo: new Map(),
    progress,
  };
  const rows: ScenarioRow[] = [];
  const stores = opts.redisUrl ? ['memory', 'redis'] : ['memory'];
  try {
    const selected = SCENARIOS.filter((s) => wanted.includes(s.name));
    let i = 0;
    for (const scenario of selected) {
      i++;
      for (const store of stores) {
        const head: RowHead = { name: scenario.name, unit: scenario.unit, target: scenario.target, store };
        if (store === 'redis' && !scenario.redis) {
          rows.push(emptyRow(head, 'not built', 'not run against Redis by this harness (5-minute soak of the memory store only)'));
          continue;
        }
        progress(`[${i}/${selected.length}] ${scenario.name}${store === 'memory' ? '' : ` (${store})`}`);
        // A load generator that died in an earlier scenario is replaced, not blamed on this one.
        if (!ctx.loadgen.alive) ctx.loadgen = new Loadgen();
        const t0 = Date.now();
        try {
          rows.push(await scenario.run(ctx, head));
        } catch (err) {
          const message = err instanceof Error ? err.message : String(err);
          rows.push(emptyRow(head, err instanceof NotBuilt ? 'not built' : 'failed', message));
          progress(`  ${err instanceof NotBuilt ? 'not built' : 'FAILED'}: ${message}`);
        }
        const r = rows.at(-1);
        if (r?.status === 'ok') progress(`  → ${r.value} ${r.unit}${r.ratio === null ? '' : ` (${r.ratio}×)`}, p99 ${r.p99Ms} ms (${round((Date.now() - t0) / 1000)} s)`);
      }
    }
  } finally {
    await ctx.loadgen.close();
    await fleet.remove();
  }
  return {
    machine: machine(),
    scenarios: rows,
    run: { quick, startedAt: new Date(started).toISOString(), durationS: round((Date.now() - started) / 1000), ...machineExtras(), loadAvgBefore, loadAvgAfter: load1() },
  };
}
