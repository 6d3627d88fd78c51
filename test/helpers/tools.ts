/**
 * External tools (openssl, mosquitto_pub, coap-client, redis-server): a test that needs a missing
 * one skips with a message locally and fails in CI (CI=true), as the team's standard requires.
 */
import { spawnSync } from 'node:child_process';
import type { TestContext } from 'node:test';

const cache = new Map<string, string | null>();

/** Debian 12's libcoap3-bin ships coap-client-openssl/-gnutls/-notls but no plain coap-client. */
const VARIANTS: Record<string, string[]> = {
  'coap-client': ['coap-client', 'coap-client-openssl', 'coap-client-gnutls', 'coap-client-notls'],
};

/** The command to run for `name` (a packaged variant where the plain name is missing), or null. */
export function toolPath(name: string): string | null {
  if (!cache.has(name)) {
    let found: string | null = null;
    for (const candidate of VARIANTS[name] ?? [name]) {
      const r = spawnSync('sh', ['-c', `command -v ${candidate}`], { encoding: 'utf8' });
      if (r.status === 0 && r.stdout.trim()) {
        found = r.stdout.trim();
        break;
      }
    }
    cache.set(name, found);
  }
  return cache.get(name) ?? null;
}

export function hasTool(name: string): boolean {
  return toolPath(name) !== null;
}

/** True when the tool is there; otherwise skips `t` (or throws under CI=true). */
export function requireTool(t: TestContext, name: string): boolean {
  if (hasTool(name)) return true;
  const message = `${name} is not installed (apt-get install the package that provides it)`;
  if (process.env.CI === 'true') throw new Error(`${message}; CI=true makes this a failure`);
  t.skip(message);
  return false;
}

/** Runs a command to completion; resolves its exit status and output. */
export function run(cmd: string, args: string[], opts: { cwd?: string; input?: string } = {}): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(cmd, args, { cwd: opts.cwd, input: opts.input, encoding: 'utf8' });
  return { status: r.status, stdout: r.stdout ?? '', stderr: r.stderr ?? '' };
}
