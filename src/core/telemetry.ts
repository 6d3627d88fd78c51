/**
 * The ingest pipeline, shared by every protocol (style rule 4: named stages in order):
 * decode → validate → enrich → store → fan out. decode and validate are the device type's codec
 * (one call); a rejection stops the flow before anything is stored or published. When the store
 * answers synchronously the whole flow is synchronous: no await on the hot path.
 */
import { randomUUID } from 'node:crypto';
import type { Logger } from 'pino';
import type { EventBus } from './events.js';
import type { DeviceProtocol, TelemetryRecord } from './model.js';
import type { TelemetryDecoder, TelemetryRejection, TelemetryStore } from './ports.js';

export interface IngestInput {
  deviceId: string;
  type: string;
  protocol: DeviceProtocol;
  payload: Buffer;
  /** From the transport (HTTP Content-Type, CoAP content-format); overrides the type's encoding. */
  contentType?: 'json' | 'protobuf';
}

export type IngestOutcome = { ok: true; record: TelemetryRecord } | { ok: false; error: TelemetryRejection };

export interface TelemetryCounters {
  accepted(protocol: DeviceProtocol): void;
  rejected(protocol: DeviceProtocol, reason: TelemetryRejection['code']): void;
}

export class TelemetryService {
  constructor(
    private readonly deps: {
      decoderFor: (type: string) => TelemetryDecoder | undefined;
      store: TelemetryStore;
      bus: EventBus;
      counters: TelemetryCounters;
      log: Logger;
    },
  ) {}

  /** Runs the pipeline; returns a promise only when the store is asynchronous. */
  ingest(input: IngestInput): IngestOutcome | Promise<IngestOutcome> {
    // decode + validate
    const decoder = this.deps.decoderFor(input.type);
    if (!decoder) return this.reject(input, { code: 'unknown_type', message: `device type ${input.type} has no schema loaded` });
    const decoded = decoder.decodeTelemetry(input.payload, input.contentType);
    if (!decoded.ok) return this.reject(input, decoded.error);
    // enrich
    const record: TelemetryRecord = {
      id: randomUUID(),
      deviceId: input.deviceId,
      type: input.type,
      protocol: input.protocol,
      receivedAt: Date.now(),
      deviceTime: decoded.deviceTime,
      data: decoded.value,
    };
    // store, then fan out
    const stored = this.deps.store.append(record);
    if (stored) return stored.then((json) => this.fanOut(record, json ?? undefined));
    return this.fanOut(record, undefined);
  }

  private reject(input: IngestInput, error: TelemetryRejection): IngestOutcome {
    this.deps.counters.rejected(input.protocol, error.code);
    return { ok: false, error };
  }

  private fanOut(record: TelemetryRecord, json: string | undefined): IngestOutcome {
    this.deps.counters.accepted(record.protocol);
    try {
      this.deps.bus.emit('telemetry', record, json);
    } catch (err) {
      this.deps.log.error({ err }, 'a telemetry listener threw');
    }
    return { ok: true, record };
  }
}
