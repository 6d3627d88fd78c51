/** Protocol-neutral records shared by every door of the gateway (contract sections 2 and 8). */

/** Contract §2: device id syntax. */
export const DEVICE_ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$/;

export function isDeviceId(id: string): boolean {
  return DEVICE_ID_PATTERN.test(id);
}

/** Contract §2: service scopes. `admin` implies all. */
export const SCOPES = [
  'devices:read',
  'devices:write',
  'telemetry:read',
  'commands:send',
  'shadow:read',
  'shadow:write',
  'firmware:write',
  'provision',
  'admin',
] as const;
export type Scope = (typeof SCOPES)[number];

export function isScope(s: string): s is Scope {
  return (SCOPES as readonly string[]).includes(s);
}

/** How a device is connected right now (null when offline or never seen). */
export type DeviceProtocol = 'mqtt' | 'mqtts' | 'mqtt-ws' | 'coap' | 'coaps' | 'http';

export interface CertificateInfo {
  /** Hex serial number, upper case, as `openssl x509 -serial` prints it. */
  serial: string;
  /** ISO 8601. */
  notAfter: string;
}

/** Contract §8 device record. Times are epoch milliseconds. */
export interface DeviceRecord {
  id: string;
  type: string;
  createdAt: number;
  online: boolean;
  protocol: DeviceProtocol | null;
  lastSeen: number | null;
  connectedAt: number | null;
  certificate: CertificateInfo | null;
  firmware: { current: string | null; target: string | null; state: string | null } | null;
  /** Internal: version of the last presence change (the `version` of `devices/{id}/status`). */
  presenceVersion?: number;
}

/**
 * What the certificate authority remembers of one device's credentials (the CA database, like
 * OpenSSL's index.txt). Kept in the certs dir so the CLI and a running gateway share it.
 */
export interface CredentialRecord {
  id: string;
  type: string;
  /** Serial of the current certificate (hex, upper case), or null if only a token was issued. */
  serial: string | null;
  notAfter: string | null;
  /** Identifies the current device token; older tokens of the same device no longer verify. */
  tokenId: string;
  issuedAt: number;
  /** Set when revoked; a revoked record keeps its serial for the CRL. */
  revokedAt: number | null;
  /** Serials of every certificate ever revoked for this id (for the CRL). */
  revokedSerials: string[];
}

/** A verified caller. */
export type Principal =
  | { kind: 'device'; deviceId: string }
  | { kind: 'service'; sub: string; scopes: ReadonlySet<string> };

/** One accepted telemetry message in canonical form (contract §6, §9 `data` of iotgate.telemetry). */
export interface TelemetryRecord {
  /** Unique id (also the CloudEvent id). */
  id: string;
  deviceId: string;
  type: string;
  protocol: DeviceProtocol;
  /** epoch ms when the gateway accepted it */
  receivedAt: number;
  /** epoch ms the device put in the message, if any */
  deviceTime: number | null;
  data: Record<string, unknown>;
}
