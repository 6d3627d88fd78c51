/**
 * `iotgate device provision|revoke|list|show`. Provision and revoke write the CA database (the
 * files in the certs dir, or Redis when the config has `redis.url`), which every running gateway
 * follows (so both work with and without one). List and show ask the running gateway (it knows
 * online state); without one they read the CA database.
 */
import { mkdir } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import type { Config } from '../../config/schema.js';
import type { DeviceRecord, CredentialRecord } from '../../core/model.js';
import { checkDeviceId, provisionDevice } from '../../core/provisioning.js';
import { listDeviceTypes } from '../../codecs/registry.js';
import { BUNDLED_SCHEMAS_DIR } from '../../package-info.js';
import {
  ensureCa,
  FileCredentialLedger,
  loadCaMaterial,
  PkiAuthority,
  signServiceToken,
  writePublicFile,
  writeSecretFile,
  type CaMaterial,
} from '../../pki/index.js';
import type { CredentialLedger } from '../../core/ports.js';
import { createRedisStores } from '../../stores/redis/index.js';
import { LEDGER_REDIS_MARKER, RedisCredentialLedger, redactUrl, redisLedgerMarker } from '../../stores/redis/ledger.js';
import { CliError, cliConfig, gatewayUrl, print, type GlobalOptions } from '../context.js';

/** How long the CLI waits for Redis before it gives up. */
const REDIS_CONNECT_MS = 5000;

interface OpenCa {
  material: CaMaterial;
  ledger: CredentialLedger;
  /** Closes the Redis connection (nothing for the file ledger). */
  close(): Promise<void>;
}

/**
 * Opens the CA; only provisioning without Redis may create one (a mistyped certs dir must not get a
 * new CA). The CA database is Redis when the config has `redis.url`, else the files in the certs dir; a certs
 * dir whose database moved to Redis (a gateway left the marker) is refused without `redis.url`,
 * since no gateway would see what the CLI writes there.
 */
async function openCa(config: Config, create = false): Promise<OpenCa> {
  const certsDir = config.certs.dir;
  const url = config.redis.url;
  if (url === undefined) {
    const marker = await redisLedgerMarker(certsDir);
    if (marker !== null) {
      let where = 'Redis';
      try {
        where = (JSON.parse(marker) as { url?: string }).url ?? where;
      } catch {
        // an unreadable marker still means Redis
      }
      throw new CliError(
        `the CA database of ${certsDir} is in Redis (${where}): set IOTGATE_REDIS_URL (or redis.url), or delete ${join(certsDir, LEDGER_REDIS_MARKER)} if this deployment went back to files`,
      );
    }
  }
  // With Redis the fleet's CA must be here already (a copy): a new one would not match the fleet's.
  if (create && url === undefined) await ensureCa(certsDir, { hostnames: [...config.certs.hostnames] });
  const material = await loadCaMaterial(certsDir);
  if (url === undefined) return { material, ledger: new FileCredentialLedger(certsDir, material), close: async () => undefined };
  const stores = createRedisStores(url, { historyMax: config.commands.historyMax, telemetry: config.telemetry });
  try {
    await stores.ready(REDIS_CONNECT_MS);
  } catch (e) {
    await stores.close();
    throw new CliError(`cannot reach Redis at ${redactUrl(url)}: ${(e as Error).message}`);
  }
  return { material, ledger: new RedisCredentialLedger(stores.client, stores.keys, { certsDir, material }), close: () => stores.close() };
}

/** Runs `fn` with the opened CA and closes it afterwards. */
async function withCa<T>(config: Config, create: boolean, fn: (ca: OpenCa) => Promise<T>): Promise<T> {
  const ca = await openCa(config, create);
  try {
    return await fn(ca);
  } finally {
    await ca.close();
  }
}

export async function deviceProvision(
  id: string,
  opts: GlobalOptions & { type?: string; out?: string; keyType?: string },
): Promise<void> {
  const config = cliConfig(opts);
  const keyType = opts.keyType ?? 'rsa';
  if (keyType !== 'rsa' && keyType !== 'ec') throw new CliError(`--key-type ${JSON.stringify(keyType)}: expected rsa or ec`, 2);
  const types = listDeviceTypes(config.schemas.dir || BUNDLED_SCHEMAS_DIR);
  const { material, result } = await withCa(config, true, async ({ material, ledger }) => ({
    material,
    result: await provisionDevice(
      { ca: new PkiAuthority(material, { deviceCertDays: config.certs.deviceCertDays }), ledger, isKnownType: (t) => types.has(t) },
      { id, type: opts.type ?? 'generic', keyType },
    ),
  }));
  const out = resolve(opts.out ?? '.');
  await mkdir(out, { recursive: true });
  const files = { key: join(out, `${id}.key`), cert: join(out, `${id}.crt`), ca: join(out, 'ca.crt') };
  await writeSecretFile(files.key, result.privateKeyPem ?? '');
  await writePublicFile(files.cert, result.certificate.certificatePem);
  await writePublicFile(files.ca, material.caCertPem);
  const json = {
    id,
    type: result.record.type,
    token: result.token,
    ...files,
    serial: result.certificate.serial,
    notAfter: result.certificate.notAfter,
  };
  print(
    opts,
    json,
    [
      `provisioned ${id} (type ${json.type}, serial ${json.serial}, valid until ${json.notAfter})`,
      `  key:  ${files.key}`,
      `  cert: ${files.cert}`,
      `  ca:   ${files.ca}`,
      `  token: ${result.token}`,
    ].join('\n'),
  );
}

export async function deviceRevoke(id: string, opts: GlobalOptions): Promise<void> {
  const config = cliConfig(opts);
  checkDeviceId(id);
  await withCa(config, false, async ({ ledger }) => {
    const existing = await ledger.get(id);
    if (!existing) throw new CliError(`device ${id} is not known`);
    if (existing.revokedAt !== null) {
      print(opts, { id, revoked: true, revokedAt: new Date(existing.revokedAt).toISOString(), already: true }, `${id} was already revoked`);
      return;
    }
    const revoked = await ledger.revoke(id, Date.now());
    // The file ledger rewrote ca.crl; with Redis every gateway signs its own, and so does the CLI here.
    if (ledger instanceof RedisCredentialLedger) await ledger.rebuildCrl();
    const at = new Date(revoked?.revokedAt ?? Date.now()).toISOString();
    print(opts, { id, revoked: true, revokedAt: at, serial: existing.serial }, `revoked ${id} (serial ${existing.serial ?? '-'}) at ${at}`);
  });
}

/** The contract's device record (§8), from the gateway, or from the CA database when none runs. */
type Listed = Pick<DeviceRecord, 'id' | 'type' | 'online' | 'protocol' | 'lastSeen' | 'connectedAt' | 'certificate' | 'firmware'>;

function listed(d: DeviceRecord): Listed {
  return { id: d.id, type: d.type, online: d.online, protocol: d.protocol, lastSeen: d.lastSeen, connectedAt: d.connectedAt, certificate: d.certificate, firmware: d.firmware };
}

/**
 * Asks the running gateway (with a short-lived JWT minted from the certs dir). Null only when no
 * gateway answers; any answer other than 200 or 404 is an error (e.g. 401 when the gateway uses
 * another certs dir), never a silent fallback.
 */
async function askGateway<T>(config: Config, opts: GlobalOptions, material: CaMaterial, path: string): Promise<{ status: 200 | 404; body: T } | null> {
  const base = gatewayUrl(config, opts);
  if (!base) return null;
  const { token } = signServiceToken(material, { sub: 'iotgate-cli', scope: 'devices:read', ttlSeconds: 60 });
  let res: Response;
  try {
    res = await fetch(`${base}${path}`, { headers: { authorization: `Bearer ${token}` }, signal: AbortSignal.timeout(3000) });
  } catch (e) {
    if (opts.url) {
      const cause = (e as Error).cause;
      throw new CliError(`cannot reach the gateway at ${base}: ${cause instanceof Error ? cause.message : (e as Error).message}`);
    }
    return null;
  }
  if (res.status === 200 || res.status === 404) return { status: res.status, body: (await res.json()) as T };
  const detail = await res
    .json()
    .then((p: unknown) => String((p as { detail?: unknown }).detail ?? ''))
    .catch(() => '');
  const hint = res.status === 401 ? ' (does it use the same certs dir as this CLI?)' : '';
  throw new CliError(`the gateway at ${base} answered ${res.status}${detail ? `: ${detail}` : ''}${hint}`);
}

function fromLedger(r: CredentialRecord): Listed {
  return {
    id: r.id,
    type: r.type,
    online: false,
    protocol: null,
    lastSeen: null,
    connectedAt: null,
    certificate: r.serial && r.notAfter ? { serial: r.serial, notAfter: r.notAfter } : null,
    firmware: null,
  };
}

function line(d: Listed): string {
  const seen = d.lastSeen ? new Date(d.lastSeen).toISOString() : '-';
  return [d.id, d.type, d.online ? 'online' : 'offline', d.protocol ?? '-', seen, d.certificate?.serial ?? '-', d.certificate?.notAfter ?? '-'].join('\t');
}

const HEADER = ['ID', 'TYPE', 'STATUS', 'PROTOCOL', 'LAST SEEN', 'CERT SERIAL', 'NOT AFTER'].join('\t');

export async function deviceList(opts: GlobalOptions): Promise<void> {
  const config = cliConfig(opts);
  await withCa(config, false, ({ material, ledger }) => listDevices(config, opts, material, ledger));
}

async function listDevices(config: Config, opts: GlobalOptions, material: CaMaterial, ledger: CredentialLedger): Promise<void> {
  let devices: Listed[] | null = null;
  let cursor: string | null = null;
  const all: Listed[] = [];
  for (;;) {
    const page: { status: number; body: { items: DeviceRecord[]; nextCursor: string | null } } | null = await askGateway(
      config,
      opts,
      material,
      `/v1/devices?limit=1000${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ''}`,
    );
    if (!page) break;
    if (page.status !== 200) throw new CliError(`the gateway at ${gatewayUrl(config, opts)} does not list devices (404)`);
    all.push(...page.body.items.map(listed));
    cursor = page.body.nextCursor;
    if (!cursor) {
      devices = all;
      break;
    }
  }
  devices ??= (await ledger.list()).filter((r) => r.revokedAt === null).map(fromLedger).sort((a, b) => (a.id < b.id ? -1 : 1));
  print(opts, { devices }, [HEADER, ...devices.map(line)].join('\n'));
}

export async function deviceShow(id: string, opts: GlobalOptions): Promise<void> {
  const config = cliConfig(opts);
  checkDeviceId(id);
  await withCa(config, false, ({ material, ledger }) => showDevice(config, opts, material, ledger, id));
}

async function showDevice(config: Config, opts: GlobalOptions, material: CaMaterial, ledger: CredentialLedger, id: string): Promise<void> {
  const answer = await askGateway<DeviceRecord>(config, opts, material, `/v1/devices/${encodeURIComponent(id)}`);
  let device: Listed | null = null;
  if (answer?.status === 200) device = listed(answer.body);
  else if (answer === null) {
    const r = await ledger.get(id);
    if (r && r.revokedAt === null) device = fromLedger(r);
  }
  if (!device) throw new CliError(`device ${id} is not known`);
  print(opts, device, [HEADER, line(device)].join('\n'));
}
