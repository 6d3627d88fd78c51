/**
 * A byte-level guard in front of aedes' parser. mqtt-packet buffers a packet whole before parsing
 * it, so without this a client could make the broker hold a 200 MB PUBLISH or a 150 MB stream
 * before login. The guard follows the MQTT fixed headers as aedes reads them (a 'data' listener
 * sees each chunk, no copy) and closes the connection at the first packet that is larger than the
 * limit, has a malformed length, or is not CONNECT when it comes first [MQTT-3.1.0-1].
 */
import type { Duplex } from 'node:stream';

export const CONNECT = 1;
export const DISCONNECT = 14;

export interface GuardState {
  /** Type of the last packet whose header was seen (e.g. DISCONNECT = 14). */
  lastType: number;
  /** Why the guard closed the connection, if it did. */
  violation: string | null;
}

const enum Phase {
  Header,
  Length,
  Body,
}

/** Attach after `aedes.handle(stream)` (aedes' 'readable' listener must already be there). */
export function guardStream(stream: Duplex, maxPacketBytes: number): GuardState {
  const state: GuardState = { lastType: 0, violation: null };
  let phase = Phase.Header;
  let first = true;
  let remaining = 0;
  let multiplier = 1;
  let lengthBytes = 0;

  const violate = (reason: string) => {
    state.violation = reason;
    stream.off('data', inspect);
    stream.destroy();
  };

  function inspect(chunk: Buffer): void {
    let i = 0;
    const n = chunk.length;
    while (i < n) {
      if (phase === Phase.Header) {
        const type = (chunk[i] as number) >> 4;
        if (first && type !== CONNECT) return violate('the first packet is not CONNECT');
        if (type === 0) return violate('packet type 0 is reserved');
        first = false;
        state.lastType = type;
        phase = Phase.Length;
        remaining = 0;
        multiplier = 1;
        lengthBytes = 0;
        i++;
      } else if (phase === Phase.Length) {
        const byte = chunk[i] as number;
        remaining += (byte & 0x7f) * multiplier;
        multiplier *= 128;
        lengthBytes++;
        i++;
        if (byte & 0x80) {
          if (lengthBytes === 4) return violate('malformed remaining length');
          continue;
        }
        if (1 + lengthBytes + remaining > maxPacketBytes) {
          return violate(`packet of ${1 + lengthBytes + remaining} bytes exceeds the limit of ${maxPacketBytes}`);
        }
        phase = remaining === 0 ? Phase.Header : Phase.Body;
      } else {
        const take = Math.min(remaining, n - i);
        remaining -= take;
        i += take;
        if (remaining === 0) phase = Phase.Header;
      }
    }
  }

  stream.on('data', inspect);
  return state;
}
