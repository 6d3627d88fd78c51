/**
 * Issuing device credentials: shared by `POST /v1/register` (a running gateway) and
 * `iotgate device provision` (the CLI, with or without a running gateway). The credential ledger
 * is the record; a running gateway learns of CLI writes through the ledger's watch.
 */
import type { CertificateAuthority, CredentialLedger, IssuedCertificate } from './ports.js';
import type { CredentialRecord } from './model.js';
import { isDeviceId } from './model.js';
import { GatewayError } from './errors.js';

/** Device type names: the file stem of a schema in schemas/ (contract §6). */
export const DEVICE_TYPE_PATTERN = /^[a-z][a-z0-9_-]{0,63}$/;

export interface ProvisionRequest {
  id: string;
  type: string;
  /** PEM PKCS#10 CSR; when absent the CA generates the key pair. */
  csr?: string;
  keyType?: 'rsa' | 'ec';
}

export interface ProvisionResult {
  record: CredentialRecord;
  certificate: IssuedCertificate;
  /** Only when the CA generated the key. */
  privateKeyPem: string | null;
  token: string;
}

export interface ProvisioningDeps {
  ca: CertificateAuthority;
  ledger: CredentialLedger;
  /** Is `type` a known device type? */
  isKnownType: (type: string) => boolean;
}

export function checkDeviceId(id: string): void {
  if (!isDeviceId(id)) {
    throw new GatewayError('invalid_device_id', `device id ${JSON.stringify(id.slice(0, 140))} must match ^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$`);
  }
}

/** Validates, issues certificate and token, and writes the ledger. 409 when the id is live. */
export async function provisionDevice(deps: ProvisioningDeps, req: ProvisionRequest): Promise<ProvisionResult> {
  checkDeviceId(req.id);
  if (!DEVICE_TYPE_PATTERN.test(req.type) || !deps.isKnownType(req.type)) {
    throw new GatewayError('validation_failed', `unknown device type ${JSON.stringify(req.type)}: it must name a schema in schemas/`);
  }
  const existing = await deps.ledger.get(req.id);
  if (existing && existing.revokedAt === null) {
    throw new GatewayError('device_exists', `device ${req.id} already exists`);
  }
  const device = { id: req.id, type: req.type };
  let privateKeyPem: string | null = null;
  let certificate: IssuedCertificate;
  if (req.csr !== undefined) {
    certificate = await deps.ca.issueFromCsr(req.csr, device);
  } else {
    const issued = await deps.ca.issueWithKey(device, req.keyType ? { keyType: req.keyType } : {});
    privateKeyPem = issued.privateKeyPem;
    certificate = { certificatePem: issued.certificatePem, serial: issued.serial, notAfter: issued.notAfter };
  }
  const minted = deps.ca.mintDeviceToken(req.id);
  const record: CredentialRecord = {
    id: req.id,
    type: req.type,
    serial: certificate.serial,
    notAfter: certificate.notAfter,
    tokenId: minted.tokenId,
    issuedAt: Date.now(),
    revokedAt: null,
    revokedSerials: existing?.revokedSerials ?? [],
  };
  await deps.ledger.put(record);
  return { record, certificate, privateKeyPem, token: minted.token };
}
