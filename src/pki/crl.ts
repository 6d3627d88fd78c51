/** The CA's certificate revocation list (ca.crl). */
import {
  CA_SIGNING_ALGORITHM,
  ensureTrailingNewline,
  importCaSigningKey,
  normalizeSerial,
  parseCaIdentity,
  x509,
} from './x509.js';

/** How long a CRL is valid; the ledger rewrites it on every revocation, and ensureCa on start. */
export const CRL_VALIDITY_MS = 7 * 24 * 3600 * 1000;

/** One revoked certificate: hex serial and revocation time (epoch ms). */
export interface RevokedEntry {
  serial: string;
  revokedAt: number;
}

const CRL_NUMBER_OID = '2.5.29.20';

/** DER INTEGER for a non-negative safe integer (the CRL number extension value). */
function derPositiveInteger(n: number): Uint8Array {
  const bytes: number[] = [];
  let v = Math.floor(n);
  do {
    bytes.unshift(v % 256);
    v = Math.floor(v / 256);
  } while (v > 0);
  if ((bytes[0] ?? 0) > 0x7f) bytes.unshift(0);
  return Uint8Array.from([0x02, bytes.length, ...bytes]);
}

/**
 * Builds a PEM X.509 v2 CRL signed by the CA, listing `revoked` (duplicates collapsed, earliest
 * date kept). thisUpdate is now, nextUpdate now + 7 days; the CRL number is the current epoch ms
 * so that a newer CRL always has a larger number.
 */
export async function buildCrl(
  material: { caCertPem: string; caKeyPem: string },
  revoked: readonly RevokedEntry[],
  now = Date.now(),
): Promise<string> {
  const bySerial = new Map<string, number>();
  for (const { serial, revokedAt } of revoked) {
    const s = normalizeSerial(serial);
    if (!/^[0-9A-F]+$/.test(s)) throw new Error(`invalid certificate serial "${serial}"`);
    const prev = bySerial.get(s);
    bySerial.set(s, prev === undefined ? revokedAt : Math.min(prev, revokedAt));
  }
  const [identity, signingKey] = await Promise.all([
    parseCaIdentity(material.caCertPem),
    importCaSigningKey(material.caKeyPem),
  ]);
  const crl = await x509.X509CrlGenerator.create({
    issuer: identity.name,
    thisUpdate: new Date(now),
    nextUpdate: new Date(now + CRL_VALIDITY_MS),
    signingAlgorithm: CA_SIGNING_ALGORITHM,
    signingKey,
    extensions: [
      new x509.AuthorityKeyIdentifierExtension(identity.keyIdHex),
      new x509.Extension(CRL_NUMBER_OID, false, derPositiveInteger(now)),
    ],
    entries: [...bySerial].map(([serialNumber, at]) => ({ serialNumber, revocationDate: new Date(at) })),
  });
  // The library labels the PEM block "CRL"; OpenSSL only reads "X509 CRL".
  return ensureTrailingNewline(x509.PemConverter.encode(crl.rawData, 'X509 CRL'));
}
