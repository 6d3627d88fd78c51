/**
 * A simulated CoAP device (`?t=<token>`, one UDP source port per device): telemetry as CON POSTs,
 * shadow reports, an Observe registration on /shadow (a delta is applied by reporting it) and one
 * on /commands (each pending command answered once with 200).
 */
import { CoapEndpoint, type CoapResponse } from '../lib/coap-client.js';
import type { DeviceCredential } from '../loadgen/protocol.js';
import { telemetryPayload } from './telemetry.js';
import type { SimDevice, SimDeviceType, SimSink } from './types.js';

const JSON_FORMAT = 50;

export class CoapSimDevice implements SimDevice {
  private ep: CoapEndpoint | null = null;
  private seq = 0;
  private readonly startedAt = Date.now();
  private reported: Record<string, unknown> = {};
  private readonly answered = new Set<string>();
  private readonly query: string[];

  constructor(
    private readonly cred: DeviceCredential,
    private readonly index: number,
    private readonly opts: { host: string; port: number; type: SimDeviceType },
    private readonly sink: SimSink,
  ) {
    this.query = [`t=${cred.token}`];
  }

  get id(): string {
    return this.cred.id;
  }

  async start(): Promise<void> {
    const ep = new CoapEndpoint(this.opts.host, this.opts.port);
    this.ep = ep;
    await ep.ready;
    const first = await ep.request({ method: 'GET', path: 'shadow', query: this.query, observe: 0 }, (r) => this.onShadow(r));
    // 4.04: no shadow yet. The report below creates it; observing then starts on the next try.
    if (first.code.startsWith('4.01')) throw new Error(`${this.cred.id}: 4.01 ${first.payload.toString('utf8')}`);
    const commands = await ep.request({ method: 'GET', path: 'commands', query: this.query, observe: 0 }, (r) => this.onCommands(r));
    if (!commands.code.startsWith('2.')) this.sink.error(`${this.cred.id}: observe /commands: ${commands.code}`);
    this.sink.counters.connected++;
    // No shadow yet (4.04): observe it once the first report has created it.
    const observeShadow = first.code.startsWith('2.')
      ? undefined
      : () => void ep.request({ method: 'GET', path: 'shadow', query: this.query, observe: 0 }, (r) => this.onShadow(r)).catch(() => undefined);
    this.reportShadow({}, undefined, observeShadow);
  }

  private post(path: string, body: Buffer, what: string, onOk?: () => void): void {
    const ep = this.ep;
    if (!ep) return;
    ep.request({ method: 'POST', path, query: this.query, contentFormat: JSON_FORMAT, payload: body }).then(
      (r) => {
        if (this.ep !== ep) return;
        if (r.code.startsWith('2.')) onOk?.();
        else this.sink.error(`${this.cred.id}: ${what}: ${r.code} ${r.payload.toString('utf8').slice(0, 120)}`);
      },
      (err: unknown) => {
        // Requests still open when the device stops are not the gateway's failures.
        if (this.ep === ep) this.sink.error(`${this.cred.id}: ${what}: ${err instanceof Error ? err.message : String(err)}`);
      },
    );
  }

  telemetry(): void {
    if (!this.ep) return;
    this.seq++;
    this.sink.counters.sent++;
    const t = Math.round(performance.now() * 1000);
    this.post('telemetry', telemetryPayload(this.opts.type, this.index, this.seq), 'telemetry', () => {
      this.sink.counters.acked++;
      this.sink.acked(Math.round(performance.now() * 1000) - t);
    });
  }

  reportShadow(state: Record<string, unknown> = {}, clientToken?: string, onAccepted?: () => void): void {
    const reported = { ...this.reported, ...state, simulated: true, firmware: 'sim-1.0', uptime: Math.round((Date.now() - this.startedAt) / 1000) };
    this.post('shadow', Buffer.from(JSON.stringify({ state: { reported }, ...(clientToken !== undefined && { clientToken }) })), 'shadow report', onAccepted);
    this.sink.counters.shadowReports++;
  }

  private onShadow(r: CoapResponse): void {
    let doc: { state?: { delta?: unknown }; clientToken?: unknown };
    try {
      doc = JSON.parse(r.payload.toString('utf8')) as typeof doc;
    } catch {
      return;
    }
    const delta = doc.state?.delta;
    if (typeof delta !== 'object' || delta === null) return;
    this.reported = { ...this.reported, ...(delta as Record<string, unknown>) };
    this.sink.counters.deltasApplied++;
    this.reportShadow(delta as Record<string, unknown>, typeof doc.clientToken === 'string' ? doc.clientToken : undefined);
  }

  private onCommands(r: CoapResponse): void {
    let list: unknown;
    try {
      list = JSON.parse(r.payload.toString('utf8'));
    } catch {
      return;
    }
    if (!Array.isArray(list)) return;
    for (const c of list as { id?: unknown; name?: unknown }[]) {
      if (typeof c.id !== 'string' || this.answered.has(c.id)) continue;
      this.answered.add(c.id);
      const body = Buffer.from(JSON.stringify({ status: 200, payload: { ok: true, name: c.name ?? null, at: Date.now() } }));
      this.post(`commands/${encodeURIComponent(c.id)}`, body, 'command answer', () => this.sink.counters.commandsAnswered++);
    }
  }

  async stop(): Promise<void> {
    const ep = this.ep;
    this.ep = null;
    if (ep) {
      this.sink.counters.connected--;
      await ep.close();
    }
  }
}
