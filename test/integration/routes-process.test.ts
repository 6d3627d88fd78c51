/**
 * API gateway routes in a real gateway process (issue 10 "Done when"): a 100 MB response streams
 * through with bounded gateway memory (the process's peak RSS, read from /proc), and SIGHUP reloads
 * the routes from the config file: a broken file is refused and logged while the old routes keep
 * serving; a valid one swaps them without dropping the request in flight.
 *
 * The process runs the TypeScript sources (`runGateway` via tsx), so it is always this tree's code.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import type { ServerResponse } from 'node:http';
import { loopbackEnv } from '../helpers/gateway.js';
import { call } from '../helpers/http.js';
import { withDeadline } from '../helpers/mqtt.js';
import { startUpstream } from '../helpers/upstream.js';

const MAIN = new URL('../../src/main.ts', import.meta.url).href;
const BIG_BYTES = 100 * 1024 * 1024;
/** Streamed first, so the baseline is taken with the heap already sized for streaming. */
const WARM_BYTES = 32 * 1024 * 1024;
const CHUNK = Buffer.alloc(64 * 1024, 0x5a);
/** Peak RSS growth allowed while 100 MiB pass through (after the warm-up): far under the body, so it was not held. */
const RSS_GROWTH_LIMIT_MB = 32;

/** Sends BIG_BYTES in 64 KiB chunks, honouring backpressure. */
const big = await startUpstream('big', (_req, res, seen) => {
  const total = seen.url === '/warm' ? WARM_BYTES : BIG_BYTES;
  res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': String(total) });
  let sent = 0;
  const pump = () => {
    while (sent < total) {
      sent += CHUNK.length;
      if (!res.write(CHUNK)) {
        res.once('drain', pump);
        return;
      }
    }
    res.end();
  };
  pump();
});
const heldResponses: ServerResponse[] = [];
const first = await startUpstream('first', (_req, res, seen) => {
  if (seen.url === '/hold') {
    heldResponses.push(res);
    return;
  }
  res.writeHead(200, { 'content-type': 'text/plain' }).end('first');
});
const second = await startUpstream('second', (_req, res) => res.writeHead(200, { 'content-type': 'text/plain' }).end('second'));
after(async () => {
  for (const u of [big, first, second]) await u.close();
});

const yamlRoutes = (routes: { name: string; prefix: string; upstream: string }[]) =>
  ['routes:', ...routes.flatMap((r) => [`  - name: ${r.name}`, `    prefix: ${r.prefix}`, '    auth: none', `    upstreams: ["${r.upstream}"]`])].join('\n') + '\n';

interface Proc {
  child: ChildProcess;
  url: string;
  lines: Record<string, unknown>[];
  waitFor(match: (e: Record<string, unknown>) => boolean, what: string): Promise<Record<string, unknown>>;
  exited: Promise<number | null>;
}

async function startProcess(env: Record<string, string>): Promise<Proc> {
  const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', `import { runGateway } from ${JSON.stringify(MAIN)}; await runGateway(undefined);`], {
    env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '/tmp', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  const lines: Record<string, unknown>[] = [];
  const waiters = new Set<{ match: (e: Record<string, unknown>) => boolean; resolve: (e: Record<string, unknown>) => void }>();
  createInterface({ input: child.stdout! }).on('line', (line) => {
    let entry: Record<string, unknown>;
    try {
      entry = JSON.parse(line) as Record<string, unknown>;
    } catch {
      return;
    }
    lines.push(entry);
    for (const w of waiters) {
      if (w.match(entry)) {
        waiters.delete(w);
        w.resolve(entry);
      }
    }
  });
  const exited = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)));
  const waitFor = (match: (e: Record<string, unknown>) => boolean, what: string) => {
    const found = lines.find(match);
    const pending = found ? Promise.resolve(found) : new Promise<Record<string, unknown>>((resolve) => waiters.add({ match, resolve }));
    const died = exited.then((code) => Promise.reject(new Error(`gateway exited (${code}) while waiting for ${what}: ${stderr}`)));
    return withDeadline(Promise.race([pending, died]), 30_000, what);
  };
  const ready = await waitFor((e) => e.msg === 'iotgate ready', 'the ready line');
  return { child, url: `http://127.0.0.1:${String(ready.http)}`, lines, waitFor, exited };
}

/** Peak resident set size of a process, MiB (Linux). */
function peakRssMb(pid: number): number {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kb = /^VmHWM:\s+(\d+) kB/m.exec(status)?.[1];
  assert.ok(kb, 'VmHWM in /proc/<pid>/status');
  return Number(kb) / 1024;
}

describe('API gateway routes in a gateway process', () => {
  let dir: string;
  let configFile: string;
  let gw: Proc;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'iotgate-routes-proc-'));
    configFile = join(dir, 'iotgate.yaml');
    await writeFile(
      configFile,
      yamlRoutes([
        { name: 'big', prefix: '/big', upstream: big.url },
        { name: 'first', prefix: '/first', upstream: first.url },
      ]),
    );
    gw = await startProcess(loopbackEnv(join(dir, 'certs'), { IOTGATE_CONFIG: configFile }));
  });
  after(async () => {
    if (gw && gw.child.exitCode === null && gw.child.signalCode === null) gw.child.kill('SIGKILL');
    await rm(dir, { recursive: true, force: true });
  });

  it('a 100 MB response streams through with bounded gateway memory', { skip: !existsSync('/proc/self/status') && 'needs /proc' }, async () => {
    // Warm up the route (connection pool, JIT, young generation) before taking the baseline.
    for (let i = 0; i < 2; i++) {
      const res = await fetch(`${gw.url}/big/warm`);
      for await (const _ of res.body!);
    }
    const baseline = peakRssMb(gw.child.pid!);
    const res = await fetch(`${gw.url}/big/file`);
    assert.equal(res.status, 200);
    assert.equal(res.headers.get('content-length'), String(BIG_BYTES));
    let received = 0;
    for await (const chunk of res.body!) received += (chunk as Uint8Array).length;
    assert.equal(received, BIG_BYTES);
    const growth = peakRssMb(gw.child.pid!) - baseline;
    assert.ok(growth < RSS_GROWTH_LIMIT_MB, `peak RSS grew by ${growth.toFixed(1)} MiB while 100 MiB passed through`);
  });

  it('SIGHUP with a broken config keeps the old routes; a valid one swaps them and the request in flight completes', async () => {
    assert.equal((await call(gw.url, 'GET', '/first/x')).text, 'first');

    await writeFile(configFile, yamlRoutes([{ name: 'bad', prefix: '/v1/shadow', upstream: second.url }]));
    gw.child.kill('SIGHUP');
    const refused = await gw.waitFor((e) => e.msg === 'config reload refused; the routes in force stay', 'the refusal line');
    assert.equal(refused.level, 50);
    assert.match(JSON.stringify(refused.errors), /routes\.0\.prefix = \\"\/v1\/shadow\\": expected a prefix that does not shadow \/v1/);
    assert.equal((await call(gw.url, 'GET', '/first/x')).text, 'first', 'the old routes still serve');
    assert.equal((await call(gw.url, 'GET', '/v1/shadow')).status, 404, 'the refused route never existed');

    const arrived = first.waitFor((r) => r.url === '/hold');
    const inFlight = call(gw.url, 'GET', '/first/hold');
    await arrived;
    await writeFile(
      configFile,
      yamlRoutes([
        { name: 'big', prefix: '/big', upstream: big.url },
        { name: 'second', prefix: '/second', upstream: second.url },
      ]),
    );
    gw.child.kill('SIGHUP');
    const reloaded = await gw.waitFor((e) => e.msg === 'routes reloaded', 'the reload line');
    assert.deepEqual([reloaded.added, reloaded.removed, reloaded.changed], [['second'], ['first'], []]);
    assert.equal((await call(gw.url, 'GET', '/second/x')).text, 'second');
    assert.equal((await call(gw.url, 'GET', '/first/x')).status, 404);

    for (const r of heldResponses.splice(0)) r.writeHead(200, { 'content-type': 'text/plain' }).end('held answer');
    const res = await inFlight;
    assert.equal(res.status, 200);
    assert.equal(res.text, 'held answer');

    gw.child.kill('SIGTERM');
    assert.equal(await withDeadline(gw.exited, 10_000, 'exit after SIGTERM'), 0);
  });
});
