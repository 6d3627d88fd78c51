/**
 * The benchmark's devices and service credential: one CA in a temporary certs dir (shared by every
 * iotgate started in the run), device tokens minted with it, and an admin service JWT for the
 * subscriber and the REST calls. Devices are token-only credential records (what `POST
 * /v1/register` would record, without the certificate), handed to each gateway at its start:
 * provisioning is setup, not what is measured.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { CredentialRecord } from '../../src/core/model.js';
import { ensureCa, loadCaMaterial, PkiAuthority, signServiceToken, type CaMaterial } from '../../src/pki/index.js';
import type { DeviceCredential } from '../loadgen/protocol.js';

export interface FleetGroup {
  devices: DeviceCredential[];
  records: CredentialRecord[];
}

export class Fleet {
  private readonly groups = new Map<string, FleetGroup>();

  private constructor(
    readonly certsDir: string,
    private readonly material: CaMaterial,
    private readonly ca: PkiAuthority,
    /** Admin service JWT (subscriber login, REST calls), valid for the run. */
    readonly serviceToken: string,
  ) {}

  static async create(): Promise<Fleet> {
    const certsDir = await mkdtemp(join(tmpdir(), 'iotgate-bench-'));
    await ensureCa(certsDir, { hostnames: [] });
    const material = await loadCaMaterial(certsDir);
    const ca = new PkiAuthority(material, { deviceCertDays: 30 });
    const { token } = signServiceToken(material, { sub: 'bench', scope: 'admin', ttlSeconds: 6 * 3600 });
    return new Fleet(certsDir, material, ca, token);
  }

  /** `count` devices of `type` named `bench-<tag>-<n>`, minted once per run. */
  group(tag: string, type: string, count: number): FleetGroup {
    const key = `${tag}/${type}/${count}`;
    let g = this.groups.get(key);
    if (!g) {
      const devices: DeviceCredential[] = [];
      const records: CredentialRecord[] = [];
      const now = Date.now();
      for (let i = 0; i < count; i++) {
        const id = `bench-${tag}-${String(i).padStart(5, '0')}`;
        const minted = this.ca.mintDeviceToken(id);
        devices.push({ id, token: minted.token });
        records.push({ id, type, serial: null, notAfter: null, tokenId: minted.tokenId, issuedAt: now, revokedAt: null, revokedSerials: [] });
      }
      g = { devices, records };
      this.groups.set(key, g);
    }
    return g;
  }

  get caMaterial(): CaMaterial {
    return this.material;
  }

  async remove(): Promise<void> {
    await rm(this.certsDir, { recursive: true, force: true });
  }
}
