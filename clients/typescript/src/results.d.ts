// The sidecar's JSON as /openapi.json describes it (snake_case fields, instants as RFC 3339
// strings, credits as integers): what the client's calls resolve to. Types only (no .js).

export type Interval = "day" | "week" | "month" | "year";
export type Scope = "admin" | "service" | "read" | "portal" | "checkout";
export type Metadata = Record<string, unknown>;

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
