/** The CredentialLedger contract on the file ledger (a copy of one CA per test, its own certs dir). */
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before } from 'node:test';
import { CA_FILES, FileCredentialLedger, initCa, loadCaMaterial, type CaMaterial } from '../../src/pki/index.js';
import { newTempDir, removeDir, tempDir } from '../helpers/pki.js';
import { credentialLedgerContract } from './credential-ledger.js';

let caDir = '';
let material: CaMaterial;

before(async () => {
  caDir = await newTempDir();
  await initCa(caDir);
  material = await loadCaMaterial(caDir);
});
after(() => removeDir(caDir));

credentialLedgerContract('file', async (t) => {
  const dir = await tempDir(t);
  for (const f of Object.values(CA_FILES)) await writeFile(join(dir, f), await readFile(join(caDir, f)));
  return { ledger: new FileCredentialLedger(dir, material), other: async () => new FileCredentialLedger(dir, material) };
});
