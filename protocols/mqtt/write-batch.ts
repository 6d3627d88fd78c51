/**
 * One socket write per connection and event-loop turn. mqtt-packet corks the stream for each
 * packet it writes and uncorks it on the next tick, and aedes continues after every write in a
 * `setImmediate`: so the PUBLISHes aedes delivers to one subscriber, and the PUBACKs it sends one
 * publisher, went out in a syscall each (`writev` was ~20 % of the gateway's CPU in the telemetry
 * benchmark, more than the rest of a message's delivery). `batchWrites` makes a connection hold
 * one more cork from its first packet of a turn until the check phase that follows, so the packets
 * of one turn leave in one write. Every packet still leaves within one loop iteration; a
 * connection's writes are released early once `FLUSH_BYTES` are held, so its buffer stays under
 * the high-water mark and `write()` reports real back-pressure only.
 *
 * Ordering: the release is queued (one `setImmediate` for all connections) no later than the
 * first packet held, so any `setImmediate` queued after a write, such as aedes closing a client it
 * refused after writing its CONNACK, runs after the packet has left. `end()` sends what is held.
 *
 * Per connection this costs one own property (`cork`) and a flag: no closures, no timers.
 */
import { Writable, type Duplex } from 'node:stream';

const FLUSH_BYTES = 8 * 1024;

const cork = Writable.prototype.cork;
const uncork = Writable.prototype.uncork;

interface Batched extends Duplex {
  turnHeld?: boolean;
}

/** Connections holding a cork until the end of this turn. */
let held: Batched[] = [];

function releaseAll(): void {
  const streams = held;
  held = [];
  for (const s of streams) {
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

/** Batches the packets mqtt-packet writes to `stream` per turn (a stream with its own cork is left alone). */
export function batchWrites(stream: Duplex): void {
  if (stream.cork !== cork || stream.uncork !== uncork) return;
  const s = stream as Batched;
  s.turnHeld = false;
  s.cork = corkForTurn;
}
