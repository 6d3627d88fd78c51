/**
 * authorizePublish: topic syntax, topic rights, per-device rate limits. A refused PUBLISH is
 * dropped and the device told on its errors topic; the connection stays up. MQTT 3.1.1 has no
 * negative PUBACK, so the broker acknowledges it as the spec allows [MQTT-3.3.5-2]; aedes closes
 * the connection when this hook fails, so a refused packet is instead rewritten into a harmless
 * one (no retain, no payload, a `$` topic no subscription can match) that authorizeForward drops.
 *
 * Shadow requests and command responses are requests to the gateway, answered here and forwarded
 * to nobody. Telemetry runs the ingest pipeline here, before aedes sends the PUBACK (aedes 1.x acks QoS 1
 * before the `published` hook): a PUBACK means the message was valid and the store took it. A
 * store failure fails the hook, so aedes closes the connection without acking and the device
 * sends the message again.
 */
import type { Client, PublishPacket } from 'aedes';
import type { EdgeContext, RejectionReason } from '../context.js';
import { publishError, REASON, type ErrorDocument } from '../reports.js';
import { deviceRelative, devicePublishVerdict, servicePublishVerdict, telemetryTopic, topicProblem } from '../topics.js';
import { handleShadowRequest, parseShadowRequest } from '../shadow.js';
import { parseResponseTopic } from '../commands.js';
import type { IngestOutcome } from '../../../src/core/telemetry.js';

export const DROPPED_TOPIC = '$iotgate/dropped';
const EMPTY = Buffer.alloc(0);

export function drop(packet: PublishPacket): void {
  packet.topic = DROPPED_TOPIC;
  packet.retain = false;
  packet.payload = EMPTY;
}

export function createAuthorizePublish(ctx: EdgeContext) {
  const { rateLimits, presence, ingestTelemetry } = ctx.deps;
  const maxLevels = ctx.deps.settings.maxTopicLevels;

  const refuse = (packet: PublishPacket, deviceId: string | null, reason: RejectionReason, doc: ErrorDocument) => {
    ctx.rejections.inc({ reason });
    if (deviceId !== null) publishError(ctx.aedes, deviceId, doc);
    else ctx.deps.log.info({ topic: doc.topic, reason: doc.message }, 'service publish dropped');
    drop(packet);
  };

  return (client: Client | null, packet: PublishPacket, callback: (error?: Error | null) => void): void => {
    // A will of a session restored from persistence: authorized when its CONNECT was.
    if (client === null) return callback(null);
    const principal = ctx.sessions.principal(client);
    if (!principal) return callback(new Error('not authenticated'));
    // [MQTT-2.3.1-1] QoS 1/2 need a non-zero packet identifier (wills carry none: `=== 0` only).
    if (packet.qos > 0 && packet.messageId === 0) {
      ctx.rejections.inc({ reason: 'protocol_error' });
      return callback(new Error('packet identifier 0 on a QoS > 0 PUBLISH'));
    }
    const topic = packet.topic;
    const deviceId = principal.kind === 'device' ? principal.deviceId : null;

    const problem = topicProblem(topic, maxLevels);
    if (problem) {
      refuse(packet, deviceId, 'topic_invalid', { code: REASON.topicNameInvalid, message: problem, topic: topic.slice(0, 256) });
      return callback(null);
    }
    const verdict = deviceId !== null ? devicePublishVerdict(deviceId, topic) : servicePublishVerdict((principal as { scopes: ReadonlySet<string> }).scopes, topic);
    if (!verdict.ok) {
      refuse(packet, deviceId, 'publish_not_authorized', { code: REASON.notAuthorized, message: verdict.reason, topic });
      return callback(null);
    }
    if (deviceId !== null) {
      const refusal = rateLimits.messages.take(deviceId) ?? rateLimits.bytes.take(deviceId, packet.payload.length);
      if (refusal) {
        refuse(packet, deviceId, 'rate_limited', {
          code: REASON.quotaExceeded,
          message: `rate limit exceeded: ${refusal.limit}; retry in ${Math.ceil(refusal.retryAfterMs / 1000)} s`,
          topic,
          limit: refusal.limit,
        });
        return callback(null);
      }
      presence.touch(deviceId);
    }
    const protocol = ctx.sessions.connection(client)?.protocol ?? 'mqtt';
    ctx.messagesIn.inc({ listener: protocol });
    if (deviceId === null) return callback(null);
    const fail = (err: unknown) => callback(err instanceof Error ? err : new Error(String(err)));
    if (topic !== telemetryTopic(deviceId)) {
      const relative = deviceRelative(topic, deviceId) ?? '';
      const commandId = parseResponseTopic(relative);
      if (commandId !== null) {
        // An answer to the gateway: recorded before the PUBACK, forwarded to nobody.
        const payload = packet.payload as Buffer;
        drop(packet);
        const record = () =>
          ctx.deps.commands.respond(deviceId, commandId, payload).then((r) => {
            if (!r.ok) {
              const code = r.reason === 'invalid' ? REASON.payloadFormatInvalid : REASON.implementationSpecific;
              refuse(packet, deviceId, 'command_response_rejected', { code, message: r.message, topic });
            }
            callback(null);
          }, fail);
        if (packet.qos !== 2) return void record();
        ctx.isQos2Retransmission(client, packet).then((again) => (again ? callback(null) : record()), fail);
        return;
      }
      const shadowRequest = parseShadowRequest(relative);
      if (shadowRequest === null) return callback(null);
      // A request to the gateway, not a message for subscribers: answer it, forward nothing.
      const payload = packet.payload as Buffer;
      drop(packet);
      handleShadowRequest(ctx.aedes, ctx.deps.shadows, deviceId, shadowRequest, payload).then(() => callback(null), fail);
      return;
    }

    const finish = (outcome: IngestOutcome) => {
      if (!outcome.ok) {
        const { message, path } = outcome.error;
        refuse(packet, deviceId, 'telemetry_rejected', {
          code: REASON.payloadFormatInvalid,
          message: path && !message.startsWith(path) ? `${path}: ${message}` : message,
          topic,
        });
      }
      callback(null);
    };
    const ingest = () => {
      const outcome = ingestTelemetry({ deviceId, protocol, payload: packet.payload as Buffer });
      if (outcome instanceof Promise) outcome.then(finish, fail);
      else finish(outcome);
    };
    if (packet.qos !== 2) return ingest();
    // [MQTT-4.3.3-2] aedes checks for a QoS 2 retransmission only after this hook: a message it
    // will not publish again must not be stored again either.
    ctx.isQos2Retransmission(client, packet).then((again) => (again ? callback(null) : ingest()), fail);
  };
}
