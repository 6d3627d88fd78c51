/** The simulated fleet's settings and its counters. */
import type { DeviceCredential } from '../loadgen/protocol.js';

export type SimProtocol = 'mqtt' | 'coap';
export type SimDeviceType = 'generic' | 'tracker' | 'thermostat';

export interface SimulateOptions {
  /** REST base URL, e.g. http://127.0.0.1:8080 */
  url: string;
  /** Where devices connect: MQTT over TCP (token login), or CoAP over UDP. */
  mqtt: { host: string; port: number };
  coap: { host: string; port: number };
  protocol: SimProtocol;
  devices: number;
  /** Telemetry messages per second per device. */
  rate: number;
  /** Seconds; undefined = until stop(). */
  durationS?: number;
  type: SimDeviceType;
  /** Device ids are `<prefix><n>`. */
  prefix: string;
  /** A service JWT with scope `provision` (devices are registered over REST). */
  token: string;
  /** Report the shadow's `reported.uptime` this often (s). */
  shadowEveryS: number;
}

/** What every simulated device counts into (shared, one object for the fleet). */
export interface SimCounters {
  connected: number;
  /** Telemetry messages sent. */
  sent: number;
  /** Telemetry messages the gateway acknowledged (PUBACK, CoAP 2.04). */
  acked: number;
  errors: number;
  disconnects: number;
  shadowReports: number;
  deltasApplied: number;
  commandsAnswered: number;
}

export function newCounters(): SimCounters {
  return { connected: 0, sent: 0, acked: 0, errors: 0, disconnects: 0, shadowReports: 0, deltasApplied: 0, commandsAnswered: 0 };
}

/** Hooks a device calls; the fleet owns the counters and the latency histogram. */
export interface SimSink {
  readonly counters: SimCounters;
  /** A telemetry message acknowledged after `us` µs. */
  acked(us: number): void;
  /** Something went wrong; `detail` is kept as a sample for the summary. */
  error(detail: string): void;
}

export interface SimDevice {
  readonly id: string;
  start(): Promise<void>;
  /** Sends one telemetry message (skipped while disconnected). */
  telemetry(): void;
  /** Reports the shadow's reported state (uptime and what the device applied). */
  reportShadow(): void;
  stop(): Promise<void>;
}

export type DeviceFactory = (cred: DeviceCredential, index: number) => SimDevice;
