/**
 * What the gateway itself publishes to devices: the errors topic (contract §4, one JSON document
 * per refused publish or subscription) and the retained status topic.
 */
import type { Aedes } from 'aedes';
import type { DeviceStatus } from '../../src/core/events.js';
import { errorsTopic, statusTopic } from './topics.js';

/** MQTT 5 reason codes used in error documents (MQTT 3.1.1 has none to send back). */
export const REASON = {
  notAuthorized: 0x87,
  topicNameInvalid: 0x90,
  packetTooLarge: 0x95,
  quotaExceeded: 0x97,
  payloadFormatInvalid: 0x99,
  implementationSpecific: 0x83,
} as const;

export interface ErrorDocument {
  code: number;
  message: string;
  topic: string;
  limit?: string;
}

export function publishError(aedes: Aedes, deviceId: string, doc: ErrorDocument): void {
  aedes.publish(
    { cmd: 'publish', topic: errorsTopic(deviceId), payload: Buffer.from(JSON.stringify(doc)), qos: 0, retain: false, dup: false },
    () => undefined,
  );
}

export function publishStatus(aedes: Aedes, deviceId: string, status: DeviceStatus): Promise<void> {
  const payload = Buffer.from(JSON.stringify({ online: status.online, reason: status.reason, at: status.at, version: status.version }));
  return new Promise((resolve) => {
    aedes.publish({ cmd: 'publish', topic: statusTopic(deviceId), payload, qos: 1, retain: true, dup: false }, () => resolve());
  });
}
