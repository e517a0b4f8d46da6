// mindscope's interactive views: one function per panel kind, no dependencies, no network.
// The Python side (mindscope/views) inlines this file into every view together with the view's
// data as JSON, and calls render(root) on the view's own element, so any number of views can
// live in one page (each finds its elements under its root, never by a global id).
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";
const PALETTE = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1",
  "#ff9da7", "#9c755f", "#bab0ac"];

function el(tag, cls, parent, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  if (parent) parent.appendChild(e);
  return e;
}

function svg(tag, attrs, parent) {
  const e = document.createElementNS(SVG_NS, tag);
  for (const k in attrs) e.setAttribute(k, attrs[k]);
  if (parent) parent.appendChild(e);
  return e;
}

// Numbers as the readouts show them: null (NaN in Python) as a dash.
function fmt(v, digits) {
  if (v === null || v === undefined) return "–";
  return v.toFixed(digits === undefined ? 3 : digits);
}

// Tokens keep their spaces; newlines, tabs and tokens of spaces only are shown as symbols so
// every token has a visible width.
function tokenText(t) {
  if (/^ +$/.test(t)) return t.replace(/ /g, "␣");
  return t.replace(/\n/g, "↵").replace(/\t/g, "⇥") || "∅";
}

function quoted(t) {
  return "'" + tokenText(t) + "'";
}

// Background for a value: white to blue for [0, max]; blue (negative) to red (positive) when
// diverging.
function shade(v, max, diverging) {
  if (v === null || v === undefined || !(max > 0)) return "transparent";
  const a = Math.max(-1, Math.min(1, v / max));
  if (diverging) return a >= 0 ? `rgba(214, 39, 40, ${a.toFixed(3)})` : `rgba(31, 119, 180, ${(-a).toFixed(3)})`;
  return `rgba(31, 119, 180, ${Math.max(0, a).toFixed(3)})`;
}

// A legend entry: a short line in the series' colour (dashed if the series is) and its name.
function legendKey(legend, name, colour, dashed) {
  const key = el("span", "ms-key", legend);
  const s = svg("svg", { width: 22, height: 10, class: "ms-swatch" }, key);
  svg("line", { x1: 1, x2: 21, y1: 5, y2: 5, stroke: colour, "stroke-width": dashed ? 2 : 3,
    "stroke-dasharray": dashed ? "4 3" : "none" }, s);
  el("span", "", key, name);
  return key;
}

// Colour an element by a value (see shade), with white text where the background is dark.
function paint(e, v, max, diverging) {
  e.style.background = shade(v, max, diverging);
  e.style.color = v !== null && max > 0 && Math.abs(v / max) > 0.55 ? "#fff" : "";
}

function maxAbs(values) {
  let m = 0;
  for (const v of values) if (v !== null && Math.abs(v) > m) m = Math.abs(v);
  return m;
}

// A row of toggle buttons; onPick(index) is called on click and the picked one is marked.
function buttons(parent, labels, picked, onPick, cls) {
  const bar = el("div", "ms-buttons " + (cls || ""), parent);
  const all = labels.map((label, i) => {
    const b = el("button", "ms-button", bar, label);
    b.type = "button";
    b.dataset.i = i;
    b.addEventListener("click", () => { mark(i); onPick(i); });
    return b;
  });
  function mark(i) { all.forEach((b, j) => b.classList.toggle("ms-picked", i === j)); }
  mark(picked);
  return all;
}

// --- attention: hover a token to see what it attends to (or what attends to it) ------------
// p.patterns[layer][head][query][key] in thousandths (0..1000).
function attentionPanel(box, p) {
  const nLayers = p.layers.length, nHeads = p.heads, n = p.tokens.length;
  let layer = nLayers - 1, head = 0, focus = n - 1, asQuery = true;
  const weight = (l, h, q, k) => {
    if (h === nHeads) {  // the mean over heads
      let s = 0;
      for (let i = 0; i < nHeads; i++) s += p.patterns[l][i][q][k];
      return s / nHeads / 1000;
    }
    return p.patterns[l][h][q][k] / 1000;
  };
  const controls = el("div", "ms-controls", box);
  el("label", "ms-label", controls, "layer ");
  const select = el("select", "ms-layer", controls);
  p.layers.forEach((name, i) => { const o = el("option", "", select, name); o.value = i; });
  select.value = layer;
  select.addEventListener("change", () => { layer = +select.value; drawThumbs(); update(); });
  buttons(controls, ["hovered token attends to", "attends to hovered token"], 0,
    (i) => { asQuery = i === 0; update(); }, "ms-direction");
  el("div", "ms-hint", box, "Heads of this layer (query rows × key columns); click one to pick it:");
  const thumbs = el("div", "ms-thumbs", box);
  const canvases = [];
  for (let h = 0; h <= nHeads; h++) {
    const cell = el("div", "ms-thumb", thumbs);
    cell.dataset.head = h;
    const c = el("canvas", "", cell);
    c.width = n; c.height = n;
    el("div", "ms-thumb-label", cell, h === nHeads ? "mean" : "head " + h);
    cell.addEventListener("click", () => { head = h; markHead(); update(); });
    canvases.push(c);
  }
  function drawThumbs() {
    canvases.forEach((c, h) => {
      const ctx = c.getContext("2d");
      const img = ctx.createImageData(n, n);
      for (let q = 0; q < n; q++) for (let k = 0; k < n; k++) {
        const w = weight(layer, h, q, k), o = 4 * (q * n + k);
        img.data[o] = 255 - 224 * w; img.data[o + 1] = 255 - 136 * w; img.data[o + 2] = 255 - 75 * w;
        img.data[o + 3] = 255;
      }
      ctx.putImageData(img, 0, 0);
    });
  }
  function markHead() {
    thumbs.querySelectorAll(".ms-thumb").forEach((t) => t.classList.toggle("ms-picked", +t.dataset.head === head));
  }
  const text = el("div", "ms-tokens", box);
  const spans = p.tokens.map((t, i) => {
    const s = el("span", "ms-token", text, tokenText(t));
    s.dataset.i = i;
    s.addEventListener("mouseenter", () => { focus = i; update(); });
    return s;
  });
  const readout = el("div", "ms-readout", box);
  function update() {
    const w = spans.map((_, j) => asQuery ? weight(layer, head, focus, j) : weight(layer, head, j, focus));
    const max = Math.max(...w);
    spans.forEach((s, j) => {
      paint(s, w[j], max);
      s.classList.toggle("ms-focus", j === focus);
    });
    const top = w.map((v, j) => [v, j]).sort((a, b) => b[0] - a[0]).slice(0, 5);
    const who = `${quoted(p.tokens[focus])} (position ${focus}), ${p.layers[layer]}, ${head === nHeads ? "mean of heads" : "head " + head}`;
    readout.textContent = (asQuery ? `${who} attends to: ` : `attending to ${who}: `) +
      top.map(([v, j]) => `${quoted(p.tokens[j])}@${j} ${fmt(v)}`).join(" · ");
  }
  drawThumbs(); markHead(); update();
}

// --- tokens coloured by a per-token measure (attribution); hover for every measure ----------
function tokensPanel(box, p) {
  let pick = 0;
  if (p.header) el("div", "ms-hint", box, p.header);
  buttons(box, p.measures.map((m) => "colour: " + m.name), 0, (i) => { pick = i; update(); }, "ms-measures");
  const text = el("div", "ms-tokens", box);
  const spans = p.tokens.map((t, i) => {
    const s = el("span", "ms-token", text, tokenText(t));
    s.dataset.i = i;
    s.addEventListener("mouseenter", () => show(i));
    return s;
  });
  const readout = el("div", "ms-readout", box, "Hover a token to see its values.");
  function show(i) {
    spans.forEach((s, j) => s.classList.toggle("ms-focus", i === j));
    readout.textContent = `${quoted(p.tokens[i])} (token ${i}${p.notes && p.notes[i] ? ", " + p.notes[i] : ""}): ` +
      p.measures.map((m) => `${m.name} ${fmt(m.values[i], m.digits)}`).join(" · ");
  }
  function update() {
    const m = p.measures[pick], max = maxAbs(m.values);
    spans.forEach((s, j) => paint(s, m.values[j], max, m.diverging));
  }
  update();
}

// --- logit lens: layers x positions, the top token in each cell; hover for the top k --------
function logitLensPanel(box, p) {
  let pick = 0;
  const colourings = [["top-1 probability", (l, c) => p.top_probs[l][c][0]],
    [`p(${quoted(p.target)})`, (l, c) => p.target_prob[l][c]]];
  buttons(box, colourings.map((x) => "colour: " + x[0]), 0, (i) => { pick = i; update(); }, "ms-measures");
  const grid = el("table", "ms-grid", box);
  const head = el("tr", "", grid);
  el("th", "", head, "");
  p.tokens.forEach((t) => el("th", "ms-col", head, tokenText(t)));
  const cells = p.layers.map((name, l) => {
    const row = el("tr", "", grid);
    el("th", "ms-row", row, name);
    return p.tokens.map((_, c) => {
      const td = el("td", "ms-cell", row, tokenText(p.top_tokens[l][c][0]));
      td.dataset.r = l; td.dataset.c = c;
      td.addEventListener("mouseenter", () => show(l, c));
      return td;
    });
  });
  const readout = el("div", "ms-readout", box, "Hover a cell to see the layer's top guesses.");
  function show(l, c) {
    cells.flat().forEach((td) => td.classList.remove("ms-focus"));
    cells[l][c].classList.add("ms-focus");
    const guesses = p.top_tokens[l][c].map((t, k) => `${quoted(t)} ${fmt(p.top_probs[l][c][k])}`).join(" · ");
    readout.textContent = `${p.layers[l]}, after ${quoted(p.tokens[c])} (position ${c}): ${guesses}; ` +
      `p(${quoted(p.target)}) ${fmt(p.target_prob[l][c])}, rank ${p.target_rank[l][c]}`;
  }
  function update() {
    cells.forEach((row, l) => row.forEach((td, c) => paint(td, colourings[pick][1](l, c), 1)));
  }
  update();
}

// --- world map: predicted positions, a line to the true one; hover a city for its name ------
function mapPanel(box, p) {
  // Equirectangular; a prediction off the globe is drawn at its edge (the readout says where).
  const clamp = (v, m) => Math.max(-m, Math.min(m, v));
  const W = 720, H = 360, x = (lon) => (clamp(lon, 180) + 180) * W / 360, y = (lat) => (90 - clamp(lat, 90)) * H / 180;
  const groups = [...new Set(p.group)];
  const colour = (g) => PALETTE[groups.indexOf(g) % PALETTE.length];
  const legend = el("div", "ms-legend", box);
  groups.forEach((g) => legendKey(legend, g, colour(g), false));
  const plot = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "ms-map" }, box);
  svg("rect", { x: 0, y: 0, width: W, height: H, class: "ms-sea" }, plot);
  for (let lon = -150; lon < 180; lon += 30) svg("line", { x1: x(lon), x2: x(lon), y1: 0, y2: H, class: "ms-grat" }, plot);
  for (let lat = -60; lat < 90; lat += 30) {
    svg("line", { x1: 0, x2: W, y1: y(lat), y2: y(lat), class: lat === 0 ? "ms-grat ms-equator" : "ms-grat" }, plot);
  }
  const ghosts = svg("g", {}, plot), links = svg("g", {}, plot), dots = svg("g", {}, plot);
  const n = p.name.length;
  // The true places, faint: with no coastlines drawn, the cities themselves sketch the world.
  for (let i = 0; i < n; i++) svg("circle", { cx: x(p.true_lon[i]), cy: y(p.true_lat[i]), r: 1.6, class: "ms-ghost" }, ghosts);
  for (let i = 0; i < n; i++) {
    svg("line", { x1: x(p.pred_lon[i]), y1: y(p.pred_lat[i]), x2: x(p.true_lon[i]), y2: y(p.true_lat[i]), class: "ms-link" }, links);
  }
  const focusLine = svg("line", { class: "ms-focus-link", visibility: "hidden" }, plot);
  const truth = svg("circle", { r: 4, class: "ms-true", visibility: "hidden" }, plot);
  const points = [];
  for (let i = 0; i < n; i++) {
    const c = svg("circle", { cx: x(p.pred_lon[i]), cy: y(p.pred_lat[i]), r: 3.2, fill: colour(p.group[i]), class: "ms-point" }, dots);
    c.dataset.i = i;
    c.addEventListener("mouseenter", () => show(i));
    points.push(c);
  }
  const readout = el("div", "ms-readout", box, "Hover a dot (a predicted position) to see the city; its line leads to where it really is.");
  const deg = (v, pos, neg) => `${Math.abs(v).toFixed(1)}°${v >= 0 ? pos : neg}`;
  function show(i) {
    points.forEach((c, j) => c.classList.toggle("ms-focus", i === j));
    points[i].parentNode.appendChild(points[i]);  // on top of its neighbours
    const a = { x1: x(p.pred_lon[i]), y1: y(p.pred_lat[i]), x2: x(p.true_lon[i]), y2: y(p.true_lat[i]), visibility: "visible" };
    for (const k in a) focusLine.setAttribute(k, a[k]);
    truth.setAttribute("cx", a.x2); truth.setAttribute("cy", a.y2); truth.setAttribute("visibility", "visible");
    readout.textContent = `${p.name[i]} (${p.group[i]}): true ${deg(p.true_lat[i], "N", "S")} ${deg(p.true_lon[i], "E", "W")}, ` +
      `predicted ${deg(p.pred_lat[i], "N", "S")} ${deg(p.pred_lon[i], "E", "W")}, error ${Math.round(p.error_km[i]).toLocaleString("en")} km`;
  }
}

// --- lines over layers (probe curves); hover anywhere to read every series at one layer -----
function linesPanel(box, p) {
  const W = 640, H = 300, L = 52, R = 30, T = 12, B = 40;
  const values = p.series.flatMap((s) => s.y).concat((p.hlines || []).map((h) => h.y)).filter((v) => v !== null);
  if (!values.length) values.push(0, 1);  // nothing to draw but the axes
  let lo = p.y_range ? p.y_range[0] : Math.min(...values), hi = p.y_range ? p.y_range[1] : Math.max(...values);
  if (hi - lo < 1e-9) { lo -= 0.5; hi += 0.5; }
  const pad = p.y_range ? 0 : (hi - lo) * 0.06;
  lo -= pad; hi += pad;
  const x0 = Math.min(...p.x), x1 = Math.max(...p.x);
  const sx = (v) => L + (x1 === x0 ? 0.5 : (v - x0) / (x1 - x0)) * (W - L - R);
  const sy = (v) => T + (hi - v) / (hi - lo) * (H - T - B);
  const legend = el("div", "ms-legend", box);
  const plot = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "ms-lines" }, box);
  for (let k = 0; k <= 4; k++) {
    const v = lo + (hi - lo) * k / 4;
    svg("line", { x1: L, x2: W - R, y1: sy(v), y2: sy(v), class: "ms-gridline" }, plot);
    svg("text", { x: L - 6, y: sy(v) + 4, class: "ms-tick", "text-anchor": "end" }, plot).textContent = fmt(v, 2);
  }
  let lastTick = -Infinity;  // skip a tick label that would overlap the previous one
  p.x.forEach((v, i) => {
    if (sx(v) - lastTick < 44) return;
    lastTick = sx(v);
    svg("text", { x: sx(v), y: H - B + 16, class: "ms-tick", "text-anchor": "middle" }, plot).textContent = p.x_labels ? p.x_labels[i] : v;
  });
  svg("text", { x: (L + W - R) / 2, y: H - 6, class: "ms-axis", "text-anchor": "middle" }, plot).textContent = p.x_label;
  svg("text", { x: 12, y: (T + H - B) / 2, class: "ms-axis", "text-anchor": "middle", transform: `rotate(-90 12 ${(T + H - B) / 2})` }, plot).textContent = p.y_label;
  (p.hlines || []).forEach((h) => {
    svg("line", { x1: L, x2: W - R, y1: sy(h.y), y2: sy(h.y), class: "ms-hline" }, plot);
    legendKey(legend, `${h.name} ${fmt(h.y)}`, "#888", true);
  });
  p.series.forEach((s, k) => {
    const c = PALETTE[k % PALETTE.length];
    legendKey(legend, s.name, c, s.dashed);
    let d = "";
    s.y.forEach((v, i) => { if (v !== null) d += `${d && s.y[i - 1] !== null ? "L" : "M"}${sx(p.x[i])},${sy(v)}`; });
    svg("path", { d, stroke: c, class: "ms-series" + (s.dashed ? " ms-dashed" : "") }, plot);
    s.y.forEach((v, i) => { if (v !== null) svg("circle", { cx: sx(p.x[i]), cy: sy(v), r: 2.5, fill: c }, plot); });
  });
  if (p.mark !== undefined && p.mark !== null) {
    svg("line", { x1: sx(p.mark), x2: sx(p.mark), y1: T, y2: H - B, class: "ms-mark" }, plot);
    legendKey(legend, `best: ${p.x_label} ${p.mark}`, "#555", true);
  }
  const guide = svg("line", { y1: T, y2: H - B, class: "ms-guide", visibility: "hidden" }, plot);
  const overlay = svg("rect", { x: L, y: T, width: W - L - R, height: H - T - B, class: "ms-overlay" }, plot);
  const readout = el("div", "ms-readout", box, `Hover the plot to read every line at one ${p.x_label}.`);
  overlay.addEventListener("mousemove", (ev) => {
    const r = plot.getBoundingClientRect(), vx = (ev.clientX - r.left) * W / r.width;
    let best = 0;
    p.x.forEach((v, i) => { if (Math.abs(sx(v) - vx) < Math.abs(sx(p.x[best]) - vx)) best = i; });
    guide.setAttribute("x1", sx(p.x[best])); guide.setAttribute("x2", sx(p.x[best]));
    guide.setAttribute("visibility", "visible");
    readout.textContent = `${p.x_label} ${p.x_labels ? p.x_labels[best] : p.x[best]}: ` +
      p.series.map((s) => `${s.name} ${fmt(s.y[best])}`).join(" · ") + (p.notes ? ` (${p.notes[best]})` : "");
  });
}

// --- a plain table (what a cache holds) -------------------------------------------------------
function tablePanel(box, p) {
  const t = el("table", "ms-table", box);
  const head = el("tr", "", t);
  p.columns.forEach((c) => el("th", "", head, c));
  p.rows.forEach((r) => { const tr = el("tr", "", t); r.forEach((v) => el("td", "", tr, String(v))); });
}

const PANELS = { attention: attentionPanel, tokens: tokensPanel, logit_lens: logitLensPanel, map: mapPanel,
  lines: linesPanel, table: tablePanel };

function render(root) {
  if (!root || root.dataset.rendered) return;  // a frontend that runs the script twice
  root.dataset.rendered = "1";
  const data = JSON.parse(root.querySelector("script.ms-data").textContent);
  root.querySelector(".ms-noscript").remove();
  for (const p of data.panels) {
    const box = el("div", "ms-panel ms-panel-" + p.kind, root);
    if (p.title) el("div", "ms-title", box, p.title);
    PANELS[p.kind](box, p);
  }
}
