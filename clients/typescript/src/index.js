// credit-sidecar's client: the service calls (check, holds, usage, balance) and the admin calls,
// over `fetch` only, so it runs on Node 20+, Deno, Bun and edge runtimes. Types: index.d.ts.
// The package's entry point: it re-exports the public API from the modules that hold it.

export { VERSION, SUPPORTED_SIDECAR, satisfies } from "./version.js";
export {
  CreditSidecarError,
  InsufficientCredits,
  SpendLimitReached,
  RateLimited,
  Unauthorized,
  Forbidden,
  NotFound,
  Conflict,
  InvalidRequest,
  SidecarUnavailable,
  IncompatibleSidecar,
} from "./errors.js";
export { CreditSidecar } from "./client.js";
export { LATE_BACKOFF_MS, Meter, lateSettles, settleLater } from "./meter.js";
export {
  isValidId,
  allowedHeaders,
  rateLimitHeaders,
  deniedResponse,
  requestIdempotencyKey,
  nthCheck,
  routeCostLookup,
} from "./middleware.js";
