/**
 * One socket write per connection and event-loop turn. mqtt-packet corks the stream for each
 * packet it writes and uncorks it on the next tick, and aedes continues after every write in a
 * `setImmediate`: so the PUBLISHes aedes delivers to one subscriber, and the PUBACKs it sends one
 * publisher, each went out in a syscall of their own (a `writev` cost more CPU than the rest of a
 * message's delivery; ~20 % of the gateway's CPU in the benchmark). `batchWrites` holds one more
 * cork on the stream from its first packet of a turn until the check phase that follows, so the
 * packets of one turn leave in one write. Every packet still leaves within one loop iteration;
 * a turn's writes are released early once `FLUSH_BYTES` are held, so the stream's buffer stays
 * under its high-water mark and `write()` keeps reporting real back-pressure only.
 */
import type { Duplex } from 'node:stream';

const FLUSH_BYTES = 8 * 1024;

export function batchWrites(stream: Duplex): void {
  const cork = stream.cork;
  const uncork = stream.uncork;
  let held = false;
  const release = () => {
    held = false;
    uncork.call(stream);
  };
  stream.cork = function corkForTurn(this: Duplex) {
    if (!held) {
      held = true;
      cork.call(stream);
      setImmediate(release);
    } else if (stream.writableLength >= FLUSH_BYTES) {
      uncork.call(stream);
      cork.call(stream);
    }
    cork.call(stream);
  };
}
