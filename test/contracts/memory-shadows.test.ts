import { MemoryShadowStore } from '../../src/stores/memory/shadows.js';
import { shadowStoreContract } from './shadow-store.js';

shadowStoreContract('memory', async () => new MemoryShadowStore());
