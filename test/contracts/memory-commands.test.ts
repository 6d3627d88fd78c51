import { MemoryCommandStore } from '../../src/stores/memory/commands.js';
import { commandStoreContract } from './command-store.js';

// The historyMax cases that were memory-only live in the shared suite now (`history bound`).
commandStoreContract('memory', async (opts) => new MemoryCommandStore(opts));
