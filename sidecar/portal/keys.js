// The API keys section: the account's keys with their spending limits, a key created (its
// secret shown once, with a Copy button; the creation's idempotency key reused if it is
// retried), a key's limit set in a dialog, a key revoked after a confirmation.

import { $, h, table } from "../ui/ui.js";
import { api, intentDone, intentKey } from "./api.js";
import { busy, clearErrors, dialog, field, InputError, onSubmit, openDialog, showError } from "./forms.js";
import { limitFields, limitText, spendText } from "./limits.js";
import { load, section, sessionGone, state } from "./page.js";

export const keysView = () => {
  const [el, body] = section("keys", "API keys");
  const keysStatus = h("p", { id: "keys-status", class: "muted", role: "status", tabindex: "-1" });
  const list = h("div", { id: "keys-list" });

  // create
  const name = h("input", { type: "text", autocomplete: "off", maxlength: "200" });
  const limit = limitFields("new-key", "spend_limit");
  const create = h("button", { type: "submit", id: "create-key" }, "Create key");
  const form = h("form", { id: "key-form", class: "grid-form", novalidate: true },
    field("new-key-name", "Name", name, { field: "name" }),
    limit.nodes, h("div", { class: "actions" }, create));
  const secret = h("code", { id: "new-key-secret", class: "secret" });
  const copy = h("button", { type: "button", id: "copy-key" }, "Copy");
  const copied = h("span", { id: "copy-status", role: "status" });
  const done = h("button", { type: "button", class: "secondary", id: "new-key-done" }, "Done");
  const reveal = h("div", { id: "new-key", class: "notice reveal", hidden: true },
    h("p", { id: "new-key-text" }), h("div", { class: "secret-row" }, secret, copy, copied), done);

  copy.addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText(secret.textContent);
      copied.textContent = "Copied";
    } catch {
      getSelection().selectAllChildren(secret);
      copied.textContent = "Select the key and copy it (Ctrl+C or ⌘C)";
    }
  });
  done.addEventListener("click", () => {
    secret.textContent = "";
    reveal.hidden = true;
    name.focus();
  });

  onSubmit(form, async () => {
    const label = name.value.trim();
    if (!label) throw new InputError("name", "Enter a name for the key.");
    const req = { name: label };
    const spend = limit.value();
    if (spend) req.spend_limit = spend;
    const intent = `key:${JSON.stringify(req)}`;
    const made = await api("keys", { method: "POST", body: { ...req, idempotency_key: intentKey(intent) } });
    intentDone(intent);
    copied.textContent = "";
    if (made.key) {
      $("new-key-text").textContent = `Your new key “${made.name}”: copy it now, it is shown only this once.`;
      secret.textContent = made.key;
    } else {
      $("new-key-text").textContent = `The key “${made.name}” was already created; its secret was shown only once. Revoke it and create another if you did not keep it.`;
      secret.textContent = "";
    }
    copy.hidden = !made.key;
    reveal.hidden = false;
    name.value = "";
    limit.set(null);
    await refreshList();
    (made.key ? copy : done).focus();
  });

  // set a key's limit
  const edit = limitFields("key-limit", "spend_limit");
  const saveLimit = h("button", { type: "submit", value: "save", id: "key-limit-save" }, "Save limit");
  const removeLimit = h("button", { type: "submit", value: "remove", class: "secondary", id: "key-limit-remove" }, "Remove limit");
  const cancelLimit = h("button", { type: "submit", value: "cancel", class: "secondary", formnovalidate: true }, "Cancel");
  const limitDialog = dialog("key-limit-dialog", "Spending limit", edit.nodes, [saveLimit, removeLimit, cancelLimit]);
  const limitForm = limitDialog.querySelector("form");
  let editing = null;
  limitForm.addEventListener("submit", (event) => {
    const action = event.submitter?.value;
    if (action === "cancel") return; // method=dialog closes it
    event.preventDefault();
    busy(event.submitter, async () => {
      clearErrors(limitForm);
      try {
        const spend = action === "remove" ? null : edit.value();
        if (action === "save" && spend === null) throw new InputError("spend_limit.credits", "Enter a limit, or remove it.");
        await api(`keys/${encodeURIComponent(editing.key_id)}`, { method: "PATCH", body: { spend_limit: spend } });
        keysStatus.textContent = spend ? `Limit of “${editing.name}” set to ${limitText(spend)}.` : `Limit of “${editing.name}” removed.`;
        limitDialog.close();
        await refreshList();
      } catch (e) {
        if (!sessionGone(e)) showError(limitForm, e);
      }
    });
  });

  // revoke
  const revokeText = h("p", { id: "revoke-text" });
  const revokeButton = h("button", { type: "submit", value: "revoke", class: "danger", id: "revoke-confirm" }, "Revoke");
  const cancelRevoke = h("button", { type: "submit", value: "cancel", class: "secondary", id: "revoke-cancel", autofocus: true }, "Cancel");
  const revokeDialog = dialog("revoke-dialog", "Revoke this key?", revokeText, [cancelRevoke, revokeButton]);
  const revokeForm = revokeDialog.querySelector("form");
  let revoking = null;
  revokeForm.addEventListener("submit", (event) => {
    if (event.submitter?.value !== "revoke") return;
    event.preventDefault();
    busy(revokeButton, async () => {
      clearErrors(revokeForm);
      try {
        await api(`keys/${encodeURIComponent(revoking.key_id)}`, { method: "DELETE" });
        revokeDialog.close();
        keysStatus.textContent = `Key “${revoking.name}” revoked: requests with it are refused.`;
        await refreshList();
        keysStatus.focus();
      } catch (e) {
        if (!sessionGone(e)) showError(revokeForm, e);
      }
    });
  });

  const refreshList = () => load(list, async () => {
    const data = await api("keys");
    const f = state.fmt;
    return table(
      [
        { label: "Name", value: (k) => k.name || "—" },
        { label: "Key", value: (k) => h("code", {}, `${k.prefix}…`) },
        { label: "Created", value: (k) => f.date(k.created_at) },
        {
          label: "Spending limit",
          value: (k) => (k.spend ? spendText(k.spend) : limitText(k.spend_limit)),
        },
        {
          label: "Status",
          value: (k) => (k.revoked_at
            ? h("span", { class: "state state-revoked" }, `revoked ${f.date(k.revoked_at)}`)
            : h("span", { class: "state state-active" }, "active")),
        },
        {
          label: "Actions",
          value: (k) => (k.revoked_at ? "" : h("div", { class: "row-actions" },
            h("button", {
              type: "button", class: "secondary", "aria-label": `Set the spending limit of ${k.name || k.prefix}`,
              on: { click: (e) => { editing = k; clearErrors(limitForm); edit.set(k.spend_limit); openDialog(limitDialog, e.currentTarget); } },
            }, "Set limit"),
            h("button", {
              type: "button", class: "secondary danger-text", "aria-label": `Revoke ${k.name || k.prefix}`,
              on: {
                click: (e) => {
                  revoking = k;
                  clearErrors(revokeForm);
                  revokeText.textContent = `Requests with “${k.name || k.prefix}” (${k.prefix}…) will be refused at once. This cannot be undone.`;
                  openDialog(revokeDialog, e.currentTarget);
                },
              },
            }, "Revoke"))),
        },
      ],
      data.keys,
      "No API keys yet.",
      { id: "keys-table", "aria-label": "API keys" },
    );
  });

  body.replaceChildren(keysStatus, list, h("h3", { class: "sub" }, "Create a key"), form, reveal);
  refreshList();
  return { el, refresh: refreshList };
};
