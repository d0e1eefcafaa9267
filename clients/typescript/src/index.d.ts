// Types of credit-sidecar's client. Results are the sidecar's JSON as /openapi.json describes it
// (snake_case fields, instants as RFC 3339 strings, credits as integers).

export declare const VERSION: string;
export declare const SUPPORTED_SIDECAR: string;

export type FailurePolicy = "fail_closed" | "fail_open";
export type Interval = "day" | "week" | "month" | "year";
export type Scope = "admin" | "service" | "read" | "portal" | "checkout";
export type Metadata = Record<string, unknown>;

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
  /** Retries after the first attempt, only on network errors, timeouts, 502/503/504. Default 2. */
  retries?: number;
  /** The first retry's backoff cap (full jitter, doubling). Default 50. */
  backoffMs?: number;
  maxBackoffMs?: number;
  /** What check/hold do when the sidecar is unavailable. Default "fail_closed". */
  failurePolicy?: FailurePolicy;
  fetch?: typeof globalThis.fetch;
  /** Where fail_open warnings go. Default console. */
  logger?: Logger | null;
  userAgent?: string;
}

// -- results (the schemas of /openapi.json) -----------------------------------------------------

/** The rate-limit state of a check (when the sidecar sends it: the tightest limiter). */
export interface RateLimitState {
  policy: string;
  limit: number;
  remaining: number;
  reset_ms: number;
  period_ms: number;
}

export interface CheckAllowed {
  allowed: true;
  account: string;
  /** After the check (a dry run: after it would run). */
  balance: number;
  cost: number;
  /** null: a dry run */
  transaction_id: string | null;
  replayed: boolean;
  low_balance: boolean;
  dry_run?: boolean;
  rate_limit?: RateLimitState | null;
}

/** SIDECAR_SHADOW: a refusal let through uncharged. */
export interface CheckShadowed {
  allowed: true;
  account: string;
  charged: false;
  shadow: { status: number; reason: string; balance?: number; required?: number; retry_after_ms?: number };
}

/** fail_open with the sidecar unavailable: let through, nothing charged. */
export interface CheckFailOpen {
  allowed: true;
  account: string;
  cost: number;
  balance: null;
  transaction_id: null;
  replayed: false;
  low_balance: false;
  charged: false;
  fail_open: true;
}

export type CheckResult = CheckAllowed | CheckShadowed | CheckFailOpen;

export interface RateLimit {
  requests: number;
  period_ms: number;
  burst: number;
}

export interface RateLimitBody {
  requests: number;
  period_ms?: number;
  burst?: number | null;
}

export interface SpendLimitView {
  credits: number;
  /** null: a lifetime limit */
  interval: Interval | null;
  interval_count: number;
}

export interface SpendLimitBody {
  credits: number;
  interval?: Interval | null;
  interval_count?: number;
}

export interface SpendView {
  spend_limit: SpendLimitView;
  spent: number;
  window_ends_at: string | null;
}

export interface UsageRecorded {
  account: string;
  cost: number;
  transaction_id: string;
  balance: number;
  debt_added: number;
  replayed: boolean;
}

export interface Hold {
  account: string;
  hold_id: string;
  amount: number;
  state: string;
  transaction_id: string | null;
  balance: number | null;
  expires_at: string | null;
  replayed: boolean;
  /** fail_open with the sidecar unavailable: nothing is held; settle/release are no-ops. */
  fail_open?: true;
}

export interface HoldClosed {
  account: string;
  hold_id: string;
  state: "settled" | "released";
  charged: number;
  forfeited: number;
  uncovered: number;
  transaction_id: string;
  balance: number;
  replayed: boolean;
}

export interface BucketView {
  id: string;
  credits: number;
  remaining: number;
  held: number;
  created_at: string | null;
  expires_at: string | null;
  priority: number;
  source: string;
  metadata: Metadata;
}

export interface PlanState {
  plan: string;
  anchor: string;
  next_renewal_at: string;
}

export interface Balance {
  account: string;
  balance: number;
  available: number;
  held: number;
  debt: number;
  overdraft_limit: number;
  low_balance_threshold: number | null;
  rate_limit: RateLimit | null;
  created_at: string | null;
  buckets: BucketView[];
  spend?: SpendView | null;
  plan?: PlanState | null;
}

export interface Authorized {
  allowed: true;
  reason?: string;
  account: string | null;
  balance: number | null;
  cost: number | null;
  transaction_id: string | null;
  replayed: boolean;
  fail_open?: true;
}

export interface AccountSettingsBody {
  overdraft_limit?: number;
  low_balance_threshold?: number | null;
  rate_limit?: RateLimitBody | null;
  spend_limit?: SpendLimitBody | null;
  plan?: string | null;
  plan_anchor?: string | number | null;
}

export interface AccountSettings {
  account: string;
  created: boolean;
  overdraft_limit: number;
  low_balance_threshold: number | null;
  rate_limit: RateLimit | null;
  spend_limit: SpendLimitView | null;
  plan?: string | null;
  plan_anchor?: string | null;
}

export interface Granted {
  account: string;
  grant_id: string;
  credits: number;
  transaction_id: string;
  balance: number;
  replayed: boolean;
}

export interface Refunded {
  account: string;
  refund_id: string;
  source_transaction_id: string;
  refunded: number;
  forfeited: number;
  transaction_id: string;
  balance: number;
  replayed: boolean;
}

export interface Key {
  key_id: string;
  account: string;
  name: string;
  prefix: string;
  created_at: string | null;
  rate_limit: RateLimit | null;
  revoked_at: string | null;
  spend_limit: SpendLimitView | null;
  spend: SpendView | null;
}

export interface KeyCreated extends Key {
  /** The key: shown only here (null: a replay). */
  key: string | null;
  replayed: boolean;
}

export interface KeyList {
  account: string;
  keys: Key[];
}

export interface AllowanceBody {
  credits: number;
  interval: Interval;
  interval_count?: number;
  mode?: "reset" | "accumulate";
  rollover_max?: number | null;
  priority?: number;
  trigger?: "period";
}

export interface PlanBody {
  name: string;
  allowance: AllowanceBody;
  rate_limit?: RateLimitBody | null;
  spend_limit?: SpendLimitBody | null;
  default?: boolean;
}

export interface PlanView {
  plan: string;
  name: string;
  allowance: Required<AllowanceBody> & { rollover_max: number | null };
  rate_limit: RateLimit | null;
  spend_limit: SpendLimitView | null;
  default: boolean;
  accounts: number;
}

export interface TokenView {
  token_id: string;
  name: string;
  scopes: Scope[];
  account_prefix: string | null;
  created_at: string;
  rotated_at: string | null;
  revoked_at: string | null;
  previous_valid_until: string | null;
  last_used_at: string | null;
}

export interface TokenCreated extends TokenView {
  token: string;
}

export type PortalSection = "balance" | "usage" | "transactions" | "buy" | "auto_topup" | "keys" | "limits" | "billing";

export interface PortalSessionRequest {
  return_url?: string | null;
  locale?: string | null;
  sections?: PortalSection[] | null;
}

export interface PortalSessionCreated {
  id: string;
  account: string;
  url: string;
  expires_at: string;
  session_ttl_s: number;
  return_url: string | null;
  locale: string | null;
  sections: PortalSection[];
}

export interface AccountSummary {
  account: string;
  balance: number;
  debt: number;
  created_at: string | null;
  seq: number;
}

export interface Transaction {
  id: string;
  seq: number;
  type: string;
  amount: number;
  balance: number;
  debt: number;
  created_at: string | null;
  description: string;
  idempotency_key: string | null;
  hold_id: string | null;
  source_transaction_id: string | null;
  key_id: string | null;
  route: string | null;
  metadata: Metadata | null;
}

export interface UsagePoint {
  start: string;
  credits: number;
  checks: number;
  groups?: { key: string | null; credits: number; checks: number }[];
}

export interface HoldRecord {
  hold_id: string;
  amount: number;
  state: string;
  created_at: string | null;
  expires_at: string | null;
  ttl_ms: number | null;
  transaction_id: string | null;
  balance_after: number | null;
  charged: number | null;
  forfeited: number | null;
  close_transaction_id: string | null;
  buckets: { bucket: string; amount: number }[];
}

// -- errors ---------------------------------------------------------------------------------------

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

// -- the client -----------------------------------------------------------------------------------

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

export declare class Meter {
  readonly account: string;
  readonly hold: Hold;
  readonly estimate: number;
  /** What will be settled (undefined: the estimate). */
  amount: number | undefined;
  result: HoldClosed | { state: "fail_open"; charged: 0 } | undefined;
  readonly holdId: string;
  readonly closed: boolean;
  settle(amount: number): void;
  add(n: number): void;
  finish(): Promise<HoldClosed | { state: "fail_open"; charged: 0 }>;
  release(): Promise<HoldClosed | { state: "fail_open"; charged: 0 }>;
}

export declare class CreditSidecar {
  constructor(options: CreditSidecarOptions);
  readonly url: string;
  timeoutMs: number;
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

// -- helpers the middleware share -------------------------------------------------------------------

export declare function satisfies(version: string, range?: string): boolean;
export declare function isValidId(value: unknown): value is string;
export declare function allowedHeaders(result: CheckResult): Record<string, string>;
export declare function rateLimitHeaders(rateLimit: RateLimitState | null | undefined): Record<string, string>;
export interface DeniedResponse {
  status: number;
  body: unknown;
  headers: Record<string, string>;
}
export declare function deniedResponse(error: unknown, options?: { failurePolicy?: FailurePolicy }): DeniedResponse | null;
export declare function requestIdempotencyKey(requestId: string | null | undefined): string;
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
