// Types of client.js: CreditSidecar, its options and its calls' requests (results: results.d.ts).

import type { Meter } from "./meter.js";
import type {
  AccountSettings,
  AccountSettingsBody,
  AccountSummary,
  Authorized,
  Balance,
  CheckResult,
  Granted,
  Hold,
  HoldClosed,
  HoldRecord,
  Key,
  KeyCreated,
  KeyList,
  Metadata,
  PlanBody,
  PlanView,
  PortalSessionCreated,
  PortalSessionRequest,
  RateLimitBody,
  Refunded,
  Scope,
  SpendLimitBody,
  TokenCreated,
  TokenView,
  Transaction,
  UsagePoint,
  UsageRecorded,
} from "./results.js";

export type FailurePolicy = "fail_closed" | "fail_open";

export interface Logger {
  warn?(message: string): void;
}

export interface CreditSidecarOptions {
  /** The sidecar's base URL, e.g. http://127.0.0.1:8080 */
  url: string;
  /** The service token (checks, holds, usage); admin calls use it too unless adminToken is given. */
  token?: string;
  /** The token for admin and read calls (balance, keys, plans...). */
  adminToken?: string;
  /** Per attempt (AbortSignal.timeout). Default 2000. */
  timeoutMs?: number;
  /** The whole call, its attempts and their backoff included; then SidecarUnavailable("timeout"). Default 5000. */
  deadlineMs?: number;
  /** Retries after the first attempt, only on network errors, timeouts, 502/503/504. Default 2. */
  retries?: number;
  /** The first retry's backoff cap (full jitter, doubling). Default 50. */
  backoffMs?: number;
  maxBackoffMs?: number;
  /** What check/hold do when the sidecar is unavailable. Default "fail_closed". */
  failurePolicy?: FailurePolicy;
  /**
   * How requests are sent. Default: on Node, node:http(s) with a keep-alive agent of this client's
   * (src/nodewire.js: half of fetch's CPU per call); elsewhere the runtime's fetch.
   */
  fetch?: typeof globalThis.fetch;
  /** Where fail_open warnings go. Default console. */
  logger?: Logger | null;
  userAgent?: string;
}

export interface CallOptions {
  signal?: AbortSignal;
}

export interface AdminOptions extends CallOptions {
  /** Why (X-Audit-Reason: the audit trail). */
  reason?: string;
}

export interface CheckRequest extends CallOptions {
  account: string;
  cost: number;
  /** Made once per call (crypto.randomUUID()) unless given; the same on every retry. */
  idempotencyKey?: string;
  dryRun?: boolean;
  description?: string;
  metadata?: Metadata;
}

export interface HoldRequest extends CallOptions {
  account: string;
  amount: number;
  holdId?: string;
  ttlMs?: number;
  description?: string;
  metadata?: Metadata;
}

export declare class CreditSidecar {
  constructor(options: CreditSidecarOptions);
  readonly url: string;
  timeoutMs: number;
  deadlineMs: number;
  retries: number;
  backoffMs: number;
  maxBackoffMs: number;
  failurePolicy: FailurePolicy;
  logger: Logger | null;

  request<T = any>(
    method: string,
    path: string,
    options?: {
      body?: unknown;
      query?: Record<string, string | number | boolean | null | undefined>;
      token?: string;
      admin?: boolean;
      retry?: boolean;
      headers?: Record<string, string>;
      signal?: AbortSignal;
      raw?: boolean;
    },
  ): Promise<T>;

  check(request: CheckRequest): Promise<CheckResult>;
  hold(request: HoldRequest): Promise<Hold>;
  settle(request: { account: string; holdId: string; amount: number; description?: string; metadata?: Metadata } & CallOptions): Promise<HoldClosed>;
  release(request: { account: string; holdId: string; description?: string; metadata?: Metadata } & CallOptions): Promise<HoldClosed>;
  withHold<T>(account: string, estimate: number, fn: (meter: Meter) => Promise<T> | T, options?: Omit<HoldRequest, "account" | "amount">): Promise<T>;
  reportUsage(request: { account: string; cost: number; idempotencyKey?: string; description?: string; metadata?: Metadata } & CallOptions): Promise<UsageRecorded>;
  balance(account: string, options?: CallOptions): Promise<Balance>;
  authorize(request: { apiKey: string; method?: string; path?: string; requestId?: string } & CallOptions): Promise<Authorized>;
  checkCompatibility(options?: CallOptions): Promise<{ version: string; supported: string; client: string }>;

  putAccount(account: string, settings?: AccountSettingsBody, opts?: AdminOptions): Promise<AccountSettings>;
  patchAccount(account: string, changes: AccountSettingsBody, opts?: AdminOptions): Promise<AccountSettings>;
  listAccounts(query?: { limit?: number; after?: string; prefix?: string }, opts?: AdminOptions): Promise<{ accounts: AccountSummary[]; next: string | null }>;
  transactions(account: string, query?: { limit?: number; before?: number; type?: string }, opts?: AdminOptions): Promise<{ account: string; transactions: Transaction[]; next: number | null }>;
  usage(account: string, query?: { interval?: "hour" | "day"; since?: string | number; until?: string | number; by?: "key" | "route" }, opts?: AdminOptions): Promise<{ account: string; interval: "hour" | "day"; by?: "key" | "route"; points: UsagePoint[] }>;
  holds(account: string, opts?: AdminOptions): Promise<{ account: string; holds: HoldRecord[] }>;
  grant(
    account: string,
    grant: { credits: number; grantId?: string; expiresAt?: string | number; priority?: number; source?: string; description?: string; metadata?: Metadata; reason?: string },
    opts?: AdminOptions,
  ): Promise<Granted>;
  refund(
    refund: { account: string; transactionId: string; amount?: number; refundId?: string; reason: string; description?: string; metadata?: Metadata },
    opts?: AdminOptions,
  ): Promise<Refunded>;
  createKey(account: string, key?: { name?: string; rate_limit?: RateLimitBody | null; spend_limit?: SpendLimitBody | null; idempotencyKey?: string }, opts?: AdminOptions): Promise<KeyCreated>;
  listKeys(account: string, opts?: AdminOptions): Promise<KeyList>;
  revokeKey(keyId: string, opts?: AdminOptions): Promise<Key>;
  setSpendLimit(account: string, spendLimit: SpendLimitBody | null, opts?: AdminOptions): Promise<AccountSettings>;
  setKeySpendLimit(keyId: string, spendLimit: SpendLimitBody | null, opts?: AdminOptions): Promise<Key>;
  putPlan(plan: string, definition: PlanBody, opts?: AdminOptions): Promise<PlanView>;
  getPlan(plan: string, opts?: AdminOptions): Promise<PlanView>;
  listPlans(opts?: AdminOptions): Promise<{ plans: PlanView[] }>;
  deletePlan(plan: string, opts?: AdminOptions): Promise<void>;
  createPortalSession(account: string, options?: PortalSessionRequest, opts?: AdminOptions): Promise<PortalSessionCreated>;
  revokePortalSessions(account?: string, opts?: AdminOptions): Promise<{ account: string | null; revoked: boolean }>;
  createToken(token: { name: string; scopes: Scope[]; account_prefix?: string | null }, opts?: AdminOptions): Promise<TokenCreated>;
  listTokens(opts?: AdminOptions): Promise<{ tokens: TokenView[] }>;
  getToken(tokenId: string, opts?: AdminOptions): Promise<TokenView>;
  rotateToken(tokenId: string, options?: { graceSeconds?: number }, opts?: AdminOptions): Promise<TokenCreated>;
  revokeToken(tokenId: string, opts?: AdminOptions): Promise<TokenView>;
}
