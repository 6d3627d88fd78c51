/**
 * Firmware updates on top of the shadow (issue 5): a job sets `desired.firmware`, the device
 * reports `reported.firmware {version, state, progress?, error?}`, and each step moves the job
 * pending → downloading → installing → succeeded | failed. A `succeeded` report with the target
 * version completes it; a finished job clears `desired.firmware` so no delta is left behind.
 * Jobs live in memory for now (the newest per device); Redis is the Redis issue's.
 */
import { randomUUID } from 'node:crypto';
import type { Logger } from 'pino';
import type { EventBus, ShadowUpdated } from './events.js';
import { GatewayError } from './errors.js';
import type { DeviceRegistry } from './ports.js';
import type { ShadowService } from './shadow-service.js';

export type FirmwareState = 'pending' | 'downloading' | 'installing' | 'succeeded' | 'failed';
const REPORTED_STATES = new Set<FirmwareState>(['downloading', 'installing', 'succeeded', 'failed']);

export interface FirmwareTarget {
  version: string;
  url: string;
  sha256: string;
  size?: number;
}

export interface FirmwareJob {
  id: string;
  deviceId: string;
  target: FirmwareTarget;
  state: FirmwareState;
  progress: number | null;
  error: string | null;
  createdAt: number;
  updatedAt: number;
  completedAt: number | null;
  history: { state: FirmwareState; at: number; progress?: number; error?: string; version?: string }[];
}

export interface FirmwareStatus {
  current: string | null;
  target: string | null;
  state: FirmwareState | null;
  progress: number | null;
  error: string | null;
  job: FirmwareJob | null;
}

const SHA256 = /^[0-9a-fA-F]{64}$/;

export function validateTarget(t: FirmwareTarget): void {
  let url: URL;
  try {
    url = new URL(t.url);
  } catch {
    throw new GatewayError('validation_failed', 'url must be an absolute http:// or https:// URL', { details: { errors: [{ path: 'body.url', message: 'not a URL' }] } });
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') {
    throw new GatewayError('validation_failed', 'url must use http or https', { details: { errors: [{ path: 'body.url', message: 'expected http or https' }] } });
  }
  if (!SHA256.test(t.sha256)) {
    throw new GatewayError('validation_failed', 'sha256 must be 64 hex characters', { details: { errors: [{ path: 'body.sha256', message: 'expected 64 hex characters' }] } });
  }
}

export class FirmwareService {
  private readonly jobs = new Map<string, FirmwareJob>();
  private readonly current = new Map<string, string>();
  private readonly onShadow = (e: ShadowUpdated) => void this.onReport(e).catch((err: unknown) => this.deps.log.error({ err }, 'firmware report failed'));

  constructor(private readonly deps: { shadows: ShadowService; bus: EventBus; registry: DeviceRegistry; log: Logger }) {
    deps.bus.on('shadow.updated', this.onShadow);
  }

  /** Starts an update: sets desired.firmware and records the job (replacing an unfinished one). */
  async start(deviceId: string, target: FirmwareTarget): Promise<FirmwareJob> {
    validateTarget(target);
    const firmware = { version: target.version, url: target.url, sha256: target.sha256.toLowerCase(), ...(target.size !== undefined && { size: target.size }) };
    const r = await this.deps.shadows.update(deviceId, '', { state: { desired: { firmware } } }, 'service');
    if (!r.ok) throw new GatewayError(r.error.code === 413 ? 'payload_too_large' : 'conflict', r.error.message);
    const now = Date.now();
    const job: FirmwareJob = {
      id: randomUUID(),
      deviceId,
      target: firmware,
      state: 'pending',
      progress: null,
      error: null,
      createdAt: now,
      updatedAt: now,
      completedAt: null,
      history: [{ state: 'pending', at: now, version: target.version }],
    };
    this.jobs.set(deviceId, job);
    await this.changed(job);
    return job;
  }

  async status(deviceId: string): Promise<FirmwareStatus> {
    const job = this.jobs.get(deviceId) ?? null;
    let current = this.current.get(deviceId) ?? null;
    if (current === null) {
      const shadow = await this.deps.shadows.get(deviceId, '');
      const reported = shadow.ok ? (shadow.document.state.reported?.firmware as { version?: unknown; state?: unknown } | undefined) : undefined;
      // Only a version that runs: a plain report or a succeeded one, not a download in progress or a failure.
      if (typeof reported?.version === 'string' && (reported.state === undefined || reported.state === 'succeeded')) current = reported.version;
    }
    return { current, target: job?.target.version ?? null, state: job?.state ?? null, progress: job?.progress ?? null, error: job?.error ?? null, job };
  }

  forgetDevice(deviceId: string): void {
    this.jobs.delete(deviceId);
    this.current.delete(deviceId);
  }

  close(): void {
    this.deps.bus.off('shadow.updated', this.onShadow);
  }

  private async onReport(e: ShadowUpdated): Promise<void> {
    if (e.name !== '' || e.writer !== 'device') return;
    const report = e.accepted.state.reported?.firmware;
    if (report === null || typeof report !== 'object' || Array.isArray(report)) return;
    const { version, state, progress, error } = report as { version?: unknown; state?: unknown; progress?: unknown; error?: unknown };
    if (typeof version === 'string' && (state === 'succeeded' || state === undefined)) this.current.set(e.deviceId, version);
    const job = this.jobs.get(e.deviceId);
    if (!job || job.completedAt !== null || typeof state !== 'string' || !REPORTED_STATES.has(state as FirmwareState)) return;
    if (typeof version === 'string' && version !== job.target.version && state !== 'failed') return; // about another version
    const now = Date.now();
    job.state = state as FirmwareState;
    job.progress = typeof progress === 'number' && progress >= 0 && progress <= 100 ? progress : job.progress;
    job.error = typeof error === 'string' ? error.slice(0, 1024) : job.state === 'failed' ? 'failed' : null;
    job.updatedAt = now;
    job.history.push({ state: job.state, at: now, ...(job.progress !== null && { progress: job.progress }), ...(job.error !== null && { error: job.error }) });
    if (job.state === 'succeeded' || job.state === 'failed') {
      job.completedAt = now;
      // Nothing left to do on the device: drop desired.firmware so no delta stays behind.
      await this.deps.shadows.update(e.deviceId, '', { state: { desired: { firmware: null } } }, 'service');
    }
    await this.changed(job);
  }

  private async changed(job: FirmwareJob): Promise<void> {
    const current = this.current.get(job.deviceId) ?? null;
    await this.deps.registry.update(job.deviceId, { firmware: { current, target: job.target.version, state: job.state } });
    try {
      this.deps.bus.emit('firmware.updated', { deviceId: job.deviceId, job: structuredClone(job) });
    } catch (err) {
      this.deps.log.error({ err }, 'a firmware listener threw');
    }
  }
}
