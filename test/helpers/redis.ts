/**
 * startRedis(t): a real `redis-server` on a free loopback port with its own data dir, stopped with
 * t.after (or the suite's after). Skips the test when redis-server is missing (fails under CI=true).
 *
 *   const redis = await startRedis(t);            // redis.url = redis://127.0.0.1:<port>/0
 *   await redis.stop(); await redis.start();      // the same port and data dir (AOF survives)
 *   redis.kill();                                 // SIGKILL, for crash tests
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer, connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { TestContext } from 'node:test';
import { requireTool } from './tools.js';

export interface TestRedis {
  url: string;
  port: number;
  dir: string;
  /** Starts (again) on the same port and data dir; resolves when it accepts connections. */
  start(): Promise<void>;
  /** SIGTERM and wait for exit (Redis writes its AOF/RDB on the way out). */
  stop(): Promise<void>;
  /** SIGKILL and wait for exit: no shutdown save. */
  kill(): Promise<void>;
  running(): boolean;
  /** Kills the server and removes its data dir (registered with t.after when a context is given). */
  dispose(): Promise<void>;
}

export interface RedisOptions {
  /** appendonly yes + appendfsync always (default true): every acknowledged write is on disk. */
  aof?: boolean;
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const addr = s.address();
      const port = typeof addr === 'object' && addr ? addr.port : 0;
      s.close(() => resolve(port));
    });
  });
}

function accepts(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const sock = connect({ host: '127.0.0.1', port });
    sock.once('connect', () => {
      // PING and wait for PONG: the port opens before the AOF is loaded.
      sock.write('PING\r\n');
    });
    sock.once('data', (d) => {
      sock.destroy();
      resolve(d.toString().startsWith('+PONG'));
    });
    sock.once('error', () => resolve(false));
  });
}

/** Starts a redis-server for the test, or returns null when the test was skipped (tool missing). */
export async function startRedis(t: TestContext | null, opts: RedisOptions = {}): Promise<TestRedis | null> {
  if (t && !requireTool(t, 'redis-server')) return null;
  const dir = await mkdtemp(join(tmpdir(), 'iotgate-redis-'));
  const port = await freePort();
  let child: ChildProcess | null = null;
  let exited: Promise<void> = Promise.resolve();
  const aof = opts.aof ?? true;

  const redis: TestRedis = {
    url: `redis://127.0.0.1:${port}/0`,
    port,
    dir,
    async start() {
      if (child) return;
      const args = ['--port', String(port), '--bind', '127.0.0.1', '--dir', dir, '--save', '', '--protected-mode', 'no', '--loglevel', 'warning'];
      if (aof) args.push('--appendonly', 'yes', '--appendfsync', 'always');
      const c = spawn('redis-server', args, { stdio: ['ignore', 'ignore', 'inherit'] });
      child = c;
      exited = new Promise((resolve) => c.once('exit', () => resolve()));
      void exited.then(() => {
        if (child === c) child = null;
      });
      for (let i = 0; i < 200; i++) {
        if (child !== c) throw new Error('redis-server exited at start');
        if (await accepts(port)) return;
        await new Promise((r) => setTimeout(r, 25));
      }
      throw new Error(`redis-server did not accept connections on ${port}`);
    },
    async stop() {
      if (!child) return;
      child.kill('SIGTERM');
      await exited;
    },
    async kill() {
      if (!child) return;
      child.kill('SIGKILL');
      await exited;
    },
    running: () => child !== null,
    async dispose() {
      await redis.kill();
      await rm(dir, { recursive: true, force: true });
    },
  };
  await redis.start();
  if (t) t.after(() => redis.dispose());
  return redis;
}

/** Anything that takes teardown hooks (a TestContext, or the stack below). */
export interface Teardown {
  after(fn: () => unknown): void;
}

/**
 * Teardown in reverse order of registration (node:test runs `t.after` hooks in order): gateways
 * stop before the Redis they use goes away.
 */
export function stack(t: TestContext): Teardown {
  const hooks: (() => unknown)[] = [];
  t.after(async () => {
    for (const hook of hooks.reverse()) await hook();
  });
  return { after: (fn) => void hooks.push(fn) };
}

/** A redis-server whose disposal is on `teardown`; null when redis-server is missing (skipped). */
export async function redisOn(t: TestContext, teardown: Teardown): Promise<TestRedis | null> {
  if (!requireTool(t, 'redis-server')) return null;
  const redis = await startRedis(null);
  if (redis) teardown.after(() => redis.dispose());
  return redis;
}
