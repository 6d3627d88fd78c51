/**
 * Part of the composition root (with gateway.ts): the CA database and the CRL the TLS listeners
 * check. The database is the certs dir's files, or Redis with `redis.url` (gateways on other hosts
 * then see every revocation; docs/redis.md). The CRL is always a local file that each gateway signs
 * with its own copy of the CA key: at start (a lost ca.crl is rebuilt), after every revocation it
 * learns of, and daily (it is valid for 7 days).
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from 'pino';
import type { Config } from './config/schema.js';
import type { CredentialLedger } from './core/ports.js';
import { CA_FILES, FileCredentialLedger, type CaMaterial } from './pki/index.js';
import type { RedisStores } from './stores/redis/index.js';
import { RedisCredentialLedger } from './stores/redis/ledger.js';

const CRL_REFRESH_MS = 24 * 3600 * 1000;

export interface GatewayLedger {
  ledger: CredentialLedger;
  /** Redis ready, before the credential index reads: imports the certs dir's records into Redis once. */
  importFiles(): Promise<void>;
  /** Before the TLS listeners open: re-signs the CRL and resolves its PEM; every later CRL goes to `onCrl`. */
  start(onCrl: (pem: string) => void): Promise<string>;
  /** Re-signs the CRL from the whole CA database (after a revocation: heals a CRL that two processes revoking at once wrote without each other's serial). */
  refreshCrl(): void;
  stop(): void;
}

export function gatewayLedger(config: Config, certsDir: string, material: CaMaterial, redis: RedisStores | null, log: Logger): GatewayLedger {
  const ledger =
    redis === null
      ? new FileCredentialLedger(certsDir, material)
      : new RedisCredentialLedger(redis.client, redis.keys, { certsDir, material, log: log.child({ module: 'ledger' }) });
  const crlPath = join(certsDir, CA_FILES.crl);
  let onCrl: ((pem: string) => void) | null = null;
  let timer: NodeJS.Timeout | null = null;
  const refreshCrl = () =>
    void ledger
      .rebuildCrl()
      .then(() => readFile(crlPath, 'utf8'))
      .then((pem) => onCrl?.(pem))
      .catch((err: unknown) => log.error({ err }, 'could not re-sign the CRL'));
  return {
    ledger,
    async importFiles() {
      // Switching a deployment to Redis: its file records are imported once (logged with the count).
      if (ledger instanceof RedisCredentialLedger && config.redis.url !== undefined) await ledger.importFileLedger(config.redis.url);
    },
    async start(listener) {
      await ledger.rebuildCrl();
      const pem = await readFile(crlPath, 'utf8');
      onCrl = listener;
      timer = setInterval(refreshCrl, CRL_REFRESH_MS).unref();
      return pem;
    },
    refreshCrl,
    stop() {
      if (timer) clearInterval(timer);
      onCrl = null;
    },
  };
}
