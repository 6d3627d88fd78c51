/**
 * Topic access rules of the MQTT edge (contract §4), as pure functions. A device lives under
 * `devices/{id}/`; the topics the gateway publishes there are read-only for it. Services with
 * `admin` may use any topic; `telemetry:read` gives read access to telemetry, status and errors.
 */
import { isDeviceId } from '../../src/core/model.js';

export const DEVICES_PREFIX = 'devices/';

/** Gateway-owned topics under `devices/{id}/` (relative to it). */
const SHADOW_RESPONSE = /^shadow(?:\/name\/[^/]+)?\/(?:get|update|delete)\/(?:accepted|rejected|delta|documents)$/;
const COMMAND = /^commands\/[^/]+$/;
const SERVICE_READABLE = new Set(['telemetry', 'status', 'errors']);

export type Refusal = { ok: false; reason: string };
export type Verdict = { ok: true } | Refusal;

const OK: Verdict = { ok: true };
const refuse = (reason: string): Refusal => ({ ok: false, reason });

/** The part of `topic` below `devices/{id}/`, or null when the topic is not in that subtree. */
export function deviceRelative(topic: string, deviceId: string): string | null {
  const prefix = `${DEVICES_PREFIX}${deviceId}/`;
  return topic.startsWith(prefix) && topic.length > prefix.length ? topic.slice(prefix.length) : null;
}

export function isGatewayOwned(relative: string): boolean {
  return relative === 'status' || relative === 'errors' || COMMAND.test(relative) || SHADOW_RESPONSE.test(relative);
}

/** May device `deviceId` publish on `topic`? (wildcards were already refused by the broker) */
export function devicePublishVerdict(deviceId: string, topic: string): Verdict {
  const rel = deviceRelative(topic, deviceId);
  if (rel === null) return refuse(`devices may publish only under devices/${deviceId}/`);
  if (isGatewayOwned(rel)) return refuse(`${topic} is published by the gateway and read-only for devices`);
  return OK;
}

/** May device `deviceId` subscribe to `filter`? Wildcards are fine below its own subtree. */
export function deviceSubscribeVerdict(deviceId: string, filter: string): Verdict {
  if (filter.startsWith('$')) return refuse('$-topics ($SYS, $share) are not available to devices');
  if (deviceRelative(filter, deviceId) === null) return refuse(`devices may subscribe only under devices/${deviceId}/`);
  return OK;
}

/** May a non-admin service subscribe to `filter`? `devices/{+|id}/{telemetry|status|errors}` only. */
export function serviceSubscribeVerdict(scopes: ReadonlySet<string>, filter: string): Verdict {
  if (scopes.has('admin')) return OK;
  if (!scopes.has('telemetry:read')) return refuse('subscribing needs scope telemetry:read or admin');
  const parts = filter.split('/');
  if (parts.length === 3 && parts[0] === 'devices' && (parts[1] === '+' || isDeviceId(parts[1] ?? '')) && SERVICE_READABLE.has(parts[2] ?? '')) {
    return OK;
  }
  return refuse('services with telemetry:read may subscribe to devices/+/telemetry, devices/+/status and devices/+/errors');
}

/** May a service publish on `topic`? Only `admin` (the operator's broker account). */
export function servicePublishVerdict(scopes: ReadonlySet<string>, topic: string): Verdict {
  if (!scopes.has('admin')) return refuse('publishing needs scope admin');
  if (topic.startsWith('$SYS')) return refuse('$SYS topics are reserved');
  return OK;
}

/** Topic for the gateway's reports to a device. */
export const errorsTopic = (deviceId: string): string => `${DEVICES_PREFIX}${deviceId}/errors`;
export const statusTopic = (deviceId: string): string => `${DEVICES_PREFIX}${deviceId}/status`;
export const telemetryTopic = (deviceId: string): string => `${DEVICES_PREFIX}${deviceId}/telemetry`;

/**
 * [MQTT-4.7.3-2] no null character; [MQTT-1.5.3-1] well-formed UTF-8 (mqtt-packet decodes with
 * replacement characters, so U+FFFD marks invalid input); bounded length and depth.
 */
export function topicProblem(topic: string, maxLevels: number): string | null {
  if (topic.length === 0) return 'empty topic';
  if (topic.length > 1024) return 'topic longer than 1024 characters';
  if (topic.includes('\u0000')) return 'topic contains a null character';
  if (topic.includes('\uFFFD')) return 'topic is not valid UTF-8';
  let levels = 1;
  for (let i = 0; i < topic.length; i++) if (topic.charCodeAt(i) === 47) levels++;
  if (levels > maxLevels) return `topic has more than ${maxLevels} levels`;
  return null;
}
