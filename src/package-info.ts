/** Where the package is installed (works from src/ under tsx and from dist/src/ once compiled). */
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

function findRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    if (existsSync(join(dir, 'package.json')) && existsSync(join(dir, 'schemas'))) return dir;
    const parent = dirname(dir);
    if (parent === dir) throw new Error('iotgate package root not found');
    dir = parent;
  }
}

export const PACKAGE_ROOT = findRoot();
export const PACKAGE_VERSION: string = (JSON.parse(readFileSync(join(PACKAGE_ROOT, 'package.json'), 'utf8')) as { version: string }).version;
/** The device types shipped with the package. */
export const BUNDLED_SCHEMAS_DIR = join(PACKAGE_ROOT, 'schemas');
