/** PKI: the dev CA in the certs dir, device certificates and tokens, service JWTs, CRL, ledger. */
export {
  CA_FILES,
  CaExistsError,
  CaFileMissingError,
  caExists,
  ensureCa,
  initCa,
  loadCaMaterial,
  type CaMaterial,
  type InitCaOptions,
} from './ca.js';
export { PkiAuthority, type PkiAuthorityOptions } from './authority.js';
export { CRL_VALIDITY_MS, buildCrl, type RevokedEntry } from './crl.js';
export { ensureDir, writePublicFile, writeSecretFile } from './files.js';
export { FileCredentialLedger, LEDGER_DEVICES_DIR, LEDGER_SEQ_FILE } from './ledger.js';
export {
  JWT_ALGORITHMS,
  JWT_AUDIENCE,
  JWT_ISSUER,
  parseTtl,
  serviceJwtVerifyOptions,
  signServiceToken,
  verifyServiceToken,
  type ServiceClaims,
  type ServiceToken,
} from './service-jwt.js';
export { verifyDeviceCertificate, type DeviceCertificateCheck } from './verify.js';
export { normalizeSerial } from './x509.js';
