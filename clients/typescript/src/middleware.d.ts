// Types of middleware.js: what the Express and Hono middleware share, and the options they take.

import type { CreditSidecar, FailurePolicy } from "./client.js";
import type { CheckResult, Metadata, RateLimitState } from "./results.js";

export declare function resolveAccount<C>(
  options: { account: (ctx: C) => string | null | undefined | Promise<string | null | undefined> },
  ctx: C,
): Promise<string | null>;
export declare function isValidId(value: unknown): value is string;
export declare function allowedHeaders(result: CheckResult): Record<string, string>;
export declare function rateLimitHeaders(rateLimit: RateLimitState | null | undefined): Record<string, string>;
export interface DeniedResponse {
  status: number;
  body: unknown;
  headers: Record<string, string>;
}
export declare function deniedResponse(error: unknown, options?: { failurePolicy?: FailurePolicy }): DeniedResponse | null;
export declare function requestIdempotencyKey(
  requestId: string | null | undefined,
  scope: { account: string; method: string; path: string; nth?: number },
): Promise<string>;
export declare function nthCheck(request: object): number;
export declare function routeCostLookup(
  table: Record<string, number>,
  fallback: number,
): (method: string, path: string) => number;

/** Options every middleware takes; `Req` is the framework's request (Express) or context (Hono). */
export interface MiddlewareOptions<Req> {
  client: CreditSidecar;
  /** The account to charge; null/undefined/"": answered 401. */
  account: (req: Req) => string | null | undefined | Promise<string | null | undefined>;
  description?: (req: Req) => string;
  metadata?: (req: Req) => Metadata | undefined;
}

export interface StreamOptions<Req> extends MiddlewareOptions<Req> {
  holdId?: (req: Req) => string;
  ttlMs?: number;
  /** On a client disconnect: "release" (default) or settle what was counted so far. */
  onDisconnect?: "release" | "settle";
  onSettled?: (result: unknown) => void;
}

export type Cost<Req> = number | ((req: Req) => number | Promise<number>);
