/**
 * authorizeForward: dropped packets go nowhere, nor do aedes' replays of commands the command
 * bridge sent (it re-sends them itself); everything else is counted as delivered.
 */
import type { AedesPublishPacket, Client } from 'aedes';
import type { EdgeContext } from '../context.js';
import { DROPPED_TOPIC } from './authorize-publish.js';

export function createAuthorizeForward(ctx: EdgeContext) {
  return (_client: Client, packet: AedesPublishPacket): AedesPublishPacket | null => {
    if (packet.topic === DROPPED_TOPIC) return null;
    if (ctx.isCommandReplay(packet)) return null;
    ctx.messagesOut.inc();
    return packet;
  };
}
