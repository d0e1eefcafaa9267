// The portal's forms: labelled fields, the API's errors shown next to the field they name
// (the `field` of its error body), numbers read from inputs, buttons busy while their call
// runs (a second press does nothing, so a double click never buys twice), modal dialogs.

import { $, ApiError, h } from "../ui/ui.js";
import { sessionGone } from "./page.js";

/** A labelled control; `field` is the API's name for it (its errors are shown under it). */
export function field(id, label, control, { field: name, hint } = {}) {
  control.id = id;
  if (name) control.dataset.field = name;
  const error = h("p", { class: "field-error", id: `${id}-error`, hidden: true });
  const parts = [h("label", { for: id }, label), control];
  if (hint) parts.push(h("p", { class: "hint muted", id: `${id}-hint` }, hint));
  parts.push(error);
  if (hint) control.setAttribute("aria-describedby", `${id}-hint`);
  return h("div", { class: "field" }, parts);
}

export function clearErrors(form) {
  for (const el of form.querySelectorAll("[aria-invalid]")) {
    el.removeAttribute("aria-invalid");
    const ids = (el.getAttribute("aria-describedby") ?? "").split(" ").filter((x) => x && !x.endsWith("-error"));
    if (ids.length) el.setAttribute("aria-describedby", ids.join(" "));
    else el.removeAttribute("aria-describedby");
  }
  for (const el of form.querySelectorAll(".field-error, .form-error")) {
    el.textContent = "";
    el.hidden = true;
  }
}

/** Shows an error next to the control it names (the API's `field`, or the closest prefix of
 * it a control has), else at the form's foot; focuses that control. */
export function showError(form, error, fieldName = error.field) {
  let control = null;
  const parts = fieldName ? String(fieldName).split(".") : [];
  for (let n = parts.length; n > 0 && !control; n -= 1) {
    const name = parts.slice(0, n).join(".");
    control = [...form.querySelectorAll("[data-field]")].find((el) => el.dataset.field === name) ?? null;
  }
  const message = error instanceof ApiError ? error.message : String(error.message ?? error);
  if (control) {
    const box = $(`${control.id}-error`);
    box.textContent = message;
    box.hidden = false;
    control.setAttribute("aria-invalid", "true");
    const ids = (control.getAttribute("aria-describedby") ?? "").split(" ").filter(Boolean);
    control.setAttribute("aria-describedby", [...ids, box.id].join(" "));
    control.focus();
    return;
  }
  let box = form.querySelector(".form-error");
  if (!box) {
    box = h("p", { class: "form-error error", role: "alert" });
    form.append(box);
  }
  box.textContent = message;
  box.hidden = false;
}

/** The page's own refusal of an input, shown next to the field the API calls `fieldName`. */
export class InputError extends Error {
  constructor(fieldName, message) {
    super(message);
    this.field = fieldName;
  }
}

/** A whole number from an input (empty: null when optional). */
export function whole(input, { optional = false, min = 0 } = {}) {
  const text = input.value.trim();
  if (!text && optional) return null;
  if (!/^-?\d+$/.test(text)) throw new InputError(input.dataset.field, "Enter a whole number.");
  const n = Number(text);
  if (!Number.isSafeInteger(n) || n < min) {
    throw new InputError(input.dataset.field, min > 0 ? `Enter a whole number of at least ${min}.` : "Enter a whole number, 0 or more.");
  }
  return n;
}

/** Runs `fn` with `button` marked busy (aria-disabled: it keeps the keyboard focus); a press
 * while it runs does nothing. */
export async function busy(button, fn) {
  if (button.dataset.busy) return undefined;
  button.dataset.busy = "1";
  button.setAttribute("aria-disabled", "true");
  try {
    return await fn();
  } finally {
    delete button.dataset.busy;
    button.removeAttribute("aria-disabled");
  }
}

/** Submits `form` with `fn` (busy on its submit button); errors next to their field. */
export function onSubmit(form, fn) {
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const button = event.submitter ?? form.querySelector("button[type=submit]");
    busy(button, async () => {
      clearErrors(form);
      try {
        await fn(button);
      } catch (e) {
        if (sessionGone(e)) return;
        showError(form, e);
      }
    });
  });
}

/** A modal dialog (native <dialog>: focus moves in, Escape closes it, focus returns). */
export function dialog(id, title, content, buttons) {
  const titleId = `${id}-title`;
  const el = h("dialog", { id, "aria-labelledby": titleId },
    h("form", { method: "dialog", novalidate: true }, h("h2", { id: titleId }, title), content, h("div", { class: "actions" }, buttons)));
  document.body.append(el);
  return el;
}

export function openDialog(el, opener) {
  el.showModal();
  el.addEventListener("close", () => {
    if (opener?.isConnected) opener.focus();
  }, { once: true });
}
