/**
 * A CoAP client on a raw dgram socket for tests that need to see every datagram (empty ACKs,
 * separate responses, retransmissions, Observe notifications) or send bytes no library would.
 * Messages are encoded and decoded with coap-packet.
 */
import { randomBytes } from 'node:crypto';
import { createSocket, type Socket } from 'node:dgram';
import { generate, parse, type Packet, type ParsedPacket } from 'coap-packet';
import type { Teardown } from './gateway.js';
import { withDeadline } from './mqtt.js';

export interface Received extends ParsedPacket {
  raw: Buffer;
}

export interface WaitOptions {
  /** Deadline (default 5 s). */
  ms?: number;
  /** Look only at datagrams received from this index on (default 0). */
  from?: number;
  /** The n-th (0-based) match (default 0). */
  nth?: number;
}

export class RawCoap {
  readonly received: Received[] = [];
  /** ACK every CON message from the server (an Observe client must, or it is dropped). */
  ackCon = true;
  private readonly waiters = new Set<() => void>();
  private mid = Math.floor(Math.random() * 50_000);

  private constructor(
    readonly socket: Socket,
    private readonly port: number,
  ) {
    socket.on('message', (raw) => {
      let p: ParsedPacket;
      try {
        p = parse(raw);
      } catch {
        return;
      }
      this.received.push({ ...p, raw });
      if (p.confirmable && this.ackCon) this.sendRaw(generate({ code: '0.00', ack: true, messageId: p.messageId }));
      for (const w of this.waiters) w();
    });
  }

  /** A client bound to a free loopback port, talking to the gateway's CoAP `port`; closed with `t`. */
  static async open(t: Teardown, port: number): Promise<RawCoap> {
    const socket = createSocket('udp4');
    await new Promise<void>((resolve) => socket.bind(0, '127.0.0.1', resolve));
    t.after(() => socket.close());
    return new RawCoap(socket, port);
  }

  nextMessageId(): number {
    this.mid = (this.mid + 1) & 0xffff;
    return this.mid;
  }

  sendRaw(buf: Buffer): void {
    this.socket.send(buf, this.port, '127.0.0.1');
  }

  /** Sends a CON request (unless told otherwise) with a fresh message id and token; returns the datagram. */
  send(packet: Packet): Buffer {
    const buf = generate({ confirmable: true, messageId: this.nextMessageId(), token: randomBytes(4), ...packet }, 65_000);
    this.sendRaw(buf);
    return buf;
  }

  /** A received datagram (already here or future) that matches: the first, or the `nth`. */
  waitFor(match: (p: Received) => boolean, what: string, opts: WaitOptions = {}): Promise<Received> {
    const { ms = 5000, from = 0, nth = 0 } = opts;
    const find = () => this.received.slice(from).filter(match)[nth];
    const found = find();
    if (found) return Promise.resolve(found);
    let check: (() => void) | undefined;
    const arrived = new Promise<Received>((resolve) => {
      check = () => {
        const p = find();
        if (p) resolve(p);
      };
      this.waiters.add(check);
    });
    return withDeadline(arrived, ms, what).finally(() => check && this.waiters.delete(check));
  }

  /** Everything (not empty ACKs) the server sent for `token`, in order. */
  forToken(token: Buffer): Received[] {
    return this.received.filter((p) => p.code !== '0.00' && p.token.equals(token));
  }

  /** Sends `datagram` as is and resolves the first response (not an empty ACK) for its token after it. */
  exchange(datagram: Buffer, what: string): Promise<Received> {
    const { token } = parse(datagram);
    const from = this.received.length;
    this.sendRaw(datagram);
    return this.waitFor((p) => p.code !== '0.00' && p.token.equals(token), what, { from });
  }

  /** Sends a request and resolves its response (piggybacked or separate). */
  request(packet: Packet, what: string): Promise<Received> {
    const from = this.received.length;
    const { token } = parse(this.send(packet));
    return this.waitFor((p) => p.code !== '0.00' && p.token.equals(token), what, { from });
  }
}
