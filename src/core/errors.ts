/**
 * One table of gateway errors (style rule 5). Core throws GatewayError with a stable code; each
 * door maps it to its own channel (problem+json status, MQTT reason code, CoAP code) at the edge.
 */

export const ERRORS = {
  bad_request: { status: 400, title: 'Bad Request' },
  validation_failed: { status: 400, title: 'Validation failed' },
  invalid_device_id: { status: 400, title: 'Invalid device id' },
  csr_invalid: { status: 400, title: 'Invalid certificate signing request' },
  unauthorized: { status: 401, title: 'Unauthorized' },
  forbidden: { status: 403, title: 'Forbidden' },
  not_found: { status: 404, title: 'Not Found' },
  command_not_found: { status: 404, title: 'Command not found' },
  device_not_found: { status: 404, title: 'Device not found' },
  method_not_allowed: { status: 405, title: 'Method Not Allowed' },
  conflict: { status: 409, title: 'Conflict' },
  device_exists: { status: 409, title: 'Device already exists' },
  precondition_failed: { status: 412, title: 'Precondition Failed' },
  payload_too_large: { status: 413, title: 'Payload Too Large' },
  unsupported_media_type: { status: 415, title: 'Unsupported Media Type' },
  idempotency_conflict: { status: 422, title: 'Idempotency key reused' },
  rate_limited: { status: 429, title: 'Too Many Requests' },
  command_queue_full: { status: 429, title: 'Command queue full' },
  internal: { status: 500, title: 'Internal Server Error' },
  unavailable: { status: 503, title: 'Service Unavailable' },
  command_timeout: { status: 504, title: 'Gateway Timeout' },
} as const;

export type ErrorCode = keyof typeof ERRORS;

export class GatewayError extends Error {
  readonly code: ErrorCode;
  readonly status: number;
  /** Extra members for problem+json (e.g. `errors`, `limit`). Never secrets. */
  readonly details: Readonly<Record<string, unknown>> | undefined;

  constructor(code: ErrorCode, message: string, opts: { cause?: unknown; details?: Record<string, unknown> } = {}) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.name = 'GatewayError';
    this.code = code;
    this.status = ERRORS[code].status;
    this.details = opts.details;
  }
}

export function isGatewayError(e: unknown): e is GatewayError {
  return e instanceof GatewayError;
}
