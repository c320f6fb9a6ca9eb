// The Pareto plot: every measured version by size (x) and latency (y), coloured by accuracy
// retained. The original is a square, candidates on the Pareto front are filled circles, rejected
// candidates are crosses in a layer of their own, the selected version is ringed. Drawn as SVG
// so that it needs nothing outside this repository.

import { fmtBytes, fmtMs, fmtPct, svg } from "./dom.js";

const W = 640;
const H = 380;
const M = { left: 84, right: 150, top: 20, bottom: 52 };

/** Accuracy retained -> colour: red at `low`, amber in between, green at 100%. */
export function accuracyColour(ratio, low) {
  const t = Math.max(0, Math.min(1, (ratio - low) / Math.max(1e-9, 1 - low)));
  const hue = 5 + 125 * t;
  return `hsl(${hue.toFixed(0)}, 70%, ${(44 - 6 * t).toFixed(0)}%)`;
}

function niceStep(span, count) {
  const raw = span / Math.max(1, count);
  const mag = 10 ** Math.floor(Math.log10(raw));
  const norm = raw / mag;
  const step = norm < 1.5 ? 1 : norm < 3 ? 2 : norm < 7 ? 5 : 10;
  return step * mag;
}

function ticks(max, count = 5) {
  if (!(max > 0)) return [0];
  const step = niceStep(max, count);
  const out = [];
  for (let v = 0; v <= max * 1.0001; v += step) out.push(v);
  return out;
}

function label(point) {
  const status = point.kind === "baseline" ? "original" : point.status || point.kind;
  return (
    `${point.version}${point.trial ? ` (trial ${point.trial})` : ""}: ${fmtBytes(point.size_bytes)}, ` +
    `p50 ${fmtMs(point.latency_p50_ms)}, accuracy retained ${fmtPct(point.accuracy_retained)}, ${status}` +
    (point.selected ? ", selected" : "")
  );
}

function marker(point, x, y, colour, inLegend = false) {
  const common = inLegend
    ? { class: `legend-mark legend-${point.kind}` }
    : { class: `point point-${point.kind}`, dataset: { version: point.version, kind: point.kind } };
  let shape;
  if (point.kind === "baseline") {
    shape = svg("rect", { ...common, x: x - 6, y: y - 6, width: 12, height: 12, fill: colour, stroke: "#1b1b1b" });
  } else if (point.kind === "rejected") {
    const d = `M${x - 5},${y - 5}L${x + 5},${y + 5}M${x - 5},${y + 5}L${x + 5},${y - 5}`;
    shape = svg("path", { ...common, d, stroke: colour, "stroke-width": 2.5, fill: "none" });
  } else {
    shape = svg("circle", { ...common, cx: x, cy: y, r: 6.5, fill: colour, stroke: "#1b1b1b" });
  }
  if (!inLegend) shape.append(svg("title", { text: label(point) }));
  return shape;
}

/**
 * points: [{version, trial, size_bytes, latency_p50_ms, accuracy_retained, kind: "baseline" |
 * "candidate" | "rejected", front: bool, selected: bool}]; floor: the accuracy floor (0..1).
 */
export function paretoPlot(points, { floor = 0.95 } = {}) {
  const measured = points.filter((p) => p.size_bytes != null && p.latency_p50_ms != null);
  const root = svg("svg", {
    viewBox: `0 0 ${W} ${H}`,
    role: "img",
    "aria-label": "Pareto plot",
    class: "pareto",
    preserveAspectRatio: "xMidYMid meet",
  });
  const plotW = W - M.left - M.right;
  const plotH = H - M.top - M.bottom;
  const maxX = Math.max(1, ...measured.map((p) => p.size_bytes)) * 1.08;
  const maxY = Math.max(1e-6, ...measured.map((p) => p.latency_p50_ms)) * 1.12;
  const sx = (v) => M.left + (v / maxX) * plotW;
  const sy = (v) => M.top + plotH - (v / maxY) * plotH;
  const low = Math.min(floor - 0.1, ...measured.map((p) => p.accuracy_retained ?? 1));

  // axes and grid
  const grid = svg("g", { class: "grid" });
  for (const t of ticks(maxX)) {
    grid.append(svg("line", { x1: sx(t), x2: sx(t), y1: M.top, y2: M.top + plotH }));
    grid.append(svg("text", { x: sx(t), y: M.top + plotH + 18, "text-anchor": "middle", text: fmtBytes(t) }));
  }
  for (const t of ticks(maxY)) {
    grid.append(svg("line", { x1: M.left, x2: M.left + plotW, y1: sy(t), y2: sy(t) }));
    grid.append(svg("text", { x: M.left - 8, y: sy(t) + 4, "text-anchor": "end", text: fmtMs(t) }));
  }
  root.append(grid);
  root.append(
    svg("rect", { class: "frame", x: M.left, y: M.top, width: plotW, height: plotH, fill: "none" }),
    svg("text", { class: "axis-title", x: M.left + plotW / 2, y: H - 10, "text-anchor": "middle", text: "Model size" }),
    svg("text", {
      class: "axis-title",
      x: 16,
      y: M.top + plotH / 2,
      "text-anchor": "middle",
      transform: `rotate(-90 16 ${M.top + plotH / 2})`,
      text: "Latency p50",
    }),
  );

  // the front: a step line through the non-dominated versions, smallest first
  const front = measured.filter((p) => p.front && p.kind !== "rejected").sort((a, b) => a.size_bytes - b.size_bytes);
  if (front.length > 1) {
    root.append(
      svg("polyline", {
        class: "front-line",
        points: front.map((p) => `${sx(p.size_bytes)},${sy(p.latency_p50_ms)}`).join(" "),
        fill: "none",
      }),
    );
  }

  // rejected candidates in their own layer, under the others
  const rejected = svg("g", { class: "layer-rejected" });
  const kept = svg("g", { class: "layer-candidates" });
  for (const p of measured) {
    const colour = accuracyColour(p.accuracy_retained ?? 1, low);
    const x = sx(p.size_bytes);
    const y = sy(p.latency_p50_ms);
    (p.kind === "rejected" ? rejected : kept).append(marker(p, x, y, colour));
    if (p.selected) {
      kept.append(svg("circle", { class: "selected-ring", cx: x, cy: y, r: 12, fill: "none" }));
      kept.append(svg("text", { class: "selected-label", x: x + 14, y: y - 10, text: `${p.version} selected` }));
    }
  }
  root.append(rejected, kept);

  // legend: markers and the colour scale
  const lx = W - M.right + 18;
  const legend = svg("g", { class: "legend" });
  const items = [
    ["baseline", "original"],
    ["candidate", "candidate"],
    ["rejected", "rejected"],
  ];
  items.forEach(([kind, text], i) => {
    const y = M.top + 10 + i * 22;
    legend.append(marker({ kind }, lx + 6, y, "#8a8a8a", true));
    legend.append(svg("text", { x: lx + 20, y: y + 4, text }));
  });
  const ringY = M.top + 10 + items.length * 22;
  legend.append(svg("circle", { class: "selected-ring", cx: lx + 6, cy: ringY, r: 8, fill: "none" }));
  legend.append(svg("text", { x: lx + 20, y: ringY + 4, text: "selected" }));

  const gradId = `acc-${Math.random().toString(36).slice(2, 8)}`;
  const grad = svg("linearGradient", { id: gradId, x1: 0, y1: 1, x2: 0, y2: 0 });
  for (let i = 0; i <= 4; i += 1) {
    const t = i / 4;
    grad.append(svg("stop", { offset: `${100 * t}%`, "stop-color": accuracyColour(low + t * (1 - low), low) }));
  }
  root.append(svg("defs", {}, grad));
  const barTop = ringY + 40;
  const barH = 120;
  legend.append(svg("text", { x: lx, y: barTop - 10, text: "accuracy retained" }));
  legend.append(svg("rect", { x: lx, y: barTop, width: 14, height: barH, fill: `url(#${gradId})`, stroke: "#555" }));
  const floorY = barTop + barH * (1 - (floor - low) / (1 - low));
  // End labels give way to the floor's when they would overlap.
  if (floorY - barTop > 14) legend.append(svg("text", { x: lx + 20, y: barTop + 8, text: "100%" }));
  if (barTop + barH - floorY > 14) legend.append(svg("text", { x: lx + 20, y: barTop + barH, text: fmtPct(low, 0) }));
  legend.append(svg("line", { class: "floor-mark", x1: lx - 4, x2: lx + 18, y1: floorY, y2: floorY }));
  legend.append(svg("text", { x: lx + 20, y: floorY + 4, text: `floor ${fmtPct(floor, 0)}` }));
  root.append(legend);

  if (!measured.length) {
    root.append(svg("text", { x: M.left + plotW / 2, y: M.top + plotH / 2, "text-anchor": "middle", text: "No measurements yet" }));
  }
  return root;
}
