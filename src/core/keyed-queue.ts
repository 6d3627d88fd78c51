/** Runs async work one at a time per key (e.g. per device), in call order; keys do not block each other. */
export class KeyedQueue {
  private readonly chains = new Map<string, Promise<unknown>>();

  /** Runs `fn` after every earlier call with the same key has settled. */
  run<T>(key: string, fn: () => Promise<T>): Promise<T> {
    const prev = this.chains.get(key) ?? Promise.resolve();
    const next = prev.then(fn, fn);
    const settled = next.catch(() => undefined);
    this.chains.set(key, settled);
    void settled.then(() => {
      if (this.chains.get(key) === settled) this.chains.delete(key);
    });
    return next;
  }

  /** Resolves when everything queued so far has settled. */
  async idle(): Promise<void> {
    await Promise.all([...this.chains.values()]);
  }
}
