// Meter: a hold being used (CreditSidecar.withHold, the streaming middleware): count what the work
// cost, then settle it or release the hold, once. Under fail_open with no hold, both are no-ops.
// A settle the sidecar cannot take (unavailable past the client's deadline) is sent again in the
// background (settleLater) until the hold lapses: the work is done, its charge is not dropped.

/** Pauses between late settle attempts (ms); the last one repeats. */
export const LATE_BACKOFF_MS = Object.freeze([1000, 2000, 4000, 8000, 15000, 30000]);
const UNKNOWN_TTL_MS = 3_600_000;
const late = new Set();

/** The late settles still being retried in this process (promises of true: landed, false: lost). */
export function lateSettles() {
  return [...late];
}

function pause(ms) {
  // unref'd: a pending retry does not keep the process alive
  return new Promise((resolve) => setTimeout(resolve, ms).unref?.());
}

/**
 * Keeps settling `hold` for `amount` (the same hold id: charged once) until it lands (true) or the
 * hold has lapsed (false: the sidecar answers hold_expired, or it stays unavailable; logged).
 */
export function settleLater(client, { account, hold, amount, backoffMs = LATE_BACKOFF_MS }) {
  const until = Date.parse(hold.expires_at ?? "") || Date.now() + UNKNOWN_TTL_MS;
  const lost = (error) => {
    client.logger?.error?.(
      `credit-sidecar: hold ${hold.hold_id} of ${account} not settled for ${amount} credits, its charge is lost: ${error?.message}`,
    );
    return false;
  };
  const run = async () => {
    let last;
    for (let i = 0; ; i++) {
      const wait = backoffMs[Math.min(i, backoffMs.length - 1)];
      const final = Date.now() + wait >= until;
      await pause(final ? Math.max(0, until - Date.now()) : wait);
      try {
        await client.settle({ account, holdId: hold.hold_id, amount });
        client.logger?.warn?.(`credit-sidecar: hold ${hold.hold_id} settled late for ${amount} credits`);
        return true;
      } catch (error) {
        if (error?.name !== "SidecarUnavailable") return lost(error);
        last = error;
      }
      if (final) return lost(last);
    }
  };
  const p = run();
  late.add(p);
  p.finally(() => late.delete(p));
  return p;
}

/** A hold being used: count what the work cost, then finish (settle) or release it once. */
export class Meter {
  #client;
  #done = false;

  constructor(client, account, hold, estimate) {
    this.#client = client;
    this.account = account;
    this.hold = hold;
    this.estimate = estimate;
    this.amount = undefined;
    this.result = undefined;
  }

  get holdId() {
    return this.hold.hold_id;
  }

  get closed() {
    return this.#done;
  }

  /** The cost to settle (replaces what was counted). */
  settle(amount) {
    this.amount = amount;
  }

  /** Counts `n` more (e.g. tokens streamed). */
  add(n) {
    this.amount = (this.amount ?? 0) + n;
  }

  /** Settles the amount set (the estimate if none); once. */
  async finish() {
    if (this.#done) return this.result;
    this.#done = true;
    if (this.hold.fail_open) return (this.result = { state: "fail_open", charged: 0 });
    const amount = this.amount ?? this.estimate;
    try {
      this.result = await this.#client.settle({ account: this.account, holdId: this.holdId, amount });
    } catch (error) {
      if (error?.name === "SidecarUnavailable") settleLater(this.#client, { account: this.account, hold: this.hold, amount });
      throw error;
    }
    return this.result;
  }

  /** Gives the hold back whole; once. */
  async release() {
    if (this.#done) return this.result;
    this.#done = true;
    if (this.hold.fail_open) return (this.result = { state: "fail_open", charged: 0 });
    this.result = await this.#client.release({ account: this.account, holdId: this.holdId });
    return this.result;
  }
}
