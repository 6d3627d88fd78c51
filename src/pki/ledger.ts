/** The CA database as files in the certs dir, shared by the CLI and a running gateway. */
import { randomBytes } from 'node:crypto';
import { readFile, readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { isDeviceId, type CredentialRecord } from '../core/model.js';
import type { CredentialLedger } from '../core/ports.js';
import type { CaMaterial } from './ca.js';
import { CA_FILES } from './ca.js';
import { buildCrl, type RevokedEntry } from './crl.js';
import { ensureDir, writePublicFile, writeSecretFile } from './files.js';
import { normalizeSerial } from './x509.js';

/** Sub-directory of the certs dir with one `<encodeURIComponent(id)>.json` per device. */
export const LEDGER_DEVICES_DIR = 'devices';
/** Bumped after every ledger write so that other processes notice changes with one read. */
export const LEDGER_SEQ_FILE = 'ledger.seq';

// A file whose mtime is this close to the previous scan may have changed without its stat
// signature changing (coarse timestamps, inode reuse by atomic renames), so it is re-read.
const RACY_MARGIN_MS = 2000;

function isStringOrNull(v: unknown): v is string | null {
  return v === null || typeof v === 'string';
}

/** Structural check of a parsed ledger file (and of what `put` accepts, in every ledger). */
export function isCredentialRecord(v: unknown): v is CredentialRecord {
  if (typeof v !== 'object' || v === null) return false;
  const r = v as Record<string, unknown>;
  return (
    typeof r['id'] === 'string' &&
    isDeviceId(r['id']) &&
    typeof r['type'] === 'string' &&
    isStringOrNull(r['serial']) &&
    isStringOrNull(r['notAfter']) &&
    typeof r['tokenId'] === 'string' &&
    typeof r['issuedAt'] === 'number' &&
    (r['revokedAt'] === null || typeof r['revokedAt'] === 'number') &&
    Array.isArray(r['revokedSerials']) &&
    r['revokedSerials'].every((s) => typeof s === 'string')
  );
}

function fileName(id: string): string {
  return `${encodeURIComponent(id)}.json`;
}

function parseRecord(text: string, name: string): CredentialRecord {
  const parsed: unknown = JSON.parse(text);
  if (!isCredentialRecord(parsed) || fileName(parsed.id) !== name) throw new Error(`ledger file ${name} is not a credential record`);
  return parsed;
}

/** The revoked serials of a record: `a` then `b`, normalised, each once (every ledger's rule). */
export function unionSerials(a: readonly string[], b: readonly string[]): string[] {
  return [...new Set([...a, ...b].map(normalizeSerial))];
}
const union = unionSerials;

/**
 * Signs a CRL of every serial revoked in `records` and writes it to `<certsDir>/ca.crl`. Older
 * serials of a re-provisioned device were revoked before its current issuance (`issuedAt`).
 */
export async function writeCrlFile(
  certsDir: string,
  material: Pick<CaMaterial, 'caCertPem' | 'caKeyPem'>,
  records: readonly CredentialRecord[],
): Promise<void> {
  const entries: RevokedEntry[] = [];
  for (const r of records) {
    const at = r.revokedAt ?? r.issuedAt;
    for (const serial of r.revokedSerials) entries.push({ serial, revokedAt: at });
  }
  await writePublicFile(join(certsDir, CA_FILES.crl), await buildCrl(material, entries));
}

/**
 * FileCredentialLedger keeps one JSON file per device under `<certsDir>/devices/` (atomic writes,
 * mode 0600) and bumps `<certsDir>/ledger.seq` after each write; revocations rewrite `ca.crl`.
 * Writes from one instance are serialised; across processes the last writer of a record wins.
 */
export class FileCredentialLedger implements CredentialLedger {
  readonly #certsDir: string;
  readonly #devicesDir: string;
  readonly #seqPath: string;
  readonly #material: Pick<CaMaterial, 'caCertPem' | 'caKeyPem'>;
  #queue: Promise<unknown> = Promise.resolve();

  constructor(certsDir: string, material: Pick<CaMaterial, 'caCertPem' | 'caKeyPem'>) {
    this.#certsDir = certsDir;
    this.#devicesDir = join(certsDir, LEDGER_DEVICES_DIR);
    this.#seqPath = join(certsDir, LEDGER_SEQ_FILE);
    this.#material = material;
  }

  #exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.#queue.then(fn, fn);
    this.#queue = run.catch(() => undefined);
    return run;
  }

  async #read(id: string): Promise<CredentialRecord | null> {
    const name = fileName(id);
    let text: string;
    try {
      text = await readFile(join(this.#devicesDir, name), 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
      throw err;
    }
    return parseRecord(text, name);
  }

  async #write(record: CredentialRecord, crlChanged: boolean): Promise<void> {
    await ensureDir(this.#devicesDir);
    await writeSecretFile(join(this.#devicesDir, fileName(record.id)), `${JSON.stringify(record, null, 2)}\n`);
    if (crlChanged) await this.#writeCrl();
    const previous = await readFile(this.#seqPath, 'utf8').catch(() => '0');
    const n = Number.parseInt(previous, 10);
    // The random part makes two processes that bump the same number still change the file.
    await writeSecretFile(this.#seqPath, `${Number.isSafeInteger(n) ? n + 1 : 1} ${randomBytes(6).toString('hex')}\n`);
  }

  async #writeCrl(): Promise<void> {
    await writeCrlFile(this.#certsDir, this.#material, await this.list());
  }

  /** Rewrites `ca.crl` from every revoked serial in the ledger (e.g. after ensureCa recreated it). */
  rebuildCrl(): Promise<void> {
    return this.#exclusive(() => this.#writeCrl());
  }

  /** Resolves the record of `id`, or null. */
  async get(id: string): Promise<CredentialRecord | null> {
    if (typeof id !== 'string' || !isDeviceId(id)) return null;
    return this.#read(id);
  }

  /** Creates or replaces a record; serials revoked earlier for the id are kept. */
  put(record: CredentialRecord): Promise<void> {
    if (!isCredentialRecord(record)) return Promise.reject(new Error('put: not a valid credential record'));
    return this.#exclusive(async () => {
      const old = await this.#read(record.id);
      const oldSerials = old?.revokedSerials ?? [];
      const revokedSerials = union(oldSerials, record.revokedSerials);
      await this.#write({ ...record, revokedSerials }, revokedSerials.length !== union(oldSerials, []).length);
    });
  }

  /** Marks the record revoked at `at`, adds its serial to the CRL; null when unknown. */
  revoke(id: string, at: number): Promise<CredentialRecord | null> {
    if (typeof id !== 'string' || !isDeviceId(id)) return Promise.resolve(null);
    return this.#exclusive(async () => {
      const old = await this.#read(id);
      if (!old) return null;
      const record: CredentialRecord = {
        ...old,
        revokedAt: old.revokedAt ?? at,
        revokedSerials: union(old.revokedSerials, old.serial === null ? [] : [old.serial]),
      };
      await this.#write(record, true);
      return record;
    });
  }

  /** Every record, in id order. */
  async list(): Promise<CredentialRecord[]> {
    const names = await this.#names();
    const records: CredentialRecord[] = [];
    for (const name of names) {
      try {
        records.push(parseRecord(await readFile(join(this.#devicesDir, name), 'utf8'), name));
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
      }
    }
    return records.sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  }

  async #names(): Promise<string[]> {
    try {
      return (await readdir(this.#devicesDir)).filter((n) => n.endsWith('.json') && !n.startsWith('.'));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw err;
    }
  }

  /**
   * Delivers every record soon after the call, then, whenever `ledger.seq` changes (polled every
   * `intervalMs`), the records whose file content changed, also when another process wrote them.
   * Never throws from its timer: a failed or partial scan is retried on the next tick.
   */
  watch(onChange: (changed: CredentialRecord[]) => void, intervalMs: number): () => void {
    const files = new Map<string, { sig: string; mtimeMs: number; text: string }>();
    let lastSeq: string | undefined;
    let lastScanAt = 0;

    const scan = async (): Promise<{ changed: CredentialRecord[]; complete: boolean }> => {
      const startedAt = Date.now();
      const changed: CredentialRecord[] = [];
      let complete = true;
      const names = await this.#names();
      const present = new Set(names);
      for (const name of files.keys()) if (!present.has(name)) files.delete(name);
      for (const name of names) {
        const path = join(this.#devicesDir, name);
        try {
          const st = await stat(path, { bigint: true });
          const sig = `${st.ino}:${st.size}:${st.mtimeNs}:${st.ctimeNs}`;
          const mtimeMs = Number(st.mtimeMs);
          const prev = files.get(name);
          if (prev && prev.sig === sig && mtimeMs < lastScanAt - RACY_MARGIN_MS) continue;
          const text = await readFile(path, 'utf8');
          if (prev?.text === text) {
            files.set(name, { sig, mtimeMs, text });
            continue;
          }
          const record = parseRecord(text, name);
          files.set(name, { sig, mtimeMs, text });
          changed.push(record);
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code !== 'ENOENT') complete = false;
        }
      }
      if (complete) lastScanAt = startedAt;
      return { changed, complete };
    };

    return pollLedger(intervalMs, onChange, async () => {
      const seq = await readFile(this.#seqPath, 'utf8').catch(() => '');
      if (lastSeq !== undefined && seq === lastSeq) return [];
      const { changed, complete } = await scan();
      if (complete) lastSeq = seq;
      return changed;
    });
  }
}

/**
 * The polling behind CredentialLedger.watch, for every ledger: `read` now and every `intervalMs`
 * (never two at once). The first read is delivered even when empty, later ones only when they
 * found changes; a throwing `read` (unreadable files, Redis down) is retried at the next tick and
 * shown to `onError`; a throwing `onChange` never stops the polling. Returns the stop function.
 */
export function pollLedger(
  intervalMs: number,
  onChange: (changed: CredentialRecord[]) => void,
  read: () => Promise<CredentialRecord[]>,
  onError?: (err: unknown) => void,
): () => void {
  let delivered = false;
  let busy = false;
  let stopped = false;
  const tick = async (): Promise<void> => {
    if (busy || stopped) return;
    busy = true;
    try {
      const changed = await read();
      if (stopped || (delivered && changed.length === 0)) return;
      delivered = true;
      try {
        onChange(changed);
      } catch {
        // The watcher's owner handles its own errors; a throwing callback must not stop polling.
      }
    } catch (err) {
      onError?.(err);
    } finally {
      busy = false;
    }
  };
  setImmediate(() => void tick());
  const timer = setInterval(() => void tick(), Math.max(10, intervalMs));
  timer.unref();
  return () => {
    stopped = true;
    clearInterval(timer);
  };
}
