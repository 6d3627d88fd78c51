/** The certs dir: a dev CA, the server certificate, token and JWT secrets, and the CRL. */
import { createPublicKey, randomBytes } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { isIP } from 'node:net';
import { hostname } from 'node:os';
import { join } from 'node:path';
import forge from 'node-forge';
import { buildCrl } from './crl.js';
import { ensureDir, writePublicFile, writeSecretFile } from './files.js';
import { generatePemKeyPair, randomSerialHex, type PemKeyPair } from './keys.js';
import { ensureTrailingNewline } from './x509.js';

/** File names inside the certs dir. */
export const CA_FILES = {
  caKey: 'ca.key',
  caCert: 'ca.crt',
  serverKey: 'server.key',
  serverCert: 'server.crt',
  tokenSecret: 'token.secret',
  jwtKey: 'jwt.key',
  jwtPub: 'jwt.pub',
  crl: 'ca.crl',
} as const;

/** Everything the gateway and the CLI load from the certs dir. */
export interface CaMaterial {
  caCertPem: string;
  caKeyPem: string;
  serverCertPem: string;
  serverKeyPem: string;
  /** HMAC key for device tokens (32 bytes). */
  tokenSecret: Buffer;
  /** ES256 key for service JWTs (PKCS#8 PEM) and its SPKI PEM. */
  jwtPrivateKeyPem: string;
  jwtPublicKeyPem: string;
  crlPem: string;
}

/** Options of initCa / ensureCa. */
export interface InitCaOptions {
  /** Overwrite existing files (initCa only). */
  force?: boolean;
  /** Extra DNS names or IP addresses for the server certificate. */
  hostnames?: string[];
  /** Validity of the server certificate in days (default 730). The CA is valid 10 years. */
  validityDays?: number;
}

/** Thrown by initCa when the certs dir already holds PKI files and `force` was not given. */
export class CaExistsError extends Error {
  readonly files: string[];
  constructor(files: string[]) {
    super(`the certs dir already holds ${files.join(', ')}; pass --force to overwrite them`);
    this.name = 'CaExistsError';
    this.files = files;
  }
}

/** Thrown by loadCaMaterial when a PKI file is missing. */
export class CaFileMissingError extends Error {
  readonly file: string;
  constructor(file: string) {
    super(`PKI file ${file} is missing; run "iotgate ca init" to create the CA`);
    this.name = 'CaFileMissingError';
    this.file = file;
  }
}

const CA_SUBJECT: forge.pki.CertificateField[] = [{ name: 'commonName', value: 'iotgate dev CA' }];
const CA_VALIDITY_DAYS = 3650;
const SERVER_VALIDITY_DAYS = 730;
const DAY_MS = 24 * 3600 * 1000;
const BACKDATE_MS = 5 * 60 * 1000;

function newCertificate(publicKeyPem: string, days: number): forge.pki.Certificate {
  const cert = forge.pki.createCertificate();
  cert.publicKey = forge.pki.publicKeyFromPem(publicKeyPem);
  cert.serialNumber = randomSerialHex();
  const now = Date.now();
  cert.validity.notBefore = new Date(now - BACKDATE_MS);
  cert.validity.notAfter = new Date(now + days * DAY_MS);
  return cert;
}

function signAndEncode(cert: forge.pki.Certificate, signerKeyPem: string): string {
  cert.sign(forge.pki.privateKeyFromPem(signerKeyPem), forge.md.sha256.create());
  return ensureTrailingNewline(forge.pki.certificateToPem(cert));
}

function buildCaCertificate(keys: PemKeyPair): string {
  const cert = newCertificate(keys.publicKeyPem, CA_VALIDITY_DAYS);
  cert.setSubject(CA_SUBJECT);
  cert.setIssuer(CA_SUBJECT);
  cert.setExtensions([
    { name: 'basicConstraints', cA: true, critical: true },
    { name: 'keyUsage', keyCertSign: true, cRLSign: true, critical: true },
    { name: 'subjectKeyIdentifier' },
  ]);
  return signAndEncode(cert, keys.privateKeyPem);
}

function buildServerCertificate(keys: PemKeyPair, ca: { certPem: string; keyPem: string }, opts: InitCaOptions): string {
  const caCert = forge.pki.certificateFromPem(ca.certPem);
  const cert = newCertificate(keys.publicKeyPem, opts.validityDays ?? SERVER_VALIDITY_DAYS);
  cert.setSubject([{ name: 'commonName', value: 'localhost' }]);
  cert.setIssuer(caCert.subject.attributes);
  const names = new Set(['localhost', hostname(), ...(opts.hostnames ?? [])].filter((n) => n.length > 0));
  const ips = new Set(['127.0.0.1', '::1']);
  for (const n of names) {
    if (isIP(n) !== 0) {
      ips.add(n);
      names.delete(n);
    }
  }
  cert.setExtensions([
    { name: 'basicConstraints', cA: false, critical: true },
    { name: 'keyUsage', digitalSignature: true, keyEncipherment: true, critical: true },
    { name: 'extKeyUsage', serverAuth: true },
    {
      name: 'subjectAltName',
      altNames: [...[...names].map((value) => ({ type: 2, value })), ...[...ips].map((ip) => ({ type: 7, ip }))],
    },
    { name: 'subjectKeyIdentifier' },
    { name: 'authorityKeyIdentifier', keyIdentifier: caCert.generateSubjectKeyIdentifier().getBytes() },
  ]);
  return signAndEncode(cert, ca.keyPem);
}

function existing(certsDir: string, names: readonly string[]): string[] {
  return names.filter((n) => existsSync(join(certsDir, n)));
}

/** True when both the CA key and certificate are present in `certsDir`. */
export function caExists(certsDir: string): boolean {
  return existing(certsDir, [CA_FILES.caKey, CA_FILES.caCert]).length === 2;
}

type Part = 'ca' | 'server' | 'token' | 'jwt' | 'jwtPub' | 'crl';

function checkOptions(opts: InitCaOptions): void {
  const days = opts.validityDays;
  if (days !== undefined && (!Number.isInteger(days) || days < 1 || days > CA_VALIDITY_DAYS)) {
    throw new Error(`validityDays must be an integer from 1 to ${CA_VALIDITY_DAYS}, got ${days}`);
  }
  for (const h of opts.hostnames ?? []) {
    if (isIP(h) === 0 && !/^(?=.{1,253}$)[A-Za-z0-9*]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*$/.test(h)) {
      throw new Error(`invalid host name for the server certificate: "${h}"`);
    }
  }
}

/** Creates the requested parts, reusing the CA on disk when 'ca' is not among them. */
async function generate(certsDir: string, parts: ReadonlySet<Part>, opts: InitCaOptions): Promise<string[]> {
  checkOptions(opts);
  await ensureDir(certsDir);
  const written: string[] = [];
  const secret = async (name: string, data: string) => {
    await writeSecretFile(join(certsDir, name), data);
    written.push(join(certsDir, name));
  };
  const pub = async (name: string, data: string) => {
    await writePublicFile(join(certsDir, name), data);
    written.push(join(certsDir, name));
  };

  // Key generation runs on the libuv pool: start every key at once.
  const [caKeys, serverKeys, jwtKeys] = await Promise.all([
    parts.has('ca') ? generatePemKeyPair('rsa') : undefined,
    parts.has('server') ? generatePemKeyPair('rsa') : undefined,
    parts.has('jwt') ? generatePemKeyPair('ec') : undefined,
  ]);
  let ca: { certPem: string; keyPem: string } | undefined;
  if (caKeys) {
    ca = { certPem: buildCaCertificate(caKeys), keyPem: caKeys.privateKeyPem };
    await secret(CA_FILES.caKey, ca.keyPem);
    await pub(CA_FILES.caCert, ca.certPem);
  } else if (serverKeys || parts.has('crl')) {
    ca = {
      certPem: await readFile(join(certsDir, CA_FILES.caCert), 'utf8'),
      keyPem: await readFile(join(certsDir, CA_FILES.caKey), 'utf8'),
    };
  }
  if (serverKeys && ca) {
    await secret(CA_FILES.serverKey, serverKeys.privateKeyPem);
    await pub(CA_FILES.serverCert, buildServerCertificate(serverKeys, ca, opts));
  }
  if (parts.has('token')) await secret(CA_FILES.tokenSecret, `${randomBytes(32).toString('hex')}\n`);
  if (jwtKeys) {
    await secret(CA_FILES.jwtKey, jwtKeys.privateKeyPem);
    await pub(CA_FILES.jwtPub, jwtKeys.publicKeyPem);
  } else if (parts.has('jwtPub')) {
    const keyPem = await readFile(join(certsDir, CA_FILES.jwtKey), 'utf8');
    await pub(CA_FILES.jwtPub, createPublicKey(keyPem).export({ type: 'spki', format: 'pem' }).toString());
  }
  if (parts.has('crl') && ca) {
    await pub(CA_FILES.crl, await buildCrl({ caCertPem: ca.certPem, caKeyPem: ca.keyPem }, []));
  }
  return written;
}

/**
 * Creates a new CA, server certificate, token secret, JWT key pair and empty CRL in `certsDir`.
 * Throws CaExistsError when any of these files exists and `opts.force` is not set.
 * Resolves the paths written.
 */
export async function initCa(certsDir: string, opts: InitCaOptions = {}): Promise<{ created: string[] }> {
  const present = existing(certsDir, Object.values(CA_FILES));
  if (present.length > 0 && opts.force !== true) throw new CaExistsError(present);
  const created = await generate(certsDir, new Set<Part>(['ca', 'server', 'token', 'jwt', 'crl']), opts);
  return { created };
}

/**
 * First-start helper: creates the CA when it is missing; otherwise creates only the files that
 * are missing (e.g. jwt.key), never reissuing the CA. Resolves `created: true` when a new CA was
 * made, and the paths written.
 */
export async function ensureCa(
  certsDir: string,
  opts: Omit<InitCaOptions, 'force'> = {},
): Promise<{ created: boolean; files: string[] }> {
  const has = (name: string) => existsSync(join(certsDir, name));
  const parts = new Set<Part>();
  if (!caExists(certsDir)) {
    const half = existing(certsDir, [CA_FILES.caKey, CA_FILES.caCert]);
    if (half.length > 0) {
      const [present] = half;
      throw new Error(
        `the CA in ${certsDir} is incomplete: ${present} exists but its pair is missing; restore it or run "iotgate ca init --force"`,
      );
    }
    parts.add('ca').add('server').add('crl');
  }
  if (!has(CA_FILES.serverKey) || !has(CA_FILES.serverCert)) parts.add('server');
  if (!has(CA_FILES.tokenSecret)) parts.add('token');
  if (!has(CA_FILES.jwtKey)) parts.add('jwt');
  else if (!has(CA_FILES.jwtPub)) parts.add('jwtPub');
  if (!has(CA_FILES.crl)) parts.add('crl');
  const files = parts.size > 0 ? await generate(certsDir, parts, opts) : [];
  return { created: parts.has('ca'), files };
}

async function readPkiFile(certsDir: string, name: string): Promise<string> {
  const path = join(certsDir, name);
  try {
    return await readFile(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') throw new CaFileMissingError(path);
    throw err;
  }
}

/** Loads every PKI file of `certsDir`; throws CaFileMissingError naming the first missing one. */
export async function loadCaMaterial(certsDir: string): Promise<CaMaterial> {
  const read = (name: string) => readPkiFile(certsDir, name);
  const caCertPem = await read(CA_FILES.caCert);
  const caKeyPem = await read(CA_FILES.caKey);
  const serverCertPem = await read(CA_FILES.serverCert);
  const serverKeyPem = await read(CA_FILES.serverKey);
  const secretHex = (await read(CA_FILES.tokenSecret)).trim();
  const jwtPrivateKeyPem = await read(CA_FILES.jwtKey);
  const jwtPublicKeyPem = await read(CA_FILES.jwtPub);
  const crlPem = await read(CA_FILES.crl);
  if (!/^(?:[0-9a-fA-F]{2}){16,}$/.test(secretHex)) {
    throw new Error(`${join(certsDir, CA_FILES.tokenSecret)} must hold at least 16 bytes as hex`);
  }
  const tokenSecret = Buffer.from(secretHex, 'hex');
  return { caCertPem, caKeyPem, serverCertPem, serverKeyPem, tokenSecret, jwtPrivateKeyPem, jwtPublicKeyPem, crlPem };
}
