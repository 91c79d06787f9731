"use strict";
// Polls /api/state once a second and redraws the page; every chart is drawn by plotly.js,
// served by the same server.
const POLL_MS = 1000;
const PLOT_CONFIG = { displayModeBar: false, responsive: true };
const COLORS = ["#2f6fde", "#e8590c", "#2b8a3e", "#862e9c", "#c2255c", "#1098ad", "#5c940d", "#d9480f"];

function layout(yTitle, extra) {
  return Object.assign({
    margin: { l: 50, r: 10, t: 10, b: 36 },
    xaxis: { title: { text: "seconds since the run started" }, zeroline: false },
    yaxis: { title: { text: yTitle }, rangemode: "tozero" },
    legend: { orientation: "h", y: 1.12 },
    paper_bgcolor: "#fff", plot_bgcolor: "#fff",
  }, extra || {});
}

function fmt(n, digits) {
  if (n === null || n === undefined) return "–";
  return Number(n).toLocaleString(undefined, { maximumFractionDigits: digits === undefined ? 0 : digits });
}

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  seconds = Math.round(seconds);
  const h = Math.floor(seconds / 3600), m = Math.floor((seconds % 3600) / 60), s = seconds % 60;
  return h ? `${h} h ${m} min` : m ? `${m} min ${s} s` : `${s} s`;
}

function bytes(n) {
  return (n / 2 ** 30).toFixed(1) + " GiB";
}

function setText(id, text) { document.getElementById(id).textContent = text; }

function fillTable(id, rows, cells, classOf) {
  const body = document.querySelector(`#${id} tbody`);
  body.replaceChildren(...rows.map((row) => {
    const tr = document.createElement("tr");
    if (classOf) tr.className = classOf(row);
    for (const cell of cells(row)) {
      const td = document.createElement("td");
      if (cell instanceof Node) td.appendChild(cell); else td.textContent = cell;
      tr.appendChild(td);
    }
    return tr;
  }));
  const none = document.getElementById(`${id}-none`);
  if (none) none.style.display = rows.length ? "none" : "block";
  document.getElementById(id).style.display = rows.length ? "table" : "none";
}

function shareCell(share) {
  const span = document.createElement("span");
  const bar = document.createElement("span");
  bar.className = "share";
  bar.style.width = `${Math.round(share * 80)}px`;
  span.append(bar, `${Math.round(share * 100)}%`);
  return span;
}

function examplesCell(examples) {
  const div = document.createElement("div");
  for (const example of examples) {
    const code = document.createElement("code");
    code.textContent = example;
    div.appendChild(code);
  }
  return div;
}

function drawCharts(state) {
  const s = state.series;
  const x = s.elapsed_s;
  Plotly.react("chart-tokens", [
    { x, y: s.output_tokens_per_s, name: "output", mode: "lines", line: { color: COLORS[0] } },
    { x, y: s.input_tokens_per_s, name: "input", mode: "lines", line: { color: COLORS[1] } },
  ], layout("tokens/s"), PLOT_CONFIG);
  Plotly.react("chart-rows", [
    { x, y: s.rows_done, name: "rows done", mode: "lines", line: { color: COLORS[2] } },
  ], layout("rows", { showlegend: false }), PLOT_CONFIG);
  const stages = state.now.stages;
  Plotly.react("chart-stages", [{
    type: "bar", orientation: "h",
    x: stages.map((st) => Math.round(st.busy_share * 100)),
    y: stages.map((st) => st.name),
    marker: { color: stages.map((st) => (st === bottleneck(stages) ? "#d9480f" : COLORS[0])) },
  }], layout("", {
    xaxis: { title: { text: "busy share, %" }, range: [0, 100] },
    yaxis: { autorange: "reversed" }, margin: { l: 100, r: 10, t: 10, b: 36 },
  }), PLOT_CONFIG);
  const engineTraces = [];
  Object.entries(s.engines).forEach(([replica, lines], i) => {
    const color = COLORS[i % COLORS.length];
    engineTraces.push({ x, y: lines.running, name: `running (${replica})`, mode: "lines", line: { color } });
    engineTraces.push({ x, y: lines.waiting, name: `waiting (${replica})`, mode: "lines", line: { color, dash: "dot" } });
    engineTraces.push({ x, y: lines.kv_cache_usage.map((v) => (v === null ? null : 100 * v)), name: `KV cache % (${replica})`, mode: "lines", yaxis: "y2", line: { color, dash: "dash" } });
  });
  Plotly.react("chart-engines", engineTraces, layout("requests", {
    yaxis2: { title: { text: "KV cache, %" }, overlaying: "y", side: "right", range: [0, 100] },
    margin: { l: 50, r: 50, t: 10, b: 36 },
  }), PLOT_CONFIG);
  const gpuPanel = document.getElementById("chart-gpus").parentElement;
  gpuPanel.style.display = Object.keys(s.gpus).length ? "block" : "none";
  if (!Object.keys(s.gpus).length) return;
  const gpuTraces = [];
  Object.entries(s.gpus).forEach(([index, lines], i) => {
    const color = COLORS[i % COLORS.length];
    gpuTraces.push({ x, y: lines.memory_used.map((v) => (v === null ? null : v / 2 ** 30)), name: `memory GiB (${index})`, mode: "lines", line: { color } });
    gpuTraces.push({ x, y: lines.utilization.map((v) => (v === null ? null : 100 * v)), name: `utilisation % (${index})`, mode: "lines", yaxis: "y2", line: { color, dash: "dot" } });
  });
  Plotly.react("chart-gpus", gpuTraces, layout("GiB", {
    yaxis2: { title: { text: "%" }, overlaying: "y", side: "right", range: [0, 100] },
    margin: { l: 50, r: 50, t: 10, b: 36 },
  }), PLOT_CONFIG);
}

function bottleneck(stages) {
  let best = null;
  for (const st of stages) if (st.busy_share > 0.05 && (!best || st.busy_share > best.busy_share)) best = st;
  return best;
}

function render(state) {
  const now = state.now;
  setText("model", state.job.model || "");
  const status = document.getElementById("status");
  status.textContent = state.status;
  status.className = `badge ${state.status}`;
  const total = now.rows_total;
  setText("rows", total === null ? fmt(now.rows_done) : `${fmt(now.rows_done)} / ${fmt(total)}`);
  document.getElementById("rows-bar").style.width = total ? `${Math.min(100, (100 * now.rows_done) / total)}%` : "0";
  setText("eta", state.status === "finished" ? "done" : duration(now.eta_s));
  setText("rows-rate", fmt(now.rows_per_s, 1));
  setText("out-rate", fmt(now.output_tokens_per_s));
  setText("in-rate", fmt(now.input_tokens_per_s));
  setText("errors-count", fmt(now.error_rows));
  const slowest = bottleneck(now.stages);
  fillTable("stages", now.stages, (st) => [st.name, fmt(st.rows_in), fmt(st.rows_out), fmt(st.queued), shareCell(st.busy_share)],
    (st) => (st === slowest ? "bottleneck" : ""));
  fillTable("engines", now.engines, (e) => [e.replica, fmt(e.running), fmt(e.waiting), `${fmt(100 * e.kv_cache_usage, 1)}%`,
    `${fmt(100 * e.prefix_cache_hit_rate, 1)}%`, fmt(e.preemptions), e.step_ms === null ? "–" : `${fmt(e.step_ms, 1)} ms`, fmt(e.output_tokens_per_s)]);
  fillTable("gpus", now.gpus, (g) => [g.index, g.name, `${bytes(g.memory_used)} / ${bytes(g.memory_total)}`,
    g.utilization === null ? "–" : `${fmt(100 * g.utilization)}%`]);
  fillTable("errors", now.errors, (e) => [e.reason, fmt(e.count), examplesCell(e.examples)]);
  setText("config", JSON.stringify(state.job, null, 2));
  drawCharts(state);
  document.body.dataset.updates = String(Number(document.body.dataset.updates || 0) + 1);
}

async function poll() {
  try {
    const response = await fetch("/api/state", { cache: "no-store" });
    if (response.ok) render(await response.json());
    else setText("status", `server answered ${response.status}`);
  } catch (err) {
    setText("status", "disconnected");
  }
  setTimeout(poll, POLL_MS);
}

poll();
