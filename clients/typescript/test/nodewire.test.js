// The Node wire (src/nodewire.js) under hostile use, on the real sidecar: many clients in one
// process share kept-alive connections (as fetch's global pool did), never one idle socket each.

import { test } from "node:test";
import assert from "node:assert/strict";

import { CreditSidecar } from "../src/index.js";
import { ADMIN_TOKEN, account, droppingRelay, quiet } from "./helpers.js";

test("nodewire: clients made one after another share one kept-alive connection", async () => {
  const id = await account(5);
  const relay = await droppingRelay(process.env.SIDECAR_URL, 0);
  try {
    for (let i = 0; i < 20; i++) {
      const client = new CreditSidecar({ url: relay.url, token: ADMIN_TOKEN, logger: quiet });
      assert.equal((await client.balance(id)).balance, 5);
    }
    assert.equal(relay.stats.connections, 1);
  } finally {
    await relay.close();
  }
});
