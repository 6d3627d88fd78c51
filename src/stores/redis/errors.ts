/**
 * Redis failures as the gateway's errors (style rule 5): Redis unreachable, not answering, or
 * not serving yet (loading its AOF, a failover) is GatewayError `unavailable` (503, and the
 * doors' equivalents), with the ioredis error as `cause`. Anything else, e.g. a script bug or a
 * bad cursor, stays what it was.
 */
import { GatewayError } from '../../core/errors.js';

const CONNECTION_ERRORS = new Set(['MaxRetriesPerRequestError', 'AbortError', 'InterruptError', 'ClusterAllFailedError']);
const CONNECTION_MESSAGES = /Stream isn't writeable|Connection is closed|Command timed out|ECONNREFUSED|ECONNRESET|ETIMEDOUT|EPIPE|EHOSTUNREACH/;
const SERVER_NOT_SERVING = /^(LOADING|BUSY|READONLY|MASTERDOWN|CLUSTERDOWN|TRYAGAIN|NOREPLICAS)\b/;

export function storeError(err: unknown): unknown {
  if (!(err instanceof Error) || err instanceof GatewayError) return err;
  const down =
    CONNECTION_ERRORS.has(err.name) ||
    (err.name === 'ReplyError' ? SERVER_NOT_SERVING.test(err.message) : CONNECTION_MESSAGES.test(err.message));
  return down ? new GatewayError('unavailable', `store unavailable (Redis): ${err.message}`, { cause: err }) : err;
}
