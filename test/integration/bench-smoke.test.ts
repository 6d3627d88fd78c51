/**
 * Smoke test of `iotgate bench` (contract §10): `--quick --scenario mqtt-route-qos0 --json` runs a
 * bare aedes broker, iotgate and the load generator as real processes on loopback and prints one
 * well-formed JSON document with the contract's fields. Nothing here asserts a speed.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { withDeadline } from '../helpers/pki.js';

const CLI_ENTRY = fileURLToPath(new URL('../../src/cli/index.ts', import.meta.url));

const CONTRACT_FIELDS = ['name', 'unit', 'value', 'baseline', 'ratio', 'p50Ms', 'p99Ms', 'p999Ms', 'gatewayCpuPct', 'gatewayRssMB'];

function runCliFromSources(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const child = spawn(process.execPath, ['--import', 'tsx', '-e', `import(${JSON.stringify(CLI_ENTRY)}).then((m) => m.main(['node', 'iotgate', ...process.argv.slice(1)]))`, ...args], {
    env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '/tmp' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  return withDeadline(
    new Promise((resolve) => child.on('close', (code) => resolve({ code, stdout, stderr }))),
    110_000,
    'iotgate bench',
  );
}

test('iotgate bench --quick --scenario mqtt-route-qos0 --json prints one well-formed JSON document', async () => {
  const { code, stdout, stderr } = await runCliFromSources(['bench', '--quick', '--scenario', 'mqtt-route-qos0', '--json']);
  assert.equal(code, 0, stderr);
  // stdout is exactly one JSON document (progress went to stderr).
  const report = JSON.parse(stdout) as { machine: Record<string, unknown>; scenarios: Record<string, unknown>[] };
  assert.deepEqual(Object.keys(report.machine).sort(), ['cpus', 'node', 'os']);
  assert.equal(typeof report.machine['cpus'], 'number');
  assert.equal(report.machine['node'], process.version);
  assert.equal(typeof report.machine['os'], 'string');

  assert.equal(report.scenarios.length, 1);
  const row = report.scenarios[0] as Record<string, unknown>;
  for (const f of CONTRACT_FIELDS) assert.ok(f in row, `field ${f}`);
  assert.equal(row['name'], 'mqtt-route-qos0');
  assert.equal(row['unit'], 'msg/s');
  assert.equal(row['status'], 'ok', String(row['reason']));
  for (const f of CONTRACT_FIELDS.slice(2)) assert.equal(typeof row[f], 'number', `${f} = ${String(row[f])}`);
  assert.ok((row['value'] as number) > 0 && (row['baseline'] as number) > 0);
  // ratio = value / baseline (both rounded for the document, so to rounding)
  assert.ok(Math.abs((row['ratio'] as number) - (row['value'] as number) / (row['baseline'] as number)) < 0.005);
  assert.ok((row['p50Ms'] as number) <= (row['p99Ms'] as number) && (row['p99Ms'] as number) <= (row['p999Ms'] as number));
  assert.equal(typeof row['met'], 'boolean');
  assert.match(stderr, /bare aedes/);
});
