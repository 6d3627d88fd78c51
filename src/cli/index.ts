/** The `iotgate` command table (contract §3). Each command lives in commands/<name>.ts. */
import { Command, CommanderError, Option } from 'commander';
import { PACKAGE_VERSION } from '../package-info.js';
import { userMessage, type GlobalOptions } from './context.js';

/** The scenario names of `iotgate bench` (bench/harness/scenarios.ts), for --help. */
const SCENARIOS_HELP =
  'mqtt-route-qos0, mqtt-route-qos1, telemetry-pipeline-qos1, telemetry-pipeline-qos1-protobuf, shadow-roundtrip, command-roundtrip, rest-read, proxy, coap-telemetry, connections, overload, soak-coap';

export function buildProgram(): Command {
  const program = new Command('iotgate')
    .description('iotgate: IoT protocol gateway (MQTT, CoAP, REST) and its operator CLI')
    .version(PACKAGE_VERSION)
    .option('-c, --config <file>', 'YAML or JSON config file (IOTGATE_* environment variables override it)')
    .option('--url <url>', 'REST URL of a running gateway (default: from the config)')
    .option('--json', 'print one JSON object on stdout')
    .showHelpAfterError()
    .exitOverride();

  const globals = (cmd: Command): GlobalOptions => cmd.optsWithGlobals<GlobalOptions>();

  program
    .command('start')
    .description('run the gateway (REST, MQTT, MQTT over TLS, CoAP) until SIGTERM/SIGINT')
    .action(async (_o, cmd: Command) => {
      const { runGateway } = await import('../main.js');
      await runGateway(globals(cmd).config);
    });

  const ca = program.command('ca').description('the certificate authority in the certs dir');
  ca.command('init')
    .description('create the CA, server certificate and token secrets; refuses to overwrite without --force')
    .option('--force', 'overwrite an existing CA (every issued credential stops working)')
    .action(async (o: { force?: boolean }, cmd: Command) => {
      const { caInit } = await import('./commands/ca.js');
      await caInit({ ...globals(cmd), ...o });
    });

  const device = program
    .command('device')
    .description('provision, revoke and inspect devices')
    .addHelpText(
      'after',
      '\nThe CA database is the certs dir, or Redis when the gateways run with redis.url: then set\n' +
        'IOTGATE_REDIS_URL (or redis.url in --config) here too (docs/redis.md).',
    );
  device
    .command('provision <id>')
    .description('issue a device key, certificate and token: writes <id>.key (0600), <id>.crt, ca.crt into DIR')
    .option('--type <type>', 'device type (a schema name)', 'generic')
    .option('--out <dir>', 'where to write the files', '.')
    .addOption(new Option('--key-type <kind>', 'key algorithm').choices(['rsa', 'ec']).default('rsa'))
    .action(async (id: string, o: { type?: string; out?: string; keyType?: string }, cmd: Command) => {
      const { deviceProvision } = await import('./commands/device.js');
      await deviceProvision(id, { ...globals(cmd), ...o });
    });
  device
    .command('revoke <id>')
    .description('revoke the certificate (CRL) and token; a running gateway refuses the device within seconds')
    .action(async (id: string, _o, cmd: Command) => {
      const { deviceRevoke } = await import('./commands/device.js');
      await deviceRevoke(id, globals(cmd));
    });
  device
    .command('list')
    .description('devices: type, online, protocol, last seen, certificate serial and expiry')
    .action(async (_o, cmd: Command) => {
      const { deviceList } = await import('./commands/device.js');
      await deviceList(globals(cmd));
    });
  device
    .command('show <id>')
    .description('one device')
    .action(async (id: string, _o, cmd: Command) => {
      const { deviceShow } = await import('./commands/device.js');
      await deviceShow(id, globals(cmd));
    });

  const token = program.command('token').description('service credentials');
  token
    .command('create')
    .description('print a service JWT (ES256) for REST callers and backend MQTT clients')
    .requiredOption('--sub <name>', 'subject (the service name)')
    .requiredOption('--scope <scopes>', 'space-separated scopes, e.g. "devices:read telemetry:read"')
    .option('--ttl <duration>', 'lifetime: 3600, 30m, 1h, 7d (default: auth.defaultTokenTtl)')
    .action(async (o: { sub: string; scope: string; ttl?: string }, cmd: Command) => {
      const { tokenCreate } = await import('./commands/token.js');
      await tokenCreate({ ...globals(cmd), ...o });
    });

  program
    .command('simulate')
    .description('a fleet of simulated devices against a running gateway: telemetry, shadow reports, command answers; a live progress line')
    .option('--devices <n>', 'number of devices (registered over REST as <prefix><n>)', '10')
    .option('--rate <r>', 'telemetry messages per second per device (may be fractional)', '1')
    .addOption(new Option('--protocol <p>', 'how devices connect').choices(['mqtt', 'coap']).default('mqtt'))
    .option('--duration <s>', 'seconds to run (default: until Ctrl-C), then print the summary')
    .addOption(new Option('--type <type>', 'device type').choices(['generic', 'tracker', 'thermostat']).default('generic'))
    .option('--prefix <p>', 'device id prefix (default: sim-<random>-)')
    .option('--token <jwt>', 'service JWT with scope provision (default: minted with the certs dir)')
    .option('--mqtt-url <url>', 'mqtt://host:port (default: the --url host and the configured MQTT port)')
    .option('--coap-url <url>', 'coap://host:port (default: the --url host and the configured CoAP port)')
    .option('--shadow-every <s>', 'seconds between shadow reports of each device', '30')
    .addHelpText(
      'after',
      '\nDevices stay registered after the run. Exit code 1 when no device connected or no telemetry was acknowledged.\n' +
        'Example: iotgate simulate --devices 100 --rate 2 --duration 60 --json',
    )
    .action(async (o: Record<string, string | undefined>, cmd: Command) => {
      const { simulate } = await import('./commands/simulate.js');
      await simulate({ ...globals(cmd), ...o });
    });
  program
    .command('bench')
    .description('benchmark iotgate against bare aedes, Fastify and coap baselines on loopback (table, or JSON with --json)')
    .option('--quick', 'short windows, fewer connections: under a minute, for a smoke check, not for numbers')
    .option('--scenario <name>', `run only this scenario (repeatable or comma-separated): ${SCENARIOS_HELP}`, (v: string, prev: string[] | undefined) => [...(prev ?? []), v])
    .option('--redis <url>', 'also measure a gateway keeping its state in this Redis (redis://host:port/db)')
    .option('--rounds <n>', 'alternated repetitions per measurement, the median run reported (default 3, --quick 1)')
    .option('--cpu-prof <dir>', 'write a V8 CPU profile (.cpuprofile) of every server process (iotgate and baselines) into DIR')
    .addHelpText('after', '\nProgress goes to stderr. The machine, the table and the targets: docs/performance.md.')
    .action(async (o: { quick?: boolean; scenario?: string[]; redis?: string; rounds?: string; cpuProf?: string }, cmd: Command) => {
      const { bench } = await import('./commands/bench.js');
      await bench({ ...globals(cmd), ...o });
    });

  return program;
}

/** Runs the CLI; never prints a stack trace for a user error. */
export async function main(argv: string[]): Promise<void> {
  const program = buildProgram();
  try {
    await program.parseAsync(argv);
  } catch (e) {
    if (e instanceof CommanderError) {
      process.exitCode = e.exitCode === 0 ? 0 : 2;
      return;
    }
    const { message, exitCode } = userMessage(e);
    process.stderr.write(`iotgate: ${message}\n`);
    process.exitCode = exitCode;
  }
}
