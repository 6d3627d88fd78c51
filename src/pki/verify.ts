/** Checks a device certificate presented over mutual TLS (or anywhere else) against the CA. */
import { X509Certificate } from 'node:crypto';
import { isDeviceId } from '../core/model.js';
import { normalizeSerial } from './x509.js';

/** Result of verifyDeviceCertificate. */
export type DeviceCertificateCheck =
  | { ok: true; deviceId: string; type: string; serial: string; notAfter: string }
  | { ok: false; reason: string };

const CLIENT_AUTH_OID = '1.3.6.1.5.5.7.3.2';
const DEFAULT_TYPE = 'generic';

let cachedCa: { pem: string; cert: X509Certificate } | undefined;

function caCertificate(pem: string): X509Certificate {
  if (cachedCa?.pem !== pem) cachedCa = { pem, cert: new X509Certificate(pem) };
  return cachedCa.cert;
}

/** `cert.subject` is one `KEY=value` per line; values of one key in order. */
function subjectField(subject: string, key: string): string[] {
  const values: string[] = [];
  for (const line of subject.split('\n')) {
    const eq = line.indexOf('=');
    if (eq > 0 && line.slice(0, eq) === key) values.push(line.slice(eq + 1));
  }
  return values;
}

/**
 * Verifies that a device certificate (DER or PEM, RSA or EC) was issued and signed by the CA, is
 * within its validity window at `now`, is not a CA certificate, allows client authentication and
 * names a valid device id as its CN. The type comes from the OU (default "generic").
 * Revocation is not checked here: the caller consults the ledger (or CRL) with the serial.
 */
export function verifyDeviceCertificate(
  certDerOrPem: Buffer | string,
  ca: { caCertPem: string },
  now: number = Date.now(),
): DeviceCertificateCheck {
  let cert: X509Certificate;
  try {
    cert = new X509Certificate(certDerOrPem);
  } catch {
    return { ok: false, reason: 'certificate cannot be parsed' };
  }
  let caCert: X509Certificate;
  try {
    caCert = caCertificate(ca.caCertPem);
  } catch {
    return { ok: false, reason: 'CA certificate cannot be parsed' };
  }
  if (!cert.checkIssued(caCert) || !cert.verify(caCert.publicKey)) {
    return { ok: false, reason: 'certificate was not issued by the gateway CA' };
  }
  const notBefore = Date.parse(cert.validFrom);
  const notAfter = Date.parse(cert.validTo);
  if (Number.isNaN(notBefore) || Number.isNaN(notAfter)) return { ok: false, reason: 'certificate validity unreadable' };
  if (now < notBefore) return { ok: false, reason: 'certificate is not yet valid' };
  if (now > notAfter) return { ok: false, reason: 'certificate has expired' };
  if (cert.ca) return { ok: false, reason: 'a CA certificate cannot identify a device' };
  // Node names the extended key usage list `keyUsage`; undefined when the extension is absent.
  const eku = cert.keyUsage;
  if (eku !== undefined && !eku.includes(CLIENT_AUTH_OID)) {
    return { ok: false, reason: 'certificate is not valid for client authentication' };
  }
  const cns = subjectField(cert.subject, 'CN');
  const [deviceId] = cns;
  if (cns.length !== 1 || deviceId === undefined || !isDeviceId(deviceId)) {
    return { ok: false, reason: 'certificate subject CN is not a device id' };
  }
  const [type = DEFAULT_TYPE] = subjectField(cert.subject, 'OU');
  return {
    ok: true,
    deviceId,
    type,
    serial: normalizeSerial(cert.serialNumber),
    notAfter: new Date(notAfter).toISOString(),
  };
}
