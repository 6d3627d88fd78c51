/** `iotgate bench` / `simulate` help and argument checks (no gateway, no load). */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { Command } from 'commander';
import { buildProgram } from '../../src/cli/index.js';
import { SCENARIO_NAMES } from '../../bench/harness/run.js';
import { bench } from '../../src/cli/commands/bench.js';
import { CliError } from '../../src/cli/context.js';

function sub(name: string): Command {
  const c = buildProgram().commands.find((x) => x.name() === name);
  assert.ok(c, name);
  return c;
}

test('bench --help names every scenario the harness runs, and only those', () => {
  const help = sub('bench').helpInformation().replace(/\s+/g, ' ');
  const listed = /only this scenario \(repeatable or comma-separated\): ((?:[a-z0-9-]+, )*[a-z0-9-]+)/.exec(help)?.[1]?.split(',').map((s) => s.trim()).filter(Boolean);
  assert.deepEqual(listed, [...SCENARIO_NAMES]);
  assert.deepEqual(SCENARIO_NAMES, [
    'mqtt-route-qos0',
    'mqtt-route-qos1',
    'telemetry-pipeline-qos1',
    'telemetry-pipeline-qos1-protobuf',
    'shadow-roundtrip',
    'command-roundtrip',
    'rest-read',
    'proxy',
    'coap-telemetry',
    'connections',
    'overload',
    'soak-coap',
  ]);
});

test('simulate and bench are built (no "planned" placeholders)', () => {
  for (const name of ['simulate', 'bench']) assert.doesNotMatch(sub(name).description(), /planned/);
  const options = sub('simulate').options.map((o) => o.long);
  for (const o of ['--devices', '--rate', '--protocol', '--duration']) assert.ok(options.includes(o), o);
});

test('bench refuses an unknown scenario, a bad --redis and --rounds before starting anything', async () => {
  await assert.rejects(bench({ scenario: ['mqtt-route-qos3'] }), (e: unknown) => e instanceof CliError && e.exitCode === 2 && /mqtt-route-qos3/.test(e.message));
  await assert.rejects(bench({ redis: 'http://x' }), (e: unknown) => e instanceof CliError && e.exitCode === 2);
  await assert.rejects(bench({ rounds: '0' }), (e: unknown) => e instanceof CliError && e.exitCode === 2);
});
