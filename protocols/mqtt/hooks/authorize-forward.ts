/**
 * authorizeForward: dropped packets go nowhere; on a commands topic only the command bridge's live
 * deliveries pass (not aedes' replays of stored copies, not an admin's raw publish that no command
 * record stands behind); everything else is counted as delivered.
 */
import type { AedesPublishPacket, Client } from 'aedes';
import type { EdgeContext } from '../context.js';
import { DROPPED_TOPIC } from './authorize-publish.js';

/** `devices/{id}/commands/{commandId}` for any device. */
function isAnyCommandTopic(topic: string): boolean {
  if (!topic.startsWith('devices/')) return false;
  const parts = topic.split('/');
  return parts.length === 4 && parts[2] === 'commands';
}

export function createAuthorizeForward(ctx: EdgeContext) {
  return (_client: Client, packet: AedesPublishPacket): AedesPublishPacket | null => {
    if (packet.topic === DROPPED_TOPIC) return null;
    if (isAnyCommandTopic(packet.topic) && !ctx.isLiveCommand(packet)) return null;
    ctx.messagesOut.inc();
    return packet;
  };
}
