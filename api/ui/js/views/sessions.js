import { ApiError, api } from "../api.js";
import { field, fmtTime, h, messageBox, replace, shortId } from "../dom.js";

const PAGE = 50;
const STATUSES = ["", "queued", "running", "completed", "failed", "cancelled"];

export function sessionsView(root) {
  let offset = 0;
  const error = messageBox("error");
  const filter = h("select", { name: "status" }, STATUSES.map((s) => h("option", { value: s }, s || "any")));
  const body = h("tbody");
  const pager = h("div", { class: "row pager" });
  const names = new Map();

  async function modelNames() {
    try {
      const page = await api("GET", "/models?limit=100");
      for (const m of page.items) names.set(m.id, m.name);
    } catch {
      /* names are a convenience: ids still show */
    }
  }

  async function load() {
    error.hide();
    try {
      const q = `limit=${PAGE}&offset=${offset}${filter.value ? `&status=${filter.value}` : ""}`;
      const page = await api("GET", `/sessions?${q}`);
      replace(
        body,
        page.items.length
          ? page.items.map((s) =>
              h(
                "tr",
                {},
                h("td", {}, h("a", { href: `#/sessions/${encodeURIComponent(s.session_id)}` }, shortId(s.session_id))),
                h("td", {}, names.get(s.model_id) || shortId(s.model_id)),
                h("td", {}, s.criteria_name || "–"),
                h("td", {}, h("span", { class: `badge status-${s.status}` }, s.status)),
                h("td", {}, `${Math.round(s.progress_percentage)}%`),
                h("td", {}, String(s.trials_done)),
                h("td", {}, fmtTime(s.created_at)),
                h("td", {}, fmtTime(s.finished_at)),
              ),
            )
          : h("tr", {}, h("td", { colspan: 8, class: "muted" }, "No sessions: start one from a model's page.")),
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
      replace(pager, h("span", { class: "muted" }, `${page.total} session${page.total === 1 ? "" : "s"}`), page.total > PAGE ? [prev, next] : null);
    } catch (err) {
      error.show(err instanceof ApiError ? err.text : String(err));
    }
  }
  filter.addEventListener("change", () => {
    offset = 0;
    load();
  });

  root.append(
    h("h1", {}, "Sessions"),
    h(
      "section",
      { class: "card" },
      h("div", { class: "row" }, field("Status", filter)),
      error.el,
      h(
        "table",
        {},
        h("thead", {}, h("tr", {}, ["Session", "Model", "Preset", "Status", "Progress", "Trials", "Started", "Finished"].map((t) => h("th", { scope: "col" }, t)))),
        body,
      ),
      pager,
    ),
  );
  modelNames().then(load);
  return null;
}
