// The client's result types against the sidecar's own /openapi.json: each interface of
// src/results.d.ts named as a schema of the spec declares exactly the fields the sidecar
// answers (none it does not send, every one it always sends), so the types and the sidecar
// cannot drift apart. Read with the TypeScript compiler's parser (a dev dependency).
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import ts from "typescript";
import { SIDECAR_URL } from "./helpers.js";

const SOURCE = new URL("../src/results.d.ts", import.meta.url);
// set by the client itself, never by the sidecar (failurePolicy "fail_open")
const CLIENT_ONLY = new Set(["fail_open"]);

/** interface name -> {fields: Map(name -> optional), extends: [names]} */
function interfaces() {
  const file = ts.createSourceFile("results.d.ts", readFileSync(SOURCE, "utf8"), ts.ScriptTarget.Latest);
  const found = new Map();
  for (const node of file.statements) {
    if (!ts.isInterfaceDeclaration(node)) continue;
    const fields = new Map();
    for (const m of node.members) {
      if (ts.isPropertySignature(m) && m.name) fields.set(m.name.getText(file), Boolean(m.questionToken));
    }
    const parents = (node.heritageClauses ?? []).flatMap((h) => h.types.map((t) => t.expression.getText(file)));
    found.set(node.name.text, { fields, parents });
  }
  return found;
}

function allFields(all, name) {
  const own = all.get(name);
  const fields = new Map(own.fields);
  for (const p of own.parents) for (const [k, v] of allFields(all, p)) if (!fields.has(k)) fields.set(k, v);
  return fields;
}

test("schemas: each result type declares exactly the fields its /openapi.json schema answers", async () => {
  const spec = await (await fetch(`${SIDECAR_URL}/openapi.json`)).json();
  const schemas = spec.components.schemas;
  const all = interfaces();
  const checked = [];
  for (const name of all.keys()) {
    const schema = schemas[name];
    // request bodies are checked by contract.test.js; only the answers here
    if (!schema?.properties || name.endsWith("Body") || name.endsWith("Request")) continue;
    const fields = allFields(all, name);
    const known = new Set(Object.keys(schema.properties));
    const unknown = [...fields.keys()].filter((f) => !known.has(f) && !CLIENT_ONLY.has(f));
    assert.deepEqual(unknown, [], `${name}: fields the sidecar never answers`);
    // a field the sidecar always sends must not be missing from the type
    const missing = (schema.required ?? []).filter((f) => !fields.has(f));
    assert.deepEqual(missing, [], `${name}: fields the sidecar answers that the type lacks`);
    checked.push(name);
  }
  assert.ok(checked.length >= 15, `only ${checked.length} result types matched a schema: ${checked}`);
});
