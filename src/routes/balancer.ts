/**
 * Load balancing over a route's upstreams with passive health (no timers; pure but for the clock):
 *
 * - `up` upstreams take traffic, round robin or the one with the fewest requests in flight.
 * - `failures` failures in a row (connection errors, timeouts) take an upstream `down` for
 *   `cooldownMs`. After the cool-down, one request at a time may probe it (`probing`): a success
 *   brings it back, a failure starts another cool-down. With active checks, only a check brings
 *   a down upstream back.
 * - An upstream that answered is `up` again, whatever happened before.
 */

export type BalanceStrategy = 'round-robin' | 'least-pending';
export type HealthState = 'up' | 'down' | 'probing';

export interface BalancerOptions {
  strategy: BalanceStrategy;
  failures: number;
  cooldownMs: number;
  /** With active checks, a down upstream returns only through `checked(…, true)`. */
  activeChecks?: boolean;
  now?: () => number;
}

/** One upstream of a route and its health. */
export class Upstream {
  readonly url: URL;
  /** The URL as configured (no userinfo or query: the config refuses them), for labels and logs. */
  readonly label: string;
  state: HealthState = 'up';
  pending = 0;
  consecutiveFailures = 0;
  downUntil = 0;
  /** A probe request is in flight (state `probing`). */
  probing = false;
  lastError: string | null = null;
  lastChangeAt: number;

  constructor(url: string, now: number) {
    this.url = new URL(url);
    this.label = this.url.href;
    this.lastChangeAt = now;
  }
}

export interface UpstreamStatus {
  url: string;
  healthy: boolean;
  state: HealthState;
  pending: number;
  consecutiveFailures: number;
  lastError: string | null;
  /** epoch ms of the last health change */
  since: number;
  /** epoch ms when a down upstream may be probed again (passive health); null otherwise */
  retryAt: number | null;
}

/** A chosen upstream; call exactly one of `succeeded` / `failed`, then `release` when the exchange ends. */
export interface Lease {
  readonly upstream: Upstream;
  /** The upstream answered (any status): it is healthy. */
  succeeded(): void;
  /** It could not answer (connection error, timeout). */
  failed(reason: string): void;
  /** The exchange is over (response sent or abandoned): no longer pending. Idempotent. */
  release(): void;
}

export class Balancer {
  readonly upstreams: readonly Upstream[];
  private cursor = 0;
  private readonly now: () => number;

  constructor(
    urls: readonly string[],
    private readonly opts: BalancerOptions,
    /** Health carried over from the balancer this one replaces (same URL = same upstream). */
    previous?: Balancer,
  ) {
    this.now = opts.now ?? Date.now;
    const at = this.now();
    const before = new Map(previous?.upstreams.map((u) => [u.label, u]));
    this.upstreams = urls.map((url) => {
      const fresh = new Upstream(url, at);
      const old = before.get(fresh.label);
      if (old) {
        fresh.state = old.state === 'probing' ? 'down' : old.state;
        fresh.consecutiveFailures = old.consecutiveFailures;
        fresh.downUntil = old.downUntil;
        fresh.lastError = old.lastError;
        fresh.lastChangeAt = old.lastChangeAt;
      }
      return fresh;
    });
  }

  /** Whether `u` may take a request now, and whether that request would be its probe. */
  private availability(u: Upstream, now: number): 'yes' | 'probe' | 'no' {
    if (u.state === 'up') return 'yes';
    if (u.state === 'probing' || this.opts.activeChecks) return 'no';
    return now >= u.downUntil ? 'probe' : 'no';
  }

  /** Chooses an upstream not in `exclude`; null when none can take the request. */
  pick(exclude: ReadonlySet<Upstream> = new Set()): Lease | null {
    const now = this.now();
    const n = this.upstreams.length;
    let chosen: Upstream | null = null;
    let chosenIndex = -1;
    let probe = false;
    for (let k = 0; k < n; k++) {
      const i = (this.cursor + k) % n;
      const u = this.upstreams[i] as Upstream;
      if (exclude.has(u)) continue;
      const a = this.availability(u, now);
      if (a === 'no') continue;
      if (chosen === null || (this.opts.strategy === 'least-pending' && u.pending < chosen.pending)) {
        chosen = u;
        chosenIndex = i;
        probe = a === 'probe';
        if (this.opts.strategy === 'round-robin') break;
      }
    }
    if (chosen === null) return null;
    this.cursor = (chosenIndex + 1) % n;
    if (probe) {
      chosen.state = 'probing';
      chosen.probing = true;
    }
    return this.lease(chosen, probe);
  }

  private lease(u: Upstream, probe: boolean): Lease {
    u.pending++;
    let settled = false;
    let released = false;
    const settle = () => {
      if (settled) return false;
      settled = true;
      if (probe) u.probing = false;
      return true;
    };
    return {
      upstream: u,
      succeeded: () => {
        if (settle()) this.markUp(u);
      },
      failed: (reason) => {
        if (settle()) this.markFailure(u, reason, probe);
      },
      release: () => {
        if (released) return;
        released = true;
        u.pending--;
        // Abandoned before any answer (the caller went away): no verdict. A probe hands the upstream
        // back to `down` with its cool-down already over, so the next request probes it.
        if (settle() && probe && u.state === 'probing') u.state = 'down';
      },
    };
  }

  private markUp(u: Upstream): void {
    u.consecutiveFailures = 0;
    u.lastError = null;
    if (u.state !== 'up') {
      u.state = 'up';
      u.lastChangeAt = this.now();
    }
  }

  private markFailure(u: Upstream, reason: string, probe: boolean): void {
    u.consecutiveFailures++;
    u.lastError = reason;
    if (probe || u.state === 'probing' || (u.state === 'up' && u.consecutiveFailures >= this.opts.failures)) {
      const now = this.now();
      u.state = 'down';
      u.downUntil = now + this.opts.cooldownMs;
      u.lastChangeAt = now;
    }
  }

  /** The result of an active health check. */
  checked(u: Upstream, ok: boolean, reason = 'health check failed'): void {
    if (ok) {
      this.markUp(u);
      return;
    }
    u.lastError = reason;
    if (u.state === 'up') {
      const now = this.now();
      u.state = 'down';
      u.downUntil = now + this.opts.cooldownMs;
      u.lastChangeAt = now;
    }
  }

  status(): UpstreamStatus[] {
    return this.upstreams.map((u) => ({
      url: u.label,
      healthy: u.state === 'up',
      state: u.state,
      pending: u.pending,
      consecutiveFailures: u.consecutiveFailures,
      lastError: u.lastError,
      since: u.lastChangeAt,
      retryAt: u.state === 'down' && !this.opts.activeChecks ? u.downUntil : null,
    }));
  }
}
