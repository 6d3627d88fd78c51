/**
 * The few MQTT 3.1.1 packets a load generator needs, encoded and parsed by hand: no objects per
 * packet on the hot path (a PUBLISH is a template whose packet id and payload bytes are patched in
 * place), and a reader that hands out offsets into the received buffer instead of copies.
 * Checked against mqtt-packet (the parser aedes uses) in test/unit/bench-mqtt-wire.test.ts.
 */

export const PACKET = {
  connect: 1,
  connack: 2,
  publish: 3,
  puback: 4,
  subscribe: 8,
  suback: 9,
  pingreq: 12,
  pingresp: 13,
  disconnect: 14,
} as const;

/** Bytes of the MQTT "remaining length" varint for `n`. */
export function varintLength(n: number): number {
  return n < 128 ? 1 : n < 16_384 ? 2 : n < 2_097_152 ? 3 : 4;
}

function writeVarint(buf: Buffer, offset: number, n: number): number {
  let value = n;
  do {
    let byte = value % 128;
    value = Math.floor(value / 128);
    if (value > 0) byte |= 0x80;
    buf[offset++] = byte;
  } while (value > 0);
  return offset;
}

function writeString(buf: Buffer, offset: number, s: Buffer): number {
  buf.writeUInt16BE(s.length, offset);
  s.copy(buf, offset + 2);
  return offset + 2 + s.length;
}

export interface ConnectOptions {
  clientId: string;
  username?: string;
  password?: string;
  keepaliveSeconds?: number;
  clean?: boolean;
}

export function encodeConnect(opts: ConnectOptions): Buffer {
  const id = Buffer.from(opts.clientId, 'utf8');
  const user = opts.username === undefined ? null : Buffer.from(opts.username, 'utf8');
  const pass = opts.password === undefined ? null : Buffer.from(opts.password, 'utf8');
  const remaining = 10 + 2 + id.length + (user ? 2 + user.length : 0) + (pass ? 2 + pass.length : 0);
  const buf = Buffer.allocUnsafe(1 + varintLength(remaining) + remaining);
  buf[0] = PACKET.connect << 4;
  let o = writeVarint(buf, 1, remaining);
  o = writeString(buf, o, Buffer.from('MQTT'));
  buf[o++] = 4; // protocol level 3.1.1
  buf[o++] = (user ? 0x80 : 0) | (pass ? 0x40 : 0) | (opts.clean === false ? 0 : 0x02);
  buf.writeUInt16BE(opts.keepaliveSeconds ?? 60, o);
  o = writeString(buf, o + 2, id);
  if (user) o = writeString(buf, o, user);
  if (pass) writeString(buf, o, pass);
  return buf;
}

export function encodeSubscribe(messageId: number, filters: { topic: string; qos: 0 | 1 }[]): Buffer {
  const topics = filters.map((f) => Buffer.from(f.topic, 'utf8'));
  const remaining = 2 + topics.reduce((n, t) => n + 2 + t.length + 1, 0);
  const buf = Buffer.allocUnsafe(1 + varintLength(remaining) + remaining);
  buf[0] = (PACKET.subscribe << 4) | 0x02;
  let o = writeVarint(buf, 1, remaining);
  buf.writeUInt16BE(messageId, o);
  o += 2;
  topics.forEach((t, i) => {
    o = writeString(buf, o, t);
    buf[o++] = filters[i]?.qos ?? 0;
  });
  return buf;
}

export function encodePuback(messageId: number): Buffer {
  const buf = Buffer.allocUnsafe(4);
  writePuback(buf, 0, messageId);
  return buf;
}

/** Writes a 4-byte PUBACK at `offset` (for batching many acks into one buffer). */
export function writePuback(buf: Buffer, offset: number, messageId: number): void {
  buf[offset] = PACKET.puback << 4;
  buf[offset + 1] = 2;
  buf[offset + 2] = messageId >> 8;
  buf[offset + 3] = messageId & 0xff;
}

export const PINGREQ = Buffer.from([PACKET.pingreq << 4, 0]);
export const DISCONNECT = Buffer.from([PACKET.disconnect << 4, 0]);

/**
 * A PUBLISH packet built once; `messageIdOffset` and `payloadOffset` say where to patch. Copy
 * `bytes` (or patch and write before reusing) for each message.
 */
export interface PublishTemplate {
  bytes: Buffer;
  /** -1 for QoS 0 */
  messageIdOffset: number;
  payloadOffset: number;
}

export function publishTemplate(topic: string, payload: Buffer, qos: 0 | 1): PublishTemplate {
  const t = Buffer.from(topic, 'utf8');
  const remaining = 2 + t.length + (qos > 0 ? 2 : 0) + payload.length;
  const bytes = Buffer.allocUnsafe(1 + varintLength(remaining) + remaining);
  bytes[0] = (PACKET.publish << 4) | (qos << 1);
  let o = writeVarint(bytes, 1, remaining);
  o = writeString(bytes, o, t);
  let messageIdOffset = -1;
  if (qos > 0) {
    messageIdOffset = o;
    bytes.writeUInt16BE(1, o);
    o += 2;
  }
  payload.copy(bytes, o);
  return { bytes, messageIdOffset, payloadOffset: o };
}

export function encodePublish(topic: string, payload: Buffer, qos: 0 | 1, messageId = 1): Buffer {
  const tpl = publishTemplate(topic, payload, qos);
  if (qos > 0) tpl.bytes.writeUInt16BE(messageId, tpl.messageIdOffset);
  return tpl.bytes;
}

/** What the reader hands out; offsets point into `buf`, valid only during the call. */
export interface MqttHandlers {
  connack(returnCode: number, sessionPresent: boolean): void;
  suback(messageId: number, granted: number[]): void;
  /** `qos` from the fixed header; `messageId` is 0 for QoS 0. */
  publish(buf: Buffer, topicStart: number, topicEnd: number, payloadStart: number, payloadEnd: number, qos: number, messageId: number): void;
  puback(messageId: number): void;
  pingresp(): void;
  /** A packet this reader does not know, or a malformed one: the connection should end. */
  error(message: string): void;
}

/**
 * Incremental parser: feed it socket chunks. Whole packets inside one chunk are parsed in place; a
 * packet cut across chunks is reassembled (one copy) first.
 */
export class MqttReader {
  private pending: Buffer | null = null;

  constructor(private readonly h: MqttHandlers) {}

  push(chunk: Buffer): void {
    let buf = chunk;
    if (this.pending) {
      buf = Buffer.concat([this.pending, chunk]);
      this.pending = null;
    }
    let o = 0;
    const end = buf.length;
    while (o < end) {
      if (end - o < 2) break;
      // remaining length varint
      let remaining = 0;
      let multiplier = 1;
      let i = o + 1;
      let complete = false;
      for (let n = 0; n < 4 && i < end; n++) {
        const byte = buf[i++] as number;
        remaining += (byte & 0x7f) * multiplier;
        multiplier *= 128;
        if ((byte & 0x80) === 0) {
          complete = true;
          break;
        }
        if (n === 3) {
          this.h.error('malformed remaining length');
          return;
        }
      }
      if (!complete || i + remaining > end) break;
      this.packet(buf, buf[o] as number, i, i + remaining);
      o = i + remaining;
    }
    if (o < end) this.pending = o === 0 ? buf : buf.subarray(o);
  }

  private packet(buf: Buffer, first: number, start: number, end: number): void {
    const type = first >> 4;
    switch (type) {
      case PACKET.publish: {
        const qos = (first >> 1) & 3;
        const topicLen = buf.readUInt16BE(start);
        const topicStart = start + 2;
        const topicEnd = topicStart + topicLen;
        let p = topicEnd;
        let messageId = 0;
        if (qos > 0) {
          messageId = buf.readUInt16BE(p);
          p += 2;
        }
        if (p > end) return this.h.error('malformed PUBLISH');
        this.h.publish(buf, topicStart, topicEnd, p, end, qos, messageId);
        return;
      }
      case PACKET.puback:
        return this.h.puback(buf.readUInt16BE(start));
      case PACKET.connack:
        return this.h.connack(buf[start + 1] as number, ((buf[start] as number) & 1) === 1);
      case PACKET.suback: {
        const granted: number[] = [];
        for (let i = start + 2; i < end; i++) granted.push(buf[i] as number);
        return this.h.suback(buf.readUInt16BE(start), granted);
      }
      case PACKET.pingresp:
        return this.h.pingresp();
      default:
        return this.h.error(`unexpected packet type ${type}`);
    }
  }
}
