// A small Express API billed in credits through the sidecar (docs/clients/typescript.md).
//
// Routes: GET /v1/free (free), GET /v1/quote (1 credit), GET /v1/report (10 credits) and
// POST /v1/generate (a stand-in LLM stream billed by the tokens it sent: an estimate is held
// before the first byte, the counted tokens settled when the response ends, the hold released if
// the client disconnects first).
//
// Who pays: the X-API-Key header, looked up in DEMO_KEYS below. A real app looks the key up in
// its own database (or its session).
//
// Environment: SIDECAR_URL (http://127.0.0.1:8080), SIDECAR_SERVICE_TOKEN (run.sh reads the
// sidecar's .data/service_token), PORT (8002).
import express from "express";
import { CreditSidecar } from "credit-sidecar";
import { meteredStream, requireCredits } from "credit-sidecar/express";

// The demo's API keys -> the account each one bills (create and fund them first: README.md).
const DEMO_KEYS = { "demo-key-acme": "acme", "demo-key-broke": "broke" };
const ESTIMATE = 200; // tokens held before a stream starts: the most one may use
const WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "the", "lazy", "dog"];

const client = new CreditSidecar({
  url: process.env.SIDECAR_URL ?? "http://127.0.0.1:8080",
  token: process.env.SIDECAR_SERVICE_TOKEN,
});
const opts = { client, account: (req) => DEMO_KEYS[req.get("x-api-key") ?? ""] };

const app = express();

app.get("/v1/free", (req, res) => res.json({ message: "free of charge" }));

app.get("/v1/quote", requireCredits(1, opts), (req, res) =>
  res.json({ quote: "Simplicity is prerequisite for reliability." }),
);

app.get("/v1/report", requireCredits(10, opts), (req, res) =>
  res.json({ report: "a costly one", balance_after: req.credits.balance }),
);

// A stand-in for a model's token stream.
async function* llm(tokens) {
  for (let i = 0; i < tokens; i++) {
    yield WORDS[i % WORDS.length] + " ";
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

app.post("/v1/generate", meteredStream(ESTIMATE, opts), async (req, res) => {
  const tokens = Math.min(Math.max(Number.parseInt(req.query.tokens ?? "20", 10) || 0, 0), ESTIMATE);
  res.type("text/plain");
  for await (const token of llm(tokens)) {
    if (res.destroyed) return; // the client went away: the middleware releases the hold
    res.write(token);
    req.credits.add(1); // one credit per token sent
  }
  res.end(); // the middleware settles what was counted
});

const port = Number(process.env.PORT ?? 8002);
app.listen(port, "127.0.0.1", () => console.log(`express example on http://127.0.0.1:${port}`));
