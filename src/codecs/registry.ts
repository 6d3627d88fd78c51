/**
 * Known device types: the file stems in the schemas dir (contract §6). The schema layer (telemetry
 * issue) compiles them; until then a type is known when a schema file names it.
 */
import { readdirSync } from 'node:fs';

export function listDeviceTypes(schemasDir: string): Set<string> {
  const types = new Set<string>(['generic']);
  for (const name of readdirSync(schemasDir)) {
    const m = /^([a-z][a-z0-9_-]{0,63})\.(?:proto|schema\.json)$/.exec(name);
    if (m?.[1]) types.add(m[1]);
  }
  return types;
}
