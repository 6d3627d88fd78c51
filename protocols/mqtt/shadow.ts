/**
 * Device shadows over MQTT (contract §4–5, AWS IoT topic semantics under `devices/{id}/shadow`):
 * requests on `…/get|update|delete` are answered on `…/accepted|rejected`; every accepted change
 * from any door is published to `…/update/accepted`, `…/update/documents` and `…/update/delta`;
 * subscribing to a delta topic delivers the current delta at once, so a device that was offline
 * converges without a persistent session.
 */
import type { Aedes, Client, Subscription } from 'aedes';
import type { EventBus, ShadowDeleted, ShadowUpdated } from '../../src/core/events.js';
import type { ShadowService } from '../../src/core/shadow-service.js';
import { errorDocument, MAX_CLIENT_TOKEN_BYTES } from '../../src/core/shadow.js';
import { DEVICES_PREFIX } from './topics.js';

export type ShadowOp = 'get' | 'update' | 'delete';

const REQUEST = /^shadow(?:\/name\/([^/]+))?\/(get|update|delete)$/;

/** `shadow/update` → {name: '', op: 'update'}; `shadow/name/ota/get` → {name: 'ota', op: 'get'}. */
export function parseShadowRequest(relative: string): { name: string; op: ShadowOp } | null {
  const m = REQUEST.exec(relative);
  return m ? { name: m[1] ?? '', op: m[2] as ShadowOp } : null;
}

export function shadowPrefix(deviceId: string, name: string): string {
  return `${DEVICES_PREFIX}${deviceId}/shadow${name ? `/name/${name}` : ''}`;
}

/** MQTT topic filter matching ([MQTT-4.7]); `$` topics never match a leading wildcard. */
export function topicMatches(filter: string, topic: string): boolean {
  const f = filter.split('/');
  const t = topic.split('/');
  for (let i = 0; i < f.length; i++) {
    const part = f[i];
    if (part === '#') return !(i === 0 && topic.startsWith('$'));
    if (i >= t.length) return false;
    if (part === '+') {
      if (i === 0 && topic.startsWith('$')) return false;
      continue;
    }
    if (part !== t[i]) return false;
  }
  return f.length === t.length;
}

function send(aedes: Aedes, topic: string, doc: unknown): void {
  aedes.publish({ cmd: 'publish', topic, payload: Buffer.from(JSON.stringify(doc)), qos: 1, retain: false, dup: false }, () => undefined);
}

function clientTokenOf(payload: Buffer): string | undefined {
  if (payload.length === 0 || payload.length > 65_536) return undefined;
  try {
    const v = JSON.parse(payload.toString('utf8')) as { clientToken?: unknown };
    return typeof v?.clientToken === 'string' && Buffer.byteLength(v.clientToken, 'utf8') <= MAX_CLIENT_TOKEN_BYTES ? v.clientToken : undefined;
  } catch {
    return undefined;
  }
}

/** Answers one request; accepted updates and deletes are published by the bus listener. */
export async function handleShadowRequest(aedes: Aedes, shadows: ShadowService, deviceId: string, req: { name: string; op: ShadowOp }, payload: Buffer): Promise<void> {
  const prefix = shadowPrefix(deviceId, req.name);
  const now = Date.now();
  if (req.op === 'get') {
    const token = clientTokenOf(payload);
    const r = await shadows.get(deviceId, req.name, token);
    if (r.ok) send(aedes, `${prefix}/get/accepted`, r.document);
    else send(aedes, `${prefix}/get/rejected`, errorDocument(r.error, now, r.clientToken));
    return;
  }
  if (req.op === 'update') {
    const r = await shadows.update(deviceId, req.name, payload, 'device');
    if (!r.ok) send(aedes, `${prefix}/update/rejected`, errorDocument(r.error, now, r.clientToken));
    return;
  }
  const clientToken = clientTokenOf(payload);
  const r = await shadows.delete(deviceId, req.name, 'device', clientToken === undefined ? {} : { clientToken });
  if (!r.ok) send(aedes, `${prefix}/delete/rejected`, errorDocument(r.error, now, r.clientToken));
}

/** Publishes every accepted change, and the current delta to whoever subscribes to it. */
export function attachShadowBridge(aedes: Aedes, bus: EventBus, shadows: ShadowService, deviceOf: (client: Client) => string | null): () => void {
  const onUpdated = (e: ShadowUpdated) => {
    const prefix = shadowPrefix(e.deviceId, e.name);
    send(aedes, `${prefix}/update/accepted`, e.accepted);
    send(aedes, `${prefix}/update/documents`, e.documents);
    if (e.delta) send(aedes, `${prefix}/update/delta`, e.delta);
  };
  const onDeleted = (e: ShadowDeleted) => send(aedes, `${shadowPrefix(e.deviceId, e.name)}/delete/accepted`, e.accepted);

  const onSubscribe = (subscriptions: Subscription[], client: Client) => {
    const deviceId = deviceOf(client);
    if (deviceId === null) return;
    const filters = subscriptions.map((s) => s.topic).filter((f) => f.includes('shadow') || f.endsWith('#') || f.includes('+'));
    if (filters.length === 0) return;
    void (async () => {
      const names = ['', ...(await shadows.names(deviceId))];
      for (const name of names) {
        const topic = `${shadowPrefix(deviceId, name)}/update/delta`;
        if (!filters.some((f) => topicMatches(f, topic))) continue;
        const delta = await shadows.delta(deviceId, name);
        if (delta && !client.closed) {
          // aedes calls the callback after the write: without one it throws.
          client.publish({ cmd: 'publish', topic, payload: Buffer.from(JSON.stringify(delta)), qos: 1, retain: false, dup: false }, () => undefined);
        }
      }
    })().catch(() => undefined);
  };

  bus.on('shadow.updated', onUpdated);
  bus.on('shadow.deleted', onDeleted);
  aedes.on('subscribe', onSubscribe);
  return () => {
    bus.off('shadow.updated', onUpdated);
    bus.off('shadow.deleted', onDeleted);
    aedes.off('subscribe', onSubscribe);
  };
}
