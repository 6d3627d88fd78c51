/**
 * One socket write per connection and event-loop turn. mqtt-packet corks the stream for each
 * packet it writes and uncorks it on the next tick, and aedes continues after every write in a
 * `setImmediate`: so the PUBLISHes aedes delivers to one subscriber, and the PUBACKs it sends one
 * publisher, went out in a syscall each (`writev` was ~20 % of the gateway's CPU in the telemetry
 * benchmark, more than the rest of a message's delivery). `batchWrites` makes a connection hold
 * one more cork from its first packet of a turn until the check phase that follows, so the packets
 * of one turn leave in one write. Every packet still leaves within one loop iteration; a
 * connection's writes are released early once `FLUSH_BYTES` are held (checked before each packet,
 * so a large packet on top of what is held can still cross the stream's high-water mark: `write()`
 * then reports back-pressure that lasts until the release, one loop iteration at most).
 *
 * Nothing held is lost or reordered:
 * - the release is queued (one `setImmediate` for all connections) no later than the first packet
 *   held, so any `setImmediate` queued after a write, such as aedes closing a client it refused
 *   after writing its CONNACK, runs after the packet has left;
 * - `destroy()` sends what is held first (aedes destroys a connection from promise callbacks too,
 *   e.g. when a store fails for one message while the PUBACK of the one before is held), and
 *   `end()` does so by itself.
 *
 * Per connection this costs two own properties (`cork`, `destroy`) and a flag: no closures, no
 * timers. Streams that cannot write several chunks at once (no `_writev`, e.g. the WebSocket
 * duplex) or that have their own cork or destroy are left alone.
 */
import { Writable, type Duplex } from 'node:stream';

const FLUSH_BYTES = 8 * 1024;

const cork = Writable.prototype.cork;
const uncork = Writable.prototype.uncork;
// Writable's destroy(err, cb) (node's typings omit the callback).
const destroy = Writable.prototype.destroy as (this: Duplex, err?: Error, cb?: (err: Error | null) => void) => Duplex;

interface Batched extends Duplex {
  turnHeld?: boolean;
}

/** Connections holding a cork until the end of this turn. */
let held: Batched[] = [];

function releaseAll(): void {
  const streams = held;
  held = [];
  for (const s of streams) {
    if (s.turnHeld !== true) continue; // destroyed since, and released then
    s.turnHeld = false;
    uncork.call(s);
  }
}

function corkForTurn(this: Batched): void {
  if (this.turnHeld !== true) {
    this.turnHeld = true;
    cork.call(this);
    if (held.push(this) === 1) setImmediate(releaseAll);
  } else if (this.writableLength >= FLUSH_BYTES) {
    uncork.call(this);
    cork.call(this);
  }
  cork.call(this);
}

function flushThenDestroy(this: Batched, err?: Error | null, cb?: (err: Error | null) => void): Batched {
  if (this.turnHeld === true) {
    this.turnHeld = false;
    // As end() does: every cork off (mqtt-packet's pending uncorks then find none), the data out.
    while (this.writableCorked > 0) uncork.call(this);
  }
  return destroy.call(this, err ?? undefined, cb) as Batched;
}

/** Batches the packets mqtt-packet writes to `stream` per turn (see the module comment for which streams). */
export function batchWrites(stream: Duplex): void {
  const s = stream as Batched;
  if (s.cork !== cork || s.uncork !== uncork || s.destroy !== destroy || typeof s._writev !== 'function') return;
  s.turnHeld = false;
  s.cork = corkForTurn;
  s.destroy = flushThenDestroy as Duplex['destroy'];
}
