import type { Logger } from 'pino';
import type { CredentialIndex } from '../../src/core/credentials.js';

export type MqttPrincipal =
  | { kind: 'device'; deviceId: string }
  | { kind: 'service'; sub: string; scopes: ReadonlySet<string> };

export type CertificateCheck =
  | { ok: true; deviceId: string; serial: string }
  | { ok: false; reason: string };

/** What the MQTT edge needs from the gateway. */
export interface MqttEdgeDeps {
  log: Logger;
  credentials: CredentialIndex;
  /** Verifies a presented client certificate (DER) against the CA with node:crypto. */
  verifyDeviceCertificate(der: Buffer): CertificateCheck;
  /** A verified service JWT, or null. */
  verifyServiceToken(token: string): { sub: string; scopes: ReadonlySet<string> } | null;
}
