// The route bench/middleware.py measures, as an Express app: GET /v1/thing (a small JSON answer)
// and /healthz; with SIDECAR_URL set the route costs 1 credit through the TypeScript client's
// requireCredits (the account from the X-Account header). Express comes from
// examples/express/node_modules (bench/middleware.py runs its run.sh's `npm ci` first).
import { createRequire } from "node:module";
import { CreditSidecar } from "../clients/typescript/src/index.js";
import { requireCredits } from "../clients/typescript/src/express.js";

const require = createRequire(new URL("../examples/express/package.json", import.meta.url));
const express = require("express");

const app = express();
const handler = (req, res) => res.json({ thing: 42 });
app.get("/healthz", (req, res) => res.send("ok"));
if (process.env.SIDECAR_URL) {
  const client = new CreditSidecar({ url: process.env.SIDECAR_URL, token: process.env.SIDECAR_SERVICE_TOKEN });
  app.get("/v1/thing", requireCredits(1, { client, account: (req) => req.get("x-account") }), handler);
} else {
  app.get("/v1/thing", handler);
}
app.listen(Number(process.env.PORT), "127.0.0.1");
