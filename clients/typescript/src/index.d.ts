// Types of credit-sidecar's client, the package's entry point: re-exported from the declarations
// of the modules that hold them. Results are the sidecar's JSON as /openapi.json describes it
// (snake_case fields, instants as RFC 3339 strings, credits as integers): results.d.ts.

export * from "./version.js";
export * from "./results.js";
export type { ErrorInit } from "./errors.js";
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
export * from "./client.js";
export * from "./meter.js";
export * from "./middleware.js";
