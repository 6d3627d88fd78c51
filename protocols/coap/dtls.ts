/**
 * CoAP over DTLS 1.2 (`coaps`, RFC 7252 §9) on the coaps port. Node has no DTLS server, so the
 * records are handled by a small N-API addon (native/dtls) over the OpenSSL inside the node binary;
 * this file owns everything else:
 *
 *  - the real UDP socket, and one DTLS session per peer address|port. A peer without a session is
 *    only answered through OpenSSL's stateless cookie exchange (HelloVerifyRequest): nothing is kept
 *    for a ClientHello until it comes back with a valid cookie, so a spoofed source cannot make the
 *    gateway hold state or amplify. Sessions are bounded (count, handshake deadline, idle timeout).
 *  - authentication, done during the handshake and re-checked at its end:
 *      PSK    identity = device id; key = the last segment of the device's current token (see
 *             devicePsk). Unknown or revoked identities get a per-process pseudo-random key instead
 *             of an unknown_psk_identity alert (RFC 4279 §2), so device ids cannot be enumerated.
 *      X.509  OpenSSL verifies chain and validity against the gateway CA; the hook then runs
 *             verifyDeviceCertificate (issuer, signature, validity, not a CA, clientAuth, CN = a
 *             device id) and the credential index (the device's current, unrevoked serial).
 *    No session cache, tickets or renegotiation: every session is a full handshake.
 *  - a dgram.Socket look-alike that the `coap` package listens on (mountCoapServer): decrypted
 *    datagrams come out of it as 'message' events with the peer's rsinfo, `send()` encrypts back.
 *    `identify(rsinfo)` gives the resources the device the session authenticated.
 *  - dropDevice(id): the gateway calls it on 'revoked', ending that device's live sessions.
 */
import { createHmac, randomBytes } from 'node:crypto';
import { createSocket, Socket, type RemoteInfo } from 'node:dgram';
import { isIPv6 } from 'node:net';
import { Counter, Gauge } from 'prom-client';
import type { CredentialIndex } from '../../src/core/credentials.js';
import { verifyDeviceCertificate } from '../../src/pki/verify.js';
import { devicePsk, DtlsDatagramSocket, loadDtlsAddon, type NativeResult, type NativeSession } from './dtls-native.js';
import { mountCoapServer, type CoapContext, type MountedServer } from './server.js';

// ---- the endpoint ------------------------------------------------------------------------------

export interface CoapsEdgeDeps {
  credentials: CredentialIndex;
  /** The gateway CA: device certificates must chain to it. */
  caCertPem: string;
  /** The server certificate (chain) and key presented in certificate handshakes. */
  serverCertPem: string;
  serverKeyPem: string;
  /** The HMAC key of device tokens (certs/token.secret): PSKs are derived from it. */
  tokenSecret: Buffer;
}

export interface CoapsEdgeOptions {
  host: string;
  port: number;
  /** Largest datagram the handshake writes (default 1280, the IPv6 minimum MTU). */
  mtu?: number;
  /** Sessions (established or handshaking) at once (default 10 000). */
  maxSessions?: number;
  /** Handshakes in progress at once (default 1 000). */
  maxHandshakes?: number;
  /** A handshake not finished by then is dropped (default 30 s). */
  handshakeTimeoutMs?: number;
  /** A session that received nothing for this long is dropped (default 10 min). */
  idleTimeoutMs?: number;
}

export interface CoapsEdge {
  port(): number;
  /** Live DTLS sessions (handshaking included). */
  sessions(): number;
  /** Ends every session of the device (close_notify); returns how many there were. */
  dropDevice(deviceId: string, reason?: string): number;
  close(): Promise<void>;
}

/**
 * RFC 7925's mandatory suites first (ECDSA ones apply only with an EC server key; ours may be RSA),
 * PSK suites are used only when the client offers PSK. No CBC-without-ECDHE, no SHA-1.
 */
const CIPHERS = [
  'ECDHE-ECDSA-AES128-CCM8',
  'ECDHE-ECDSA-AES128-GCM-SHA256',
  'ECDHE-ECDSA-AES256-GCM-SHA384',
  'ECDHE-RSA-AES128-GCM-SHA256',
  'ECDHE-RSA-AES256-GCM-SHA384',
  'PSK-AES128-CCM8',
  'PSK-AES128-CCM',
  'PSK-AES128-GCM-SHA256',
  'PSK-AES256-GCM-SHA384',
  'ECDHE-PSK-AES128-CBC-SHA256',
].join(':');

interface Session {
  key: string;
  rinfo: RemoteInfo;
  handle: NativeSession;
  /** Set once the handshake is finished and the peer's identity checked. */
  deviceId: string | null;
  auth: 'psk' | 'x509' | null;
  /** Why a hook refused this peer during the handshake (for the log when it fails or expires). */
  refusal: string | null;
  /** Revoked: no more requests in; closes shortly (a final notification may still go out). */
  closing: boolean;
  timer: NodeJS.Timeout | null;
  deadline: number;
  lastSeen: number;
}

const isDtlsHandshake = (msg: Buffer) => msg.length >= 13 && msg[0] === 22 && msg[1] === 0xfe;
/** A ClientHello in epoch 0: a (re)starting client (RFC 6347 §4.2.8). */
const isClientHello = (msg: Buffer) => msg.length >= 25 && isDtlsHandshake(msg) && msg[3] === 0 && msg[4] === 0 && msg[13] === 1;

export async function startCoapsEdge(ctx: CoapContext, deps: CoapsEdgeDeps, opts: CoapsEdgeOptions): Promise<CoapsEdge> {
  const native = loadDtlsAddon();
  const log = ctx.deps.log.child({ transport: 'dtls' });
  const mtu = opts.mtu ?? 1280;
  const maxSessions = opts.maxSessions ?? 10_000;
  const maxHandshakes = opts.maxHandshakes ?? 1_000;
  const handshakeMs = opts.handshakeTimeoutMs ?? 30_000;
  const idleMs = opts.idleTimeoutMs ?? 600_000;
  const registers = [ctx.deps.metrics];
  const handshakes = new Counter({
    name: 'iotgate_coaps_handshakes_total',
    help: 'DTLS handshakes on the coaps port by outcome',
    labelNames: ['outcome'],
    registers,
  });
  const droppedDatagrams = new Counter({
    name: 'iotgate_coaps_dropped_datagrams_total',
    help: 'Datagrams on the coaps port dropped before a session took them',
    labelNames: ['reason'],
    registers,
  });

  const sessions = new Map<string, Session>();
  let handshaking = 0;
  let closed = false;

  // The hooks run synchronously inside native calls; they leave their reason here for the log.
  let refusal: string | null = null;
  const decoyKey = randomBytes(32);
  const ctxHandle = native.createContext({
    cert: deps.serverCertPem,
    key: deps.serverKeyPem,
    ca: deps.caCertPem,
    ciphers: CIPHERS,
    psk: (identity) => {
      const key = devicePsk(deps.credentials, deps.tokenSecret, identity);
      if (key) return key;
      refusal = 'unknown or revoked PSK identity';
      // Same shape as a real key: the handshake fails at Finished, as with a wrong key.
      return Buffer.from(createHmac('sha256', decoyKey).update(identity).digest('base64url'), 'ascii');
    },
    verify: (der) => {
      const check = verifyDeviceCertificate(der, { caCertPem: deps.caCertPem });
      if (!check.ok) {
        refusal = check.reason;
        return false;
      }
      if (deps.credentials.acceptsCertificate(check.deviceId, check.serial)) return true;
      refusal = 'certificate revoked, superseded or unknown';
      // Issued a moment ago by another process? Re-read that device for the client's next try;
      // only for ids the index does not know (the certificate verified cryptographically).
      if (deps.credentials.get(check.deviceId) === undefined) {
        deps.credentials.refresh(check.deviceId).catch((err: unknown) => log.warn({ err }, 'could not re-read a device from the ledger'));
      }
      return false;
    },
  });

  const udp = createSocket({ type: isIPv6(opts.host) ? 'udp6' : 'udp4', reuseAddr: false });
  await new Promise<void>((resolve, reject) => {
    udp.once('error', reject);
    udp.bind(opts.port, opts.host, () => {
      udp.off('error', reject);
      resolve();
    });
  });
  udp.on('error', (err) => log.debug({ err: err.message }, 'coaps socket error'));

  const rawSend = (buf: Buffer, port: number, address: string) => {
    if (closed) return;
    try {
      udp.send(buf, port, address);
    } catch (err) {
      log.debug({ err: (err as Error).message }, 'coaps send failed');
    }
  };
  const flush = (s: Session, r: NativeResult) => {
    for (const d of r.out) rawSend(d, s.rinfo.port, s.rinfo.address);
  };

  const drop = (s: Session, why: string, level: 'debug' | 'info' = 'debug') => {
    if (s.timer) clearTimeout(s.timer);
    s.timer = null;
    if (sessions.get(s.key) !== s) return;
    sessions.delete(s.key);
    if (s.deviceId === null) handshaking--;
    flush(s, native.close(s.handle)); // close_notify when established
    log[level]({ peer: s.key, deviceId: s.deviceId ?? undefined, reason: why }, 'coaps session closed');
  };

  const arm = (s: Session) => {
    if (s.timer) clearTimeout(s.timer);
    const retransmit = native.timeout(s.handle);
    const expiry = Math.min(s.deadline, s.lastSeen + idleMs) - Date.now();
    const wait = retransmit >= 0 ? Math.min(retransmit, expiry) : expiry;
    s.timer = setTimeout(
      () => {
        s.timer = null;
        if (Date.now() >= Math.min(s.deadline, s.lastSeen + idleMs)) {
          if (s.deviceId !== null) return drop(s, 'idle');
          handshakes.inc({ outcome: 'timeout' });
          return drop(s, `handshake timeout${s.refusal ? `: ${s.refusal}` : ''}`, 'info');
        }
        const r = native.handleTimeout(s.handle);
        flush(s, r);
        if (r.error) return drop(s, r.error);
        arm(s);
      },
      Math.max(1, Math.ceil(wait)),
    );
    s.timer.unref();
  };

  /** The handshake finished: bind the session to the device it proved to be. */
  const authenticate = (s: Session): boolean => {
    const p = native.peer(s.handle);
    let deviceId: string | null = null;
    if (p.cert !== undefined) {
      const check = p.verified ? verifyDeviceCertificate(p.cert, { caCertPem: deps.caCertPem }) : null;
      if (check?.ok && deps.credentials.acceptsCertificate(check.deviceId, check.serial)) {
        deviceId = check.deviceId;
        s.auth = 'x509';
      }
    } else if (p.pskIdentity !== undefined) {
      const record = deps.credentials.get(p.pskIdentity);
      if (record && record.revokedAt === null) {
        deviceId = p.pskIdentity;
        s.auth = 'psk';
      }
    }
    if (deviceId === null) {
      handshakes.inc({ outcome: 'refused' });
      drop(s, 'no authenticated identity', 'info');
      return false;
    }
    s.deviceId = deviceId;
    s.deadline = Infinity;
    handshaking--;
    handshakes.inc({ outcome: `ok_${s.auth}` });
    log.info({ peer: s.key, deviceId, auth: s.auth, version: p.version, cipher: p.cipher }, 'coaps session established');
    return true;
  };

  /** Result of a native call on a session: send, check, authenticate, deliver. */
  const settle = (s: Session, r: NativeResult) => {
    flush(s, r);
    if (refusal !== null) s.refusal = refusal;
    refusal = null;
    if (r.error !== undefined || r.closed) {
      const why = r.error ?? 'closed by the peer';
      if (s.deviceId !== null) return drop(s, why);
      handshakes.inc({ outcome: 'failed' });
      return drop(s, `handshake failed: ${s.refusal ?? why}`, 'info');
    }
    if (r.established && s.deviceId === null && !authenticate(s)) return;
    s.lastSeen = Date.now();
    if (s.deviceId !== null && !s.closing) {
      for (const d of r.data ?? []) coapSocket.emit('message', d, { ...s.rinfo, size: d.length });
    }
    arm(s);
  };

  const onDatagram = (msg: Buffer, rinfo: RemoteInfo) => {
    if (closed) return;
    const key = `${rinfo.address}|${rinfo.port}`;
    const existing = sessions.get(key);
    if (existing && !(existing.deviceId !== null && isClientHello(msg))) {
      settle(existing, native.feed(existing.handle, msg));
      return;
    }
    // No session (or a client starting over from the same address and port): cookie exchange.
    if (!isDtlsHandshake(msg)) {
      droppedDatagrams.inc({ reason: 'no_session' });
      return;
    }
    if (!existing && (sessions.size >= maxSessions || handshaking >= maxHandshakes)) {
      droppedDatagrams.inc({ reason: 'busy' });
      return;
    }
    const r = native.accept(ctxHandle, key, mtu, msg);
    for (const d of r.out) rawSend(d, rinfo.port, rinfo.address);
    if (!r.session) return;
    // A valid cookie proves the address: a restarted client replaces its old session.
    if (existing) drop(existing, 'replaced by a new handshake');
    const s: Session = {
      key,
      rinfo: { address: rinfo.address, port: rinfo.port, family: rinfo.family, size: 0 },
      handle: r.session,
      deviceId: null,
      auth: null,
      refusal: null,
      closing: false,
      timer: null,
      deadline: Date.now() + handshakeMs,
      lastSeen: Date.now(),
    };
    sessions.set(key, s);
    handshaking++;
    settle(s, { ...r, out: [] });
  };
  udp.on('message', onDatagram);

  const sendApp = (buf: Buffer, port: number, address: string) => {
    const s = sessions.get(`${address}|${port}`);
    if (!s || s.deviceId === null) return;
    const r = native.write(s.handle, buf);
    flush(s, r);
    if (r.error !== undefined || r.closed) drop(s, r.error ?? 'closed');
  };
  const coapSocket = new DtlsDatagramSocket(sendApp, () => udp.address());

  const mounted: MountedServer = mountCoapServer(ctx, coapSocket as unknown as Socket, {
    protocol: 'coaps',
    identify: (rsinfo) => {
      const s = sessions.get(`${rsinfo.address}|${rsinfo.port}`);
      return s && !s.closing ? s.deviceId : null;
    },
    send: sendApp,
  });

  new Gauge({
    name: 'iotgate_coaps_sessions',
    help: 'DTLS sessions on the coaps port (handshaking included)',
    registers,
    collect() {
      this.set(sessions.size);
    },
  });

  log.info({ port: udp.address().port }, 'coaps (DTLS 1.2) listening');

  return {
    port: () => udp.address().port,
    sessions: () => sessions.size,
    dropDevice(deviceId, reason = 'revoked') {
      let n = 0;
      for (const s of sessions.values()) {
        if (s.deviceId !== deviceId || s.closing) continue;
        n++;
        s.closing = true;
        // Closed on the next turn, so a final notification (e.g. Observe 4.01) can still go out.
        setTimeout(() => drop(s, reason, 'info'), 50).unref();
      }
      return n;
    },
    async close() {
      if (closed) return;
      for (const s of [...sessions.values()]) drop(s, 'shutdown');
      closed = true;
      await mounted.close();
      udp.off('message', onDatagram);
      await new Promise<void>((resolve) => udp.close(() => resolve()));
    },
  };
}
