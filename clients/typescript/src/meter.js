// Meter: a hold being used (CreditSidecar.withHold, the streaming middleware): count what the work
// cost, then settle it or release the hold, once. Under fail_open with no hold, both are no-ops.

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
    this.result = await this.#client.settle({ account: this.account, holdId: this.holdId, amount });
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
