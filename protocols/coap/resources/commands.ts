/**
 * `/commands` and `/commands/{commandId}` (contract §7): GET lists the device's pending commands as
 * a JSON array of `{id, name, params, expiresAt}` (queued ones become sent); with Observe, every
 * newly delivered command brings a fresh list. POST to `/commands/{id}` is the device's answer
 * `{"status", "payload"}` (JSON, or the type's protobuf CommandResponse with content-format 42).
 */
import { commandMessage } from '../../../src/core/commands.js';
import { encodingOf } from '../content-format.js';
import { observationKey, writeRepresentation, type CoapObservers } from '../observers.js';
import { replyEmpty, replyError, replyJson, setCode } from '../reply.js';
import type { CoapEdgeDeps, CoapExchange } from '../types.js';

export function commandsResource(deps: CoapEdgeDeps, observers: CoapObservers) {
  return async (ex: CoapExchange): Promise<void> => {
    const { req, res, deviceId } = ex;
    const rest = ex.path.slice('/commands'.length);
    if (rest === '' || rest === '/') {
      if (req.method !== 'GET') return replyError(res, '4.05', 'use GET on /commands, POST on /commands/{commandId}');
      // Observe = 1 deregisters (RFC 7641 §3.6) and is answered like a plain GET.
      if (req.headers.Observe === 1) observers.cancel(deviceId, observationKey(req));
      const pending = await deps.commands.takePending(deviceId);
      const body = pending.map(commandMessage);
      if (req.headers.Observe !== 0) return replyJson(res, '2.05', body);
      setCode(res, '2.05');
      res.setOption('Content-Format', 'application/json');
      writeRepresentation(res, Buffer.from(JSON.stringify(body)));
      observers.add(deviceId, { kind: 'commands', res, key: observationKey(req) });
      // Commands created while nobody was observing go out now.
      deps.commands.kick(deviceId);
      return;
    }
    const commandId = decodeURIComponent(rest.slice(1));
    if (commandId.includes('/')) return replyError(res, '4.04', `no resource ${ex.path}`);
    if (req.method !== 'POST' && req.method !== 'PUT') return replyError(res, '4.05', 'use POST on /commands/{commandId} to answer a command');
    const format = encodingOf(req);
    if (format === 'unsupported') return replyError(res, '4.15', 'content-format must be 50 (application/json) or 42 (protobuf)');
    let answer: unknown = req.payload;
    if (format === 'json') {
      try {
        answer = JSON.parse(req.payload.toString('utf8'));
      } catch {
        return replyError(res, '4.00', 'the command response is not valid JSON: expected {"status": <int>, "payload": <any>}');
      }
    }
    const r = await deps.commands.respond(deviceId, commandId, answer);
    if (r.ok) return replyEmpty(res, '2.04');
    replyError(res, r.reason === 'unknown' ? '4.04' : '4.00', r.message);
  };
}
