/** Prometheus counters behind core's TelemetryCounters. */
import { Counter, type Registry } from 'prom-client';
import type { TelemetryCounters } from './core/telemetry.js';

export function telemetryCounters(registry: Registry): TelemetryCounters {
  const accepted = new Counter({ name: 'iotgate_telemetry_accepted_total', help: 'Telemetry messages accepted by protocol', labelNames: ['protocol'], registers: [registry] });
  const rejected = new Counter({
    name: 'iotgate_telemetry_rejected_total',
    help: 'Telemetry messages rejected by protocol and reason',
    labelNames: ['protocol', 'reason'],
    registers: [registry],
  });
  return {
    accepted: (protocol) => accepted.inc({ protocol }),
    rejected: (protocol, reason) => rejected.inc({ protocol, reason }),
  };
}
