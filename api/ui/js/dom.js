// Element builders and formatters. Every string goes in as a text node or an attribute value,
// never as markup: nothing a user typed (model names, chat, errors) can become HTML.

const SVG_NS = "http://www.w3.org/2000/svg";

function setProps(el, props) {
  for (const [key, value] of Object.entries(props || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") el.setAttribute("class", value);
    else if (key === "text") el.textContent = String(value);
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key.startsWith("on") && typeof value === "function") el.addEventListener(key.slice(2), value);
    else if (typeof value !== "string" && typeof value !== "number" && key in el) el[key] = value;
    else el.setAttribute(key, value === true ? "" : String(value));
  }
}

function appendAll(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** h("button", {type: "button", onclick}, "Send") */
export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  appendAll(el, children);
  setProps(el, props); // after the children, so a <select>'s value finds its options
  return el;
}

export function svg(tag, props = {}, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "text") el.textContent = String(value);
    else if (key === "dataset") Object.assign(el.dataset, value);
    else el.setAttribute(key, String(value));
  }
  appendAll(el, children);
  return el;
}

export function clear(el) {
  while (el.firstChild) el.removeChild(el.firstChild);
  return el;
}

export function replace(el, ...children) {
  clear(el);
  appendAll(el, children);
  return el;
}

/** A labelled form field: <label for=id>Text</label> + the control. */
export function field(labelText, control, hint) {
  const id = control.id || `f-${Math.random().toString(36).slice(2, 10)}`;
  control.id = id;
  const parts = [h("label", { for: id }, labelText), control];
  if (hint) {
    const hintId = `${id}-hint`;
    control.setAttribute("aria-describedby", hintId);
    parts.push(h("small", { id: hintId, class: "hint" }, hint));
  }
  return h("div", { class: "field" }, parts);
}

/** A region that assistive technology announces (errors: role=alert). */
export function messageBox(kind = "error") {
  const el = h("p", { class: `msg msg-${kind}`, role: kind === "error" ? "alert" : "status", hidden: true });
  return {
    el,
    show(text) {
      el.textContent = text;
      el.hidden = !text;
    },
    hide() {
      el.textContent = "";
      el.hidden = true;
    },
  };
}

// ----------------------------------------------------------------------------------------------
// formatting

export function fmtBytes(n) {
  if (n === null || n === undefined || Number.isNaN(Number(n))) return "–";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let v = Number(n);
  let i = 0;
  while (Math.abs(v) >= 1000 && i < units.length - 1) {
    v /= 1000;
    i += 1;
  }
  return `${i === 0 ? v.toFixed(0) : Number(v.toPrecision(3))} ${units[i]}`;
}

export function fmtMs(ms) {
  if (ms === null || ms === undefined) return "–";
  const v = Number(ms);
  if (v >= 100 || v === 0) return `${v.toFixed(0)} ms`;
  return `${Number(v.toPrecision(3))} ms`;
}

export function fmtPct(ratio, digits = 2) {
  if (ratio === null || ratio === undefined) return "–";
  return `${(100 * Number(ratio)).toFixed(digits)}%`;
}

export function fmtNumber(n) {
  if (n === null || n === undefined) return "–";
  return Number(n).toLocaleString("en-US");
}

export function fmtTime(iso) {
  if (!iso) return "–";
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return String(iso);
  return d.toLocaleString(undefined, { dateStyle: "short", timeStyle: "medium" });
}

export function fmtClock(iso) {
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return "";
  return d.toLocaleTimeString(undefined, { hour12: false });
}

/** quantize(method=weight_only_int8, backend=onnxruntime) */
export function fmtCall(call) {
  if (!call) return "";
  const args = Object.entries(call.arguments || {})
    .filter(([, v]) => v !== null && v !== undefined)
    .map(([k, v]) => `${k}=${typeof v === "object" ? JSON.stringify(v) : v}`);
  return `${call.tool}(${args.join(", ")})`;
}

export function fmtShape(shape) {
  if (!Array.isArray(shape)) return String(shape ?? "–");
  return `[${shape.map((d) => (d === null ? "dynamic" : d)).join(", ")}]`;
}

export function shortId(id) {
  return String(id || "").slice(0, 8);
}
