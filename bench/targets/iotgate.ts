/**
 * iotgate under test: `buildGateway` with the configuration the harness passes as IOTGATE_* keys
 * (ports 0 on 127.0.0.1, a prepared certs dir, rate limits raised so they count but never refuse),
 * logging at its default level to this process's stdout (which the harness discards).
 */
import { loadConfig } from '../../src/config/load.js';
import { buildGateway } from '../../src/gateway.js';
import { createLogger } from '../../src/log.js';
import type { RunningTarget } from './protocol.js';

export async function startIotgate(env: Record<string, string>): Promise<RunningTarget> {
  const config = loadConfig(undefined, env);
  const log = createLogger({ level: config.log.level });
  const gateway = await buildGateway(config, { log });
  const ports = await gateway.start();
  const ready = await gateway.http.inject({ method: 'GET', url: '/readyz' });
  const store = (ready.json() as { components?: { store?: { detail?: string } } }).components?.store?.detail ?? 'unknown';
  return {
    ports: { mqtt: ports.mqtt, http: ports.http, coap: ports.coap },
    info: { server: 'iotgate', store },
    provision(records) {
      for (const r of records) gateway.credentials.apply(r);
    },
    stop: () => gateway.stop(),
  };
}
