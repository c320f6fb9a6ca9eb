import { ApiError, api, upload } from "../api.js";
import { field, fmtBytes, fmtNumber, fmtTime, h, messageBox, replace } from "../dom.js";

const PAGE = 50;
const FORMATS = ".onnx, .pt / .pth (TorchScript or a state dict), .pt2, .safetensors, .zip / .tar / .tar.gz (a Hugging Face directory), .pb, .h5";

function uploadForm(onUploaded) {
  const file = h("input", { type: "file", name: "file", required: true });
  const name = h("input", { name: "name", maxlength: 200 });
  const description = h("textarea", { name: "description", rows: 2, maxlength: 2000 });
  const architecture = h("input", { name: "architecture", placeholder: '{"name": "mlp_policy", "config": {}}' });
  const signature = h("input", { name: "input_signature", placeholder: '[{"name": "obs", "shape": [null, 64], "dtype": "float32"}]' });
  const progress = h("progress", { max: 100, value: 0, "aria-label": "Upload progress", hidden: true });
  const progressText = h("span", { class: "progress-text", "aria-live": "polite" });
  const submit = h("button", { type: "submit" }, "Upload");
  const error = messageBox("error");
  const done = messageBox("info");

  const form = h(
    "form",
    { class: "card", "aria-labelledby": "upload-title" },
    h("h2", { id: "upload-title" }, "Upload a model"),
    h(
      "div",
      { class: "grid2" },
      field("Model file", file, FORMATS),
      field("Name", name, "Defaults to the file name."),
    ),
    field("Description", description),
    h(
      "details",
      {},
      h("summary", {}, "More: architecture for a weights file, input signature"),
      field("Architecture (JSON)", architecture, "Needed for a state dict or .safetensors weights: a registered architecture and its config."),
      field("Input signature (JSON)", signature, "Completes or overrides the signature the file gives; null axes are dynamic."),
    ),
    h("div", { class: "row" }, submit, progress, progressText),
    error.el,
    done.el,
  );

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.hide();
    done.hide();
    if (!file.files.length) {
      error.show("Choose a model file first.");
      return;
    }
    const data = new FormData();
    data.append("file", file.files[0]);
    for (const [key, input] of [["name", name], ["description", description], ["architecture", architecture], ["input_signature", signature]]) {
      if (input.value.trim()) data.append(key, input.value.trim());
    }
    submit.disabled = true;
    progress.hidden = false;
    progress.value = 0;
    progressText.textContent = "0%";
    try {
      const model = await upload("/models/upload", data, (loaded, total) => {
        progress.value = Math.round((100 * loaded) / total);
        progressText.textContent = `${progress.value}% of ${fmtBytes(total)}`;
      });
      progress.value = 100;
      progressText.textContent = "checked and stored";
      done.show(`Uploaded “${model.name}” (${model.format}, ${fmtBytes(model.size_bytes)}).`);
      form.reset();
      onUploaded(model);
    } catch (err) {
      progress.hidden = true;
      progressText.textContent = "";
      error.show(err instanceof ApiError ? err.text : String(err));
    } finally {
      submit.disabled = false;
    }
  });
  return form;
}

function deleteCell(model, onDeleted, error) {
  const cell = h("td", { class: "actions" });
  const ask = () => {
    const confirm = h("button", { type: "button", class: "danger" }, "Confirm delete");
    const keep = h("button", { type: "button", class: "secondary" }, "Keep");
    keep.addEventListener("click", idle);
    confirm.addEventListener("click", async () => {
      confirm.disabled = true;
      try {
        await api("DELETE", `/models/${encodeURIComponent(model.id)}`);
        onDeleted(model);
      } catch (err) {
        error.show(err instanceof ApiError ? err.text : String(err));
        idle();
      }
    });
    replace(cell, confirm, keep);
    confirm.focus();
  };
  function idle() {
    const del = h("button", { type: "button", class: "secondary" }, "Delete");
    del.addEventListener("click", ask);
    replace(cell, h("a", { href: `#/models/${encodeURIComponent(model.id)}`, class: "button-link" }, "Inspect"), del);
  }
  idle();
  return cell;
}

export function modelsView(root) {
  let offset = 0;
  const error = messageBox("error");
  const info = messageBox("info");
  const body = h("tbody");
  const pager = h("div", { class: "row pager" });
  const table = h(
    "table",
    { class: "models", "aria-labelledby": "models-title" },
    h("thead", {}, h("tr", {}, ["Name", "Format", "Size", "Parameters", "Uploaded", ""].map((t) => h("th", { scope: "col" }, t)))),
    body,
  );

  async function load() {
    error.hide();
    try {
      const page = await api("GET", `/models?limit=${PAGE}&offset=${offset}`);
      replace(
        body,
        page.items.length
          ? page.items.map((m) =>
              h(
                "tr",
                { dataset: { modelId: m.id } },
                h("td", {}, h("a", { href: `#/models/${encodeURIComponent(m.id)}`, class: "model-name" }, m.name), m.description ? h("div", { class: "muted small" }, m.description) : null),
                h("td", {}, m.format),
                h("td", {}, fmtBytes(m.size_bytes)),
                h("td", {}, fmtNumber(m.format_details && m.format_details.parameter_count)),
                h("td", {}, fmtTime(m.created_at)),
                deleteCell(
                  m,
                  (gone) => {
                    info.show(`Deleted “${gone.name}”.`);
                    load();
                  },
                  error,
                ),
              ),
            )
          : h("tr", {}, h("td", { colspan: 6, class: "muted" }, "No models yet: upload one above.")),
      );
      const prev = h("button", { type: "button", class: "secondary", disabled: offset === 0 }, "Previous page");
      const next = h("button", { type: "button", class: "secondary", disabled: offset + PAGE >= page.total }, "Next page");
      prev.addEventListener("click", () => {
        offset = Math.max(0, offset - PAGE);
        load();
      });
      next.addEventListener("click", () => {
        offset += PAGE;
        load();
      });
      replace(pager, h("span", { class: "muted" }, `${page.total} model${page.total === 1 ? "" : "s"}`), page.total > PAGE ? [prev, next] : null);
    } catch (err) {
      error.show(err instanceof ApiError ? err.text : String(err));
    }
  }

  root.append(
    h("h1", {}, "Models"),
    uploadForm(() => {
      offset = 0;
      load();
    }),
    h("section", { class: "card" }, h("h2", { id: "models-title" }, "Your models"), info.el, error.el, table, pager),
  );
  load();
  return null;
}
