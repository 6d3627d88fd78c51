/**
 * The single entry point to @peculiar/x509 inside src/pki: it installs the Reflect metadata shim
 * before the library (and tsyringe) are evaluated, and holds the CA helpers shared by the issuer
 * and the CRL builder.
 */
import './reflect-shim.js';
import * as x509 from '@peculiar/x509';
import { createPrivateKey, type webcrypto } from 'node:crypto';

export { x509 };

/** RSASSA-PKCS1-v1_5 with SHA-256: how the RSA CA signs certificates and CRLs. */
export const CA_SIGNING_ALGORITHM = { name: 'RSASSA-PKCS1-v1_5', hash: 'SHA-256' } as const;

/** What issuing and CRL signing need to know about the CA certificate. */
export interface CaIdentity {
  /** The CA subject exactly as encoded in ca.crt, used as the issuer of what it signs. */
  name: x509.Name;
  /** Hex key identifier of the CA key (its SubjectKeyIdentifier), for AuthorityKeyIdentifier. */
  keyIdHex: string;
}

/** Reads the CA certificate's subject bytes and key identifier. */
export async function parseCaIdentity(caCertPem: string): Promise<CaIdentity> {
  const cert = new x509.X509Certificate(caCertPem);
  const name = new x509.Name(cert.subjectName.toArrayBuffer());
  const ski = cert.getExtension(x509.SubjectKeyIdentifierExtension);
  const keyIdHex = ski ? ski.keyId : Buffer.from(await cert.publicKey.getKeyIdentifier()).toString('hex');
  return { name, keyIdHex };
}

/** Imports the CA's RSA private key (PKCS#8 or PKCS#1 PEM) into WebCrypto for signing. */
export async function importCaSigningKey(caKeyPem: string): Promise<webcrypto.CryptoKey> {
  const der = createPrivateKey(caKeyPem).export({ format: 'der', type: 'pkcs8' });
  return globalThis.crypto.subtle.importKey('pkcs8', der, CA_SIGNING_ALGORITHM, false, ['sign']);
}

/** Normalises a hex serial to the form `openssl x509 -serial` prints: upper case, whole bytes, no sign byte. */
export function normalizeSerial(hex: string): string {
  let s = hex.replace(/[^0-9a-fA-F]/g, '').toUpperCase();
  if (s.length % 2 === 1) s = `0${s}`;
  while (s.length > 2 && s.startsWith('00')) s = s.slice(2);
  return s;
}

/** PEM text with Unix line ends and a final newline, as openssl writes it. */
export function ensureTrailingNewline(pem: string): string {
  const unix = pem.replace(/\r\n/g, '\n');
  return unix.endsWith('\n') ? unix : `${unix}\n`;
}
