/**
 * Gateway processes (`iotgate start`, built dist/) that share one redis-server and one certs dir,
 * as the cluster integration tests run them: start and stop a node, service tokens, REST calls and
 * one CoAP POST against a node.
 *
 *   const { startNode, rest } = clusterNodes({ redisUrl: () => redis.url, certsDir: () => dir, teardown });
 *   const a = await startNode();                  // the first node creates the CA in the certs dir
 *   await rest(a, 'GET', '/v1/devices/d1', 'devices:read');
 */
import { Agent, request as coapRequest, type IncomingMessage } from 'coap';
import { startGatewayProcess, type GatewayProcess } from './cli.js';
import { loopbackEnv, type Teardown, type TestGateway } from './gateway.js';
import { call, type JsonResponse } from './http.js';
import { withDeadline } from './pki.js';
import { loadCaMaterial, signServiceToken } from '../../src/pki/index.js';

export interface ClusterNode {
  proc: GatewayProcess;
  /** http://127.0.0.1:<port> */
  url: string;
  /** mqtt://127.0.0.1:<port> */
  mqtt: string;
}

export interface ClusterOptions {
  /** The shared Redis and certs dir, read when a node starts (so they can be set in `before`). */
  redisUrl(): string;
  certsDir(): string;
  /** Environment of every node, over loopbackEnv and the Redis URL; a node's own `extra` wins. */
  env?: Record<string, string>;
  /** Each node's stop (SIGTERM, unless it already exited) is registered here. */
  teardown: Teardown;
}

export interface Cluster {
  startNode(extra?: Record<string, string>): Promise<ClusterNode>;
  /** SIGTERM and wait for the exit (nothing when the process is gone already). */
  stopNode(node: ClusterNode): Promise<void>;
  /** A service JWT (sub `cluster-test`) signed with the shared key. */
  token(scope: string): Promise<string>;
  /** registerDevice wants a TestGateway: the URL and a token signer are all it uses. */
  asGateway(node: ClusterNode): TestGateway;
  rest(node: ClusterNode, method: string, path: string, scope: string, body?: unknown): Promise<JsonResponse>;
  /** One CoAP request (CON, Content-Format JSON) with its own agent; the reply code and diagnostic. */
  coapPost(node: ClusterNode, path: string, token: string, body: string): Promise<{ code: string; text: string }>;
}

export function clusterNodes(opts: ClusterOptions): Cluster {
  const stopNode = async (node: ClusterNode): Promise<void> => {
    if (node.proc.child.exitCode !== null || node.proc.child.signalCode !== null) return;
    node.proc.child.kill('SIGTERM');
    await node.proc.exited;
  };
  const token = async (scope: string): Promise<string> =>
    signServiceToken(await loadCaMaterial(opts.certsDir()), { sub: 'cluster-test', scope, ttlSeconds: 600 }).token;

  return {
    async startNode(extra = {}) {
      const proc = await startGatewayProcess(
        loopbackEnv(opts.certsDir(), {
          IOTGATE_REDIS_URL: opts.redisUrl(),
          IOTGATE_CERTS_SYNC_INTERVAL_MS: '200',
          ...opts.env,
          ...extra,
        }),
      );
      const node: ClusterNode = { proc, url: `http://127.0.0.1:${String(proc.ready.http)}`, mqtt: `mqtt://127.0.0.1:${String(proc.ready.mqtt)}` };
      opts.teardown.after(() => stopNode(node));
      return node;
    },
    stopNode,
    token,
    asGateway: (node) => ({ url: node.url, token: (scope: string) => token(scope) }) as unknown as TestGateway,
    async rest(node, method, path, scope, body) {
      return call(node.url, method, path, { token: await token(scope), ...(body !== undefined && { body }) });
    },
    coapPost(node, path, deviceToken, body) {
      const agent = new Agent({ type: 'udp4' });
      const req = coapRequest({ hostname: '127.0.0.1', port: Number(node.proc.ready.coap), method: 'POST', pathname: path, query: `t=${deviceToken}`, confirmable: true, agent });
      req.setOption('Content-Format', 50);
      const reply = new Promise<{ code: string; text: string }>((resolve, reject) => {
        req.on('response', (res: IncomingMessage) => resolve({ code: res.code, text: res.payload.toString('utf8') }));
        req.on('error', reject);
      });
      req.end(Buffer.from(body));
      return withDeadline(reply, 5000, `CoAP POST ${path}`);
    },
  };
}
