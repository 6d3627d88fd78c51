/**
 * The CA database (CredentialLedger) in Redis, so that gateways on different hosts share
 * revocations without a shared writable certs dir: each host only needs the same key material.
 *
 * - A record is a HASH under the device's hash tag (`iotgate:{<id>}:credential`), one field per
 *   property (values JSON, except `revokedSerials`: normalised serials separated by spaces, and
 *   `nserial`: the normalised current serial), so `put` and `revoke` are single-slot Lua scripts
 *   that merge without decoding JSON: `put` keeps serials revoked earlier, `revoke` keeps the first
 *   `revokedAt` and adds the current serial, exactly like FileCredentialLedger.
 * - `iotgate:credentials` (ZSET, lexicographic) lists the ids; it is written before the record
 *   (a superset: `list` skips ids without a record).
 * - `iotgate:credentials:log` (STREAM, `MAXLEN ~ logMaxLen`) gets one entry `id=<device id>` after
 *   every write. `watch` lists everything once (remembering the log's last entry first), then reads
 *   the log from where it stopped and re-reads only the ids it names. When its position was trimmed
 *   away (or the log vanished) it lists everything again; so it does every `resyncMs`, which also
 *   covers a write whose log entry was lost with the connection (that write failed with 503).
 *
 * The CRL stays a local file: `rebuildCrl()` signs `<certsDir>/ca.crl` from the records in Redis
 * with this host's CA key. Redis failures are GatewayError `unavailable` (storeError); a failed
 * watch poll is logged and retried on the next tick.
 */
import { access, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { ClientContext, Redis, Result } from 'ioredis';
import type { Logger } from 'pino';
import { isDeviceId, type CredentialRecord } from '../../core/model.js';
import type { CredentialLedger } from '../../core/ports.js';
import type { CaMaterial } from '../../pki/ca.js';
import { writePublicFile } from '../../pki/files.js';
import { FileCredentialLedger, isCredentialRecord, pollLedger, unionSerials, writeCrlFile } from '../../pki/ledger.js';
import { normalizeSerial } from '../../pki/x509.js';
import { storeError } from './errors.js';
import type { RedisKeys } from './keys.js';
import { defineScripts, replyArray } from './scripts.js';

/**
 * Written into a certs dir whose CA database moved to Redis: a CLI run without `redis.url` on it
 * refuses to write the file ledger that no gateway follows any more.
 */
export const LEDGER_REDIS_MARKER = 'ledger.redis';

declare module 'ioredis' {
  interface RedisCommander<Context extends ClientContext = { type: 'default' }> {
    /** 1 written, 0 skipped (mode `absent` and the record exists). ARGV: 9 field values, mode. */
    iotgateCredentialPut(key: string, ...args: string[]): Result<number, Context>;
    /** 0 unknown, else HGETALL after the change. ARGV: revokedAt JSON. */
    iotgateCredentialRevoke(key: string, at: string): Result<unknown, Context>;
  }
}

const SCRIPTS = {
  // ARGV: id, type, serial, notAfter, tokenId, issuedAt, revokedAt (JSON), nserial, serials
  // (normalised, space-separated), mode ('put' | 'absent'). Revoked serials are a union, old first.
  iotgateCredentialPut: {
    numberOfKeys: 1,
    lua: `
if ARGV[10] == 'absent' and redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local old = redis.call('HGET', KEYS[1], 'revokedSerials') or ''
local seen, out = {}, {}
for s in string.gmatch(old .. ' ' .. ARGV[9], '%S+') do
  if not seen[s] then seen[s] = true; out[#out + 1] = s end
end
redis.call('HSET', KEYS[1], 'id', ARGV[1], 'type', ARGV[2], 'serial', ARGV[3], 'notAfter', ARGV[4], 'tokenId', ARGV[5],
  'issuedAt', ARGV[6], 'revokedAt', ARGV[7], 'nserial', ARGV[8], 'revokedSerials', table.concat(out, ' '))
return 1`,
  },
  // The first revokedAt stays; the current serial joins the revoked ones once.
  iotgateCredentialRevoke: {
    numberOfKeys: 1,
    lua: `
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local at = redis.call('HGET', KEYS[1], 'revokedAt')
if not at or at == 'null' then redis.call('HSET', KEYS[1], 'revokedAt', ARGV[1]) end
local n = redis.call('HGET', KEYS[1], 'nserial') or ''
if n ~= '' then
  local old = redis.call('HGET', KEYS[1], 'revokedSerials') or ''
  local found = false
  for s in string.gmatch(old, '%S+') do if s == n then found = true end end
  if not found then redis.call('HSET', KEYS[1], 'revokedSerials', old == '' and n or (old .. ' ' .. n)) end
end
return redis.call('HGETALL', KEYS[1])`,
  },
};

export interface RedisLedgerOptions {
  /** The local certs dir and CA material: `rebuildCrl` writes `<certsDir>/ca.crl`; the import reads its files. */
  certsDir?: string;
  material?: Pick<CaMaterial, 'caCertPem' | 'caKeyPem'>;
  log?: Logger;
  /** Entries kept in the change log (approximate trim; default 10 000). */
  logMaxLen?: number;
  /** A watcher lists every record again this often (default 5 min). */
  resyncMs?: number;
}

const LIST_BATCH = 500;
const LOG_PAGE = 1000;
const IMPORT_LOCK_MS = 60_000;

function fields(r: CredentialRecord): string[] {
  return [
    JSON.stringify(r.id),
    JSON.stringify(r.type),
    JSON.stringify(r.serial),
    JSON.stringify(r.notAfter),
    JSON.stringify(r.tokenId),
    JSON.stringify(r.issuedAt),
    JSON.stringify(r.revokedAt),
    r.serial === null ? '' : normalizeSerial(r.serial),
    unionSerials(r.revokedSerials, []).join(' '),
  ];
}

function fromHash(h: Record<string, string>, key: string): CredentialRecord | null {
  if (Object.keys(h).length === 0) return null;
  let record: unknown;
  try {
    const json = (f: string): unknown => JSON.parse(h[f] ?? 'undefined') as unknown;
    record = {
      id: json('id'),
      type: json('type'),
      serial: json('serial'),
      notAfter: json('notAfter'),
      tokenId: json('tokenId'),
      issuedAt: json('issuedAt'),
      revokedAt: json('revokedAt'),
      revokedSerials: (h['revokedSerials'] ?? '').split(' ').filter((s) => s !== ''),
    };
  } catch {
    record = null;
  }
  if (!isCredentialRecord(record)) throw new Error(`${key} is not a credential record`);
  return record;
}

function fromFlat(flat: readonly (string | null)[], key: string): CredentialRecord | null {
  const h: Record<string, string> = {};
  for (let i = 0; i + 1 < flat.length; i += 2) h[flat[i] as string] = flat[i + 1] as string;
  return fromHash(h, key);
}

/** What watch compares: a record's content in a fixed key order. */
function canonical(r: CredentialRecord): string {
  return JSON.stringify([r.id, r.type, r.serial, r.notAfter, r.tokenId, r.issuedAt, r.revokedAt, r.revokedSerials]);
}

/** A Redis URL without its password, for logs and the certs-dir marker. */
export function redactUrl(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = '***';
    return u.toString();
  } catch {
    return 'redis';
  }
}

/** Resolves the marker's content when the certs dir's CA database moved to Redis, else null. */
export async function redisLedgerMarker(certsDir: string): Promise<string | null> {
  try {
    return await readFile(join(certsDir, LEDGER_REDIS_MARKER), 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw err;
  }
}

export class RedisCredentialLedger implements CredentialLedger {
  readonly #client: Redis;
  readonly #keys: RedisKeys;
  readonly #opts: RedisLedgerOptions;
  readonly #logMaxLen: number;
  readonly #resyncMs: number;
  #crl: Promise<void> | null = null;
  #crlAgain = false;

  constructor(client: Redis, keys: RedisKeys, opts: RedisLedgerOptions = {}) {
    this.#client = client;
    this.#keys = keys;
    this.#opts = opts;
    this.#logMaxLen = opts.logMaxLen ?? 10_000;
    this.#resyncMs = opts.resyncMs ?? 300_000;
    defineScripts(client, SCRIPTS);
  }

  async get(id: string): Promise<CredentialRecord | null> {
    if (typeof id !== 'string' || !isDeviceId(id)) return null;
    const key = this.#keys.credential(id);
    let hash: Record<string, string>;
    try {
      hash = await this.#client.hgetall(key);
    } catch (err) {
      throw storeError(err);
    }
    return fromHash(hash, key);
  }

  /** Creates or replaces a record; serials revoked earlier for the id are kept. */
  async put(record: CredentialRecord): Promise<void> {
    if (!isCredentialRecord(record)) throw new Error('put: not a valid credential record');
    await this.#write(record, 'put');
  }

  /** Writes the record unless the id has one (the import); true when written. */
  async #write(record: CredentialRecord, mode: 'put' | 'absent'): Promise<boolean> {
    try {
      // The index entry first, in the same write: the index always covers the records.
      const [, written] = await Promise.all([
        this.#client.zadd(this.#keys.credentialIndex(), 0, record.id),
        this.#client.iotgateCredentialPut(this.#keys.credential(record.id), ...fields(record), mode),
      ]);
      if (written !== 1) return false;
      // After the record (awaited, so also on a cluster): a watcher reading the entry reads the new record.
      await this.#announce(record.id);
      return true;
    } catch (err) {
      throw storeError(err);
    }
  }

  #announce(id: string): Promise<unknown> {
    return this.#client.xadd(this.#keys.credentialLog(), 'MAXLEN', '~', this.#logMaxLen, '*', 'id', id);
  }

  /** Marks the record revoked at `at` (the first date stays), its serial revoked; null when unknown. */
  async revoke(id: string, at: number): Promise<CredentialRecord | null> {
    if (typeof id !== 'string' || !isDeviceId(id)) return null;
    if (!Number.isFinite(at)) throw new Error('revoke: at must be a finite number');
    const key = this.#keys.credential(id);
    let reply: unknown;
    try {
      reply = await this.#client.iotgateCredentialRevoke(key, JSON.stringify(at));
      if (reply === 0) return null;
      await this.#announce(id);
    } catch (err) {
      throw storeError(err);
    }
    return fromFlat(replyArray(reply, 'iotgateCredentialRevoke'), key);
  }

  /** Every record, in id order. */
  async list(): Promise<CredentialRecord[]> {
    const out: CredentialRecord[] = [];
    let after: string | null = null;
    for (;;) {
      let ids: string[];
      try {
        ids = await this.#client.zrangebylex(this.#keys.credentialIndex(), after === null ? '-' : `(${after}`, '+', 'LIMIT', 0, LIST_BATCH);
      } catch (err) {
        throw storeError(err);
      }
      // Auto-pipelined: one round trip per batch.
      const records = await Promise.all(ids.map((id) => this.get(id)));
      for (const r of records) if (r !== null) out.push(r);
      if (ids.length < LIST_BATCH) return out;
      after = ids[ids.length - 1] as string;
    }
  }

  /**
   * Signs `<certsDir>/ca.crl` from every serial revoked in Redis with the local CA key. Calls while
   * one runs share one more run (a burst of revocations signs twice, not once per revocation).
   */
  rebuildCrl(): Promise<void> {
    const { certsDir, material } = this.#opts;
    if (certsDir === undefined || material === undefined) return Promise.reject(new Error('rebuildCrl: the ledger has no certs dir'));
    if (this.#crl) {
      this.#crlAgain = true;
      return this.#crl;
    }
    const run = async (): Promise<void> => {
      do {
        this.#crlAgain = false;
        await writeCrlFile(certsDir, material, await this.list());
      } while (this.#crlAgain);
    };
    this.#crl = run().finally(() => {
      this.#crl = null;
    });
    return this.#crl;
  }

  /**
   * Moving a deployment to Redis: writes the marker into the certs dir, then, unless an import has
   * been done on this Redis, copies the file records of `<certsDir>/devices/` that Redis does not
   * have (never overwriting one), under a lock so that gateways starting together import once.
   * Resolves the number imported, or null when there was nothing to do.
   */
  async importFileLedger(redisUrl: string): Promise<number | null> {
    const { certsDir, material, log } = this.#opts;
    if (certsDir === undefined || material === undefined) throw new Error('importFileLedger: the ledger has no certs dir');
    const marker = join(certsDir, LEDGER_REDIS_MARKER);
    const hasMarker = await access(marker).then(
      () => true,
      () => false,
    );
    if (!hasMarker) {
      await writePublicFile(
        marker,
        `${JSON.stringify({ store: 'redis', url: redactUrl(redisUrl), since: new Date().toISOString(), note: 'the CA database of this certs dir is in Redis; devices/ is only the copy imported once' })}\n`,
      );
    }
    const records = await new FileCredentialLedger(certsDir, material).list();
    const importKey = this.#keys.credentialImport();
    try {
      if (records.length === 0 || (await this.#client.exists(importKey)) === 1) return null;
      const lock = await this.#client.set(importKey, JSON.stringify({ state: 'importing', at: Date.now() }), 'PX', IMPORT_LOCK_MS, 'NX');
      if (lock !== 'OK') return null;
      let imported = 0;
      for (const r of records) if (await this.#write(r, 'absent')) imported++;
      await this.#client.set(importKey, JSON.stringify({ state: 'done', at: Date.now(), imported, found: records.length }));
      log?.info({ imported, found: records.length, certsDir }, 'imported the file credential ledger of the certs dir into Redis (once)');
      return imported;
    } catch (err) {
      throw storeError(err);
    }
  }

  /**
   * Delivers every record soon after the call (also none: an empty first batch), then the records
   * that changed since, read from the change log every `intervalMs` (writes of other processes
   * too). Never throws from its timer: a failed poll is logged and retried on the next tick.
   */
  watch(onChange: (changed: CredentialRecord[]) => void, intervalMs: number): () => void {
    const known = new Map<string, string>();
    const log = this.#opts.log;
    let cursor: string | null = null;
    let lastFull = 0;
    let failing = false;
    let lastWarn = 0;

    const diff = (records: readonly CredentialRecord[]): CredentialRecord[] => {
      const changed: CredentialRecord[] = [];
      for (const r of records) {
        const c = canonical(r);
        if (known.get(r.id) === c) continue;
        known.set(r.id, c);
        changed.push(r);
      }
      return changed;
    };

    const full = async (): Promise<CredentialRecord[]> => {
      const startedAt = Date.now();
      // The log position first: whatever is written while listing is read from the log again.
      const top = await this.#client.xrevrange(this.#keys.credentialLog(), '+', '-', 'COUNT', 1);
      const records = await this.list();
      cursor = top[0]?.[0] ?? '0-0';
      lastFull = startedAt;
      return diff(records);
    };

    const incremental = async (): Promise<CredentialRecord[]> => {
      const ids = new Set<string>();
      for (;;) {
        const from: string = cursor ?? '0-0';
        const entries = await this.#client.xrange(this.#keys.credentialLog(), from === '0-0' ? '-' : from, '+', 'COUNT', LOG_PAGE);
        if (from === '0-0') {
          // The log was empty at the last listing: entries may have been trimmed since; list again.
          if (entries.length > 0) return full();
          break;
        }
        // Our position was trimmed away, or the log was deleted: list again.
        if (entries[0]?.[0] !== from) return full();
        for (const [, kv] of entries.slice(1)) {
          const i = kv.indexOf('id');
          const id = i >= 0 ? kv[i + 1] : undefined;
          if (id !== undefined) ids.add(id);
        }
        cursor = (entries[entries.length - 1] as [string, string[]])[0];
        if (entries.length < LOG_PAGE) break;
      }
      if (ids.size === 0) return [];
      const records = await Promise.all([...ids].map((id) => this.get(id)));
      return diff(records.filter((r): r is CredentialRecord => r !== null));
    };

    return pollLedger(
      intervalMs,
      onChange,
      async () => {
        const changed = cursor === null || Date.now() - lastFull >= this.#resyncMs ? await full() : await incremental();
        if (failing) log?.info('reading the credential ledger from Redis works again');
        failing = false;
        return changed;
      },
      (err) => {
        failing = true;
        const now = Date.now();
        if (now - lastWarn >= 10_000) {
          lastWarn = now;
          log?.warn({ err: err instanceof Error ? err.message : String(err) }, 'could not read the credential ledger from Redis; retrying');
        }
      },
    );
  }
}
