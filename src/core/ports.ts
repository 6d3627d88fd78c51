/**
 * Ports: what core needs from the outside world. Each has a memory implementation (and Redis in
 * its own issue), and each ships a contract suite in test/contracts/ that every implementation runs.
 */
import type { CertificateInfo, CredentialRecord, DeviceProtocol, DeviceRecord, TelemetryRecord } from './model.js';
import type { StoredShadow } from './shadow.js';
import type { CommandRecord, CommandResponse, CommandState } from './commands.js';

export interface DeviceListQuery {
  type?: string;
  online?: boolean;
  /** 1..1000 */
  limit: number;
  /** Opaque cursor from a previous page's `nextCursor`. */
  cursor?: string;
}

export interface DevicePage {
  items: DeviceRecord[];
  nextCursor: string | null;
}

/** Device registry: one record per known device, listed in id order. */
export interface DeviceRegistry {
  get(id: string): Promise<DeviceRecord | null>;
  /** Inserts a new record; resolves false (and changes nothing) when the id exists. */
  create(record: DeviceRecord): Promise<boolean>;
  /** Applies a partial change; resolves the new record, or null when the id is unknown. */
  update(id: string, patch: Partial<Omit<DeviceRecord, 'id'>>): Promise<DeviceRecord | null>;
  /** Resolves true when a record was removed. */
  delete(id: string): Promise<boolean>;
  /** Pages through devices in ascending id order, filtered by type and online. */
  list(query: DeviceListQuery): Promise<DevicePage>;
  close(): Promise<void>;
}

/** A certificate the CA issued. */
export interface IssuedCertificate extends CertificateInfo {
  certificatePem: string;
}

/** A freshly minted device token and the id that the ledger records for it. */
export interface MintedToken {
  token: string;
  tokenId: string;
}

/**
 * The certificate authority (src/pki implements it with node-forge / @peculiar/x509 over the
 * certs dir). Pure crypto: it records nothing; callers store the result in the CredentialLedger.
 */
export interface CertificateAuthority {
  readonly caCertificatePem: string;
  /**
   * Verifies a PKCS#10 CSR (PEM; RSA or P-256; self-signature valid; subject CN equal to `id`)
   * and issues a device certificate (CN = id, OU = type). Throws GatewayError `csr_invalid` with
   * the reason.
   */
  issueFromCsr(csrPem: string, device: { id: string; type: string }): Promise<IssuedCertificate>;
  /** Generates a key pair and issues a certificate for it (operator provisioning). */
  issueWithKey(
    device: { id: string; type: string },
    opts?: { keyType?: 'rsa' | 'ec' },
  ): Promise<IssuedCertificate & { privateKeyPem: string }>;
  /** A new device token bound to `deviceId`. */
  mintDeviceToken(deviceId: string): MintedToken;
  /** Checks a token's integrity (not revocation); null when it is not one of ours. */
  parseDeviceToken(token: string): { deviceId: string; tokenId: string } | null;
}

/**
 * The CA database: one credential record per device id, shared between the CLI and a running
 * gateway (files in the certs dir now; Redis in its own issue). Revocation writes the CRL too.
 */
export interface CredentialLedger {
  get(id: string): Promise<CredentialRecord | null>;
  /** Writes (creates or replaces) a record. */
  put(record: CredentialRecord): Promise<void>;
  /** Marks the record revoked (keeps it for the CRL); resolves it, or null when unknown. */
  revoke(id: string, at: number): Promise<CredentialRecord | null>;
  list(): Promise<CredentialRecord[]>;
  /**
   * Calls `onChange` with every record that changed since the last call, also when another
   * process wrote them; the first call delivers every record. Returns a stop function.
   */
  watch(onChange: (changed: CredentialRecord[]) => void, intervalMs: number): () => void;
}

export interface TelemetryQuery {
  /** epoch ms, inclusive */
  since?: number;
  /** epoch ms, inclusive */
  until?: number;
  /** The newest `limit` records in the range, returned oldest first. */
  limit: number;
}

/**
 * Telemetry history and latest value per device, bounded by count and age. `append` is on the hot
 * path: an implementation that can answer synchronously returns undefined instead of a promise.
 * One that serialized the record resolves with that JSON text, so the record's CloudEvent reuses
 * it (the Redis event stream) instead of serializing it again.
 */
export interface TelemetryStore {
  append(record: TelemetryRecord): void | Promise<string | void>;
  history(deviceId: string, query: TelemetryQuery): Promise<TelemetryRecord[]>;
  latest(deviceId: string): Promise<TelemetryRecord | null>;
  /** Drops everything of a device (it was deleted). */
  forget(deviceId: string): Promise<void>;
  close(): Promise<void>;
}

/** Why a telemetry payload was refused (contract §6); `path` points into the document. */
export interface TelemetryRejection {
  code: 'undecodable' | 'schema_violation' | 'too_large' | 'too_deep' | 'unsupported_content_type' | 'unknown_type';
  message: string;
  path?: string;
}

export type TelemetryDecodeResult =
  | { ok: true; value: Record<string, unknown>; deviceTime: number | null }
  | { ok: false; error: TelemetryRejection };

/** Decode + validate of one device type's telemetry (src/codecs implements it). */
export interface TelemetryDecoder {
  decodeTelemetry(payload: Buffer, contentType?: 'json' | 'protobuf'): TelemetryDecodeResult;
}

/**
 * Device shadows, one document per (device, name); name '' is the classic shadow. Writes are
 * compare-and-set on the version, so concurrent writers never lose an update.
 */
export interface ShadowStore {
  get(deviceId: string, name: string): Promise<StoredShadow | null>;
  /**
   * Stores `next` only if the stored version is `expectedVersion` (null: no document yet).
   * Resolves false, changing nothing, when another write got there first.
   */
  compareAndSet(deviceId: string, name: string, expectedVersion: number | null, next: StoredShadow): Promise<boolean>;
  /** Names of the device's named shadows (not the classic one), sorted. */
  names(deviceId: string): Promise<string[]>;
  /** Drops every shadow of a device (it was deleted). */
  forgetDevice(deviceId: string): Promise<void>;
  close(): Promise<void>;
}

export interface CommandListQuery {
  /** Only records in one of these states (all when absent). */
  states?: readonly CommandState[];
  /** 1..1000 */
  limit: number;
  /** Opaque cursor from a previous page's `nextCursor`. */
  cursor?: string;
}

export interface CommandPage {
  items: CommandRecord[];
  nextCursor: string | null;
}

export type CommandCreateResult =
  | { kind: 'created'; record: CommandRecord }
  /** The device already has a command with this idempotency key: that one, unchanged. */
  | { kind: 'existing'; record: CommandRecord }
  /** The device already has `maxUndelivered` commands in `queued` or `sent`: nothing stored. */
  | { kind: 'full'; undelivered: number };

/** What a state change writes besides the state. */
export interface CommandTransition {
  state: CommandState;
  updatedAt: number;
  response?: CommandResponse;
}

/**
 * Command records per device, in creation order. Every change is compare-and-set on the state,
 * so two writers (two requests, two gateways) can never both move one command: exactly one
 * `sent → delivered`, exactly one answer, no answer after a cancel.
 */
export interface CommandStore {
  /**
   * Stores a new record, atomically with two checks: an `idempotencyKey` the device already used
   * returns that command (`existing`); more than `maxUndelivered` queued-or-sent commands of the
   * device refuses it (`full`).
   */
  create(record: CommandRecord, opts: { maxUndelivered: number }): Promise<CommandCreateResult>;
  get(deviceId: string, id: string): Promise<CommandRecord | null>;
  /**
   * Moves a command to `change.state` only if its current state is one of `from`. Resolves the
   * new record, or null (changing nothing) when it is unknown or in another state.
   */
  transition(deviceId: string, id: string, from: readonly CommandState[], change: CommandTransition): Promise<CommandRecord | null>;
  /** A page of the device's commands in creation order (oldest first). */
  list(deviceId: string, query: CommandListQuery): Promise<CommandPage>;
  /** The device's open commands (queued, sent, delivered) in creation order. */
  open(deviceId: string): Promise<CommandRecord[]>;
  /** Every open command of every device (to re-arm expiry timers after a restart). */
  openAll(): Promise<CommandRecord[]>;
  /** Drops everything of a device (it was deleted). */
  forgetDevice(deviceId: string): Promise<void>;
  close(): Promise<void>;
}

/** Who holds a device's presence: a gateway and the session whose connect wrote it. */
export interface PresenceOwner {
  gateway: string;
  session: string;
}

/** A connect: always applies (the newest connection holds the presence). */
export interface PresenceOnline {
  online: true;
  owner: PresenceOwner;
  protocol: DeviceProtocol;
  /** connectedAt and lastSeen (epoch ms). */
  at: number;
  /** The new version is above both this and the stored one. */
  minVersion: number;
}

/** A disconnect: applies only while `owner` still holds the presence (no `session`: any session of that gateway). */
export interface PresenceOffline {
  online: false;
  owner: { gateway: string; session?: string };
  /** Written as lastSeen when given (a reaper leaves the last one the dead gateway wrote). */
  lastSeen?: number;
  minVersion: number;
}

export type PresenceWrite =
  /** `protocol`: the one the record had before this change. */
  | { status: 'applied'; version: number; protocol: DeviceProtocol | null }
  /** No record. */
  | { status: 'unknown' }
  /** An offline whose owner no longer holds the presence: nothing was written. */
  | { status: 'not_owner' };

/**
 * Presence writes of the device registry, atomic per device (both stores implement it; see
 * docs/redis.md for the Redis layout and src/core/presence.ts for who calls it).
 */
export interface PresenceStore {
  /** Sets online/protocol/connectedAt/lastSeen/presenceVersion and the owner; an offline is compare-and-set on the owner. */
  writePresence(id: string, change: PresenceOnline | PresenceOffline): Promise<PresenceWrite>;
  /**
   * Ids of the devices whose presence `gateway` may hold, in batches: every device it holds, and
   * maybe some it held once (the owner check is writePresence's).
   */
  presenceHeldBy(gateway: string): AsyncIterable<string[]>;
  /** Drops what presenceHeldBy knows of `gateway` (gone, and its devices handled). */
  forgetGateway(gateway: string): Promise<void>;
}
