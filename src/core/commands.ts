/**
 * Commands (contract §4, §8): one record per command and its state machine, as pure data and
 * functions. The service (command-service.ts) moves records through it; doors deliver them.
 *
 *   queued → sent → delivered → succeeded | failed        (the device answered: 2xx or not)
 *   queued | sent → expired                              (ttl passed before the device acknowledged it)
 *   delivered → timed_out                                (ttl passed after delivery, no answer)
 *   queued | sent | delivered → canceled                 (DELETE)
 *
 * `sent` = handed to a live connection; `delivered` = the device acknowledged it (MQTT PUBACK).
 * A response also finishes a `queued` or `sent` command: a device can answer only a command it got.
 */

export const COMMAND_STATES = ['queued', 'sent', 'delivered', 'succeeded', 'failed', 'timed_out', 'expired', 'canceled'] as const;
export type CommandState = (typeof COMMAND_STATES)[number];

export const OPEN_STATES: readonly CommandState[] = ['queued', 'sent', 'delivered'];
/** States in which the device has not acknowledged the command yet (they count against the queue bound). */
export const UNDELIVERED_STATES: readonly CommandState[] = ['queued', 'sent'];

export function isFinished(state: CommandState): boolean {
  return !OPEN_STATES.includes(state);
}

/** The device's answer (contract §4: `{"status": <int, HTTP-like>, "payload": <any>}`). */
export interface CommandResponse {
  status: number;
  payload: unknown;
}

/** Contract §8 command record. Times are epoch milliseconds. */
export interface CommandRecord {
  id: string;
  deviceId: string;
  name: string;
  params: Record<string, unknown>;
  state: CommandState;
  createdAt: number;
  updatedAt: number;
  expiresAt: number;
  response?: CommandResponse;
  idempotencyKey?: string;
}

/** Contract §8 bounds of the REST request. */
export const COMMAND_LIMITS = {
  nameMaxLength: 128,
  defaultTimeoutMs: 30_000,
  minTimeoutMs: 1_000,
  maxTimeoutMs: 300_000,
  defaultTtlMs: 3_600_000,
  maxTtlMs: 48 * 3_600_000,
  idempotencyKeyMaxLength: 256,
} as const;

/** The command as a device receives it (JSON form of contract §4). */
export function commandMessage(r: CommandRecord): { id: string; name: string; params: Record<string, unknown>; expiresAt: number } {
  return { id: r.id, name: r.name, params: r.params, expiresAt: r.expiresAt };
}

/** The state a response moves an open command to. */
export function stateForResponse(status: number): 'succeeded' | 'failed' {
  return status >= 200 && status < 300 ? 'succeeded' : 'failed';
}

/** The state an open command ends in when its ttl passes. */
export function stateAtExpiry(state: CommandState): 'expired' | 'timed_out' {
  return state === 'delivered' ? 'timed_out' : 'expired';
}

/**
 * Parses a JSON command response `{status, payload?}`: `status` an integer 100..599. Returns the
 * response or the reason it is refused (for the device's errors channel).
 */
export function parseCommandResponse(value: unknown): { ok: true; value: CommandResponse } | { ok: false; message: string } {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    return { ok: false, message: 'a command response must be a JSON object {"status": <int>, "payload": <any>}' };
  }
  const { status, payload } = value as { status?: unknown; payload?: unknown };
  if (typeof status !== 'number' || !Number.isInteger(status) || status < 100 || status > 599) {
    return { ok: false, message: 'status: must be an integer from 100 to 599 (HTTP-like; 2xx = success)' };
  }
  return { ok: true, value: { status, payload: payload === undefined ? null : payload } };
}
