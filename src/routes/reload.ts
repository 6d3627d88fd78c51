/**
 * SIGHUP: re-read the configuration (file and environment, as at start) and swap the routes. A
 * config that does not validate is refused with one log line per bad key, and the routes in force
 * stay; the rest of the configuration is not reloaded (a change there is logged as needing a restart).
 */
import type { Logger } from 'pino';
import { ConfigError, loadConfig } from '../config/load.js';
import type { Config } from '../config/schema.js';
import type { RouteService } from './service.js';

function withoutRoutes(config: Config): string {
  const { routes: _routes, ...rest } = config;
  return JSON.stringify(rest);
}

/** Returns true when the new routes are in force. */
export function reloadRoutesFromConfig(current: Config, routes: RouteService, configFile: string | undefined, log: Logger): boolean {
  let next: Config;
  try {
    next = loadConfig(configFile);
  } catch (e) {
    const errors = e instanceof ConfigError ? e.lines : [String(e)];
    log.error({ errors }, 'config reload refused; the routes in force stay');
    return false;
  }
  try {
    const summary = routes.reload(next.routes);
    log.info({ ...summary }, 'routes reloaded');
  } catch (err) {
    log.error({ err }, 'config reload failed; the routes in force stay');
    return false;
  }
  if (withoutRoutes(next) !== withoutRoutes(current)) {
    log.warn('config reload: only routes are reloaded; other changed keys take effect after a restart');
  }
  return true;
}
