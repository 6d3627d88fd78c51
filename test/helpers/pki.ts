/** Test helpers for the PKI tests: temp dirs, a shared CA, and an openssl runner. */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, type TestContext } from 'node:test';
import { CA_FILES, initCa, loadCaMaterial, type CaMaterial } from '../../src/pki/index.js';
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

/**
 * One CA for the tests of a file: created in `before`, removed in `after`. `certsDir(t)` is a
 * certs dir of a test's own holding a copy of it (so that ledgers do not see each other's records).
 */
export function suiteCa(): { material(): CaMaterial; certsDir(t: TestContext): Promise<string> } {
  let dir = '';
  let material: CaMaterial | undefined;
  before(async () => {
    dir = await newTempDir();
    await initCa(dir);
    material = await loadCaMaterial(dir);
  });
  after(() => removeDir(dir));
  return {
    material() {
      if (!material) throw new Error('suiteCa: the CA is not created yet (use it inside a test)');
      return material;
    },
    async certsDir(t) {
      const copy = await tempDir(t);
      for (const f of Object.values(CA_FILES)) await writeFile(join(copy, f), await readFile(join(dir, f)));
      return copy;
    },
  };
}
