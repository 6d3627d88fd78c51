/**
 * After authentication nothing needs the CONNECT packet, but mqtt-packet's parser keeps it for the
 * life of the connection as its `settings` (it reads `protocolVersion` and `bridgeMode` from it to
 * parse later packets), password and username included, and the password is a view of the read
 * chunk the CONNECT came in, which it keeps alive too. `forgetConnectPacket` clears the
 * credentials and points the parser at a shared, frozen object with just those two fields.
 */
import type { Client } from 'aedes';

/** What mqtt-packet 9's parser reads from its `settings` after a CONNECT. */
interface ParserSettings {
  readonly protocolVersion: number | undefined;
  readonly bridgeMode: boolean | undefined;
}

interface ConnectCredentials {
  protocolVersion?: number;
  username?: string | undefined;
  password?: Buffer | undefined;
}

const shared = new Map<string, ParserSettings>();

function settingsFor(protocolVersion: number | undefined, bridgeMode: boolean | undefined): ParserSettings {
  const key = `${protocolVersion}/${bridgeMode}`;
  let s = shared.get(key);
  if (s === undefined) shared.set(key, (s = Object.freeze({ protocolVersion, bridgeMode })));
  return s;
}

/** Call once authenticate has read the credentials (they are its arguments). */
export function forgetConnectPacket(client: Client, packet: ConnectCredentials): void {
  packet.password = undefined;
  packet.username = undefined;
  const parser = (client as Client & { _parser?: { settings?: unknown } })._parser;
  if (parser !== undefined && parser !== null && parser.settings === packet) {
    const bridgeMode = (packet as { bridgeMode?: unknown }).bridgeMode;
    parser.settings = settingsFor(packet.protocolVersion, bridgeMode === undefined ? undefined : bridgeMode === true);
  }
}
