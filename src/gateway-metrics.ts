/** Part of the composition root (with gateway.ts): the gateway's own Prometheus metrics over core services. */
import { Counter, Gauge, type Registry } from 'prom-client';
import type { TelemetryCounters } from './core/telemetry.js';

/**
 * The counters behind core's TelemetryCounters. Accepted messages (one per telemetry message: the
 * hot path) are counted in a plain map and handed to prom-client at scrape time; `inc` with labels
 * hashes and validates the labels on every call.
 */
export function telemetryCounters(registry: Registry): TelemetryCounters {
  const acceptedBy = new Map<string, number>();
  new Counter({
    name: 'iotgate_telemetry_accepted_total',
    help: 'Telemetry messages accepted by protocol',
    labelNames: ['protocol'],
    registers: [registry],
    collect() {
      this.reset();
      for (const [protocol, n] of acceptedBy) this.inc({ protocol }, n);
    },
  });
  const rejected = new Counter({
    name: 'iotgate_telemetry_rejected_total',
    help: 'Telemetry messages rejected by protocol and reason',
    labelNames: ['protocol', 'reason'],
    registers: [registry],
  });
  return {
    accepted: (protocol) => void acceptedBy.set(protocol, (acceptedBy.get(protocol) ?? 0) + 1),
    rejected: (protocol, reason) => rejected.inc({ protocol, reason }),
  };
}

/** Gauges read at scrape time: REST requests waiting for a command answer, devices with live credentials. */
export function serviceGauges(registry: Registry, read: { commandWaiters(): number; devicesKnown(): number }): void {
  new Gauge({
    name: 'iotgate_command_waiters',
    help: 'REST requests waiting for a command answer (wait: true)',
    registers: [registry],
    collect() {
      this.set(read.commandWaiters());
    },
  });
  new Gauge({
    name: 'iotgate_devices_known',
    help: 'Devices with live credentials',
    registers: [registry],
    collect() {
      this.set(read.devicesKnown());
    },
  });
}
