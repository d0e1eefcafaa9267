import type { RequestHandler, Request } from "express";
import type { CheckResult, Cost, Meter, MiddlewareOptions, StreamOptions } from "./index.js";

export declare function requireCredits(cost: Cost<Request>, options: MiddlewareOptions<Request>): RequestHandler;
export declare function routeCosts(
  table: Record<string, number>,
  options: MiddlewareOptions<Request> & { default?: number },
): RequestHandler;
export declare function meteredStream(estimate: Cost<Request>, options: StreamOptions<Request>): RequestHandler;

declare global {
  namespace Express {
    interface Request {
      /** requireCredits: the check's answer; meteredStream: the hold's meter. */
      credits?: CheckResult | Meter;
    }
  }
}
