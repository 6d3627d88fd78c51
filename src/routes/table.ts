/**
 * The live route table: routes compiled from config (prefix, balancer, health checker), matched
 * by longest prefix, and swapped whole on reload. A request keeps the route object it matched, so
 * a reload never disturbs requests in flight; a route whose definition did not change keeps its
 * object (health, pending counts, checker), and a changed one keeps the health of its unchanged
 * upstream URLs.
 */
import { createHash } from 'node:crypto';
import type { Logger } from 'pino';
import type { RouteConfig } from '../config/routes.js';
import { Balancer, type Upstream, type UpstreamStatus } from './balancer.js';
import { ActiveHealthChecker } from './health-check.js';
import { limiterNamespace } from './limiter.js';

export interface CompiledRoute {
  readonly def: RouteConfig;
  readonly name: string;
  readonly prefix: string;
  /** Short hash of the definition: cache entries of an older definition are never served. */
  readonly generation: string;
  readonly balancer: Balancer;
  readonly cacheNs: string | null;
  readonly limiterNs: string | null;
  readonly removeHeaders: ReadonlySet<string>;
  readonly setHeaders: readonly (readonly [string, string])[];
  readonly checker: ActiveHealthChecker | null;
}

export interface RouteMatch {
  route: CompiledRoute;
  /** The path the upstream sees after its own base path: the rest after the prefix, or the whole path. */
  forwardPath: string;
}

export interface ReloadSummary {
  routes: number;
  added: string[];
  removed: string[];
  changed: string[];
}

function generationOf(def: RouteConfig): string {
  return createHash('sha256').update(JSON.stringify(def)).digest('hex').slice(0, 12);
}

/** `base` (the upstream URL's path) + the forwarded path; `/` when both are empty. */
export function joinUpstreamPath(upstream: Upstream, forwardPath: string): string {
  const base = upstream.url.pathname.endsWith('/') ? upstream.url.pathname.slice(0, -1) : upstream.url.pathname;
  const path = `${base}${forwardPath}`;
  return path === '' ? '/' : path;
}

export class RouteTable {
  private routes: CompiledRoute[] = [];
  private byLength: CompiledRoute[] = [];
  loadedAt = 0;

  constructor(private readonly log: Logger) {}

  private compile(def: RouteConfig, previous: CompiledRoute | undefined): CompiledRoute {
    const generation = generationOf(def);
    const activeChecks = def.health.check !== undefined;
    const balancer = new Balancer(
      def.upstreams,
      { strategy: def.balance, failures: def.health.failures, cooldownMs: def.health.cooldownMs, activeChecks },
      previous?.balancer,
    );
    const checker = def.health.check ? new ActiveHealthChecker(def.name, balancer, def.health.check, this.log) : null;
    return {
      def,
      name: def.name,
      prefix: def.prefix,
      generation,
      balancer,
      cacheNs: def.cache ? `${def.name}:${generation}` : null,
      limiterNs: def.rateLimit ? limiterNamespace(def.name, def.rateLimit) : null,
      removeHeaders: new Set(def.headers.remove.map((h) => h.toLowerCase())),
      setHeaders: Object.entries(def.headers.set).map(([k, v]) => [k.toLowerCase(), v] as const),
      checker,
    };
  }

  /** Replaces every route at once; unchanged routes keep their state. */
  replace(defs: readonly RouteConfig[]): ReloadSummary {
    const old = new Map(this.routes.map((r) => [r.name, r]));
    const next: CompiledRoute[] = [];
    const fresh: CompiledRoute[] = [];
    const summary: ReloadSummary = { routes: defs.length, added: [], removed: [], changed: [] };
    for (const def of defs) {
      const previous = old.get(def.name);
      if (previous && previous.generation === generationOf(def)) {
        next.push(previous);
        old.delete(def.name);
        continue;
      }
      const compiled = this.compile(def, previous);
      if (previous) summary.changed.push(def.name);
      else summary.added.push(def.name);
      next.push(compiled);
      fresh.push(compiled);
    }
    for (const r of old.values()) if (!defs.some((d) => d.name === r.name)) summary.removed.push(r.name);
    // Stop the checkers of routes that are gone or replaced, then start the new ones.
    for (const r of old.values()) r.checker?.stop();
    this.routes = next;
    this.byLength = [...next].sort((a, b) => b.prefix.length - a.prefix.length);
    this.loadedAt = Date.now();
    for (const r of fresh) r.checker?.start();
    return summary;
  }

  /** The route with the longest prefix that `path` (no query) equals or lies under. */
  match(path: string): RouteMatch | null {
    for (const route of this.byLength) {
      const p = route.prefix;
      if (path === p || (path.startsWith(p) && path.charCodeAt(p.length) === 47 /* / */)) {
        return { route, forwardPath: route.def.stripPrefix ? path.slice(p.length) : path };
      }
    }
    return null;
  }

  list(): readonly CompiledRoute[] {
    return this.routes;
  }

  health(): { route: string; upstreams: UpstreamStatus[] }[] {
    return this.routes.map((r) => ({ route: r.name, upstreams: r.balancer.status() }));
  }

  close(): void {
    for (const r of this.routes) r.checker?.stop();
  }
}
