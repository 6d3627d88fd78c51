import { MemoryTelemetryStore } from '../../src/stores/memory/telemetry.js';
import { telemetryStoreContract } from './telemetry-store.js';

telemetryStoreContract('memory', async (retention) => new MemoryTelemetryStore(retention));
