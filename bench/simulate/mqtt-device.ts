/**
 * A simulated MQTT device (token login on the plain MQTT port): telemetry at QoS 1, shadow reports,
 * applies every delta by reporting it, answers every command with 200, counts what the gateway says
 * on its errors topic, and reconnects after a lost connection.
 */
import { LeanMqtt } from '../lib/mqtt-client.js';
import { encodePublish } from '../lib/mqtt-wire.js';
import type { DeviceCredential } from '../loadgen/protocol.js';
import { telemetryPayload } from './telemetry.js';
import type { SimDevice, SimDeviceType, SimSink } from './types.js';

/** Telemetry uses packet ids 1–32767 (acks are timed); everything else 32768–65535. */
const OTHER_BASE = 32_768;
const RECONNECT_MS = 2000;

export class MqttSimDevice implements SimDevice {
  private client: LeanMqtt | null = null;
  private seq = 0;
  private otherMid = 0;
  private readonly sentAt = new Map<number, number>();
  private readonly startedAt = Date.now();
  private reported: Record<string, unknown> = {};
  private stopped = false;
  private reconnect: NodeJS.Timeout | null = null;
  private readonly topics: { telemetry: string; shadowUpdate: string; delta: string; commands: string; errors: string };

  constructor(
    private readonly cred: DeviceCredential,
    private readonly index: number,
    private readonly opts: { host: string; port: number; type: SimDeviceType },
    private readonly sink: SimSink,
  ) {
    const base = `devices/${cred.id}`;
    this.topics = {
      telemetry: `${base}/telemetry`,
      shadowUpdate: `${base}/shadow/update`,
      delta: `${base}/shadow/update/delta`,
      commands: `${base}/commands/+`,
      errors: `${base}/errors`,
    };
  }

  get id(): string {
    return this.cred.id;
  }

  async start(): Promise<void> {
    const client = await LeanMqtt.connect({ host: this.opts.host, port: this.opts.port, clientId: this.cred.id, username: this.cred.id, password: this.cred.token, keepaliveSeconds: 60 });
    this.client = client;
    this.sink.counters.connected++;
    client.onPublish = (buf, ts, te, ps, pe) => this.onMessage(buf.toString('utf8', ts, te), buf.subarray(ps, pe));
    client.onPuback = (mid) => {
      const t = this.sentAt.get(mid);
      if (t === undefined) return;
      this.sentAt.delete(mid);
      this.sink.counters.acked++;
      this.sink.acked(Math.round(performance.now() * 1000) - t);
    };
    client.onClose = () => {
      this.sink.counters.connected--;
      this.client = null;
      this.sentAt.clear();
      if (this.stopped) return;
      this.sink.counters.disconnects++;
      this.sink.error(`${this.cred.id}: connection lost`);
      this.scheduleReconnect();
    };
    await client.subscribe([
      { topic: this.topics.commands, qos: 1 },
      { topic: this.topics.delta, qos: 1 },
      { topic: this.topics.errors, qos: 0 },
    ]);
    this.reportShadow();
  }

  private scheduleReconnect(): void {
    this.reconnect = setTimeout(() => {
      this.reconnect = null;
      if (this.stopped) return;
      this.start().catch((err: unknown) => {
        this.sink.error(`${this.cred.id}: reconnect failed: ${err instanceof Error ? err.message : String(err)}`);
        this.scheduleReconnect();
      });
    }, RECONNECT_MS);
  }

  private publish(topic: string, payload: Buffer): void {
    this.otherMid = (this.otherMid + 1) % OTHER_BASE;
    this.client?.send(encodePublish(topic, payload, 1, OTHER_BASE + this.otherMid));
  }

  telemetry(): void {
    const c = this.client;
    if (!c) return;
    this.seq++;
    const mid = (this.seq % (OTHER_BASE - 1)) + 1;
    // An id still waiting for its PUBACK after 32k newer messages counts as lost.
    if (this.sentAt.has(mid)) this.sink.error(`${this.cred.id}: telemetry not acknowledged`);
    this.sentAt.set(mid, Math.round(performance.now() * 1000));
    c.send(encodePublish(this.topics.telemetry, telemetryPayload(this.opts.type, this.index, this.seq), 1, mid));
    this.sink.counters.sent++;
  }

  reportShadow(): void {
    if (!this.client) return;
    const state = { ...this.reported, simulated: true, firmware: 'sim-1.0', uptime: Math.round((Date.now() - this.startedAt) / 1000) };
    this.publish(this.topics.shadowUpdate, Buffer.from(JSON.stringify({ state: { reported: state } })));
    this.sink.counters.shadowReports++;
  }

  private onMessage(topic: string, payload: Buffer): void {
    if (topic === this.topics.delta) return this.applyDelta(payload);
    if (topic === this.topics.errors) {
      this.sink.error(`${this.cred.id}: ${payload.toString('utf8').slice(0, 200)}`);
      return;
    }
    if (topic.startsWith(`devices/${this.cred.id}/commands/`)) {
      let name: unknown = null;
      try {
        name = (JSON.parse(payload.toString('utf8')) as { name?: unknown }).name ?? null;
      } catch {
        // a protobuf command (a protobuf device type): answered all the same
      }
      this.publish(`${topic}/response`, Buffer.from(JSON.stringify({ status: 200, payload: { ok: true, name, at: Date.now() } })));
      this.sink.counters.commandsAnswered++;
    }
  }

  /** The device "applies" the desired change and reports it, echoing the request's clientToken. */
  private applyDelta(payload: Buffer): void {
    let doc: { state?: unknown; clientToken?: unknown };
    try {
      doc = JSON.parse(payload.toString('utf8')) as typeof doc;
    } catch {
      return this.sink.error(`${this.cred.id}: undecodable shadow delta`);
    }
    if (typeof doc.state !== 'object' || doc.state === null) return;
    const state = doc.state as Record<string, unknown>;
    this.reported = { ...this.reported, ...state };
    this.sink.counters.deltasApplied++;
    const report = { state: { reported: state }, ...(typeof doc.clientToken === 'string' && { clientToken: doc.clientToken }) };
    this.publish(this.topics.shadowUpdate, Buffer.from(JSON.stringify(report)));
    this.sink.counters.shadowReports++;
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.reconnect) clearTimeout(this.reconnect);
    await this.client?.end();
  }
}
