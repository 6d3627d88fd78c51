/**
 * Many deadlines, one timer: a binary min-heap of (time, key) that fires each key once its time
 * has come. Removal is lazy: the callback checks whether the key still matters.
 */
interface Slot<K> {
  at: number;
  key: K;
}

/** setTimeout's ceiling (about 24.8 days); later deadlines re-arm when it fires. */
const MAX_DELAY = 2 ** 31 - 1;

export class Deadlines<K> {
  private readonly heap: Slot<K>[] = [];
  private timer: NodeJS.Timeout | null = null;
  private armedAt = Infinity;
  private closed = false;

  constructor(
    private readonly onDue: (key: K) => void,
    private readonly now: () => number = Date.now,
  ) {}

  get size(): number {
    return this.heap.length;
  }

  add(at: number, key: K): void {
    if (this.closed) return;
    const h = this.heap;
    h.push({ at, key });
    let i = h.length - 1;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if ((h[p] as Slot<K>).at <= at) break;
      h[i] = h[p] as Slot<K>;
      i = p;
    }
    h[i] = { at, key };
    if (at < this.armedAt) this.arm();
  }

  close(): void {
    this.closed = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    this.heap.length = 0;
  }

  private arm(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    this.armedAt = Infinity;
    const first = this.heap[0];
    if (!first || this.closed) return;
    this.armedAt = first.at;
    this.timer = setTimeout(() => this.fire(), Math.min(MAX_DELAY, Math.max(0, first.at - this.now())));
    this.timer.unref();
  }

  private fire(): void {
    this.timer = null;
    this.armedAt = Infinity;
    const now = this.now();
    const due: K[] = [];
    while (this.heap.length > 0 && (this.heap[0] as Slot<K>).at <= now) due.push(this.pop());
    this.arm();
    for (const key of due) this.onDue(key);
  }

  private pop(): K {
    const h = this.heap;
    const top = h[0] as Slot<K>;
    const last = h.pop() as Slot<K>;
    if (h.length > 0) {
      let i = 0;
      for (;;) {
        const l = 2 * i + 1;
        const r = l + 1;
        let m = i;
        let mAt = last.at;
        if (l < h.length && (h[l] as Slot<K>).at < mAt) {
          m = l;
          mAt = (h[l] as Slot<K>).at;
        }
        if (r < h.length && (h[r] as Slot<K>).at < mAt) m = r;
        if (m === i) break;
        h[i] = h[m] as Slot<K>;
        i = m;
      }
      h[i] = last;
    }
    return top.key;
  }
}
