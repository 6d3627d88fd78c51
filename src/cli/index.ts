/** The `iotgate` command table (contract §3). Each command lives in commands/<name>.ts. */
import { Command, CommanderError, Option } from 'commander';
import { PACKAGE_VERSION } from '../package-info.js';
import { CliError, userMessage, type GlobalOptions } from './context.js';

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

  const device = program.command('device').description('provision, revoke and inspect devices');
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
    .description('a fleet of simulated devices with a progress line (planned: benchmark issue)')
    .option('--devices <n>', 'number of devices')
    .option('--rate <r>', 'messages per second per device')
    .option('--protocol <p>', 'mqtt or coap')
    .option('--duration <s>', 'seconds')
    .action(() => notBuilt('simulate'));
  program
    .command('bench')
    .description('benchmark against a bare aedes baseline (planned: benchmark issue)')
    .action(() => notBuilt('bench'));

  return program;
}

function notBuilt(name: string): never {
  throw new CliError(`iotgate ${name} is not built yet (see the benchmark issue)`);
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
