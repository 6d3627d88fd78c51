/**
 * `/shadow[?name=]` (contract §5, §7): GET answers the whole document (2.05) and, with Observe, every
 * change after it; POST is an update request from the device (its `reported` state) answered with
 * the accepted document (2.04). AWS error codes map to CoAP: 400 → 4.00, 404 → 4.04, 409 → 4.12,
 * 413 → 4.13; the diagnostic payload is the AWS error document.
 */
import { errorDocument } from '../../../src/core/shadow.js';
import type { ShadowFailure } from '../../../src/core/shadow-service.js';
import { observationKey, writeRepresentation, type CoapObservers } from '../observers.js';
import { replyError, replyJson, setCode, type CoapCode } from '../reply.js';
import type { CoapEdgeDeps, CoapExchange } from '../types.js';

const CODES: Record<ShadowFailure['code'], CoapCode> = { 400: '4.00', 404: '4.04', 409: '4.12', 412: '4.12', 413: '4.13' };

function fail(ex: CoapExchange, error: ShadowFailure, clientToken?: string): void {
  replyError(ex.res, CODES[error.code], JSON.stringify(errorDocument(error, Date.now(), clientToken)));
}

export function shadowResource(deps: CoapEdgeDeps, observers: CoapObservers) {
  return async (ex: CoapExchange): Promise<void> => {
    const { req, res, deviceId } = ex;
    const name = ex.query.get('name') ?? '';
    if (req.method === 'GET') {
      // Observe = 1 deregisters (RFC 7641 §3.6) and is answered like a plain GET.
      if (req.headers.Observe === 1) observers.cancel(deviceId, observationKey(req));
      const r = await deps.shadows.get(deviceId, name);
      if (!r.ok) return fail(ex, r.error, r.clientToken);
      if (req.headers.Observe !== 0) return replyJson(res, '2.05', r.document);
      setCode(res, '2.05');
      res.setOption('Content-Format', 'application/json');
      writeRepresentation(res, Buffer.from(JSON.stringify(r.document)));
      observers.add(deviceId, { kind: 'shadow', name, res, key: observationKey(req) });
      return;
    }
    if (req.method === 'POST' || req.method === 'PUT') {
      const r = await deps.shadows.update(deviceId, name, req.payload, 'device');
      if (!r.ok) return fail(ex, r.error, r.clientToken);
      return replyJson(res, '2.04', r.accepted);
    }
    replyError(res, '4.05', 'use GET or POST on /shadow');
  };
}
