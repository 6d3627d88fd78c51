/**
 * Lua scripts as ioredis custom commands (`defineCommand`: EVALSHA, falling back to EVAL after a
 * Redis restart emptied the script cache). Each store declares its commands on `RedisCommander`
 * and defines them once per client here.
 *
 * Scripts never return Lua booleans: over RESP3 (ioredis' default protocol) they would arrive as
 * booleans instead of RESP2's 1/nil, so every script returns integers, strings or arrays.
 */
import { createHash } from 'node:crypto';
import { Command, type Redis } from 'ioredis';

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

/**
 * A command whose argument array is sent as given. ioredis' `Command` copies its arguments with
 * `Array#flat` and the script wrapper spreads them twice more: for a batch script with hundreds
 * of arguments per call that was the largest single cost of the Redis ingest path (about 2 µs per
 * message in the telemetry pipeline benchmark). Arguments must already be strings, and are sent
 * as they are: no ioredis `keyPrefix` is applied (the stores build whole keys with RedisKeys).
 * Replies come as strings, like those of a command defined with `defineCommand`.
 */
class PreparedCommand extends Command {
  constructor(name: string, args: string[]) {
    super(name, [], { replyEncoding: 'utf8' });
    this.args = args;
  }
}

/**
 * A Lua script for the hot path's batch calls: `run` takes the whole argument vector built in one
 * array (slot 0 reserved for the script, then the key count, the keys and the arguments) and sends
 * EVALSHA, or EVAL when Redis does not have the script (after a restart). Bypasses ioredis'
 * auto-pipelining, like a command listed in `autoPipeliningIgnoredCommands`.
 */
export class BatchScript {
  readonly sha: string;

  constructor(private readonly lua: string) {
    this.sha = createHash('sha1').update(lua).digest('hex');
  }

  /** `argv[0]` is overwritten; `argv[1]` is the number of keys. */
  run(client: Redis, argv: string[]): Promise<unknown> {
    argv[0] = this.sha;
    const evalsha = new PreparedCommand('evalsha', argv);
    void client.sendCommand(evalsha);
    return evalsha.promise.catch((err: unknown) => {
      if (!(err instanceof Error) || !err.message.includes('NOSCRIPT')) throw err;
      const again = argv.slice();
      again[0] = this.lua;
      const cmd = new PreparedCommand('eval', again);
      void client.sendCommand(cmd);
      return cmd.promise;
    });
  }
}
