// The memory bound moved to ../memory-budget.ts (it is not a processor). This re-export keeps receivers/unix-socket.ts
// and receivers/spill.ts (owned elsewhere) building until their imports point there; then delete this file.
export { MemoryBudget, type MemoryPool } from '../memory-budget.js';
