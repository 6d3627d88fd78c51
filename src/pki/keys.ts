/** Key pairs and certificate serial numbers for the CA, the server and devices. */
import { generateKeyPair, randomBytes } from 'node:crypto';
import { promisify } from 'node:util';

const generateKeyPairAsync = promisify(generateKeyPair);

/** A key pair as PEM: PKCS#8 private key, SPKI public key. */
export interface PemKeyPair {
  privateKeyPem: string;
  publicKeyPem: string;
}

/**
 * Generates an RSA 2048 or EC P-256 key pair with node:crypto (native and off the main thread;
 * forge's pure-JS RSA generation takes seconds).
 */
export async function generatePemKeyPair(type: 'rsa' | 'ec'): Promise<PemKeyPair> {
  const publicKeyEncoding = { type: 'spki', format: 'pem' } as const;
  const privateKeyEncoding = { type: 'pkcs8', format: 'pem' } as const;
  const { privateKey, publicKey } =
    type === 'ec'
      ? await generateKeyPairAsync('ec', { namedCurve: 'P-256', publicKeyEncoding, privateKeyEncoding })
      : await generateKeyPairAsync('rsa', { modulusLength: 2048, publicKeyEncoding, privateKeyEncoding });
  return { privateKeyPem: privateKey, publicKeyPem: publicKey };
}

/**
 * 16 random bytes as upper-case hex, first byte 0x01..0x7f: the DER INTEGER is positive and
 * exactly 16 bytes, so the hex is also what `openssl x509 -serial` prints.
 */
export function randomSerialHex(): string {
  const b = randomBytes(16);
  b[0] = (b[0] ?? 0) & 0x7f || 0x01;
  return b.toString('hex').toUpperCase();
}
