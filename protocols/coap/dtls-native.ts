/**
 * The DTLS side of the CoAP edge that is not the edge itself (dtls.ts): the N-API addon's interface
 * and its loader (native/dtls, built against the OpenSSL inside node), the device PSK derived from
 * the device token, and the socket look-alike the `coap` package is given for decrypted traffic.
 */
import { createHmac } from 'node:crypto';
import { Socket } from 'node:dgram';
import { EventEmitter } from 'node:events';
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { CredentialIndex } from '../../src/core/credentials.js';

// ---- the addon ---------------------------------------------------------------------------------

declare const nativeBrand: unique symbol;
export type NativeContext = { readonly [nativeBrand]: 'context' };
export type NativeSession = { readonly [nativeBrand]: 'session' };

export interface NativeResult {
  /** Datagrams to send to the peer, in order. */
  out: Buffer[];
  /** Decrypted application datagrams (feed/accept only). */
  data?: Buffer[];
  established: boolean;
  /** The session is over (fatal error or close_notify): drop it. */
  closed: boolean;
  error?: string;
  /** accept(): set once a ClientHello with a valid cookie became a session. */
  session?: NativeSession;
}

export interface NativePeer {
  pskIdentity?: string;
  /** DER of the peer's leaf certificate. */
  cert?: Buffer;
  cipher?: string;
  version?: string;
  verified?: boolean;
}

export interface DtlsAddon {
  createContext(opts: {
    cert?: string;
    key?: string;
    ca?: string;
    ciphers?: string;
    psk?: (identity: string) => Buffer | null;
    verify?: (leafDer: Buffer) => boolean;
  }): NativeContext;
  accept(ctx: NativeContext, peerKey: string, mtu: number, datagram: Buffer): NativeResult;
  feed(session: NativeSession, datagram: Buffer): NativeResult;
  write(session: NativeSession, plaintext: Buffer): NativeResult;
  timeout(session: NativeSession): number;
  handleTimeout(session: NativeSession): NativeResult;
  peer(session: NativeSession): NativePeer;
  close(session: NativeSession): NativeResult;
}

const ADDON_FILE = join('native', 'dtls', 'build', 'Release', 'dtls_native.node');

/** Where the addon is, from protocols/coap (tsx) or dist/protocols/coap (compiled). */
export function dtlsAddonPath(): string | null {
  const here = dirname(fileURLToPath(import.meta.url));
  for (const root of [join(here, '..', '..'), join(here, '..', '..', '..')]) {
    const candidate = join(root, ADDON_FILE);
    if (existsSync(candidate)) return candidate;
  }
  return null;
}

let addon: DtlsAddon | undefined;

/** Loads the addon once; throws an Error that says how to build it when it is missing. */
export function loadDtlsAddon(): DtlsAddon {
  if (addon) return addon;
  const path = dtlsAddonPath();
  if (path === null) {
    throw new Error(
      `coaps is enabled but the DTLS addon is not built (${ADDON_FILE} is missing): run "npm run build:dtls" ` +
        '(needs a C compiler, make and python3; see scripts/build-dtls.mjs), or set coaps.enabled=false',
    );
  }
  try {
    addon = createRequire(import.meta.url)(path) as DtlsAddon;
  } catch (err) {
    throw new Error(`could not load the DTLS addon ${path} (rebuild it with "npm run build:dtls"): ${(err as Error).message}`, { cause: err });
  }
  return addon;
}

// ---- PSK ---------------------------------------------------------------------------------------

/**
 * The device token for `deviceId` with token id `tokenId`, re-derived with the CA's token secret.
 * Mirrors PkiAuthority.mintDeviceToken (`dt1.<base64url(id)>.<tokenId>.<HMAC-SHA256>`); devicePsk
 * checks the result with the credential index, so a divergence fails closed.
 */
export function deriveDeviceToken(tokenSecret: Buffer, deviceId: string, tokenId: string): string {
  const body = `dt1.${Buffer.from(deviceId, 'utf8').toString('base64url')}.${tokenId}`;
  return `${body}.${createHmac('sha256', tokenSecret).update(body).digest('base64url')}`;
}

/**
 * The PSK of a device: the last `.`-separated segment of its current device token (the 43-character
 * base64url HMAC, 256 bits), as ASCII bytes; null when the device is unknown or revoked.
 *
 * Why not the whole token: it is 75+ bytes, and RFC 4279 §5.3 only requires DTLS stacks to take
 * PSKs up to 64 bytes — libcoap's coap-client silently cuts `-k` at 64 bytes, mbedTLS and tinydtls
 * default to 32 or less. The MAC segment is the token's secret part, fits, and stays printable.
 * Only the device's current token id yields the key, so a re-provisioned device's old token fails.
 */
export function devicePsk(credentials: CredentialIndex, tokenSecret: Buffer, identity: string): Buffer | null {
  const record = credentials.get(identity);
  if (!record || record.revokedAt !== null) return null;
  const token = deriveDeviceToken(tokenSecret, identity, record.tokenId);
  if (credentials.authenticateToken(token) !== identity) return null;
  return Buffer.from(token.slice(token.lastIndexOf('.') + 1), 'ascii');
}

// ---- the socket look-alike -----------------------------------------------------------------------

type SendCallback = (error: Error | null, bytes: number) => void;

/**
 * What the `coap` package sees: an EventEmitter whose prototype chains to dgram.Socket.prototype
 * (it checks `instanceof dgram.Socket` before answering retransmitted CONs from its cache).
 * Only send, address and close are used; everything else of dgram.Socket must not be called.
 */
export class DtlsDatagramSocket extends EventEmitter {
  constructor(
    private readonly sendTo: (buf: Buffer, port: number, address: string) => void,
    private readonly local: () => ReturnType<Socket['address']>,
  ) {
    super();
  }

  /** send(buf, [offset, length,] port, address[, cb]) like dgram.Socket. */
  send(buf: Buffer | Uint8Array, ...rest: unknown[]): void {
    let data = Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength);
    let args = rest;
    if (typeof args[0] === 'number' && typeof args[1] === 'number') {
      const [offset, length] = args as [number, number];
      data = data.subarray(offset, offset + length);
      args = args.slice(2);
    }
    const [port, address] = args as [unknown, unknown];
    const cb = args.find((a): a is SendCallback => typeof a === 'function');
    // `coap` sends some errors without an address (server._sendError): that peer is unknowable.
    if (typeof port === 'number' && typeof address === 'string') this.sendTo(data, port, address);
    // Like UDP, a datagram that cannot go out is lost without an error: `coap` turns send errors
    // into 'error' events on responses that nobody listens to.
    if (cb) process.nextTick(cb, null, data.length);
  }

  address(): ReturnType<Socket['address']> {
    return this.local();
  }

  close(cb?: () => void): this {
    if (cb) process.nextTick(cb);
    return this;
  }

  ref(): this {
    return this;
  }

  unref(): this {
    return this;
  }
}
Object.setPrototypeOf(DtlsDatagramSocket.prototype, Socket.prototype);
