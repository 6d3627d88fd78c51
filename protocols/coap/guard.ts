/**
 * The first stage for every datagram (replaces the `coap` package's own parse stage): a datagram
 * that is not CoAP is dropped and counted (the package would answer 5.00 to a guessed address);
 * a Block1 upload that would exceed the payload limit is refused with 4.13 and Size1 (RFC 7959
 * §2.9.3) before the package buffers it, and at most `maxBlockTransfers` uploads are assembled at
 * once (5.03 otherwise), so no client can make the gateway allocate what the limit forbids.
 */
import type { Socket } from 'node:dgram';
import { generate, parse, type ParsedPacket } from 'coap-packet';
import type { Counter } from 'prom-client';

/** What the `coap` package's middleware chain passes along (lib/middlewares.js). */
export interface MiddlewareRequest {
  raw: Buffer;
  rsinfo: { address: string; port: number };
  packet?: ParsedPacket;
  /** Set by this stage to make the package's request handler skip the datagram. */
  proxy?: unknown;
}

export interface BlockBounds {
  maxPayloadBytes: number;
  maxTransfers: number;
}

/**
 * The key of a block-wise transfer: client endpoint + request URI (RFC 7959 §2.4/§2.5: blocks of one
 * body are matched by endpoint and URI; the token may change, and libcoap does change it per block).
 */
export function transferKey(client: string, packet: { code?: string; options?: { name: string | number; value: Buffer }[] }): string {
  let key = `${client}/${packet.code ?? ''}`;
  for (const o of packet.options ?? []) {
    if (o.name === 'Uri-Path') key += `/${o.value.toString('utf8')}`;
    else if (o.name === 'Uri-Query') key += `?${o.value.toString('utf8')}`;
  }
  return key;
}

/** RFC 7959 §2.2: NUM | M | SZX in 0–3 bytes. */
export function parseBlockOption(value: Buffer): { num: number; more: boolean; szx: number } | null {
  if (value.length > 3) return null;
  let v = 0;
  for (const b of value) v = (v << 8) | b;
  return { num: v >> 4, more: (v & 0x08) !== 0, szx: v & 0x07 };
}

function uint(n: number): Buffer {
  if (n < 0x100) return Buffer.from([n]);
  if (n < 0x10000) return Buffer.from([n >> 8, n & 0xff]);
  return Buffer.from([(n >> 24) & 0xff, (n >> 16) & 0xff, (n >> 8) & 0xff, n & 0xff]);
}

export function createGuard(opts: { send: (buf: Buffer, port: number, address: string) => void; bounds: BlockBounds; dropped: Counter<'reason'> }) {
  const { bounds } = opts;
  /** Uploads in progress: key → expiry (ms). */
  const transfers = new Map<string, number>();
  const TRANSFER_TTL_MS = 247_000; // EXCHANGE_LIFETIME (RFC 7252 §4.8.2)

  const refuse = (req: MiddlewareRequest, packet: ParsedPacket, code: string, diagnostic: string, options: { name: string; value: Buffer }[] = []) => {
    const out = generate({
      code,
      messageId: packet.confirmable ? packet.messageId : undefined,
      token: packet.token,
      ack: packet.confirmable,
      confirmable: false,
      options: options as never,
      payload: Buffer.from(diagnostic),
    });
    opts.send(out, req.rsinfo.port, req.rsinfo.address);
    req.proxy = 'refused';
  };

  return function guard(req: MiddlewareRequest, next: (err: Error | null) => void): void {
    let packet: ParsedPacket;
    try {
      packet = parse(req.raw);
    } catch {
      opts.dropped.inc({ reason: 'malformed' });
      req.proxy = 'dropped';
      return next(null);
    }
    req.packet = packet;
    const block1 = packet.options.find((o) => o.name === 'Block1');
    if (block1 && packet.code !== undefined && packet.code.startsWith('0.')) {
      const b = parseBlockOption(block1.value);
      if (!b || b.szx === 7) {
        refuse(req, packet, '4.00', 'invalid Block1 option');
        return next(null);
      }
      const size = 1 << (b.szx + 4);
      if (b.num * size + packet.payload.length > bounds.maxPayloadBytes) {
        opts.dropped.inc({ reason: 'too_large' });
        refuse(req, packet, '4.13', `the payload limit is ${bounds.maxPayloadBytes} bytes`, [{ name: 'Size1', value: uint(bounds.maxPayloadBytes) }]);
        return next(null);
      }
      const key = transferKey(`${req.rsinfo.address}:${req.rsinfo.port}`, packet);
      const now = Date.now();
      if (b.more) {
        if (!transfers.has(key)) {
          for (const [k, exp] of transfers) if (exp <= now) transfers.delete(k);
          if (transfers.size >= bounds.maxTransfers) {
            opts.dropped.inc({ reason: 'busy' });
            refuse(req, packet, '5.03', 'too many block-wise uploads in progress; retry later', [{ name: 'Max-Age', value: uint(5) }]);
            return next(null);
          }
        }
        transfers.set(key, now + TRANSFER_TTL_MS);
      } else transfers.delete(key);
    }
    next(null);
  };
}
