/**
 * Device lifecycle as seen by REST and the CLI: register (CSR), look up, list, delete (revoke and
 * forget). Keeps the registry in step with the credential index.
 */
import type { Logger } from 'pino';
import type { CertificateAuthority, CredentialLedger, DeviceListQuery, DevicePage, DeviceRegistry } from './ports.js';
import type { CredentialRecord, DeviceRecord } from './model.js';
import { GatewayError } from './errors.js';
import { CredentialIndex } from './credentials.js';
import { checkDeviceId, provisionDevice } from './provisioning.js';
import { deviceTopics, type DeviceTopics } from './topics.js';

export interface RegisterResult {
  id: string;
  certificate: string;
  caCertificate: string;
  token: string;
  topics: DeviceTopics;
}

export interface DeviceServiceDeps {
  ca: CertificateAuthority;
  ledger: CredentialLedger;
  registry: DeviceRegistry;
  credentials: CredentialIndex;
  isKnownType: (type: string) => boolean;
  log: Logger;
}

function newDeviceRecord(r: CredentialRecord): DeviceRecord {
  return {
    id: r.id,
    type: r.type,
    createdAt: r.issuedAt,
    online: false,
    protocol: null,
    lastSeen: null,
    connectedAt: null,
    certificate: r.serial && r.notAfter ? { serial: r.serial, notAfter: r.notAfter } : null,
    firmware: null,
  };
}

export class DeviceService {
  constructor(private readonly deps: DeviceServiceDeps) {
    deps.credentials.on('issued', (r) => void this.syncIssued(r));
    deps.credentials.on('revoked', (r) => void this.syncRevoked(r));
  }

  private async syncIssued(r: CredentialRecord): Promise<void> {
    try {
      const current = await this.deps.registry.get(r.id);
      if (!current) await this.deps.registry.create(newDeviceRecord(r));
      else if (current.certificate?.serial !== r.serial || current.type !== r.type) {
        await this.deps.registry.update(r.id, { type: r.type, certificate: newDeviceRecord(r).certificate });
      }
    } catch (err) {
      this.deps.log.error({ err, deviceId: r.id }, 'registry sync failed');
    }
  }

  private async syncRevoked(r: CredentialRecord): Promise<void> {
    try {
      if (await this.deps.registry.delete(r.id)) this.deps.log.info({ deviceId: r.id }, 'device revoked');
    } catch (err) {
      this.deps.log.error({ err, deviceId: r.id }, 'registry sync failed');
    }
  }

  /** `POST /v1/register`: signs the CSR, mints a token, records the device. */
  async register(req: { id: string; csr: string; type?: string | undefined }): Promise<RegisterResult> {
    const result = await provisionDevice(this.deps, { id: req.id, type: req.type ?? 'generic', csr: req.csr });
    this.deps.credentials.apply(result.record);
    // The 'issued' listener creates the registry record; do it here too so the response is
    // consistent with a GET that follows it at once.
    await this.syncIssued(result.record);
    this.deps.log.info({ deviceId: req.id, type: result.record.type, serial: result.record.serial }, 'device registered');
    return {
      id: req.id,
      certificate: result.certificate.certificatePem,
      caCertificate: this.deps.ca.caCertificatePem,
      token: result.token,
      topics: deviceTopics(req.id),
    };
  }

  async get(id: string): Promise<DeviceRecord> {
    checkDeviceId(id);
    let record = await this.deps.registry.get(id);
    if (!record) {
      // Provisioned by the CLI a moment ago? Do not wait for the next ledger poll.
      const fresh = await this.deps.credentials.refresh(id);
      if (fresh && fresh.revokedAt === null) {
        await this.syncIssued(fresh);
        record = await this.deps.registry.get(id);
      }
    }
    if (!record) throw new GatewayError('device_not_found', `device ${id} is not known`);
    return record;
  }

  list(query: DeviceListQuery): Promise<DevicePage> {
    return this.deps.registry.list(query);
  }

  /** `DELETE /v1/devices/{id}`: revokes certificate and token, and forgets the device. */
  async delete(id: string): Promise<void> {
    checkDeviceId(id);
    const existing = await this.deps.ledger.get(id);
    const live = existing !== null && existing.revokedAt === null;
    const removed = await this.deps.registry.delete(id);
    if (!live && !removed) throw new GatewayError('device_not_found', `device ${id} is not known`);
    if (live) {
      const revoked = await this.deps.ledger.revoke(id, Date.now());
      if (revoked) this.deps.credentials.apply(revoked);
    }
    this.deps.log.info({ deviceId: id }, 'device deleted (credentials revoked)');
  }
}
