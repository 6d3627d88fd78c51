/**
 * The Redis key layout (docs/redis.md, "Key layout"). Every key of one device carries the device id
 * as a hash tag (`iotgate:{dev-1}:shadow`), so all of a device's keys live in one Redis Cluster
 * slot and its Lua scripts stay single-slot. Fleet-wide indexes have no device tag.
 */

/** Builds every key the Redis stores use, under one prefix (default `iotgate:`). */
export class RedisKeys {
  constructor(readonly prefix = 'iotgate:') {
    // A brace in the prefix would become the hash tag of every key and put the fleet in one slot.
    if (prefix.includes('{') || prefix.includes('}')) throw new Error(`redis key prefix must not contain braces: ${prefix}`);
  }

  private tag(id: string): string {
    return `${this.prefix}{${id}}`;
  }

  /** HASH: one field per DeviceRecord property, each value JSON. */
  device(id: string): string {
    return `${this.tag(id)}:device`;
  }

  /** ZSET (all scores 0, lexicographic order): every device id. Fleet-wide. */
  deviceIndex(): string {
    return `${this.prefix}devices`;
  }

  /** HASH `gateway`, `session`: who holds the device's presence (absent while offline). */
  presence(id: string): string {
    return `${this.tag(id)}:presence`;
  }

  /** SET: ids of devices whose presence `gateway` may hold (a superset; the reaper's list). Fleet-wide. */
  presenceHeld(gateway: string): string {
    return `${this.prefix}presence:${gateway}`;
  }

  /** HASH name → StoredShadow JSON ('' is the classic shadow). */
  shadowDocs(id: string): string {
    return `${this.tag(id)}:shadow`;
  }

  /** HASH name → version (what compareAndSet compares). */
  shadowVersions(id: string): string {
    return `${this.tag(id)}:shadow:version`;
  }

  /** The six keys of a device's command records, in the order the command scripts take them. */
  commands(id: string): CommandKeys {
    const t = this.tag(id);
    return [`${t}:cmd`, `${t}:cmd:order`, `${t}:cmd:open`, `${t}:cmd:undelivered`, `${t}:cmd:done`, `${t}:cmd:idem`];
  }

  /** SET: ids of devices that have (or had) command records; openAll walks it. Fleet-wide. */
  commandDevices(): string {
    return `${this.prefix}commands:devices`;
  }

  /** STREAM: telemetry history, entry id = receivedAt. */
  telemetry(id: string): string {
    return `${this.tag(id)}:telemetry`;
  }

  /** HASH: the device's credential record (CA database), one field per property (docs/redis.md). */
  credential(id: string): string {
    return `${this.tag(id)}:credential`;
  }

  /** ZSET (all scores 0, lexicographic order): every id with a credential record. Fleet-wide. */
  credentialIndex(): string {
    return `${this.prefix}credentials`;
  }

  /** STREAM: one entry (field `id`) per credential write, what watchers poll; capped (MAXLEN ~). Fleet-wide. */
  credentialLog(): string {
    return `${this.prefix}credentials:log`;
  }

  /** STRING: the import of a certs dir's file ledger (a lock while it runs, then done). Fleet-wide. */
  credentialImport(): string {
    return `${this.prefix}credentials:import`;
  }

  /** STRING counter of one fixed, window-aligned rate slot. */
  rate(key: string, unit: string, limit: number, windowMs: number, slotStart: number): string {
    return `${this.tag(key)}:rate:${unit}:${limit}/${windowMs}:${slotStart}`;
  }
}

/** data (HASH), order, open, undelivered, done (ZSET/SET), idem (HASH): see docs/redis.md. */
export type CommandKeys = [data: string, order: string, open: string, undelivered: string, done: string, idem: string];
