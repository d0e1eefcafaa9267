// Types of meter.js: a hold being used (CreditSidecar.withHold, the streaming middleware).

import type { CreditSidecar } from "./client.js";
import type { Hold, HoldClosed } from "./results.js";

/** Pauses between late settle attempts (ms); the last one repeats. */
export declare const LATE_BACKOFF_MS: readonly number[];

/**
 * Keeps settling `hold` for `amount` (the same hold id: charged once) until it lands (true) or the
 * hold has lapsed (false: logged). Meter.finish() starts one when the sidecar is unavailable.
 */
export declare function settleLater(
  client: CreditSidecar,
  options: { account: string; hold: Hold; amount: number; backoffMs?: readonly number[] },
): Promise<boolean>;

/** The late settles still being retried in this process. */
export declare function lateSettles(): Promise<boolean>[];

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
  /** Settles; a SidecarUnavailable is thrown and the settle retried in the background (settleLater). */
  finish(): Promise<HoldClosed | { state: "fail_open"; charged: 0 }>;
  release(): Promise<HoldClosed | { state: "fail_open"; charged: 0 }>;
}
