/**
 * Lua scripts as ioredis custom commands (`defineCommand`: EVALSHA, falling back to EVAL after a
 * Redis restart emptied the script cache). Each store declares its commands on `RedisCommander`
 * and defines them once per client here.
 *
 * Scripts never return Lua booleans: over RESP3 (ioredis' default protocol) they would arrive as
 * booleans instead of RESP2's 1/nil, so every script returns integers, strings or arrays.
 */
import type { Redis } from 'ioredis';

const defined = new WeakMap<Redis, Set<string>>();

export interface ScriptDefinition {
  lua: string;
  /** Absent: the caller passes the key count as the first argument. */
  numberOfKeys?: number;
}

/** Defines the scripts on the client unless it already has them. */
export function defineScripts(client: Redis, scripts: Readonly<Record<string, ScriptDefinition>>): void {
  let names = defined.get(client);
  if (!names) defined.set(client, (names = new Set()));
  for (const [name, def] of Object.entries(scripts)) {
    if (names.has(name)) continue;
    client.defineCommand(name, def.numberOfKeys === undefined ? { lua: def.lua } : { lua: def.lua, numberOfKeys: def.numberOfKeys });
    names.add(name);
  }
}

/** A script reply that must be an array (of strings, or nulls where a field was missing). */
export function replyArray(reply: unknown, what: string): (string | null)[] {
  if (!Array.isArray(reply)) throw new Error(`unexpected reply from ${what}: ${typeof reply}`);
  return reply.map((x: unknown) => (x === null || x === undefined ? null : String(x)));
}
