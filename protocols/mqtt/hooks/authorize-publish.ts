/**
 * authorizePublish: topic syntax, topic rights, per-device rate limits. A refused PUBLISH is
 * dropped and the device told on its errors topic; the connection stays up. MQTT 3.1.1 has no
 * negative PUBACK, so the broker acknowledges it as the spec allows [MQTT-3.3.5-2]; aedes closes
 * the connection when this hook fails, so a refused packet is instead rewritten into a harmless
 * one (no retain, no payload, a `$` topic no subscription can match) that authorizeForward drops.
 */
import type { Client, PublishPacket } from 'aedes';
import type { EdgeContext, RejectionReason } from '../context.js';
import { publishError, REASON, type ErrorDocument } from '../reports.js';
import { devicePublishVerdict, servicePublishVerdict, topicProblem } from '../topics.js';

export const DROPPED_TOPIC = '$iotgate/dropped';
const EMPTY = Buffer.alloc(0);

export function drop(packet: PublishPacket): void {
  packet.topic = DROPPED_TOPIC;
  packet.retain = false;
  packet.payload = EMPTY;
}

export function createAuthorizePublish(ctx: EdgeContext) {
  const { rateLimits, presence } = ctx.deps;
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
    ctx.messagesIn.inc({ listener: ctx.sessions.connection(client)?.protocol ?? 'mqtt' });
    callback(null);
  };
}
