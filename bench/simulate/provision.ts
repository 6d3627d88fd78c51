/**
 * Registers the simulated fleet over REST (`POST /v1/register`, scope `provision`), the way a
 * device factory would: one EC P-256 key for the fleet, one CSR per device (CN = its id). The
 * gateway signs a certificate and mints the device token the simulator logs in with.
 */
import { webcrypto } from 'node:crypto';
import { x509 } from '../../src/pki/x509.js';
import type { DeviceCredential } from '../loadgen/protocol.js';

export class ProvisionError extends Error {
  constructor(
    message: string,
    readonly status: number,
  ) {
    super(message);
    this.name = 'ProvisionError';
  }
}

const EC = { name: 'ECDSA', namedCurve: 'P-256' } as const;

export async function registerFleet(
  opts: { url: string; token: string; prefix: string; count: number; type: string; concurrency?: number },
  onProgress: (done: number) => void = () => undefined,
): Promise<DeviceCredential[]> {
  const keys = (await webcrypto.subtle.generateKey(EC, true, ['sign', 'verify'])) as webcrypto.CryptoKeyPair;
  const width = String(opts.count - 1).length;
  const ids = Array.from({ length: opts.count }, (_, i) => `${opts.prefix}${String(i).padStart(width, '0')}`);
  const out: DeviceCredential[] = new Array<DeviceCredential>(ids.length);
  let next = 0;
  let done = 0;
  const worker = async () => {
    while (next < ids.length) {
      const i = next++;
      const id = ids[i] as string;
      const csr = await x509.Pkcs10CertificateRequestGenerator.create({ name: `CN=${id}`, keys, signingAlgorithm: { name: 'ECDSA', hash: 'SHA-256' } });
      const res = await fetch(`${opts.url}/v1/register`, {
        method: 'POST',
        headers: { authorization: `Bearer ${opts.token}`, 'content-type': 'application/json' },
        body: JSON.stringify({ id, csr: csr.toString('pem'), type: opts.type }),
        signal: AbortSignal.timeout(30_000),
      });
      const body = (await res.json().catch(() => ({}))) as { token?: string; detail?: string };
      if (res.status !== 201 || typeof body.token !== 'string') {
        const hint =
          res.status === 401
            ? ' (is the token signed by this gateway? pass --token, or run where the gateway certs dir is)'
            : res.status === 403
              ? ' (the token needs scope provision)'
              : res.status === 409
                ? ' (choose another --prefix)'
                : '';
        throw new ProvisionError(`registering ${id}: HTTP ${res.status}${body.detail ? `: ${body.detail}` : ''}${hint}`, res.status);
      }
      out[i] = { id, token: body.token };
      onProgress(++done);
    }
  };
  await Promise.all(Array.from({ length: Math.min(opts.concurrency ?? 8, ids.length) }, worker));
  return out;
}
