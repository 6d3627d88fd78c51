/** Atomic file writes with explicit modes, for keys, certificates and ledger records. */
import { randomBytes } from 'node:crypto';
import { chmod, mkdir, open, rename, unlink } from 'node:fs/promises';
import { dirname, basename, join } from 'node:path';

async function writeAtomic(path: string, data: string | Uint8Array, mode: number): Promise<void> {
  // Temp file in the same directory so rename() stays on one filesystem and is atomic.
  const tmp = join(dirname(path), `.${basename(path)}.${process.pid}.${randomBytes(6).toString('hex')}.tmp`);
  const fh = await open(tmp, 'wx', mode);
  try {
    await fh.writeFile(data);
    // The umask may have stripped bits from `mode`; secret files must never be wider than asked.
    await fh.chmod(mode);
    await fh.sync();
  } catch (err) {
    await fh.close().catch(() => undefined);
    await unlink(tmp).catch(() => undefined);
    throw err;
  }
  await fh.close();
  try {
    await rename(tmp, path);
  } catch (err) {
    await unlink(tmp).catch(() => undefined);
    throw err;
  }
}

/** Writes a private file (mode 0600) atomically: temp file, then rename over `path`. */
export async function writeSecretFile(path: string, data: string | Uint8Array): Promise<void> {
  await writeAtomic(path, data, 0o600);
}

/** Writes a public file (mode 0644) atomically. */
export async function writePublicFile(path: string, data: string | Uint8Array): Promise<void> {
  await writeAtomic(path, data, 0o644);
}

/**
 * Creates `dir` (and parents) when missing, with `mode` (default 0700) on what it creates. An
 * existing directory keeps its mode: the operator may have chosen it, and the keys inside are 0600.
 */
export async function ensureDir(dir: string, mode = 0o700): Promise<void> {
  const first = await mkdir(dir, { recursive: true, mode });
  if (first !== undefined) await chmod(dir, mode);
}
