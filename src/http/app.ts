/**
 * The REST facade: a Fastify instance assembled from plugins (style rule 7). The caller (gateway.ts)
 * owns listening and closing.
 */
import Fastify, { type FastifyBaseLogger, type FastifyInstance } from 'fastify';
import { serializerCompiler, validatorCompiler } from 'fastify-type-provider-zod';
import type { Logger } from 'pino';
import type { Registry } from 'prom-client';
import { randomUUID } from 'node:crypto';
import type { DeviceService } from '../core/devices.js';
import type { RateRefusal } from '../core/rate-limit.js';
import { AccessLogController } from './plugins/access-log.js';
import { authPlugin } from './plugins/auth.js';
import { errorsPlugin } from './plugins/errors.js';
import { openapiPlugin } from './plugins/openapi.js';
import { httpMetricsPlugin } from './plugins/metrics.js';
import { healthRoutes, type ReadinessProbe } from './routes/health.js';
import { deviceRoutes } from './routes/v1/devices.js';
import { eventRoutes, type EventRoutesOptions } from './routes/v1/events.js';
import { upstreamRoutes, type UpstreamRoutesOptions } from './routes/v1/upstreams.js';
import { schemaRoutes, type SchemaCatalog } from './routes/v1/schemas.js';
import { shadowRoutes } from './routes/v1/shadows.js';
import { firmwareRoutes } from './routes/v1/firmware.js';
import { commandRoutes } from './routes/v1/commands.js';
import type { CommandService } from '../core/command-service.js';
import type { FirmwareService } from '../core/firmware.js';
import type { ShadowService } from '../core/shadow-service.js';
import { telemetryRoutes, type TelemetryRoutesOptions } from './routes/v1/telemetry.js';
import { routeListRoutes } from './routes/v1/routes.js';
import { proxyPlugin } from './proxy/plugin.js';
import type { RouteService } from '../routes/service.js';

export interface HttpAppDeps {
  log: Logger;
  version: string;
  bodyLimitBytes: number;
  publicMetrics: boolean;
  jwt: { publicKeyPem: string; verify: Record<string, unknown> };
  authenticateDevice: (token: string) => Promise<string | null>;
  limitService?: (sub: string) => RateRefusal | null;
  devices: DeviceService;
  telemetry?: Omit<TelemetryRoutesOptions, 'devices'>;
  schemas?: SchemaCatalog;
  shadows?: ShadowService;
  firmware?: FirmwareService;
  commands?: CommandService;
  events?: EventRoutesOptions;
  upstreams?: UpstreamRoutesOptions['upstreams'];
  /** API gateway routes (contract §11): GET /v1/routes and the proxy behind every configured prefix. */
  routes?: RouteService;
  metrics: Registry;
  readiness: ReadinessProbe;
}

export async function buildHttpApp(deps: HttpAppDeps): Promise<FastifyInstance> {
  const app: FastifyInstance = Fastify({
    loggerInstance: deps.log as FastifyBaseLogger,
    bodyLimit: deps.bodyLimitBytes,
    requestIdHeader: 'x-request-id',
    genReqId: () => randomUUID(),
    routerOptions: { ignoreTrailingSlash: true, maxParamLength: 256 },
    return503OnClosing: true,
    forceCloseConnections: 'idle',
    // One access line per request instead of Fastify's two (plugins/access-log.ts).
    logController: new AccessLogController(deps.log),
  });
  app.setValidatorCompiler(validatorCompiler);
  app.setSerializerCompiler(serializerCompiler);
  // A JSON API: anything but JSON bodies is 415 (later issues add protobuf where the contract wants it).
  app.removeContentTypeParser('text/plain');

  await app.register(errorsPlugin);
  await app.register(authPlugin, {
    jwtPublicKeyPem: deps.jwt.publicKeyPem,
    verify: deps.jwt.verify,
    authenticateDevice: deps.authenticateDevice,
    ...(deps.limitService && { limitService: deps.limitService }),
  });
  await app.register(httpMetricsPlugin, { registry: deps.metrics });
  await app.register(openapiPlugin, { version: deps.version });
  await app.register(healthRoutes, { readiness: deps.readiness, metrics: deps.metrics, publicMetrics: deps.publicMetrics });
  await app.register(deviceRoutes, { devices: deps.devices });
  if (deps.telemetry) await app.register(telemetryRoutes, { devices: deps.devices, ...deps.telemetry });
  if (deps.schemas) await app.register(schemaRoutes, { catalog: deps.schemas });
  if (deps.shadows) await app.register(shadowRoutes, { devices: deps.devices, shadows: deps.shadows });
  if (deps.firmware) await app.register(firmwareRoutes, { devices: deps.devices, firmware: deps.firmware });
  if (deps.commands) await app.register(commandRoutes, { devices: deps.devices, commands: deps.commands });
  if (deps.events) await app.register(eventRoutes, deps.events);
  if (deps.upstreams) await app.register(upstreamRoutes, { upstreams: deps.upstreams });
  if (deps.routes) {
    await app.register(routeListRoutes, { routes: deps.routes });
    await app.register(proxyPlugin, { service: deps.routes, authenticateDevice: deps.authenticateDevice, limitService: deps.limitService });
  }
  return app;
}
