/** Test helpers for the PKI tests: temp dirs, a shared CA, and an openssl runner. */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { TestContext } from 'node:test';
import { requireTool } from './tools.js';

/** A fresh temp dir; the caller removes it (see `tempDir` and `removeDir`). */
export function newTempDir(prefix = 'iotgate-pki-'): Promise<string> {
  return mkdtemp(join(tmpdir(), prefix));
}

/** Removes a temp dir made by newTempDir. */
export function removeDir(dir: string | undefined): Promise<void> {
  return dir === undefined ? Promise.resolve() : rm(dir, { recursive: true, force: true });
}

/** A fresh temp dir, removed when test `t` ends. */
export async function tempDir(t: TestContext, prefix?: string): Promise<string> {
  const dir = await newTempDir(prefix);
  t.after(() => removeDir(dir));
  return dir;
}

/**
 * Whether the openssl-based assertions of test `t` can run (skips locally, fails under CI=true).
 */
export function needOpenssl(t: TestContext): boolean {
  return requireTool(t, 'openssl');
}

/** Result of one openssl invocation. */
export interface OpensslResult {
  status: number | null;
  stdout: string;
  stderr: string;
}

/** Runs `openssl ...args` in `cwd`. */
export function openssl(args: string[], cwd?: string): OpensslResult {
  const r = spawnSync('openssl', args, { encoding: 'utf8', cwd });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** The serial `openssl x509 -serial` prints for a certificate file. */
export function opensslSerial(certPath: string): string {
  const r = openssl(['x509', '-in', certPath, '-noout', '-serial']);
  assert.equal(r.status, 0, r.stderr);
  return r.stdout.trim().replace(/^serial=/, '');
}

/** Resolves what `promise` resolves, or fails when `ms` pass first. */
export async function withDeadline<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}
