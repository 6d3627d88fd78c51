/**
 * The real `iotgate` binary (bin/iotgate.js → dist/, built by `npm test`) as a subprocess: the CLI
 * and `iotgate start` as a user runs them.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

export const BIN = fileURLToPath(new URL('../../bin/iotgate.js', import.meta.url));

export interface CliResult {
  status: number | null;
  stdout: string;
  stderr: string;
}

/** Runs `iotgate <args>` with exactly `env` (plus PATH/HOME) and resolves when it exits. */
export function runCli(args: string[], env: Record<string, string> = {}, opts: { cwd?: string; timeoutMs?: number } = {}): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [BIN, ...args], {
      cwd: opts.cwd,
      env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '/tmp', ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`iotgate ${args.join(' ')} did not finish; stderr: ${stderr}`));
    }, opts.timeoutMs ?? 30_000);
    child.on('error', reject);
    child.on('close', (status) => {
      clearTimeout(timer);
      resolve({ status, stdout, stderr });
    });
  });
}

export interface GatewayProcess {
  child: ChildProcess;
  ready: Record<string, unknown>;
  /** Every stdout line so far. */
  lines: string[];
  /** Resolves with the exit code. */
  exited: Promise<number | null>;
}

/** Starts `iotgate start` and resolves once its ready line is written. */
export function startGatewayProcess(env: Record<string, string>, args: string[] = []): Promise<GatewayProcess> {
  const child = spawn(process.execPath, [BIN, 'start', ...args], {
    env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '/tmp', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const lines: string[] = [];
  let stderr = '';
  child.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)));
  return new Promise((resolve, reject) => {
    const rl = createInterface({ input: child.stdout! });
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`gateway did not become ready; stderr: ${stderr}; stdout: ${lines.join('\n')}`));
    }, 20_000);
    rl.on('line', (line) => {
      lines.push(line);
      try {
        const entry = JSON.parse(line) as Record<string, unknown>;
        if (entry.msg === 'iotgate ready') {
          clearTimeout(timer);
          resolve({ child, ready: entry, lines, exited });
        }
      } catch {
        // not JSON: kept in lines for the assertion message
      }
    });
    void exited.then((code) => {
      clearTimeout(timer);
      reject(new Error(`gateway exited with ${code} before ready; stderr: ${stderr}; stdout: ${lines.join('\n')}`));
    });
  });
}
