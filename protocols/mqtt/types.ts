import type { Logger } from 'pino';
import type { Registry } from 'prom-client';
import type { CredentialIndex } from '../../src/core/credentials.js';
import type { EventBus } from '../../src/core/events.js';
import type { PresenceService } from '../../src/core/presence.js';
import type { Limiter } from '../../src/core/rate-limit.js';
import type { DeviceProtocol } from '../../src/core/model.js';
import type { IngestOutcome } from '../../src/core/telemetry.js';
import type { ShadowService } from '../../src/core/shadow-service.js';
import type { CommandService } from '../../src/core/command-service.js';

export type MqttPrincipal =
  | { kind: 'device'; deviceId: string }
  | { kind: 'service'; sub: string; scopes: ReadonlySet<string> };

export type CertificateCheck =
  | { ok: true; deviceId: string; serial: string }
  | { ok: false; reason: string };

export interface BrokerSettings {
  connectTimeoutMs: number;
  keepaliveMaxSeconds: number;
  maxInflightQos2: number;
  offlineQueueMax: number;
  drainTimeoutMs: number;
  maxTopicLevels: number;
  maxPacketBytes: number;
}

/** What the MQTT edge needs from the gateway. */
export interface MqttEdgeDeps {
  log: Logger;
  /** False while the shared store is unreachable: CONNECTs are refused at once (CONNACK 3). */
  available?: () => boolean;
  settings: BrokerSettings;
  credentials: CredentialIndex;
  presence: PresenceService;
  bus: EventBus;
  metrics: Registry;
  /** Per-device limits: messages and payload bytes. */
  rateLimits: { messages: Limiter; bytes: Limiter };
  /** Verifies a presented client certificate (DER) against the CA with node:crypto. */
  verifyDeviceCertificate(der: Buffer): CertificateCheck;
  shadows: ShadowService;
  commands: CommandService;
  /** The telemetry pipeline; a promise only when the store is asynchronous. */
  ingestTelemetry(input: { deviceId: string; protocol: DeviceProtocol; payload: Buffer }): IngestOutcome | Promise<IngestOutcome>;
  /** A verified service JWT, or null. */
  verifyServiceToken(token: string): { sub: string; scopes: ReadonlySet<string> } | null;
}
