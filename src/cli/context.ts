/** What every CLI command shares: the config (same file and IOTGATE_* env as `start`), output, errors. */
import { loadConfig, ConfigError } from '../config/load.js';
import type { Config } from '../config/schema.js';
import { isGatewayError } from '../core/errors.js';

export interface GlobalOptions {
  config?: string;
  url?: string;
  json?: boolean;
}

/** A user error: one line on stderr, exit code 1 (2 for usage), never a stack trace. */
export class CliError extends Error {
  constructor(
    message: string,
    readonly exitCode = 1,
  ) {
    super(message);
    this.name = 'CliError';
  }
}

export function cliConfig(opts: GlobalOptions): Config {
  try {
    return loadConfig(opts.config);
  } catch (e) {
    if (e instanceof ConfigError) throw new CliError(e.lines.join('\n'), 2);
    throw e;
  }
}

/** The REST base URL of the gateway that this configuration describes. */
export function gatewayUrl(config: Config, opts: GlobalOptions): string | null {
  if (opts.url) return opts.url.replace(/\/+$/, '');
  if (config.http.url) return config.http.url.replace(/\/+$/, '');
  if (config.http.port === 0) return null;
  const host = config.host === '0.0.0.0' || config.host === '::' ? '127.0.0.1' : config.host;
  return `http://${host.includes(':') ? `[${host}]` : host}:${config.http.port}`;
}

export function print(opts: GlobalOptions, json: unknown, text: string): void {
  process.stdout.write(opts.json ? `${JSON.stringify(json)}\n` : `${text}\n`);
}

/** Turns any thrown value into the one-line message the user sees. */
export function userMessage(e: unknown): { message: string; exitCode: number } {
  if (e instanceof CliError) return { message: e.message, exitCode: e.exitCode };
  if (isGatewayError(e)) return { message: e.message, exitCode: 1 };
  if (e instanceof Error && (e.name === 'CaExistsError' || e.name === 'CaFileMissingError')) {
    return { message: e.message, exitCode: 1 };
  }
  const err = e as NodeJS.ErrnoException;
  if (err && typeof err.code === 'string' && typeof err.path === 'string') {
    return { message: `${err.code}: ${err.path}`, exitCode: 1 };
  }
  return { message: e instanceof Error ? e.message : String(e), exitCode: 1 };
}
