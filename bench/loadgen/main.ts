/**
 * The load generator: its own process, so that its CPU is not the gateway's and the harness can
 * report it. It runs one job at a time, told by the harness when to start, mark, collect and stop.
 */
import { serveParent } from '../lib/ipc.js';
import { CoapFlow } from './coap-flow.js';
import { Connections } from './connections.js';
import { MqttFlow } from './mqtt-flow.js';
import type { Load, LoadJob, LoadgenRequest, LoadgenResponse } from './protocol.js';
import { RestRead } from './rest-read.js';
import { CommandRoundtrip, ShadowRoundtrip } from './roundtrips.js';

function loadFor(job: LoadJob): Load {
  switch (job.kind) {
    case 'mqtt-flow':
      return new MqttFlow(job);
    case 'rest-read':
      return new RestRead(job);
    case 'shadow-roundtrip':
      return new ShadowRoundtrip(job);
    case 'command-roundtrip':
      return new CommandRoundtrip(job);
    case 'coap-flow':
      return new CoapFlow(job);
    case 'connections':
      return new Connections(job);
  }
}

let current: Load | null = null;

async function handle(req: LoadgenRequest): Promise<LoadgenResponse> {
  switch (req.op) {
    case 'start': {
      if (current) await current.stop();
      current = loadFor(req.job);
      try {
        const setup = await current.start();
        return setup ? { op: 'ok', setup } : { op: 'ok' };
      } catch (err) {
        await current.stop().catch(() => undefined);
        current = null;
        throw err;
      }
    }
    case 'mark':
      current?.mark();
      return { op: 'ok' };
    case 'collect':
      if (!current) throw new Error('no load running');
      return { op: 'result', result: current.collect() };
    case 'stop':
      await current?.stop();
      current = null;
      return { op: 'ok' };
  }
}

serveParent<LoadgenRequest, LoadgenResponse>(handle);
