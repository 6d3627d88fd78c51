import type { Logger } from 'pino';
import type { Registry } from 'prom-client';
import type { IncomingMessage, OutgoingMessage } from 'coap';
import type { CredentialIndex } from '../../src/core/credentials.js';
import type { CommandService } from '../../src/core/command-service.js';
import type { EventBus } from '../../src/core/events.js';
import type { PresenceService } from '../../src/core/presence.js';
import type { Limiter } from '../../src/core/rate-limit.js';
import type { ShadowService } from '../../src/core/shadow-service.js';
import type { DeviceProtocol } from '../../src/core/model.js';
import type { IngestOutcome } from '../../src/core/telemetry.js';

/** What the CoAP edge needs from the gateway (adapters call core verbs, never stores). */
export interface CoapEdgeDeps {
  log: Logger;
  metrics: Registry;
  bus: EventBus;
  /** Other gateways' events (shadow changes) when several share Redis: see src/cluster/link.ts. */
  remoteBus?: EventBus;
  credentials: CredentialIndex;
  presence: PresenceService;
  shadows: ShadowService;
  commands: CommandService;
  rateLimits: { messages: Limiter; bytes: Limiter };
  ingestTelemetry(input: { deviceId: string; protocol: DeviceProtocol; payload: Buffer; contentType?: 'json' | 'protobuf' }): IngestOutcome | Promise<IngestOutcome>;
  settings: {
    presenceWindowMs: number;
    dedupEntries: number;
    maxBlockTransfers: number;
    /** The largest request payload accepted (Block1 uploads included): limits.telemetryBytes. */
    maxPayloadBytes: number;
  };
}

/** One authenticated request as the resources see it. */
export interface CoapExchange {
  req: IncomingMessage;
  res: OutgoingMessage;
  deviceId: string;
  /** Path without the query, e.g. `/commands/abc`. */
  path: string;
  query: URLSearchParams;
  protocol: DeviceProtocol;
}
