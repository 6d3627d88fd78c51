/** Device keys and CSRs made with openssl (a client nobody here wrote). */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface KeyAndCsr {
  keyPem: string;
  csrPem: string;
}

export function opensslCsr(cn: string, kind: 'rsa' | 'ec' = 'rsa'): KeyAndCsr {
  const dir = mkdtempSync(join(tmpdir(), 'iotgate-csr-'));
  try {
    const key = join(dir, 'd.key');
    const csr = join(dir, 'd.csr');
    const newkey = kind === 'rsa' ? ['-newkey', 'rsa:2048'] : ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256'];
    execFileSync('openssl', ['req', '-new', ...newkey, '-nodes', '-keyout', key, '-subj', `/CN=${cn}`, '-out', csr], { stdio: 'ignore' });
    return { keyPem: readFileSync(key, 'utf8'), csrPem: readFileSync(csr, 'utf8') };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
