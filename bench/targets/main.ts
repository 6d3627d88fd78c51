/**
 * A server under test, in its own process so that its CPU and memory are its own: the baselines
 * (bare aedes, bare Fastify, bare coap: stock settings, no auth, no pipeline), the proxy scenario's
 * upstream service, or iotgate itself (buildGateway with the configuration the harness passes).
 * Driven over IPC by the harness.
 */
import { serveParent } from '../lib/ipc.js';
import { selfStats } from '../lib/proc-stats.js';
import { startBareAedes, startBareCoap, startBareFastify, startBareProxy, startUpstream } from './baselines.js';
import { startIotgate } from './iotgate.js';
import type { RunningTarget, TargetRequest, TargetResponse } from './protocol.js';

let running: RunningTarget | null = null;

async function handle(req: TargetRequest): Promise<TargetResponse> {
  switch (req.op) {
    case 'start': {
      if (running) throw new Error('target already started');
      running =
        req.kind === 'aedes' || req.kind === 'aedes-nagle'
          ? await startBareAedes(req.kind === 'aedes-nagle')
          : req.kind === 'fastify'
            ? await startBareFastify()
            : req.kind === 'coap'
              ? await startBareCoap()
              : req.kind === 'upstream'
                ? await startUpstream()
                : req.kind === 'bare-proxy'
                  ? await startBareProxy(req.env?.UPSTREAM_URL ?? '')
                  : await startIotgate(req.env ?? {});
      return { op: 'started', ports: running.ports, info: running.info };
    }
    case 'provision':
      if (!running?.provision) throw new Error('this target has no device credentials');
      running.provision(req.records);
      return { op: 'ok' };
    case 'stats':
      return { op: 'stats', ...selfStats(), heapUsedBytes: process.memoryUsage().heapUsed, externalBytes: process.memoryUsage().external };
    case 'gc':
      (globalThis as { gc?: () => void }).gc?.();
      return { op: 'ok' };
    case 'stop':
      await running?.stop();
      running = null;
      setImmediate(() => process.exit(0));
      return { op: 'ok' };
  }
}

serveParent<TargetRequest, TargetResponse>(handle);
process.on('SIGTERM', () => {
  void Promise.resolve(running?.stop()).finally(() => process.exit(0));
});
