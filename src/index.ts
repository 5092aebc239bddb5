// Public facade: everything users import from 'sidekick-runtime'. Internals are not exported.
export { SidekickError, ERROR_CODES, isSidekickError, type ErrorCode } from './errors.js';
export {
  getVars,
  readVars,
  peekVars,
  onVars,
  sendTask,
  requestTask,
  configure,
  shutdown,
  type Vars,
  type VarsListener,
  type GetVarsOptions,
  type RequestTaskOptions,
  type LibraryOptions,
} from './sidekicks/api.js';
export {
  setVars,
  shouldStop,
  stopSignal,
  handleTasks,
  type SidekickContext,
  type TaskContext,
  type TaskHandler,
} from './sidekicks/context.js';
export type { Config, AppConfig, AgentConfig } from './config/schema.js';
export { sources, type SourceMain } from './sources/index.js';
export type { SourceConfig } from './config/sources.js';
