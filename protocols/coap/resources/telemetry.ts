/** `POST /telemetry` (contract §7): the same pipeline as MQTT and HTTP; 2.04, or 4.00/4.13/4.15 with the reason. */
import { encodingOf } from '../content-format.js';
import { telemetryAnswer } from '../fast-telemetry.js';
import { replyAnswer, replyError } from '../reply.js';
import type { CoapEdgeDeps, CoapExchange } from '../types.js';
import type { IngestOutcome } from '../../../src/core/telemetry.js';

export function telemetryResource(deps: CoapEdgeDeps) {
  return (ex: CoapExchange): void | Promise<void> => {
    const { req, res } = ex;
    if (req.method !== 'POST') return replyError(res, '4.05', 'use POST on /telemetry');
    const contentType = encodingOf(req);
    if (contentType === 'unsupported') return replyError(res, '4.15', 'content-format must be 50 (application/json) or 42 (protobuf)');
    const finish = (outcome: IngestOutcome) => replyAnswer(res, telemetryAnswer(outcome));
    const outcome = deps.ingestTelemetry({ deviceId: ex.deviceId, protocol: ex.protocol, payload: req.payload, ...(contentType && { contentType }) });
    if (outcome instanceof Promise) return outcome.then(finish);
    finish(outcome);
  };
}
