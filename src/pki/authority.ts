/** The gateway CA as a CertificateAuthority: device certificates and device tokens. */
import { createHmac, createPublicKey, randomBytes, timingSafeEqual, type KeyObject, type webcrypto } from 'node:crypto';
import { GatewayError } from '../core/errors.js';
import { isDeviceId } from '../core/model.js';
import type { CertificateAuthority, IssuedCertificate, MintedToken } from '../core/ports.js';
import type { CaMaterial } from './ca.js';
import { generatePemKeyPair, randomSerialHex } from './keys.js';
import {
  CA_SIGNING_ALGORITHM,
  ensureTrailingNewline,
  importCaSigningKey,
  normalizeSerial,
  parseCaIdentity,
  x509,
  type CaIdentity,
} from './x509.js';

/** Options of PkiAuthority. */
export interface PkiAuthorityOptions {
  /** Validity of issued device certificates in days (default 365). */
  deviceCertDays?: number;
}

// Core checks types against the schemas; this only keeps the subject OU to a safe shape.
const DEVICE_TYPE_SHAPE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

const MAX_CSR_LENGTH = 16 * 1024;
const MAX_TOKEN_LENGTH = 512;
const TOKEN_PREFIX = 'dt1';
const BACKDATE_MS = 5 * 60 * 1000;
const DAY_MS = 24 * 3600 * 1000;
const TOKEN_ID_PATTERN = /^[A-Za-z0-9_-]{22}$/;
const MAC_PATTERN = /^[A-Za-z0-9_-]{43}$/;

function csrInvalid(reason: string, cause?: unknown): GatewayError {
  return new GatewayError('csr_invalid', reason, cause === undefined ? {} : { cause });
}

/** Accepts RSA 2048..8192 and EC P-256 public keys (SPKI DER); throws csr_invalid otherwise. */
function checkKey(spkiDer: Uint8Array): void {
  let key: KeyObject;
  try {
    key = createPublicKey({ key: Buffer.from(spkiDer), format: 'der', type: 'spki' });
  } catch (err) {
    throw csrInvalid('unsupported key type: the CSR public key cannot be read', err);
  }
  const details = key.asymmetricKeyDetails ?? {};
  if (key.asymmetricKeyType === 'rsa') {
    const bits = details.modulusLength ?? 0;
    if (bits < 2048 || bits > 8192) throw csrInvalid(`unsupported key type: RSA ${bits} bits (need 2048 to 8192)`);
    return;
  }
  if (key.asymmetricKeyType === 'ec') {
    if (details.namedCurve !== 'prime256v1') {
      throw csrInvalid(`unsupported key type: EC curve ${details.namedCurve ?? 'unknown'} (only P-256)`);
    }
    return;
  }
  throw csrInvalid(`unsupported key type: ${key.asymmetricKeyType ?? 'unknown'} (use RSA 2048+ or EC P-256)`);
}

function checkDeviceId(id: string): void {
  // The typeof guard matters for callers outside TypeScript: String(undefined) is a valid id.
  if (typeof id !== 'string' || !isDeviceId(id)) throw new GatewayError('invalid_device_id', `invalid device id "${String(id)}"`);
}

function checkDevice(device: { id: string; type: string }): void {
  checkDeviceId(device.id);
  if (typeof device.type !== 'string' || !DEVICE_TYPE_SHAPE.test(device.type)) {
    throw new GatewayError('validation_failed', `invalid device type "${String(device.type)}"`);
  }
}

function b64url(data: string | Buffer): string {
  return Buffer.from(data).toString('base64url');
}

/**
 * Issues device certificates with @peculiar/x509, signed by the CA key from the certs dir, and
 * mints HMAC device tokens with the token secret. Records nothing: callers store the results.
 */
export class PkiAuthority implements CertificateAuthority {
  readonly caCertificatePem: string;
  readonly #caKeyPem: string;
  readonly #tokenSecret: Buffer;
  readonly #deviceCertMs: number;
  #signer: Promise<{ key: webcrypto.CryptoKey; ca: CaIdentity }> | undefined;

  constructor(material: CaMaterial, opts: PkiAuthorityOptions = {}) {
    this.caCertificatePem = material.caCertPem;
    this.#caKeyPem = material.caKeyPem;
    this.#tokenSecret = material.tokenSecret;
    this.#deviceCertMs = (opts.deviceCertDays ?? 365) * DAY_MS;
  }

  #loadSigner(): Promise<{ key: webcrypto.CryptoKey; ca: CaIdentity }> {
    this.#signer ??= Promise.all([importCaSigningKey(this.#caKeyPem), parseCaIdentity(this.caCertificatePem)]).then(
      ([key, ca]) => ({ key, ca }),
    );
    // A failed import must not poison every later call.
    this.#signer.catch(() => {
      this.#signer = undefined;
    });
    return this.#signer;
  }

  /** The one issuing path: a device certificate for an already vetted public key (SPKI DER). */
  async #issue(spkiDer: Uint8Array, device: { id: string; type: string }): Promise<IssuedCertificate> {
    const { key, ca } = await this.#loadSigner();
    const isRsa = createPublicKey({ key: Buffer.from(spkiDer), format: 'der', type: 'spki' }).asymmetricKeyType === 'rsa';
    // RFC 8813: keyEncipherment must not be asserted for EC keys.
    const usages = isRsa
      ? x509.KeyUsageFlags.digitalSignature | x509.KeyUsageFlags.keyEncipherment
      : x509.KeyUsageFlags.digitalSignature;
    const now = Date.now();
    const cert = await x509.X509CertificateGenerator.create({
      serialNumber: randomSerialHex(),
      subject: [{ CN: [device.id] }, { OU: [device.type] }],
      issuer: ca.name,
      notBefore: new Date(now - BACKDATE_MS),
      notAfter: new Date(now + this.#deviceCertMs),
      publicKey: spkiDer,
      signingKey: key,
      signingAlgorithm: CA_SIGNING_ALGORITHM,
      extensions: [
        new x509.BasicConstraintsExtension(false, undefined, true),
        new x509.KeyUsagesExtension(usages, true),
        new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.clientAuth]),
        await x509.SubjectKeyIdentifierExtension.create(spkiDer),
        new x509.AuthorityKeyIdentifierExtension(ca.keyIdHex),
      ],
    });
    return {
      certificatePem: ensureTrailingNewline(cert.toString('pem')),
      serial: normalizeSerial(cert.serialNumber),
      notAfter: cert.notAfter.toISOString(),
    };
  }

  /** Verifies a PKCS#10 CSR (PEM) and issues a certificate; throws GatewayError `csr_invalid`. */
  async issueFromCsr(csrPem: string, device: { id: string; type: string }): Promise<IssuedCertificate> {
    checkDevice(device);
    if (typeof csrPem !== 'string' || csrPem.trim() === '') throw csrInvalid('CSR is empty');
    if (csrPem.length > MAX_CSR_LENGTH) throw csrInvalid(`CSR is larger than ${MAX_CSR_LENGTH} bytes`);
    let csr: x509.Pkcs10CertificateRequest;
    try {
      csr = new x509.Pkcs10CertificateRequest(csrPem.trim());
    } catch (err) {
      throw csrInvalid('CSR is not valid PEM/DER', err);
    }
    let cns: string[];
    let spki: Uint8Array;
    try {
      cns = csr.subjectName.getField('CN');
      spki = new Uint8Array(csr.publicKey.rawData);
    } catch (err) {
      throw csrInvalid('CSR is not valid PEM/DER', err);
    }
    checkKey(spki);
    let verified = false;
    try {
      verified = await csr.verify();
    } catch (err) {
      throw csrInvalid('CSR signature does not verify', err);
    }
    if (!verified) throw csrInvalid('CSR signature does not verify');
    if (cns.length !== 1) {
      throw csrInvalid(`CSR subject must have exactly one CN equal to id "${device.id}" (found ${cns.length})`);
    }
    const [cn] = cns;
    if (cn !== device.id) throw csrInvalid(`CSR subject CN "${cn}" does not match id "${device.id}"`);
    return this.#issue(spki, device);
  }

  /** Generates an RSA 2048 or EC P-256 key pair and issues a certificate for it. */
  async issueWithKey(
    device: { id: string; type: string },
    opts: { keyType?: 'rsa' | 'ec' } = {},
  ): Promise<IssuedCertificate & { privateKeyPem: string }> {
    checkDevice(device);
    const keys = await generatePemKeyPair(opts.keyType === 'ec' ? 'ec' : 'rsa');
    const spki = createPublicKey(keys.publicKeyPem).export({ type: 'spki', format: 'der' });
    const issued = await this.#issue(new Uint8Array(spki), device);
    return { ...issued, privateKeyPem: keys.privateKeyPem };
  }

  #mac(input: string): string {
    return createHmac('sha256', this.#tokenSecret).update(input).digest('base64url');
  }

  /** `dt1.<base64url(deviceId)>.<tokenId>.<HMAC-SHA256>`; tokenId is 16 random bytes. */
  mintDeviceToken(deviceId: string): MintedToken {
    checkDeviceId(deviceId);
    const tokenId = randomBytes(16).toString('base64url');
    const body = `${TOKEN_PREFIX}.${b64url(deviceId)}.${tokenId}`;
    return { token: `${body}.${this.#mac(body)}`, tokenId };
  }

  /** Checks format and MAC (not revocation); null for anything that is not a token of ours. */
  parseDeviceToken(token: string): { deviceId: string; tokenId: string } | null {
    if (typeof token !== 'string' || token.length > MAX_TOKEN_LENGTH) return null;
    const parts = token.split('.');
    if (parts.length !== 4) return null;
    const [prefix, idPart, tokenId, mac] = parts as [string, string, string, string];
    if (prefix !== TOKEN_PREFIX || !TOKEN_ID_PATTERN.test(tokenId) || !MAC_PATTERN.test(mac)) return null;
    const expected = Buffer.from(this.#mac(`${prefix}.${idPart}.${tokenId}`), 'base64url');
    const given = Buffer.from(mac, 'base64url');
    if (given.length !== expected.length || !timingSafeEqual(given, expected)) return null;
    const deviceId = Buffer.from(idPart, 'base64url').toString('utf8');
    // Only the canonical encoding is ours; this also rejects ids that decode with replacement chars.
    if (!isDeviceId(deviceId) || b64url(deviceId) !== idPart) return null;
    return { deviceId, tokenId };
  }
}
