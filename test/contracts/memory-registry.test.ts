import { MemoryDeviceRegistry } from '../../src/stores/memory/registry.js';
import { deviceRegistryContract, presenceStoreContract } from './device-registry.js';

deviceRegistryContract('memory', async () => new MemoryDeviceRegistry());
presenceStoreContract('memory', async () => new MemoryDeviceRegistry());
