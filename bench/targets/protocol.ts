/** What the harness and a target process say to each other. */
import type { CredentialRecord } from '../../src/core/model.js';

/**
 * `aedes-nagle`: bare aedes without TCP_NODELAY on its sockets (Node's default), for comparison.
 * `upstream`: a small HTTP service (node:http, a constant ~100-byte JSON body on every GET), the
 * upstream of the proxy scenario's route and, hit directly, its baseline.
 * `bare-proxy`: the least a Node.js proxy does (node:http server, keep-alive node:http client, the
 * response piped back; no auth, no logging), in front of the upstream at `env.UPSTREAM_URL`: a
 * reference for the proxy scenario, not a target.
 */
export type TargetKind = 'aedes' | 'aedes-nagle' | 'fastify' | 'coap' | 'upstream' | 'bare-proxy' | 'iotgate';

export interface TargetPorts {
  mqtt?: number;
  http?: number;
  coap?: number;
}

export interface RunningTarget {
  ports: TargetPorts;
  /** e.g. the store the gateway reports in /readyz */
  info: Record<string, string>;
  /** Token-only device credentials straight into the running gateway's credential index. */
  provision?(records: CredentialRecord[]): void;
  stop(): Promise<void>;
}

export type TargetRequest =
  | { op: 'start'; kind: TargetKind; env?: Record<string, string> }
  | { op: 'provision'; records: CredentialRecord[] }
  | { op: 'stats' }
  | { op: 'gc' }
  | { op: 'stop' };

export type TargetResponse =
  | { op: 'started'; ports: TargetPorts; info: Record<string, string> }
  | { op: 'stats'; cpuUs: number; rssBytes: number; heapUsedBytes: number; externalBytes: number }
  | { op: 'ok' };
