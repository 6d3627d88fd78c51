/**
 * aedes' publish queue (mqemitter, and mqemitter-redis which inherits from it) made safe under load.
 *
 * mqemitter 7.1 dispatches at most `concurrency` messages at once and queues the rest in two
 * arrays drained with `Array#shift`. Two problems, both measured with `iotgate bench`:
 *  - when a dequeued message has no subscriber, fastparallel calls `released` synchronously, which
 *    dequeues the next one: one stack frame per queued message, until `RangeError: Maximum call
 *    stack size exceeded` kills the process (the gateway and bare aedes alike, at ~1,000 REST shadow
 *    updates/s or under overload);
 *  - `Array#shift` is O(n) on large arrays (19.6 % of CPU in the shadow round-trip profile).
 *
 * hardenEmitter() patches one instance: the queues become ring buffers (O(1) push/shift, same
 * `push`/`shift`/`length` surface the emitter uses) and a message without subscribers is finished
 * in a loop instead of a recursion. Everything else (matching, the callbacks' order, `concurrency`)
 * is mqemitter's own.
 */
import mqemitter from 'mqemitter';

/** A FIFO with the three array methods mqemitter uses, O(1) each. */
export class RingQueue<T> {
  private items: (T | undefined)[] = new Array<T | undefined>(16);
  private head = 0;
  private count = 0;

  get length(): number {
    return this.count;
  }

  push(item: T): number {
    if (this.count === this.items.length) this.grow();
    this.items[(this.head + this.count) % this.items.length] = item;
    return ++this.count;
  }

  shift(): T | undefined {
    if (this.count === 0) return undefined;
    const item = this.items[this.head];
    this.items[this.head] = undefined;
    this.head = (this.head + 1) % this.items.length;
    this.count--;
    return item;
  }

  private grow(): void {
    const next = new Array<T | undefined>(this.items.length * 2);
    for (let i = 0; i < this.count; i++) next[i] = this.items[(this.head + i) % this.items.length];
    this.items = next;
    this.head = 0;
  }
}

interface Message {
  topic: string;
}

/** The parts of mqemitter's instance this patch relies on (mqemitter.js 7.1). */
interface EmitterInternals {
  _messageQueue: RingQueue<Message> | Message[];
  _messageCallbacks: RingQueue<(err?: Error) => void> | ((err?: Error) => void)[];
  _matcher: { match(topic: string): unknown[] };
  _parallel: (that: unknown, fns: unknown[], message: Message, done: (err?: Error) => void) => void;
  _doing: boolean;
  current: number;
  _do(message: Message, callback: (err?: Error) => void): unknown;
}

export function hardenEmitter<E extends object>(mq: E): E {
  const e = mq as unknown as EmitterInternals;
  if (e._messageQueue instanceof RingQueue) return mq; // already hardened
  if (typeof e._do !== 'function' || !Array.isArray(e._messageQueue)) {
    throw new Error('hardenEmitter: not an mqemitter 7 instance');
  }
  const queue = new RingQueue<Message>();
  const callbacks = new RingQueue<(err?: Error) => void>();
  for (const m of e._messageQueue) queue.push(m);
  for (const c of e._messageCallbacks as ((err?: Error) => void)[]) callbacks.push(c);
  e._messageQueue = queue;
  e._messageCallbacks = callbacks;
  e._do = function (message: Message, callback: (err?: Error) => void) {
    this._doing = true;
    let m: Message | undefined = message;
    let cb = callback;
    // Messages nobody subscribed to are finished here, one after another, without recursion.
    for (;;) {
      const matches = this._matcher.match(m.topic);
      if (matches.length > 0) {
        this.current++;
        this._parallel(this, matches, m, cb);
        return this;
      }
      cb();
      m = queue.shift();
      if (m === undefined) {
        this._doing = false;
        return this;
      }
      cb = callbacks.shift() ?? noop;
    }
  };
  return mq;
}

function noop(): void {}

/** aedes' default in-process emitter (concurrency 100, as aedes builds it), hardened. */
export function memoryEmitter(concurrency = 100): ReturnType<typeof mqemitter> {
  return hardenEmitter(mqemitter({ concurrency }));
}
