/**
 * `iotgate simulate --devices N --rate R [--protocol mqtt|coap] [--duration S]`: a fleet of
 * simulated devices against a running gateway (bench/simulate), with a live progress line on
 * stderr and a summary (JSON with --json) on stdout.
 */
import { randomBytes } from 'node:crypto';
import { Simulation, progressLine, type SimulationSummary } from '../../../bench/simulate/fleet.js';
import type { SimDeviceType, SimProtocol } from '../../../bench/simulate/types.js';
import { loadCaMaterial, signServiceToken } from '../../pki/index.js';
import { CliError, cliConfig, gatewayUrl, print, type GlobalOptions } from '../context.js';

export interface SimulateCliOptions extends GlobalOptions {
  devices?: string;
  rate?: string;
  protocol?: string;
  duration?: string;
  type?: string;
  prefix?: string;
  token?: string;
  mqttUrl?: string;
  coapUrl?: string;
  shadowEvery?: string;
}

function number(name: string, raw: string | undefined, fallback: number, check: (n: number) => boolean, allowed: string): number {
  if (raw === undefined) return fallback;
  const n = Number(raw);
  if (raw.trim() === '' || !Number.isFinite(n) || !check(n)) throw new CliError(`${name} ${JSON.stringify(raw)}: expected ${allowed}`, 2);
  return n;
}

function endpoint(name: string, raw: string | undefined, scheme: string, fallbackHost: string, fallbackPort: number): { host: string; port: number } {
  if (raw === undefined) {
    if (fallbackPort === 0) throw new CliError(`${name}: the configured ${scheme} port is 0 (any free port); pass ${name} ${scheme}://host:port`, 2);
    return { host: fallbackHost, port: fallbackPort };
  }
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    throw new CliError(`${name} ${JSON.stringify(raw)}: expected ${scheme}://host:port`, 2);
  }
  if (url.protocol !== `${scheme}:` || url.port === '') throw new CliError(`${name} ${JSON.stringify(raw)}: expected ${scheme}://host:port`, 2);
  return { host: url.hostname.replace(/^\[|\]$/g, ''), port: Number(url.port) };
}

/** A service JWT with scope `provision`: --token, else minted with the certs dir's key. */
async function serviceToken(opts: SimulateCliOptions, certsDir: string): Promise<string> {
  if (opts.token) return opts.token;
  try {
    const material = await loadCaMaterial(certsDir);
    return signServiceToken(material, { sub: 'iotgate-simulate', scope: 'provision', ttlSeconds: 3600 }).token;
  } catch {
    throw new CliError(
      `no service token: pass --token <JWT with scope provision> (iotgate token create --sub sim --scope provision), or run with the gateway's certs dir (${certsDir})`,
      2,
    );
  }
}

function summaryText(s: SimulationSummary): string {
  const lines = [
    `simulated ${s.devices} ${s.protocol.toUpperCase()} devices (${s.type}, ids ${s.prefix}*) for ${s.durationS} s`,
    `  telemetry: sent ${s.sent}, acked ${s.acked} (${s.ratePerSec}/s), ack latency p50 ${s.ackLatencyMs.p50 ?? '-'} ms, p99 ${s.ackLatencyMs.p99 ?? '-'} ms`,
    `  shadow reports ${s.shadowReports} (deltas applied ${s.deltasApplied}), commands answered ${s.commandsAnswered}`,
    `  errors ${s.errors}, disconnects ${s.disconnects}`,
    ...s.errorSamples.map((e) => `    ${e}`),
  ];
  return lines.join('\n');
}

export async function simulate(opts: SimulateCliOptions): Promise<void> {
  const config = cliConfig(opts);
  const devices = number('--devices', opts.devices, 10, (n) => Number.isInteger(n) && n >= 1 && n <= 100_000, 'an integer from 1 to 100000');
  const rate = number('--rate', opts.rate, 1, (n) => n >= 0 && n <= 100_000, 'messages per second per device, 0 to 100000');
  const durationS = opts.duration === undefined ? undefined : number('--duration', opts.duration, 0, (n) => n > 0, 'seconds > 0');
  const shadowEveryS = number('--shadow-every', opts.shadowEvery, 30, (n) => n >= 1, 'seconds ≥ 1');
  const protocol = (opts.protocol ?? 'mqtt') as SimProtocol;
  if (protocol !== 'mqtt' && protocol !== 'coap') throw new CliError(`--protocol ${JSON.stringify(opts.protocol)}: expected mqtt or coap`, 2);
  const type = (opts.type ?? 'generic') as SimDeviceType;
  if (!['generic', 'tracker', 'thermostat'].includes(type)) throw new CliError(`--type ${JSON.stringify(opts.type)}: expected generic, tracker or thermostat`, 2);
  const prefix = opts.prefix ?? `sim-${randomBytes(2).toString('hex')}-`;
  if (!/^[A-Za-z0-9][A-Za-z0-9._:-]{0,100}$/.test(prefix)) throw new CliError(`--prefix ${JSON.stringify(prefix)}: expected letters, digits, ".", "_", ":" or "-" (a device id prefix)`, 2);

  const url = gatewayUrl(config, opts);
  if (!url) throw new CliError('no gateway URL: the configured HTTP port is 0; pass --url http://host:port', 2);
  const host = new URL(url).hostname.replace(/^\[|\]$/g, '');
  // Only the protocol the devices use must be reachable.
  const unused = { host, port: 0 };
  const mqtt = protocol === 'mqtt' ? endpoint('--mqtt-url', opts.mqttUrl, 'mqtt', host, config.mqtt.port) : unused;
  const coap = protocol === 'coap' ? endpoint('--coap-url', opts.coapUrl, 'coap', host, config.coap.port) : unused;
  const token = await serviceToken(opts, config.certs.dir);

  const tty = process.stderr.isTTY === true;
  const say = (line: string) => process.stderr.write(`${line}\n`);
  let sim: Simulation;
  try {
    sim = await Simulation.start({ url, mqtt, coap, protocol, devices, rate, type, prefix, token, shadowEveryS, ...(durationS !== undefined && { durationS }) }, say);
  } catch (e) {
    const cause = (e as Error).cause;
    throw new CliError(cause instanceof Error ? `cannot reach the gateway at ${url}: ${cause.message}` : (e as Error).message);
  }
  let ticks = 0;
  const progress = setInterval(() => {
    const line = progressLine(sim.progress());
    if (tty) process.stderr.write(`\r${line}\x1b[K`);
    else if (++ticks % 5 === 0) say(line);
  }, 1000);
  const interrupted = new Promise<void>((resolve) => {
    process.once('SIGINT', resolve);
    process.once('SIGTERM', resolve);
  });
  await Promise.race([sim.done, interrupted]);
  clearInterval(progress);
  if (tty) process.stderr.write(`\r${progressLine(sim.progress())}\x1b[K\n`);
  const summary = await sim.stop();
  print(opts, summary, summaryText(summary));
  // A lost or silent gateway is an error; rejected messages are counted, not fatal.
  if (summary.connected === 0 || (rate > 0 && summary.acked === 0)) process.exitCode = 1;
}
