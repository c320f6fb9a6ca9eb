// One session event -> one line of the lab notebook: what the agent thought, called, measured and
// decided. Returns null for events that only move the progress bar.

import { fmtBytes, fmtCall, fmtMs, fmtNumber, fmtPct } from "./dom.js";

function criteriaText(c) {
  if (!c) return "";
  const parts = [`preset ${c.criteria_name}`];
  if (c.target_accuracy_threshold != null) parts.push(`accuracy floor ${fmtPct(c.target_accuracy_threshold, 1)}`);
  if (c.max_size_reduction_percent != null) parts.push(`size target −${c.max_size_reduction_percent}%`);
  if (c.target_latency_ms != null) parts.push(`latency target ${c.target_latency_ms} ms`);
  if (c.optimization_techniques) parts.push(`techniques: ${c.optimization_techniques.join(", ")}`);
  if (c.max_trials != null) parts.push(`at most ${c.max_trials} trials`);
  return parts.join(" · ");
}

function measurementText(m, sizeReduction) {
  if (!m) return "";
  const size = `${fmtBytes(m.size_bytes)}${sizeReduction != null ? ` (${sizeReduction > 0 ? "−" : "+"}${Math.abs(sizeReduction).toFixed(1)}%)` : ""}`;
  const metric = m.accuracy_metric ? ` by ${m.accuracy_metric}` : "";
  return `size ${size}, latency p50 ${fmtMs(m.latency_p50_ms)}, accuracy retained ${fmtPct(m.accuracy_retained)}${metric}`;
}

/** {kind, title, body, badge} for the timeline, or null. */
export function describe(type, d) {
  const trial = d.trial ? `Trial ${d.trial}` : "";
  switch (type) {
    case "status": {
      if (d.cancel_requested) return { kind: "status", title: "Cancellation requested", body: "the agent stops at its next safe point" };
      const extra = d.resumed ? ` (resumed, attempt ${d.attempt})` : "";
      return { kind: "status", title: `Session ${d.status}${extra}`, body: d.planner ? `planner: ${d.planner}` : "" };
    }
    case "analysis":
      if (d.kind === "goal") {
        const applied = Object.entries(d.applied || {}).map(([k, v]) => `${k}=${JSON.stringify(v)}`);
        return {
          kind: "thought",
          title: "Goal understood",
          body: [applied.length ? `from the goal: ${applied.join(", ")}` : "nothing to change from the goal", d.note, criteriaText(d.criteria)]
            .filter(Boolean)
            .join(". "),
        };
      }
      if (d.kind === "profile") {
        const p = d.profile || {};
        return {
          kind: "measure",
          title: "Profiled the original model",
          body: [
            `${p.format || "model"}, ${fmtNumber(p.total_parameters)} parameters on ${d.device || "?"}`,
            `baseline: ${measurementText(d.baseline)}`,
          ].join("; "),
        };
      }
      return { kind: "thought", title: "Analysis", body: JSON.stringify(d) };
    case "agent.thought":
      return { kind: "thought", title: `${trial ? `${trial}: ` : ""}Thought`, body: d.text, badge: d.source };
    case "agent.action":
      if (d.action === "finish") return { kind: "action", title: `${trial}: Finish`, body: "the planner ends the search", badge: d.source };
      return { kind: "action", title: `${trial}: Tool call`, body: `${fmtCall(d)} on ${d.base_version}`, badge: d.source };
    case "tool.result":
      if (d.ok) return { kind: "action", title: `${trial}: Tool result`, body: `${(d.tools || []).join(" + ")} built ${d.version} (${d.artifact_format})` };
      return { kind: "failed", title: `${trial}: Tool failed`, body: `${d.stage}: ${d.error}` };
    case "evaluation":
      return {
        kind: "measure",
        title: `${trial}: Measured ${d.version}`,
        body: `${measurementText(d.measurement, d.size_reduction_percent)}; ${d.meets_criteria ? "meets" : "misses"} the criteria; score ${Number(d.objective).toFixed(3)} vs ${Number(d.current_objective).toFixed(3)}`,
      };
    case "decision":
      return {
        kind: d.status === "accepted" ? "accepted" : d.status === "rejected" ? "rejected" : "failed",
        title: `${trial}: ${d.status === "accepted" ? "Accepted" : d.status === "rejected" ? "Rejected" : "Failed"}${d.version ? ` ${d.version}` : ""}`,
        body: d.explanation || d.reason,
        badge: d.status,
      };
    case "rollback":
      if (d.automatic) return { kind: "rollback", title: `${trial}: Rolled back`, body: `${d.rejected_version} discarded; the current version stays ${d.current_version}` };
      if (d.pending) return { kind: "rollback", title: "Rollback requested", body: `to ${d.target_version}, at the agent's next step` };
      return { kind: "rollback", title: "Rolled back", body: `from ${d.from_version} to ${d.current_version}` };
    case "error":
      return { kind: "failed", title: `${d.fatal ? "Session error" : "Error"}${d.stage ? ` (${d.stage})` : ""}`, body: d.message };
    case "message":
      return { kind: d.role === "user" ? "chat-user" : "chat-agent", title: d.role === "user" ? "You said" : "Agent replied", body: d.content };
    case "result": {
      const s = d.optimization_summary || {};
      return { kind: "result", title: "Results", body: s.text || `selected ${s.selected_version}` };
    }
    case "end":
      return { kind: "status", title: `Ended: ${d.status}`, body: "" };
    default:
      return null;
  }
}
