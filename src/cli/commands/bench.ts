/**
 * `iotgate bench [--quick] [--scenario NAME] [--redis URL]`: the benchmark of contract §10
 * (bench/harness). Progress on stderr; the table, or with --json one JSON document, on stdout.
 */
import { resolve } from 'node:path';
import { runBench, SCENARIO_NAMES } from '../../../bench/harness/run.js';
import { table } from '../../../bench/harness/report.js';
import { CliError, print, type GlobalOptions } from '../context.js';

export interface BenchCliOptions extends GlobalOptions {
  quick?: boolean;
  scenario?: string[];
  redis?: string;
  rounds?: string;
  cpuProf?: string;
}

export async function bench(opts: BenchCliOptions): Promise<void> {
  const scenarios = (opts.scenario ?? []).flatMap((s) => s.split(',')).map((s) => s.trim()).filter(Boolean);
  const unknown = scenarios.filter((s) => !SCENARIO_NAMES.includes(s));
  if (unknown.length > 0) throw new CliError(`--scenario ${unknown.join(', ')}: unknown; choose from ${SCENARIO_NAMES.join(', ')}`, 2);
  if (opts.redis !== undefined && !/^rediss?:\/\/./.test(opts.redis)) throw new CliError(`--redis ${JSON.stringify(opts.redis)}: expected redis://host:port/db`, 2);
  let rounds: number | undefined;
  if (opts.rounds !== undefined) {
    rounds = Number(opts.rounds);
    if (!Number.isInteger(rounds) || rounds < 1 || rounds > 20) throw new CliError(`--rounds ${JSON.stringify(opts.rounds)}: expected an integer from 1 to 20`, 2);
  }
  const report = await runBench({
    quick: opts.quick === true,
    scenarios,
    ...(opts.redis !== undefined && { redisUrl: opts.redis }),
    ...(rounds !== undefined && { rounds }),
    ...(opts.cpuProf !== undefined && { cpuProfDir: resolve(opts.cpuProf) }),
    progress: (line) => process.stderr.write(`${line}\n`),
  });
  print(opts, report, table(report));
  if (report.scenarios.some((s) => s.status === 'failed')) process.exitCode = 1;
}
