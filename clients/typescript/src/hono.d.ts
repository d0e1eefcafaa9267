import type { Context, MiddlewareHandler } from "hono";
import type { CheckResult, Cost, Meter, MiddlewareOptions, StreamOptions } from "./index.js";

export type CreditsEnv = { Variables: { credits: CheckResult } };
export type MeteredEnv = { Variables: { credits: Meter } };

export declare function requireCredits(cost: Cost<Context>, options: MiddlewareOptions<Context>): MiddlewareHandler<CreditsEnv>;
export declare function routeCosts(
  table: Record<string, number>,
  options: MiddlewareOptions<Context> & { default?: number },
): MiddlewareHandler<CreditsEnv>;
export declare function meteredStream(estimate: Cost<Context>, options: StreamOptions<Context>): MiddlewareHandler<MeteredEnv>;
