/**
 * build(t): a real gateway in this process on 127.0.0.1 with every port 0, a fresh certs dir, and
 * its log lines captured as parsed JSON. Torn down with t.after.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { after, before } from 'node:test';
import { loadConfig } from '../../src/config/load.js';
import { buildGateway, type Addresses, type Gateway } from '../../src/gateway.js';
import { createLogger } from '../../src/log.js';
import { loadCaMaterial, signServiceToken } from '../../src/pki/index.js';

export interface LogCapture {
  /** Raw lines, in order. */
  lines: string[];
  /** Parsed lines. */
  entries(): Record<string, unknown>[];
  /** Resolves with the first entry (already logged or future) that matches. */
  waitFor(match: (e: Record<string, unknown>) => boolean, timeoutMs?: number): Promise<Record<string, unknown>>;
}

export function captureLogs(): { stream: Writable; capture: LogCapture } {
  const lines: string[] = [];
  const waiters = new Set<{ match: (e: Record<string, unknown>) => boolean; resolve: (e: Record<string, unknown>) => void }>();
  const stream = new Writable({
    write(chunk: Buffer, _enc, cb) {
      for (const line of chunk.toString('utf8').split('\n')) {
        if (!line) continue;
        lines.push(line);
        const entry = JSON.parse(line) as Record<string, unknown>;
        for (const w of waiters) {
          if (w.match(entry)) {
            waiters.delete(w);
            w.resolve(entry);
          }
        }
      }
      cb();
    },
  });
  const capture: LogCapture = {
    lines,
    entries: () => lines.map((l) => JSON.parse(l) as Record<string, unknown>),
    waitFor(match, timeoutMs = 10_000) {
      const found = capture.entries().find(match);
      if (found) return Promise.resolve(found);
      return new Promise((resolve, reject) => {
        const w = { match, resolve: (e: Record<string, unknown>) => (clearTimeout(timer), resolve(e)) };
        const timer = setTimeout(() => {
          waiters.delete(w);
          reject(new Error('expected log line did not appear'));
        }, timeoutMs);
        waiters.add(w);
      });
    },
  };
  return { stream, capture };
}

export interface TestGateway {
  gateway: Gateway;
  ports: Addresses;
  /** http://127.0.0.1:<port> */
  url: string;
  certsDir: string;
  logs: LogCapture;
  /** Environment that points the CLI at this gateway's certs dir and port. */
  env: Record<string, string>;
  /** A service JWT signed with this gateway's key. */
  token(scope: string, opts?: { sub?: string; ttlSeconds?: number }): Promise<string>;
}

/** Environment for a gateway on 127.0.0.1 with every port 0 and its own certs dir. */
export function loopbackEnv(certsDir: string, extra: Record<string, string> = {}): Record<string, string> {
  return {
    IOTGATE_HOST: '127.0.0.1',
    IOTGATE_HTTP_PORT: '0',
    IOTGATE_MQTT_PORT: '0',
    IOTGATE_MQTTS_PORT: '0',
    IOTGATE_COAP_PORT: '0',
    IOTGATE_CERTS_DIR: certsDir,
    ...extra,
  };
}

/** Anything with node:test's `after` (a TestContext, or a suite stand-in from `suiteGateway`). */
export interface Teardown {
  after(fn: () => unknown): void;
}

/**
 * One gateway shared by the tests of a file or suite: started in `before`, stopped in `after`.
 * Read it through the returned getter inside tests.
 */
export function suiteGateway(env: Record<string, string> = {}): () => TestGateway {
  const cleanups: (() => unknown)[] = [];
  let gw: TestGateway | undefined;
  before(async () => {
    gw = await build({ after: (fn) => cleanups.push(fn) }, env);
  });
  after(async () => {
    for (const fn of cleanups.reverse()) await fn();
  });
  return () => {
    if (!gw) throw new Error('suite gateway is not started');
    return gw;
  };
}

export async function build(t: Teardown, env: Record<string, string> = {}): Promise<TestGateway> {
  const certsDir = await mkdtemp(join(tmpdir(), 'iotgate-test-'));
  const fullEnv = loopbackEnv(certsDir, { IOTGATE_CERTS_SYNC_INTERVAL_MS: '200', IOTGATE_LOG_LEVEL: 'debug', ...env });
  const config = loadConfig(undefined, fullEnv);
  const { stream, capture } = captureLogs();
  const log = createLogger({ level: config.log.level, destination: stream });
  const gateway = await buildGateway(config, { log });
  t.after(async () => {
    await gateway.stop();
    await rm(certsDir, { recursive: true, force: true });
  });
  const ports = await gateway.start();
  const url = `http://127.0.0.1:${ports.http}`;
  return {
    gateway,
    ports,
    url,
    certsDir,
    logs: capture,
    env: { ...fullEnv, IOTGATE_HTTP_PORT: String(ports.http) },
    async token(scope, opts = {}) {
      const material = await loadCaMaterial(certsDir);
      return signServiceToken(material, { sub: opts.sub ?? 'test-service', scope, ttlSeconds: opts.ttlSeconds ?? 300 }).token;
    },
  };
}
