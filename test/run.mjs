#!/usr/bin/env node
// Runs the test suites with node's test runner (each file in its own process, files in parallel).
// Usage: node test/run.mjs [dir ...]   (default: every dir under test/ but helpers)
// Node 20 does not expand ** globs, so the file list is built here.
import { readdirSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';
import { spawn } from 'node:child_process';
import { availableParallelism } from 'node:os';

const root = new URL('..', import.meta.url).pathname;
const testDir = join(root, 'test');
const dirs = process.argv.slice(2).filter((a) => !a.startsWith('-'));
const passthrough = process.argv.slice(2).filter((a) => a.startsWith('-'));
const wanted = dirs.length > 0 ? dirs : readdirSync(testDir).filter((d) => d !== 'helpers' && statSync(join(testDir, d)).isDirectory());

function walk(dir) {
  const out = [];
  for (const name of readdirSync(dir)) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) out.push(...walk(p));
    else if (/\.test\.ts$/.test(name)) out.push(p);
  }
  return out;
}

const files = wanted.flatMap((d) => walk(join(testDir, d))).map((f) => relative(root, f)).sort();
if (files.length === 0) {
  console.error('no test files found');
  process.exit(1);
}
const concurrency = Math.max(2, Math.min(4, availableParallelism() + 1));
const args = ['--import', 'tsx', '--test', `--test-concurrency=${concurrency}`, '--test-timeout=120000', ...passthrough, ...files];
const child = spawn(process.execPath, args, { cwd: root, stdio: 'inherit' });
child.on('exit', (code, signal) => process.exit(code ?? (signal ? 1 : 0)));
