/** `iotgate ca init [--force]` */
import { resolve } from 'node:path';
import { initCa } from '../../pki/index.js';
import { cliConfig, print, type GlobalOptions } from '../context.js';

export async function caInit(opts: GlobalOptions & { force?: boolean }): Promise<void> {
  const config = cliConfig(opts);
  const dir = resolve(config.certs.dir);
  const result = await initCa(dir, { force: opts.force === true, hostnames: [...config.certs.hostnames] });
  print(opts, { certsDir: dir, created: result.created }, `created in ${dir}: ${result.created.join(', ')}`);
}
