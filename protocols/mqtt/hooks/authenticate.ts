/**
 * CONNECT authentication (contract §2): on the mTLS listener the client certificate (already
 * chained to our CA and checked against the CRL by the TLS handshake) must be the device's current
 * one and its CN must equal the client id; on TCP and WebSocket, username = device id and
 * password = device token, or username = `service:<sub>` and password = a service JWT with scope
 * `admin` or `telemetry:read`. A will must name a topic its client may publish on, and the
 * keepalive must be within 1..broker.keepaliveMaxSeconds (refused with 0x05: 3.1.1 has no better code).
 */
import type { TLSSocket } from 'node:tls';
import type { AuthenticateError, Client } from 'aedes';
import type { EdgeContext, RejectionReason } from '../context.js';
import type { MqttPrincipal } from '../types.js';
import { devicePublishVerdict, servicePublishVerdict } from '../topics.js';
import { forgetConnectPacket } from '../connect-packet.js';
import type { ConnectFacts } from './pre-connect.js';

// aedes' AuthErrorCode is a `const enum` in a .d.ts, which isolated modules cannot read.
// Contract §2: credential failures are CONNACK 0x04/0x05; only an empty client id is 0x02.
const IDENTIFIER_REJECTED = 2; // [MQTT-3.1.3-8]
const BAD_USERNAME_OR_PASSWORD = 4;
const NOT_AUTHORIZED = 5;
const SERVER_UNAVAILABLE = 3;

type Done = (error: AuthenticateError | null, success: boolean | null) => void;

export function createAuthenticate(ctx: EdgeContext, facts: WeakMap<Client, ConnectFacts>) {
  const log = ctx.deps.log;
  const refuse = (client: Client, done: Done, code: number, reason: RejectionReason, message: string, extra: Record<string, unknown> = {}) => {
    ctx.deps.log.info({ clientId: client.id, reason: message, ...extra }, 'mqtt connect refused');
    ctx.rejections.inc({ reason });
    done(Object.assign(new Error(message), { returnCode: code }) as AuthenticateError, false);
  };

  async function principalFor(client: Client, username: string | undefined, password: Buffer | undefined, done: Done): Promise<MqttPrincipal | null> {
    if (ctx.sessions.connection(client)?.protocol === 'mqtts') {
      const peer = (client.conn as TLSSocket).getPeerX509Certificate?.();
      const result = peer ? ctx.deps.verifyDeviceCertificate(peer.raw) : null;
      if (!result || !result.ok) {
        refuse(client, done, NOT_AUTHORIZED, 'auth_failed', `certificate not accepted: ${result?.reason ?? 'none presented'}`);
        return null;
      }
      if (result.deviceId !== client.id) {
        refuse(client, done, NOT_AUTHORIZED, 'auth_failed', 'client id differs from the certificate CN', { cn: result.deviceId });
        return null;
      }
      if (!(await ctx.deps.credentials.acceptsCertificateFresh(result.deviceId, result.serial))) {
        refuse(client, done, NOT_AUTHORIZED, 'auth_failed', 'certificate revoked or superseded', { serial: result.serial });
        return null;
      }
      return { kind: 'device', deviceId: result.deviceId };
    }
    if (username === undefined || password === undefined) {
      refuse(client, done, BAD_USERNAME_OR_PASSWORD, 'auth_failed', 'username and password required');
      return null;
    }
    const secret = password.toString('utf8');
    if (username.startsWith('service:')) {
      const service = ctx.deps.verifyServiceToken(secret);
      if (!service || `service:${service.sub}` !== username) {
        refuse(client, done, BAD_USERNAME_OR_PASSWORD, 'auth_failed', 'bad service credentials', { username });
        return null;
      }
      if (!service.scopes.has('admin') && !service.scopes.has('telemetry:read')) {
        refuse(client, done, NOT_AUTHORIZED, 'auth_failed', 'service JWT needs scope admin or telemetry:read', { username });
        return null;
      }
      return { kind: 'service', sub: service.sub, scopes: service.scopes };
    }
    const deviceId = await ctx.deps.credentials.authenticateTokenFresh(secret);
    if (deviceId === null || deviceId !== username) {
      refuse(client, done, BAD_USERNAME_OR_PASSWORD, 'auth_failed', 'bad device credentials', { username });
      return null;
    }
    if (client.id !== deviceId) {
      refuse(client, done, NOT_AUTHORIZED, 'auth_failed', 'client id must equal the device id', { username });
      return null;
    }
    return { kind: 'device', deviceId };
  }

  return (client: Client, username: Readonly<string | undefined>, password: Readonly<Buffer | undefined>, done: Done): void => {
    const packet = facts.get(client);
    let willTopic: string | null = null;
    if (packet !== undefined) {
      facts.delete(client);
      willTopic = packet.will?.topic ?? null;
      // The credentials are the arguments now: the parser need not keep them for the connection's life.
      forgetConnectPacket(client, packet);
      if (!packet.clientId) return refuse(client, done, IDENTIFIER_REJECTED, 'identifier_rejected', 'empty client id');
      const keepalive = packet.keepalive ?? 0;
      const maxKeepalive = ctx.deps.settings.keepaliveMaxSeconds;
      if (keepalive === 0 || keepalive > maxKeepalive) {
        return refuse(client, done, NOT_AUTHORIZED, 'keepalive_refused', `keepalive must be 1..${maxKeepalive} s, got ${keepalive}`);
      }
    }
    // Redis down: refuse now rather than let the session lookups wait for it.
    if (ctx.deps.available?.() === false) {
      return refuse(client, done, SERVER_UNAVAILABLE, 'unavailable', 'the gateway cannot reach its store; retry later');
    }
    void principalFor(client, username, password, done).then(
      (principal) => {
        if (principal) finish(principal);
      },
      (err: unknown) => {
        log.error({ err, clientId: client.id }, 'mqtt authentication failed');
        done(Object.assign(new Error('server unavailable'), { returnCode: 3 }) as AuthenticateError, false);
      },
    );

    function finish(principal: MqttPrincipal): void {
      if (willTopic !== null) {
        const verdict =
          principal.kind === 'device' ? devicePublishVerdict(principal.deviceId, willTopic) : servicePublishVerdict(principal.scopes, willTopic);
        if (!verdict.ok) return refuse(client, done, NOT_AUTHORIZED, 'will_not_authorized', `will topic refused: ${verdict.reason}`);
      }
      ctx.sessions.authenticated(client, principal);
      log.debug({ clientId: client.id, kind: principal.kind }, 'mqtt client authenticated');
      done(null, true);
    }
  };
}
