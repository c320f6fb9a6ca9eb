// A session, live: the stream as a timeline, the trials, the Pareto plot, the results, the chat
// and the controls (cancel, roll back, download).

import { ApiError, api, download } from "../api.js";
import { field, fmtBytes, fmtCall, fmtClock, fmtMs, fmtPct, h, messageBox, replace, shortId } from "../dom.js";
import { followSession } from "../events.js";
import { paretoPlot } from "../pareto.js";
import { describe } from "../timeline.js";

const TERMINAL = new Set(["completed", "failed", "cancelled"]);

function emptyTrial(number) {
  return { number, calls: [], status: "running", measurement: null, version_id: null, decision: null, error: null, meets: null };
}

/** Every measured version as a plot point, whichever shape the results have. */
export function plotPoints(state) {
  const results = state.results || {};
  const baseline = results.baseline || state.baseline;
  const selected = (results.selected_version && results.selected_version.version) || state.current;
  const front = new Set((results.pareto_set || []).map((p) => p.version));
  const points = new Map();
  if (baseline) points.set("v0", { version: "v0", trial: null, kind: "baseline", ...baseline });
  for (const t of state.trials.values()) {
    if (!t.measurement || !t.version_id) continue;
    points.set(t.version_id, { version: t.version_id, trial: t.number, kind: t.status === "rejected" ? "rejected" : "candidate", status: t.status, ...t.measurement });
  }
  // Results that list rejected candidates apart from the Pareto set (and their Pareto entries).
  const apart = [].concat(results.rejected_candidates || [], results.rejected || []);
  for (const r of apart) {
    const m = r.measurement || r;
    const version = r.version || r.version_id;
    if (!version || m.size_bytes == null) continue;
    points.set(version, { ...points.get(version), version, trial: r.trial ?? r.number ?? null, kind: "rejected", status: "rejected", ...m });
  }
  for (const p of results.pareto_set || []) {
    if (!points.has(p.version) && p.size_bytes != null) {
      points.set(p.version, { version: p.version, trial: p.trial, kind: p.version === "v0" ? "baseline" : "candidate", ...p });
    }
  }
  const all = [...points.values()];
  // Before the results, the front is computed here the way the server does (size, latency, accuracy).
  const onFront = front.size
    ? (p) => front.has(p.version)
    : (p) =>
        !all.some(
          (o) =>
            o !== p &&
            o.size_bytes <= p.size_bytes &&
            o.latency_p50_ms <= p.latency_p50_ms &&
            o.accuracy_retained >= p.accuracy_retained &&
            (o.size_bytes < p.size_bytes || o.latency_p50_ms < p.latency_p50_ms || o.accuracy_retained > p.accuracy_retained),
        );
  for (const p of all) {
    p.front = onFront(p);
    p.selected = p.version === selected;
  }
  return all;
}

function gainsTable(improvements) {
  if (!improvements) return null;
  const size = improvements.size_reduction_percent || {};
  const lat = improvements.latency_speedup || {};
  const mem = improvements.memory_reduction_percent || {};
  const acc = improvements.accuracy_retained || {};
  const rows = [
    ["Size", fmtBytes(size.baseline_bytes), fmtBytes(size.optimized_bytes), `${Number(size.value).toFixed(1)}% smaller`],
    ["Latency p50", fmtMs(lat.baseline_p50_ms), fmtMs(lat.optimized_p50_ms), `${Number(lat.value).toFixed(2)}× faster`],
    ["Peak memory", `${mem.baseline_mb ?? "–"} MB`, `${mem.optimized_mb ?? "–"} MB`, `${Number(mem.value ?? 0).toFixed(1)}% less`],
    ["Accuracy retained", fmtPct(acc.baseline ?? 1), fmtPct(acc.optimized), acc.metric ? `by ${acc.metric}${acc.output && acc.output !== "output" ? ` of ${acc.output}` : ""}` : ""],
  ];
  return h(
    "table",
    { class: "gains" },
    h("caption", {}, "Gains of the selected version over the original"),
    h("thead", {}, h("tr", {}, ["", "Original", "Selected", "Gain"].map((t) => h("th", { scope: "col" }, t)))),
    h("tbody", {}, rows.map(([name, ...cells]) => h("tr", {}, h("th", { scope: "row" }, name), cells.map((c) => h("td", {}, c))))),
  );
}

export function sessionView(root, { params: [sessionId] }) {
  const s = {
    id: sessionId,
    status: null,
    progress: 0,
    step: "",
    modelId: null,
    floor: 0.95,
    baseline: null,
    current: "v0",
    trials: new Map(),
    results: null,
    resultModelId: null,
  };
  const error = messageBox("error");
  const info = messageBox("info");

  // ---- layout
  const title = h("h1", {}, `Session ${shortId(sessionId)}`);
  const statusBadge = h("span", { class: "badge" }, "…");
  const modelLink = h("a", { href: "#/models" }, "");
  const connection = h("span", { class: "connection muted small", "aria-live": "polite" }, "");
  const progress = h("progress", { max: 100, value: 0, "aria-label": "Progress" });
  const progressText = h("span", { class: "progress-text" }, "");
  const cancelBtn = h("button", { type: "button", class: "secondary", disabled: true }, "Cancel");
  const rollbackBtn = h("button", { type: "button", class: "secondary", disabled: true }, "Roll back");
  const downloadBtn = h("button", { type: "button", disabled: true }, "Download");
  const timeline = h("ol", { class: "timeline", "aria-label": "Agent timeline" });
  const plotHolder = h("div", { class: "plot" });
  const plotNote = h("p", { class: "muted small", id: "pareto-note" });
  const resultsBody = h("div", { class: "results" }, h("p", { class: "muted" }, "Results appear when the session ends (partial ones while it runs)."));
  const trialsBody = h("tbody");
  const chatList = h("ol", { class: "chat", "aria-label": "Conversation", "aria-live": "polite" });
  const chatInput = h("input", { name: "message", maxlength: 2000, autocomplete: "off", placeholder: "e.g. don't prune the head" });
  const chatSend = h("button", { type: "submit" }, "Send");
  const chatError = messageBox("error");
  const chatForm = h("form", { class: "chat-form" }, field("Message", chatInput), chatSend);

  root.append(
    h("p", {}, h("a", { href: "#/sessions" }, "← All sessions")),
    h("div", { class: "session-head" }, title, statusBadge, h("span", { class: "muted" }, "model "), modelLink, connection),
    h("div", { class: "row controls" }, h("div", { class: "progress-wrap" }, progress, progressText), cancelBtn, rollbackBtn, downloadBtn),
    error.el,
    info.el,
    h(
      "div",
      { class: "session-grid" },
      h("section", { class: "card timeline-card", "aria-labelledby": "tl-title" }, h("h2", { id: "tl-title" }, "Timeline"), timeline),
      h(
        "div",
        { class: "side" },
        h("section", { class: "card", "aria-labelledby": "plot-title" }, h("h2", { id: "plot-title" }, "Size, latency and accuracy"), plotHolder, plotNote),
        h("section", { class: "card", "aria-labelledby": "res-title" }, h("h2", { id: "res-title" }, "Results"), resultsBody),
        h("section", { class: "card", "aria-labelledby": "chat-title" }, h("h2", { id: "chat-title" }, "Chat with the agent"), chatList, chatForm, chatError.el),
      ),
    ),
    h(
      "section",
      { class: "card", "aria-labelledby": "trials-title" },
      h("h2", { id: "trials-title" }, "Trials"),
      h(
        "table",
        { class: "trials" },
        h("thead", {}, h("tr", {}, ["#", "Recipe", "Version", "Size", "Latency p50", "Accuracy retained", "Decision", ""].map((t) => h("th", { scope: "col" }, t)))),
        trialsBody,
      ),
    ),
  );

  // ---- rendering
  let pending = false;
  function schedule() {
    if (pending) return;
    pending = true;
    requestAnimationFrame(() => {
      pending = false;
      render();
    });
  }

  function render() {
    statusBadge.textContent = s.status || "…";
    statusBadge.className = `badge status-${s.status || "unknown"}`;
    progress.value = s.progress;
    progressText.textContent = `${Math.round(s.progress)}%${s.step ? ` · ${s.step}` : ""}`;
    const terminal = TERMINAL.has(s.status);
    cancelBtn.disabled = !s.status || terminal;
    rollbackBtn.disabled = !s.status || s.status === "queued";
    downloadBtn.disabled = !downloadPath();
    chatInput.disabled = chatSend.disabled = terminal;
    chatInput.placeholder = terminal ? "The session has ended: start a new one to give more instructions" : "e.g. don't prune the head";

    const points = plotPoints(s);
    replace(plotHolder, paretoPlot(points, { floor: s.floor }));
    const sel = points.find((p) => p.selected);
    plotNote.textContent = `${points.length} version${points.length === 1 ? "" : "s"} measured; ${points.filter((p) => p.kind === "rejected").length} rejected${sel ? `; selected ${sel.version}` : ""}.`;
    renderTrials();
    renderResults();
  }

  function renderTrials() {
    const trials = [...s.trials.values()].sort((a, b) => a.number - b.number);
    replace(
      trialsBody,
      trials.length
        ? trials.map((t) => {
            const m = t.measurement;
            const select =
              m && t.meets && t.version_id && t.version_id !== s.current && s.status !== "queued"
                ? h("button", { type: "button", class: "secondary small", onclick: () => rollback({ trial: t.number }) }, `Select trial ${t.number}`)
                : null;
            return h(
              "tr",
              { class: `trial trial-${t.status}` },
              h("td", {}, String(t.number)),
              h("td", {}, t.calls.map((c) => h("div", { class: "call" }, fmtCall(c)))),
              h("td", {}, t.version_id || "–", t.version_id && t.version_id === s.current ? h("span", { class: "badge status-completed small" }, "current") : null),
              h("td", {}, m ? fmtBytes(m.size_bytes) : "–"),
              h("td", {}, m ? fmtMs(m.latency_p50_ms) : "–"),
              h("td", {}, m ? fmtPct(m.accuracy_retained) : "–"),
              h("td", {}, h("span", { class: `badge decision-${t.status}` }, t.status), t.decision || t.error ? h("div", { class: "small muted" }, t.decision || t.error) : null),
              h("td", {}, select),
            );
          })
        : h("tr", {}, h("td", { colspan: 8, class: "muted" }, "No trials yet.")),
    );
  }

  function renderResults() {
    const r = s.results;
    if (!r) return;
    const summary = r.optimization_summary || {};
    const selected = r.selected_version || {};
    replace(
      resultsBody,
      r.partial ? h("p", { class: "msg msg-info" }, `Partial results: the session is ${r.status}.`) : null,
      summary.text ? h("p", { class: "summary" }, summary.text) : null,
      gainsTable(r.performance_improvements),
      h("h3", {}, "Recipe"),
      (r.recipe || []).length
        ? h("ol", { class: "recipe" }, r.recipe.map((step) => h("li", {}, h("code", {}, fmtCall(step)))))
        : h("p", { class: "muted" }, "None: the original model is kept."),
      h(
        "p",
        { class: "small muted" },
        `Selected ${selected.version || "–"}${selected.artifact_format ? `, saved as ${selected.artifact_format}` : ""}` +
          `${selected.artifact_converted ? ` (converted from ${selected.source_format})` : ""}.` +
          `${selected.artifact_note ? ` ${selected.artifact_note}` : ""}${selected.note ? ` ${selected.note}` : ""}`,
      ),
      summary.criteria_met === false ? h("p", { class: "msg msg-error" }, "The selected version does not meet the criteria.") : null,
    );
  }

  function downloadPath() {
    const sel = s.results && s.results.selected_version;
    if (sel && sel.download_url) return sel.download_url;
    if (sel && sel.model_id) return `/models/${encodeURIComponent(sel.model_id)}/download`;
    return s.resultModelId && TERMINAL.has(s.status) ? `/models/${encodeURIComponent(s.resultModelId)}/download` : null;
  }

  function addToTimeline(type, data, seq) {
    const entry = describe(type, data);
    if (!entry) return;
    const stick = timeline.scrollHeight - timeline.scrollTop - timeline.clientHeight < 40;
    timeline.append(
      h(
        "li",
        { class: `ev ev-${entry.kind}`, dataset: { type, seq: String(seq || "") } },
        h("div", { class: "ev-head" }, h("time", { datetime: data.created_at || "" }, fmtClock(data.created_at)), h("strong", {}, entry.title), entry.badge ? h("span", { class: "badge small" }, entry.badge) : null),
        entry.body ? h("p", { class: "ev-body" }, entry.body) : null,
      ),
    );
    if (stick) timeline.scrollTop = timeline.scrollHeight;
  }

  function addChat(role, content) {
    chatList.append(h("li", { class: `chat-${role}` }, h("strong", {}, role === "user" ? "You" : "Agent"), " ", h("span", { class: "chat-text" }, content)));
    chatList.scrollTop = chatList.scrollHeight;
  }

  function trial(n) {
    if (!s.trials.has(n)) s.trials.set(n, emptyTrial(n));
    return s.trials.get(n);
  }

  function onEvent(type, d, seq) {
    addToTimeline(type, d, seq);
    switch (type) {
      case "status":
        if (d.status) s.status = d.status;
        if (d.model_id) setModel(d.model_id);
        if (TERMINAL.has(d.status)) refreshStatus();
        break;
      case "progress":
        if (typeof d.percentage === "number") s.progress = d.percentage;
        if (d.step) s.step = d.step;
        break;
      case "analysis":
        if (d.criteria && d.criteria.target_accuracy_threshold != null) s.floor = d.criteria.target_accuracy_threshold;
        if (d.kind === "profile" && d.baseline) s.baseline = d.baseline;
        break;
      case "agent.action":
        if (d.action === "tool_call") {
          const t = trial(d.trial);
          t.calls.push({ tool: d.tool, arguments: d.arguments });
          t.base_version = d.base_version;
        }
        break;
      case "tool.result": {
        const t = trial(d.trial);
        if (d.ok) t.version_id = d.version;
        else t.error = d.error;
        break;
      }
      case "evaluation": {
        const t = trial(d.trial);
        t.version_id = d.version;
        t.measurement = d.measurement;
        t.meets = d.meets_criteria;
        break;
      }
      case "decision": {
        const t = trial(d.trial);
        t.status = d.status;
        t.decision = d.reason;
        if (d.current_version) s.current = d.current_version;
        break;
      }
      case "rollback":
        if (!d.pending && d.current_version) s.current = d.current_version;
        break;
      case "message":
        addChat(d.role, d.content);
        break;
      case "result":
        fetchResults();
        break;
      case "end":
        if (d.status) s.status = d.status;
        s.progress = d.status === "completed" ? 100 : s.progress;
        fetchResults();
        refreshStatus();
        break;
      default:
        break;
    }
    schedule();
  }

  function setModel(modelId) {
    if (s.modelId === modelId) return;
    s.modelId = modelId;
    modelLink.href = `#/models/${encodeURIComponent(modelId)}`;
    modelLink.textContent = shortId(modelId);
    api("GET", `/models/${encodeURIComponent(modelId)}`)
      .then((m) => {
        modelLink.textContent = m.name;
      })
      .catch(() => {});
  }

  async function refreshStatus() {
    try {
      const st = await api("GET", `/sessions/${encodeURIComponent(sessionId)}/status`);
      s.status = st.status;
      s.progress = st.progress_percentage;
      s.step = st.current_step || s.step;
      s.resultModelId = st.result_model_id;
      if (st.selected_version) s.current = st.selected_version;
      setModel(st.model_id);
      if (st.error) error.show(`The session failed: ${st.error}`);
      schedule();
      return st;
    } catch (err) {
      error.show(err instanceof ApiError ? err.text : String(err));
      return null;
    }
  }

  async function fetchResults() {
    try {
      const r = await api("GET", `/sessions/${encodeURIComponent(sessionId)}/results`);
      s.results = r;
      const crit = r.optimization_summary && r.optimization_summary.criteria;
      if (crit && crit.target_accuracy_threshold != null) s.floor = crit.target_accuracy_threshold;
      if (r.selected_version && r.selected_version.version) s.current = r.selected_version.version;
      for (const t of r.trials || []) {
        s.trials.set(t.number, {
          ...emptyTrial(t.number),
          ...t,
          calls: t.calls || [],
          decision: t.decision || null,
          meets: t.meets ?? null,
        });
      }
      schedule();
    } catch (err) {
      if (!(err instanceof ApiError && err.status === 409)) error.show(err instanceof ApiError ? err.text : String(err));
    }
  }

  async function rollback(body) {
    error.hide();
    info.hide();
    try {
      const r = await api("POST", `/sessions/${encodeURIComponent(sessionId)}/rollback`, body ? { json: body } : {});
      info.show(r.applied ? `Rolled back to ${r.target_version}.` : `Rollback to ${r.target_version} requested: applied at the agent's next step.`);
      if (r.applied) {
        s.current = r.target_version;
        await fetchResults();
        stream.resume(); // a finished session's stream gets the rollback's events
      }
    } catch (err) {
      error.show(err instanceof ApiError ? err.text : String(err));
    }
  }

  cancelBtn.addEventListener("click", async () => {
    error.hide();
    try {
      const r = await api("POST", `/sessions/${encodeURIComponent(sessionId)}/cancel`);
      info.show(r.message);
    } catch (err) {
      error.show(err instanceof ApiError ? err.text : String(err));
    }
  });
  rollbackBtn.addEventListener("click", () => rollback(null));
  downloadBtn.addEventListener("click", async () => {
    const path = downloadPath();
    if (!path) return;
    downloadBtn.disabled = true;
    try {
      const got = await download(path, `optimized-${shortId(sessionId)}`);
      info.show(`Downloaded ${got.name} (${fmtBytes(got.size)}).`);
    } catch (err) {
      error.show(err instanceof ApiError ? err.text : String(err));
    } finally {
      downloadBtn.disabled = !downloadPath();
    }
  });
  chatForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    chatError.hide();
    const content = chatInput.value.trim();
    if (!content) return;
    chatSend.disabled = true;
    try {
      await api("POST", `/sessions/${encodeURIComponent(sessionId)}/messages`, { json: { content } });
      chatInput.value = ""; // the message shows when the stream brings it back
    } catch (err) {
      chatError.show(err instanceof ApiError ? err.text : String(err));
    } finally {
      chatSend.disabled = TERMINAL.has(s.status);
    }
  });

  const states = { connecting: "connecting…", live: "● live", reconnecting: "reconnecting…", ended: "stream ended", failed: "stream unavailable" };
  const stream = followSession(sessionId, {
    onEvent,
    onState(state, err) {
      connection.textContent = states[state] || state;
      connection.dataset.state = state;
      if (state === "failed" && err) error.show(err instanceof ApiError ? err.text : String(err));
    },
  });
  refreshStatus();
  render();
  return () => stream.stop();
}
