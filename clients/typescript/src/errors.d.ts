// Types of errors.js: the client's typed errors.

import type { SpendLimitView } from "./results.js";

export interface ErrorInit {
  status?: number;
  code?: string;
  field?: string;
  body?: unknown;
  headers?: Headers;
  cause?: unknown;
}

export declare class CreditSidecarError extends Error {
  constructor(message: string, init?: ErrorInit);
  /** The HTTP status (0: no answer). */
  status: number;
  /** The error code or denial reason: insufficient_credits, rate_limited, idempotency_conflict... */
  code: string;
  /** The offending field, when the sidecar names one. */
  field?: string;
  /** The sidecar's JSON body as it answered it. */
  body: any;
  headers?: Headers;
}
export declare class InsufficientCredits extends CreditSidecarError {
  account?: string;
  balance?: number;
  required?: number;
}
export declare class SpendLimitReached extends CreditSidecarError {
  account?: string;
  required?: number;
  spendLimit?: SpendLimitView;
  spent?: number;
  windowEndsAt: string | null;
}
export declare class RateLimited extends CreditSidecarError {
  account?: string;
  retryAfterMs: number;
}
export declare class Unauthorized extends CreditSidecarError {}
export declare class Forbidden extends CreditSidecarError {}
export declare class NotFound extends CreditSidecarError {}
export declare class Conflict extends CreditSidecarError {}
export declare class InvalidRequest extends CreditSidecarError {}
export declare class SidecarUnavailable extends CreditSidecarError {}
export declare class IncompatibleSidecar extends CreditSidecarError {}

/** The error a sidecar answer (status, JSON body, headers) is thrown as. */
export declare function errorFor(status: number, body: any, headers?: Headers): CreditSidecarError;
