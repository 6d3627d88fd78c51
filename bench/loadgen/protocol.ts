/** The jobs the harness gives the load-generator process, and what it reports back. */
import type { HistogramSnapshot } from '../lib/histogram.js';
import type { PayloadKind } from '../lib/payloads.js';

export interface MqttIdentity {
  clientId: string;
  username?: string;
  password?: string;
}

export interface DeviceCredential {
  id: string;
  token: string;
}

/**
 * Publishers send `payload` on their topic, one subscriber on `filter` receives. Closed loop
 * (`window` messages per publisher between send and delivery) unless `rate` (msgs/s in total,
 * open loop: a publisher whose socket pushes back skips its turn, counted as `blocked`).
 */
export interface MqttFlowJob {
  kind: 'mqtt-flow';
  host: string;
  port: number;
  qos: 0 | 1;
  payload: PayloadKind;
  publishers: (MqttIdentity & { topic: string })[];
  subscriber: MqttIdentity;
  filter: string;
  window: number;
  rate?: number;
}

/**
 * GET shadow and GET device in turn (or the given `paths` in turn), closed loop over `connections`
 * × `depth` pipelined requests.
 */
export interface RestReadJob {
  kind: 'rest-read';
  host: string;
  port: number;
  /** Sent as `Authorization: Bearer`; none when null (an unauthenticated upstream hit directly). */
  token: string | null;
  deviceIds: string[];
  /** GET these paths in turn instead of the device routes (the proxy scenario). */
  paths?: string[];
  connections: number;
  depth: number;
  /** PATCH a desired state per device first (the GETs then find a shadow). */
  seedShadows: boolean;
}

/** REST PATCH desired → device (MQTT) gets the delta and reports → the SSE stream shows the report. */
export interface ShadowRoundtripJob {
  kind: 'shadow-roundtrip';
  host: string;
  httpPort: number;
  mqttPort: number;
  token: string;
  devices: DeviceCredential[];
  rate: number;
}

/** REST command with wait → device (MQTT) answers → 200. */
export interface CommandRoundtripJob {
  kind: 'command-roundtrip';
  host: string;
  httpPort: number;
  mqttPort: number;
  token: string;
  devices: DeviceCredential[];
  rate: number;
}

/** CON POSTs of telemetry from `sockets` source ports, `window` outstanding each, or at `rate`/s. */
export interface CoapFlowJob {
  kind: 'coap-flow';
  host: string;
  port: number;
  tokens: string[];
  sockets: number;
  window: number;
  rate?: number;
}

/** Opens `devices` MQTT connections (`concurrency` CONNECTs at a time) and keeps them idle. */
export interface ConnectionsJob {
  kind: 'connections';
  host: string;
  port: number;
  devices: MqttIdentity[];
  concurrency: number;
}

export type LoadJob = MqttFlowJob | RestReadJob | ShadowRoundtripJob | CommandRoundtripJob | CoapFlowJob | ConnectionsJob;

export interface LoadResult {
  /** Operations completed since the mark (messages delivered, responses, round trips). */
  completed: number;
  /** Operations started since the mark. */
  sent: number;
  errors: number;
  /** Started and never completed within the job's timeout. */
  lost: number;
  elapsedMs: number;
  latency: HistogramSnapshot;
  /** The load generator's own CPU (user + system) since the mark, µs. */
  cpuUs: number;
  extra: Record<string, number>;
}

export type LoadgenRequest = { op: 'start'; job: LoadJob } | { op: 'mark' } | { op: 'collect' } | { op: 'stop' };

export type LoadgenResponse = { op: 'ok'; setup?: Record<string, number> } | { op: 'result'; result: LoadResult };

/** One running load inside the load generator. */
export interface Load {
  /** Connects, sets up, and starts the load; resolves once it runs. */
  start(): Promise<Record<string, number> | void>;
  mark(): void;
  collect(): LoadResult;
  stop(): Promise<void>;
}
