/**
 * Request/response over Node's child-process IPC channel, and how bench children are started: the
 * compiled .js under dist/ normally, the .ts sources through tsx when the harness itself runs from
 * sources (tests).
 */
import { fork, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';

interface Envelope {
  id: number;
  body: unknown;
  error?: string;
}

function isEnvelope(m: unknown): m is Envelope {
  return typeof m === 'object' && m !== null && typeof (m as { id?: unknown }).id === 'number';
}

/** The parent's handle on a bench child process. */
export class ChildPeer<Req, Res> {
  private nextId = 1;
  private readonly waiting = new Map<number, { resolve(v: Res): void; reject(e: Error): void }>();
  private exitError: Error | null = null;
  private stderrTail = '';
  readonly exited: Promise<number | null>;

  constructor(readonly child: ChildProcess) {
    // The child's stderr still reaches ours; its tail is kept to name a crash.
    child.stderr?.on('data', (d: Buffer) => {
      process.stderr.write(d);
      this.stderrTail = (this.stderrTail + d.toString('utf8')).slice(-4000);
    });
    child.on('message', (m: unknown) => {
      if (!isEnvelope(m)) return;
      const w = this.waiting.get(m.id);
      if (!w) return;
      this.waiting.delete(m.id);
      if (m.error !== undefined) w.reject(new Error(m.error));
      else w.resolve(m.body as Res);
    });
    this.exited = new Promise((resolve) => {
      child.on('exit', (code, signal) => {
        this.exitError = new Error(`bench child exited (${signal ?? `code ${String(code)}`})`);
        for (const w of this.waiting.values()) w.reject(this.exitError);
        this.waiting.clear();
        resolve(code);
      });
    });
  }

  get pid(): number {
    return this.child.pid ?? -1;
  }

  get alive(): boolean {
    return this.exitError === null;
  }

  /** The last error line the child wrote on stderr (e.g. `RangeError: Maximum call stack size exceeded`). */
  lastError(): string | null {
    const lines = this.stderrTail.split('\n').filter((l) => /^\w*(Error|Exception)\b.*:/.test(l.trim()));
    return lines.at(-1)?.trim() ?? null;
  }

  /** Sends `body`; rejects if the child does not answer within `timeoutMs` or exits first. */
  call(body: Req, timeoutMs = 180_000): Promise<Res> {
    if (this.exitError) return Promise.reject(this.exitError);
    const id = this.nextId++;
    return new Promise<Res>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiting.delete(id);
        reject(new Error(`bench child did not answer within ${timeoutMs / 1000} s`));
      }, timeoutMs);
      const settle = { resolve: (v: Res) => (clearTimeout(timer), resolve(v)), reject: (e: Error) => (clearTimeout(timer), reject(e)) };
      this.waiting.set(id, settle);
      this.child.send({ id, body } satisfies Envelope, (err) => {
        if (err) {
          this.waiting.delete(id);
          settle.reject(err);
        }
      });
    });
  }

  /** Asks nothing: kills the child (SIGKILL) if it has not exited within `graceMs`. */
  async kill(graceMs = 3000): Promise<void> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    const timer = setTimeout(() => this.child.kill('SIGKILL'), graceMs);
    this.child.kill('SIGTERM');
    await this.exited;
    clearTimeout(timer);
  }
}

/** In a child: answers the parent's calls with `handler`. */
export function serveParent<Req, Res>(handler: (req: Req) => Promise<Res> | Res): void {
  process.on('message', (m: unknown) => {
    if (!isEnvelope(m)) return;
    Promise.resolve()
      .then(() => handler(m.body as Req))
      .then(
        (body) => process.send?.({ id: m.id, body } satisfies Envelope),
        (err: unknown) => process.send?.({ id: m.id, body: null, error: err instanceof Error ? err.message : String(err) } satisfies Envelope),
      );
  });
  // The parent went away: nothing left to serve.
  process.on('disconnect', () => process.exit(0));
}

/** True when this module runs from the TypeScript sources (tsx), not from dist/. */
export const FROM_SOURCES = import.meta.url.endsWith('.ts');

/**
 * Forks a bench entry point (`bench/<rel>` without extension), with its stdout discarded (a
 * gateway's log lines) and stderr piped (ChildPeer passes it through).
 */
export function forkBench(rel: string, args: string[] = [], opts: { exposeGc?: boolean; cpuProfDir?: string; env?: NodeJS.ProcessEnv } = {}): ChildProcess {
  const file = fileURLToPath(new URL(`../${rel}${FROM_SOURCES ? '.ts' : '.js'}`, import.meta.url));
  const execArgv = [
    ...(FROM_SOURCES ? ['--import', 'tsx'] : []),
    ...(opts.exposeGc ? ['--expose-gc'] : []),
    ...(opts.cpuProfDir !== undefined ? ['--cpu-prof', `--cpu-prof-dir=${opts.cpuProfDir}`] : []),
  ];
  return fork(file, args, { execArgv, stdio: ['ignore', 'ignore', 'pipe', 'ipc'], env: opts.env ?? process.env });
}
