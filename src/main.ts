/**
 * Composition root for `iotgate start`: config → logger → gateway → listeners; signals and exit
 * codes (0 clean stop, 1 runtime failure, 2 bad configuration).
 */
import { loadConfig, ConfigError } from './config/load.js';
import type { Config } from './config/schema.js';
import { createLogger } from './log.js';
import { buildGateway, type Gateway } from './gateway.js';
import { reloadRoutesFromConfig } from './routes/reload.js';

export async function runGateway(configFile: string | undefined): Promise<void> {
  let config: Config;
  try {
    config = loadConfig(configFile);
  } catch (e) {
    if (e instanceof ConfigError) {
      process.stderr.write(`${e.lines.join('\n')}\n`);
      process.exit(2);
    }
    throw e;
  }
  const log = createLogger({ level: config.log.level });
  let gateway: Gateway | undefined;
  let starting: Promise<unknown> = Promise.resolve();

  // Handlers go in before anything listens: a signal that arrives right after the ready line
  // (or during start) still gets a graceful stop, once start has settled.
  let signalled = false;
  const onSignal = (signal: NodeJS.Signals) => {
    if (signalled) {
      log.warn({ signal }, 'second signal: exiting now');
      process.exit(1);
    }
    signalled = true;
    log.info({ signal }, 'shutting down');
    setTimeout(() => {
      log.error({ timeoutMs: config.shutdown.timeoutMs }, 'graceful stop took too long; exiting');
      process.exit(1);
    }, config.shutdown.timeoutMs).unref();
    starting
      .catch(() => undefined)
      .then(() => gateway?.stop())
      .then(
        () => process.exit(0),
        (err: unknown) => {
          log.error({ err }, 'error while stopping');
          process.exit(1);
        },
      );
  };
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);
  // SIGHUP reloads the API gateway routes (docs/routes.md); before the gateway exists it is ignored.
  process.on('SIGHUP', () => {
    if (gateway && !signalled) reloadRoutesFromConfig(gateway.config, gateway.routes, configFile, log);
  });

  try {
    starting = (async () => {
      gateway = await buildGateway(config, { log });
      await gateway.start();
    })();
    await starting;
  } catch (err) {
    if (signalled) return; // the signal handler stops and exits
    log.fatal({ err }, 'iotgate failed to start');
    if (err instanceof Error && err.name === 'SchemaLoadError') {
      // A broken device-type schema is a configuration error: say which file and line, exit 2.
      process.stderr.write(`schemas: ${err.message}\n`);
      await gateway?.stop().catch(() => undefined);
      process.exit(2);
    }
    await gateway?.stop().catch(() => undefined);
    process.exit(1);
  }
}
