/**
 * authorizeSubscribe: a refused filter gets SUBACK 0x80 (`callback(null, null)`; an error would
 * make aedes drop the client) and, for a device, a report on its errors topic.
 */
import type { Client, Subscription } from 'aedes';
import type { EdgeContext } from '../context.js';
import { publishError, REASON } from '../reports.js';
import { deviceSubscribeVerdict, serviceSubscribeVerdict, topicProblem } from '../topics.js';

export function createAuthorizeSubscribe(ctx: EdgeContext) {
  const maxLevels = ctx.deps.settings.maxTopicLevels;
  return (client: Client, sub: Subscription, callback: (error: Error | null, subscription?: Subscription | null) => void): void => {
    const principal = ctx.sessions.principal(client);
    if (!principal) return callback(null, null);
    const problem = topicProblem(sub.topic, maxLevels);
    const verdict = problem
      ? { ok: false as const, reason: problem }
      : principal.kind === 'device'
        ? deviceSubscribeVerdict(principal.deviceId, sub.topic)
        : serviceSubscribeVerdict(principal.scopes, sub.topic);
    if (verdict.ok) return callback(null, sub);
    ctx.rejections.inc({ reason: problem ? 'topic_invalid' : 'subscribe_not_authorized' });
    if (principal.kind === 'device') {
      publishError(ctx.aedes, principal.deviceId, {
        code: problem ? REASON.topicNameInvalid : REASON.notAuthorized,
        message: verdict.reason,
        topic: sub.topic.slice(0, 256),
      });
    } else {
      ctx.deps.log.info({ sub: principal.sub, filter: sub.topic, reason: verdict.reason }, 'service subscription refused');
    }
    callback(null, null);
  };
}
