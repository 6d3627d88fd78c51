import { MemoryDeviceRegistry } from '../../src/stores/memory/registry.js';
import { deviceRegistryContract } from './device-registry.js';

deviceRegistryContract('memory', async () => new MemoryDeviceRegistry());
