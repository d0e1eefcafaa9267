// Types of transport.js: the wire under CreditSidecar (internal: not exported by the package).

import type { CreditSidecar } from "./client.js";

export declare const RETRYABLE_STATUS: ReadonlySet<number>;
export declare function uuid(): string;
export declare function dropUndefined<T extends object>(obj: T): Partial<T>;

export interface SendOptions {
  body?: unknown;
  query?: Record<string, string | number | boolean | null | undefined>;
  retry?: boolean;
  headers?: Record<string, string>;
  signal?: AbortSignal;
  raw?: boolean;
}

export declare function send<T = any>(
  client: Pick<CreditSidecar, "timeoutMs" | "retries" | "backoffMs" | "maxBackoffMs"> & { userAgent: string },
  wire: { fetch: typeof globalThis.fetch; url: string; auth?: string },
  method: string,
  path: string,
  options?: SendOptions,
): Promise<T>;
export declare function failOpen<T>(
  client: Pick<CreditSidecar, "failurePolicy" | "logger">,
  what: string,
  error: unknown,
  result: T,
): T;
