// Types of meter.js: a hold being used (CreditSidecar.withHold, the streaming middleware).

import type { Hold, HoldClosed } from "./results.js";

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
