import { ApiError, api, download } from "../api.js";
import { field, fmtBytes, fmtNumber, fmtShape, fmtTime, h, messageBox, replace } from "../dom.js";

// The presets of agents/criteria.py (criteria_name); the server validates the name.
const PRESETS = [
  ["balanced_optimization", "Balanced: shrink and speed up in equal measure, keeping 95% of the accuracy"],
  ["max_compression", "Max compression: as small as possible while keeping 90% of the accuracy"],
  ["max_speed", "Max speed: as fast as possible while keeping 93% of the accuracy"],
  ["accuracy_first", "Accuracy first: only changes that keep 99% of the accuracy"],
];
const TECHNIQUES = [
  ["quantization", "Quantization", true],
  ["pruning", "Pruning", true],
  ["half_precision", "Half precision", false],
  ["compilation", "Compilation (a decoder's compiled runtime)", false],
];

function dl(rows) {
  return h(
    "dl",
    { class: "facts" },
    rows.filter(([, v]) => v !== undefined && v !== null && v !== "").map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]),
  );
}

function table(headers, rows, caption) {
  return h(
    "table",
    {},
    caption ? h("caption", {}, caption) : null,
    h("thead", {}, h("tr", {}, headers.map((t) => h("th", { scope: "col" }, t)))),
    h("tbody", {}, rows.map((r) => h("tr", {}, r.map((c) => h("td", {}, c ?? "–"))))),
  );
}

function signatureSection(model) {
  const details = model.format_details || {};
  const signature = details.signature || {};
  const inputs = model.input_spec || [];
  const outputs = details.outputs || [];
  return h(
    "section",
    { class: "card", "aria-labelledby": "sig-title" },
    h("h2", { id: "sig-title" }, "Input signature"),
    inputs.length
      ? table(
          ["Input", "Shape", "Type", "Range"],
          inputs.map((s) => [s.name, fmtShape(s.shape), s.dtype, s.low != null || s.high != null ? `${s.low ?? "…"} to ${s.high ?? "…"}` : "any"]),
        )
      : h("p", { class: "muted" }, "Unknown: give one when starting a session, or attach evaluation data."),
    signature.source ? h("p", { class: "muted small" }, `Source: ${signature.source}`) : null,
    (signature.missing || []).length ? h("p", { class: "msg msg-error" }, `Missing: ${signature.missing.join("; ")}`) : null,
    (signature.notes || []).map((n) => h("p", { class: "muted small" }, n)),
    outputs.length
      ? [
          h("h3", {}, "Outputs"),
          table(
            ["Output", "Shape", "Type", "Kind"],
            outputs.map((o) => [o.name, fmtShape(o.shape), o.dtype, [o.kind, o.kind_reason].filter(Boolean).join(": ")]),
          ),
        ]
      : null,
  );
}

function profileSection(model) {
  const details = model.format_details || {};
  const inner = details.details || {};
  const eval_ = model.eval_data_info;
  return h(
    "section",
    { class: "card", "aria-labelledby": "profile-title" },
    h("h2", { id: "profile-title" }, "Profile"),
    dl([
      ["Format", `${model.format} (${model.extension})`],
      ["File", model.original_filename],
      ["Size", `${fmtBytes(model.size_bytes)} (${fmtNumber(model.size_bytes)} bytes)`],
      ["Parameters", details.parameter_count != null ? fmtNumber(details.parameter_count) : null],
      ["Tensors", details.tensor_count != null ? fmtNumber(details.tensor_count) : null],
      ["Weight types", (inner.dtypes || []).join(", ")],
      ["ONNX opset", details.opset],
      ["Loadable", details.loadable === undefined ? null : details.loadable ? "yes" : "no (stored for inspection only)"],
      ["Architecture", model.architecture ? JSON.stringify(model.architecture) : null],
      ["SHA-256", h("code", {}, model.sha256)],
      ["Uploaded", fmtTime(model.created_at)],
      ["Evaluation data", eval_ ? `${eval_.num_samples} samples${eval_.has_targets ? " with targets" : " (no targets: fidelity to the original)"}` : "none (fidelity on synthesized inputs)"],
      ["Optimized from", model.parent_model_id ? h("a", { href: `#/models/${encodeURIComponent(model.parent_model_id)}` }, model.parent_model_id) : null],
      ["By session", model.source_session_id ? h("a", { href: `#/sessions/${encodeURIComponent(model.source_session_id)}` }, model.source_session_id) : null],
    ]),
  );
}

function numberInput(name, attrs) {
  return h("input", { type: "number", name, inputmode: "decimal", ...attrs });
}

function optimizeForm(model, navigate) {
  const preset = h(
    "select",
    { name: "criteria_name" },
    h("option", { value: "" }, "From the goal (balanced if it names none)"),
    PRESETS.map(([value, text]) => h("option", { value }, text)),
  );
  const goal = h("textarea", {
    name: "goal",
    rows: 3,
    maxlength: 2000,
    placeholder: "e.g. keep 95% of the accuracy, at most half the size, quantization and pruning allowed",
  });
  const techniques = TECHNIQUES.map(([value, text, on]) => {
    const box = h("input", { type: "checkbox", name: "technique", value, checked: on });
    return { value, box, el: h("label", { class: "check" }, box, text) };
  });
  const floor = numberInput("target_accuracy_threshold", { min: 1, max: 100, step: "any", placeholder: "preset's" });
  const size = numberInput("max_size_reduction_percent", { min: 1, max: 99, step: "any", placeholder: "preset's" });
  const latency = numberInput("target_latency_ms", { min: 0, step: "any", placeholder: "none" });
  const trials = numberInput("max_trials", { min: 1, max: 200, step: 1, placeholder: "server default" });
  const budget = numberInput("time_budget_s", { min: 1, max: 86400, step: 1, placeholder: "server default" });
  const iterations = numberInput("benchmark_iterations", { min: 1, max: 10000, step: 1, placeholder: "30" });
  const submit = h("button", { type: "submit" }, "Start optimization");
  const error = messageBox("error");

  const form = h(
    "form",
    { class: "card", "aria-labelledby": "opt-title" },
    h("h2", { id: "opt-title" }, "Optimize this model"),
    field("Goal", goal, "Plain words; fields below and the preset, when set, take precedence over what the goal says."),
    field("Preset", preset),
    h(
      "details",
      {},
      h("summary", {}, "More: techniques, floors, budget"),
      h("fieldset", {}, h("legend", {}, "Techniques allowed"), techniques.map((t) => t.el)),
      h(
        "div",
        { class: "grid3" },
        field("Accuracy floor (%)", floor),
        field("Size reduction target (%)", size),
        field("Latency target (ms)", latency),
        field("Max trials", trials),
        field("Time budget (s)", budget),
        field("Benchmark iterations", iterations),
      ),
    ),
    error.el,
    submit,
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.hide();
    // Only what the user set: the server's preset and goal interpreter fill the rest, and a field
    // sent explicitly would override what the goal says.
    const body = { model_id: model.id };
    if (preset.value) body.criteria_name = preset.value;
    if (goal.value.trim()) body.goal = goal.value.trim();
    const chosen = techniques.filter((t) => t.box.checked).map((t) => t.value);
    const defaults = TECHNIQUES.filter(([, , on]) => on).map(([v]) => v);
    if (chosen.join() !== defaults.join()) body.optimization_techniques = chosen;
    const numbers = [
      [floor, "target_accuracy_threshold", (v) => v / 100],
      [size, "max_size_reduction_percent", (v) => v],
      [latency, "target_latency_ms", (v) => v],
      [trials, "max_trials", (v) => Math.round(v)],
      [budget, "time_budget_s", (v) => v],
      [iterations, "benchmark_iterations", (v) => Math.round(v)],
    ];
    for (const [input, key, convert] of numbers) {
      if (input.value !== "") body[key] = convert(Number(input.value));
    }
    submit.disabled = true;
    try {
      const started = await api("POST", "/optimize", { json: body });
      navigate(`#/sessions/${encodeURIComponent(started.session_id)}`);
    } catch (err) {
      error.show(err instanceof ApiError ? err.text : String(err));
      submit.disabled = false;
    }
  });
  return form;
}

export function modelView(root, { params: [modelId], navigate }) {
  const error = messageBox("error");
  const info = messageBox("info");
  const content = h("div", { class: "model-page" });
  root.append(h("p", {}, h("a", { href: "#/models" }, "← All models")), error.el, info.el, content);

  (async () => {
    let model;
    try {
      model = await api("GET", `/models/${encodeURIComponent(modelId)}`);
    } catch (err) {
      error.show(err instanceof ApiError ? err.text : String(err));
      return;
    }
    const fetchFile = h("button", { type: "button", class: "secondary" }, "Download file");
    fetchFile.addEventListener("click", async () => {
      try {
        const got = await download(`/models/${encodeURIComponent(model.id)}/download`, model.original_filename);
        info.show(`Downloaded ${got.name} (${fmtBytes(got.size)}).`);
      } catch (err) {
        error.show(err instanceof ApiError ? err.text : String(err));
      }
    });
    const remove = h("button", { type: "button", class: "danger" }, "Delete model");
    remove.addEventListener("click", async () => {
      if (remove.dataset.armed !== "1") {
        remove.dataset.armed = "1";
        remove.textContent = "Confirm delete";
        return;
      }
      try {
        await api("DELETE", `/models/${encodeURIComponent(model.id)}`);
        navigate("#/models");
      } catch (err) {
        error.show(err instanceof ApiError ? err.text : String(err));
      }
    });
    replace(
      content,
      h("h1", { class: "model-title" }, model.name),
      model.description ? h("p", { class: "description" }, model.description) : null,
      h("div", { class: "row" }, fetchFile, remove),
      h("div", { class: "columns" }, h("div", {}, profileSection(model), signatureSection(model)), h("div", {}, optimizeForm(model, navigate))),
    );
  })();
  return null;
}
