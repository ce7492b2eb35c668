// The rollout page: renders the `state` events of /events (one a second).
// No library and no build step: a table, a timeline and SVG sparklines.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const COLOURS = { threaded: "#8a5a00", bridged: "#1f5fa8", async: "#1b7f3b" };

function el(tag, attributes, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes || {})) {
    if (key === "class") node.className = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function clock(ms) {
  return new Date(ms).toLocaleTimeString([], { hour12: false });
}

function phaseCell(phase) {
  return el("td", { class: "phase phase-" + phase }, phase);
}

// "3 async" for three endpoints written both ways running their async form.
function formCounts(forms) {
  const counts = {};
  for (const form of Object.values(forms || {})) counts[form] = (counts[form] || 0) + 1;
  const text = Object.entries(counts).map(([form, n]) => `${n} ${form}`).join(", ");
  return text || "–";
}

function renderInstances(instances) {
  const body = document.querySelector("#instances tbody");
  const rows = instances.map((i) =>
    el("tr", { "data-service": i.service, "data-phase": i.phase, "data-role": i.role || "" },
      el("td", {}, i.service),
      el("td", {}, i.instance_id),
      phaseCell(i.phase),
      el("td", {}, i.role || "–"),
      el("td", { class: i.up ? "" : "down" }, i.up ? "up" : "DOWN"),
      el("td", { class: "n" }, i.in_flight),
      el("td", { class: "n" }, i.handled),
      el("td", { class: "n" }, i.failed),
      el("td", { class: "n" }, i.slow_polls),
      el("td", { class: "n" }, i.offloaded),
      el("td", { class: "note", title: Object.entries(i.forms).map(([e, f]) => `${e}: ${f}`).join("\n") },
        formCounts(i.forms)),
      el("td", { class: "note" }, i.rollout || "")));
  if (rows.length === 0) {
    rows.push(el("tr", {}, el("td", { class: "empty", colspan: "12" }, "no heartbeat heard yet")));
  }
  body.replaceChildren(...rows);
}

function sparkline(values, colour) {
  const width = 200, height = 28;
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("preserveAspectRatio", "none");
  if (values.length > 0) {
    const top = Math.max(...values) || 1;
    const step = values.length > 1 ? width / (values.length - 1) : 0;
    const points = values.map((v, i) =>
      `${(i * step).toFixed(1)},${(height - 2 - (v / top) * (height - 4)).toFixed(1)}`);
    const line = document.createElementNS(SVG, "polyline");
    line.setAttribute("points", points.join(" "));
    line.setAttribute("stroke", colour);
    svg.append(line);
  }
  return svg;
}

function spark(label, values, colour, format) {
  const last = values.length ? format(values[values.length - 1]) : "–";
  return el("div", { class: "spark" }, el("span", {}, label), sparkline(values, colour),
    el("span", { class: "value" }, last));
}

function renderCharts(series) {
  const cards = series.map((s) => {
    const colour = COLOURS[s.phase] || "#444";
    const pick = (key) => s.points.map((p) => p[key]);
    return el("div", { class: "chart", "data-service": s.service, "data-phase": s.phase },
      el("h3", {}, `${s.service} · `, el("span", { class: "phase phase-" + s.phase }, s.phase)),
      spark("calls/s", pick("calls_per_s"), colour, (v) => v.toFixed(1)),
      spark("p50 run time", pick("p50_ms"), colour, (v) => v.toFixed(2) + " ms"),
      spark("p99 run time", pick("p99_ms"), colour, (v) => v.toFixed(2) + " ms"),
      spark("slow polls/call", pick("slow_polls_per_call"), colour, (v) => v.toFixed(3)));
  });
  if (cards.length === 0) cards.push(el("p", { class: "empty" }, "no calls counted yet"));
  document.getElementById("charts").replaceChildren(...cards);
}

function renderTimeline(timeline) {
  const byService = new Map();
  for (const event of timeline) {
    if (!byService.has(event.service)) byService.set(event.service, []);
    byService.get(event.service).push(event);
  }
  const blocks = [...byService.entries()].sort().map(([service, events]) =>
    el("div", { class: "service-timeline", "data-service": service },
      el("h3", {}, service),
      ...events.slice().reverse().map((e) =>
        el("div", { class: "event", "data-kind": e.kind },
          el("time", {}, clock(e.at_ms)),
          el("span", { class: "kind kind-" + e.kind }, e.kind),
          el("span", {}, e.text)))));
  if (blocks.length === 0) blocks.push(el("p", { class: "empty" }, "nothing happened yet"));
  document.getElementById("timeline").replaceChildren(...blocks);
}

function renderTraces(traces, template) {
  const rows = traces.map((t) => {
    let link = "–";
    if (t.trace_id && template) {
      link = el("a", { href: template.replace("{trace_id}", t.trace_id), target: "_blank",
        rel: "noopener" }, t.trace_id.slice(0, 16) + "…");
    } else if (t.trace_id) {
      link = t.trace_id;
    }
    return el("tr", {}, el("td", {}, clock(t.at_ms)), el("td", {}, t.method),
      el("td", {}, t.code), el("td", { class: "n" }, t.millis.toFixed(1)), el("td", {}, link));
  });
  if (rows.length === 0) {
    rows.push(el("tr", {}, el("td", { class: "empty", colspan: "5" }, "no calls yet")));
  }
  document.querySelector("#traces tbody").replaceChildren(...rows);
}

function render(state) {
  renderInstances(state.instances);
  renderCharts(state.series);
  renderTimeline(state.timeline);
  renderTraces(state.traces, state.trace_url);
  document.getElementById("updated").textContent = "updated " + clock(state.now_ms);
}

function setStatus(text, live) {
  const status = document.getElementById("status");
  status.textContent = text;
  status.className = "status " + (live ? "live" : "waiting");
}

const events = new EventSource("/events");
events.addEventListener("state", (message) => {
  setStatus("live", true);
  render(JSON.parse(message.data));
});
events.addEventListener("error", () => setStatus("reconnecting…", false));
