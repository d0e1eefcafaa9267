// Type-checked by `npm run typecheck` (tsc, no output): the declarations describe the API as used.
import express from "express";
import { Hono } from "hono";
import {
  CreditSidecar,
  InsufficientCredits,
  RateLimited,
  type CheckResult,
  type Balance,
} from "credit-sidecar";
import { requireCredits, routeCosts, meteredStream } from "credit-sidecar/express";
import * as hono from "credit-sidecar/hono";

const client = new CreditSidecar({ url: "http://127.0.0.1:8080", token: "t", failurePolicy: "fail_open" });

export async function service(): Promise<number> {
  const r: CheckResult = await client.check({ account: "acme", cost: 10, metadata: { route: "x" } });
  if ("transaction_id" in r && r.transaction_id !== null) console.log(r.transaction_id.length);
  const b: Balance = await client.balance("acme");
  const total: number = await client.withHold("acme", 100, async (h) => {
    h.add(3);
    return h.estimate;
  });
  try {
    await client.check({ account: "acme", cost: 1 });
  } catch (e) {
    if (e instanceof InsufficientCredits) return (e.required ?? 0) - (e.balance ?? 0);
    if (e instanceof RateLimited) return e.retryAfterMs;
  }
  const key = await client.createKey("acme", { name: "prod", rate_limit: { requests: 10 } });
  await client.revokeKey(key.key_id, { reason: "rotated" });
  return b.available + total;
}

const app = express();
const opts = { client, account: (req: express.Request) => req.get("x-account") };
app.get("/ten", requireCredits(10, opts), (req, res) => {
  res.json(req.credits);
});
app.use(routeCosts({ "GET /v1/images": 10 }, { ...opts, default: 1 }));
app.get("/stream", meteredStream((req) => Number(req.query.max ?? 100), opts), (req, res) => res.end());

const h = new Hono();
const hopts = { client, account: (c: { req: { header(n: string): string | undefined } }) => c.req.header("x-account") };
h.get("/ten", hono.requireCredits(10, hopts), (c) => c.json({ cost: c.get("credits").allowed }));
h.get("/stream", hono.meteredStream(100, hopts), (c) => {
  c.get("credits").add(1);
  return c.text("ok");
});
