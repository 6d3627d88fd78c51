/** Plausible JSON telemetry of the bundled device types (thermostat as its JSON form). */
import type { SimDeviceType } from './types.js';

export function telemetryPayload(type: SimDeviceType, index: number, seq: number): Buffer {
  const wobble = Math.sin((seq + index) / 10);
  switch (type) {
    case 'tracker':
      return Buffer.from(
        JSON.stringify({
          lat: Math.round((52.52 + index * 0.001 + wobble * 0.01) * 1e5) / 1e5,
          lon: Math.round((13.405 + wobble * 0.01) * 1e5) / 1e5,
          speed: Math.round(Math.abs(wobble) * 500) / 10,
          satellites: 9,
          ts: Date.now(),
        }),
      );
    case 'thermostat':
      return Buffer.from(
        JSON.stringify({
          device_time: new Date().toISOString(),
          temperature_c: Math.round((21 + wobble) * 10) / 10,
          humidity_pct: Math.round((45 + wobble * 5) * 10) / 10,
          mode: 'MODE_HEAT',
          firmware: 'sim-1.0',
        }),
      );
    default:
      return Buffer.from(JSON.stringify({ temp: Math.round((21 + wobble) * 10) / 10, hum: Math.round((45 + wobble * 5) * 10) / 10, seq, ts: Date.now() }));
  }
}
