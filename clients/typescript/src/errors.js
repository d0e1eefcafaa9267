// The client's typed errors, one class per kind of answer, and errorFor: a sidecar answer (status,
// JSON body, headers) turned into the error to throw.

export class CreditSidecarError extends Error {
  constructor(message, { status = 0, code = "error", field, body, headers, cause } = {}) {
    super(message, cause === undefined ? undefined : { cause });
    this.name = new.target.name;
    this.status = status;
    this.code = code;
    this.field = field;
    this.body = body;
    this.headers = headers;
  }
}

/** 402: the balance (plus overdraft) cannot cover the cost. */
export class InsufficientCredits extends CreditSidecarError {
  constructor(message, init = {}) {
    super(message, init);
    this.account = init.body?.account;
    this.balance = init.body?.balance;
    this.required = init.body?.required;
  }
}

/** 402: the cost would pass the account's (`spend_limit`) or key's (`key_spend_limit`) limit. */
export class SpendLimitReached extends CreditSidecarError {
  constructor(message, init = {}) {
    super(message, init);
    this.account = init.body?.account;
    this.required = init.body?.required;
    this.spendLimit = init.body?.spend_limit;
    this.spent = init.body?.spent;
    this.windowEndsAt = init.body?.window_ends_at ?? null;
  }
}

/** 429: come back in `retryAfterMs`. */
export class RateLimited extends CreditSidecarError {
  constructor(message, init = {}) {
    super(message, init);
    this.account = init.body?.account;
    this.retryAfterMs = init.body?.retry_after_ms ?? 0;
  }
}

export class Unauthorized extends CreditSidecarError {}
export class Forbidden extends CreditSidecarError {}
export class NotFound extends CreditSidecarError {}
/** 409: an idempotency key reused on another request, a closed hold, a revoked token... */
export class Conflict extends CreditSidecarError {}
/** 400/413/422: the request itself is wrong (`field` names what). */
export class InvalidRequest extends CreditSidecarError {}
/** Unreachable, timed out, or 5xx after the retries: nothing is known to have been charged. */
export class SidecarUnavailable extends CreditSidecarError {}
/** The sidecar's version is outside SUPPORTED_SIDECAR, or it lacks the route called. */
export class IncompatibleSidecar extends CreditSidecarError {}

export function errorFor(status, body, headers) {
  const denial = body && body.allowed === false ? body : null;
  const detail = body && typeof body.error === "object" && body.error ? body.error : null;
  const code = denial?.reason ?? detail?.code ?? `http_${status}`;
  const init = { status, code, field: detail?.field ?? denial?.field, body, headers };
  if (denial && status === 402) {
    if (code === "spend_limit" || code === "key_spend_limit") {
      return new SpendLimitReached(
        `the cost ${denial.required} would pass the ${code === "key_spend_limit" ? "key's" : "account's"} spending limit (spent ${denial.spent} of ${denial.spend_limit?.credits})`,
        init,
      );
    }
    return new InsufficientCredits(
      `insufficient credits: ${denial.required ?? "?"} required, balance ${denial.balance ?? "?"}`,
      init,
    );
  }
  if (status === 429) {
    return new RateLimited(`rate limited: retry after ${denial?.retry_after_ms ?? "?"} ms`, init);
  }
  const message = detail?.message ?? denial?.message ?? denial?.reason ?? `HTTP ${status}`;
  if (status === 402) return new InsufficientCredits(message, init);
  if (status === 401) return new Unauthorized(message, init);
  if (status === 403) return new Forbidden(message, init);
  if (status === 404) return new NotFound(message, init);
  if (status === 409) return new Conflict(message, init);
  if (status === 400 || status === 413 || status === 422) return new InvalidRequest(message, init);
  if (status >= 500) return new SidecarUnavailable(message, init);
  return new CreditSidecarError(message, init);
}
