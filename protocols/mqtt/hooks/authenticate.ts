/**
 * CONNECT authentication (contract §2): on the mTLS listener the client certificate (already
 * chained to our CA and checked against the CRL by the TLS handshake) must be the device's current
 * one and its CN must equal the client id; on the TCP listener username = device id and
 * password = device token, or username = `service:<sub>` and password = a service JWT.
 */
import type { TLSSocket } from 'node:tls';
import type { AuthenticateError, Client } from 'aedes';
import type { MqttEdgeDeps, MqttPrincipal } from '../types.js';

// aedes' AuthErrorCode is a `const enum` in a .d.ts, which isolated modules cannot read.
const BAD_USERNAME_OR_PASSWORD = 4; // [MQTT-3.2.2-3.1.1] CONNACK 0x04
const NOT_AUTHORIZED = 5; // CONNACK 0x05

function authError(code: number, message: string): AuthenticateError {
  return Object.assign(new Error(message), { returnCode: code }) as AuthenticateError;
}

export type AuthenticateHook = (
  client: Client,
  username: Readonly<string | undefined>,
  password: Readonly<Buffer | undefined>,
  done: (error: AuthenticateError | null, success: boolean | null) => void,
) => void;

export function createAuthenticate(deps: MqttEdgeDeps, principals: WeakMap<Client, MqttPrincipal>): AuthenticateHook {
  const log = deps.log;
  return (client, username, password, done) => {
    const conn = client.conn as Partial<TLSSocket>;
    if (conn.encrypted === true && typeof conn.getPeerX509Certificate === 'function') {
      const peer = conn.getPeerX509Certificate();
      const result = peer ? deps.verifyDeviceCertificate(peer.raw) : null;
      if (!result || !result.ok) {
        log.info({ clientId: client.id, reason: result?.reason ?? 'no certificate' }, 'mqtts connect refused');
        return done(authError(NOT_AUTHORIZED, 'certificate not accepted'), false);
      }
      if (result.deviceId !== client.id || !deps.credentials.acceptsCertificate(result.deviceId, result.serial)) {
        log.info({ clientId: client.id, cn: result.deviceId }, 'mqtts connect refused: revoked, superseded or CN != client id');
        return done(authError(NOT_AUTHORIZED, 'certificate not accepted'), false);
      }
      principals.set(client, { kind: 'device', deviceId: result.deviceId });
      return done(null, true);
    }

    if (username === undefined || password === undefined) {
      return done(authError(BAD_USERNAME_OR_PASSWORD, 'username and password required'), false);
    }
    const secret = password.toString('utf8');
    if (username.startsWith('service:')) {
      const service = deps.verifyServiceToken(secret);
      if (!service || `service:${service.sub}` !== username) {
        log.info({ clientId: client.id, username }, 'mqtt service connect refused');
        return done(authError(BAD_USERNAME_OR_PASSWORD, 'bad service credentials'), false);
      }
      principals.set(client, { kind: 'service', sub: service.sub, scopes: service.scopes });
      return done(null, true);
    }
    const deviceId = deps.credentials.authenticateToken(secret);
    if (deviceId === null || deviceId !== username || client.id !== deviceId) {
      log.info({ clientId: client.id, username }, 'mqtt device connect refused');
      return done(authError(BAD_USERNAME_OR_PASSWORD, 'bad device credentials'), false);
    }
    principals.set(client, { kind: 'device', deviceId });
    return done(null, true);
  };
}
