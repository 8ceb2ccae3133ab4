// degsearch web page: plain DOM + fetch, no build step and no network beyond this server.
"use strict";

const $ = (sel) => document.querySelector(sel);

function apiKey() { return $("#api-key").value.trim(); }

function headers(extra = {}) {
  const h = { ...extra };
  const key = apiKey();
  if (key) h["X-API-Key"] = key;
  return h;
}

// fetch + JSON, turning the API's {code, message} errors into exceptions with readable text.
async function api(path, options = {}) {
  const resp = await fetch(path, { ...options, headers: headers(options.headers || {}) });
  if (!resp.ok) {
    let message = `${resp.status} ${resp.statusText}`;
    try { const err = await resp.json(); if (err.message) message = `${err.code}: ${err.message}`; } catch (_) { /* not JSON */ }
    throw new Error(message);
  }
  return resp.json();
}

function setStatus(el, text, isError = false) {
  el.textContent = text;
  el.classList.toggle("error", isError);
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v; else if (k.startsWith("on")) node.addEventListener(k.slice(2), v); else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

const fmt = (x, digits = 2) => (x === null || x === undefined ? "–" : Number(x).toFixed(digits));

// --- audio -------------------------------------------------------------------------------------

// Play a segment inside `container`. Without a key the <audio> points straight at the endpoint;
// with one, the WAV is fetched with the header (audio elements cannot send headers).
async function playSegment(segmentId, container) {
  let audio = container.querySelector("audio");
  if (!audio) {
    audio = el("audio", { controls: "", preload: "auto", "data-segment": segmentId });
    container.replaceChildren(audio);
    const url = `/v1/segments/${segmentId}/audio?pad=0.25`;
    if (apiKey()) {
      const resp = await fetch(url, { headers: headers() });
      if (!resp.ok) { container.replaceChildren(el("span", { class: "status error" }, `audio: ${resp.status}`)); return; }
      audio.src = URL.createObjectURL(await resp.blob());
    } else {
      audio.src = url;
    }
  }
  try { await audio.play(); } catch (err) { console.warn("playback refused:", err); }
}

function playButton(segmentId) {
  const cell = el("span", { class: "player" });
  const btn = el("button", { type: "button", class: "small play", "data-segment": segmentId, onclick: () => playSegment(segmentId, cell) }, "▶ play");
  cell.append(btn);
  return cell;
}

// --- search ------------------------------------------------------------------------------------

function renderHits(data, label) {
  const table = $("#results");
  const body = table.querySelector("tbody");
  body.replaceChildren();
  data.hits.forEach((hit, i) => {
    const sim = Math.max(0, Math.min(1, hit.similarity));
    body.append(el("tr", { class: "hit", "data-segment": hit.segment_id },
      el("td", {}, i + 1),
      el("td", { class: "sim" }, el("span", { class: "simbar", style: `width:${Math.round(sim * 60)}px` }), fmt(hit.similarity, 3)),
      el("td", { class: "path", title: hit.path }, hit.path),
      el("td", {}, hit.channel),
      el("td", {}, `${fmt(hit.start_s)}–${fmt(hit.end_s)}`),
      el("td", {}, fmt(hit.mos)),
      el("td", {}, hit.label ?? "–"),
      el("td", {}, playButton(hit.segment_id)),
      el("td", {}, el("button", { type: "button", class: "small", title: "segments like this one", onclick: () => searchSimilar(hit.segment_id) }, "similar")),
    ));
  });
  table.hidden = false;
  setStatus($("#search-status"), `${data.hits.length} segments ${label} (${fmt(data.took_ms, 1)} ms)`);
}

async function searchClip(event) {
  event.preventDefault();
  const file = $("#clip-file").files[0];
  if (!file) return;
  const form = new FormData();
  form.append("file", file, file.name);
  form.append("k", $("#clip-k").value || "10");
  form.append("whole", $("#clip-whole").checked ? "true" : "false");
  const button = $("#search-btn");
  button.disabled = true;
  setStatus($("#search-status"), "searching…");
  try {
    renderHits(await api("/v1/search/clip", { method: "POST", body: form }), `like ${file.name}`);
  } catch (err) {
    setStatus($("#search-status"), err.message, true);
  } finally {
    button.disabled = false;
  }
}

async function searchSimilar(segmentId) {
  setStatus($("#search-status"), "searching…");
  try {
    const body = JSON.stringify({ segment_id: segmentId, k: Number($("#clip-k").value) || 10 });
    renderHits(await api("/v1/search", { method: "POST", body, headers: { "Content-Type": "application/json" } }), `like segment ${segmentId}`);
  } catch (err) {
    setStatus($("#search-status"), err.message, true);
  }
}

// --- prototypes --------------------------------------------------------------------------------

async function loadPrototypes() {
  const box = $("#prototypes");
  try {
    const data = await api("/v1/prototypes");
    box.replaceChildren();
    if (!data.prototypes.length) box.append(el("p", { class: "status" }, "No prototypes yet: run `degsearch cluster` or enroll one below."));
    for (const p of data.prototypes) {
      const examples = el("div", { class: "examples" });
      for (const id of p.example_segment_ids.slice(0, 3)) examples.append(el("div", {}, `segment ${id} `, playButton(id)));
      box.append(el("div", { class: "card prototype", "data-name": p.name },
        el("h3", {}, p.name),
        el("div", { class: "meta" }, `${p.kind} · ${p.size} segments · ${fmt(p.total_duration_s, 1)} s · MOS ${fmt(p.mean_mos)}`),
        examples,
        el("button", { type: "button", class: "small", onclick: () => searchPrototype(p.name) }, "find similar"),
      ));
    }
  } catch (err) {
    box.replaceChildren(el("p", { class: "status error" }, err.message));
  }
}

async function searchPrototype(name) {
  try {
    const body = JSON.stringify({ prototype: name, k: Number($("#clip-k").value) || 10 });
    renderHits(await api("/v1/search", { method: "POST", body, headers: { "Content-Type": "application/json" } }), `like prototype ${name}`);
    $("#search-section").scrollIntoView();
  } catch (err) {
    setStatus($("#search-status"), err.message, true);
  }
}

async function enroll(event) {
  event.preventDefault();
  const form = new FormData();
  form.append("name", $("#enroll-name").value.trim());
  for (const f of $("#enroll-files").files) form.append("files", f, f.name);
  setStatus($("#enroll-status"), "enrolling…");
  try {
    const p = await api("/v1/prototypes", { method: "POST", body: form });
    setStatus($("#enroll-status"), `enrolled ${p.name}`);
    loadPrototypes();
  } catch (err) {
    setStatus($("#enroll-status"), err.message, true);
  }
}

// --- statistics chart --------------------------------------------------------------------------

let statsData = null;

async function loadStats() {
  const by = $("#stats-by").value;
  $("#stats-csv").href = `/v1/stats?format=csv${by ? `&by=${encodeURIComponent(by)}` : ""}`;
  try {
    statsData = await api(`/v1/stats${by ? `?by=${encodeURIComponent(by)}` : ""}`);
    const numeric = statsData.columns.filter((c) => statsData.rows.some((r) => typeof r[c] === "number"));
    const select = $("#stats-metric");
    const previous = select.value;
    select.replaceChildren(...numeric.map((c) => el("option", { value: c }, c)));
    const preferred = [previous, "degraded_s", "share", "segments"].find((c) => numeric.includes(c));
    if (preferred) select.value = preferred;
    drawChart();
    setStatus($("#stats-status"), `${statsData.rows.length} rows`);
  } catch (err) {
    setStatus($("#stats-status"), err.message, true);
  }
}

// Bar chart on a plain canvas: one bar per row, labelled by the row's non-numeric columns.
function drawChart() {
  const canvas = $("#stats-chart");
  const ctx = canvas.getContext("2d");
  const ratio = window.devicePixelRatio || 1;
  const W = canvas.clientWidth || canvas.width, H = Math.round(W * 0.35);
  canvas.width = W * ratio; canvas.height = H * ratio;
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, W, H);
  const metric = $("#stats-metric").value;
  if (!statsData || !metric || !statsData.rows.length) {
    ctx.fillStyle = "#6b7385"; ctx.font = "14px system-ui"; ctx.fillText("no statistics yet", 20, 30);
    return;
  }
  const keyCols = statsData.columns.filter((c) => statsData.rows.every((r) => typeof r[c] !== "number"));
  const rows = statsData.rows.slice(0, 60);
  const values = rows.map((r) => (typeof r[metric] === "number" ? r[metric] : 0));
  const labels = rows.map((r) => keyCols.map((c) => r[c] ?? "").join(" / ") || "all");
  const max = Math.max(...values.map(Math.abs), 1e-9);
  const left = 60, bottom = 70, top = 20, right = 10;
  const plotW = W - left - right, plotH = H - top - bottom;
  ctx.strokeStyle = "#c8ccd6"; ctx.fillStyle = "#6b7385"; ctx.font = "11px system-ui";
  for (let i = 0; i <= 4; i++) {   // grid + y ticks
    const y = top + plotH - (plotH * i) / 4;
    ctx.beginPath(); ctx.moveTo(left, y); ctx.lineTo(W - right, y); ctx.stroke();
    ctx.fillText(((max * i) / 4).toPrecision(3), 4, y + 4);
  }
  const slot = plotW / rows.length, barW = Math.max(2, slot * 0.7);
  rows.forEach((_, i) => {
    const h = (Math.abs(values[i]) / max) * plotH;
    const x = left + i * slot + (slot - barW) / 2;
    ctx.fillStyle = "#2f6fdb"; ctx.fillRect(x, top + plotH - h, barW, h);
    ctx.save(); ctx.fillStyle = "#1d2430"; ctx.translate(x + barW / 2, top + plotH + 6); ctx.rotate(Math.PI / 4);
    ctx.fillText(String(labels[i]).slice(0, 18), 0, 0); ctx.restore();
  });
  ctx.fillStyle = "#1d2430"; ctx.font = "12px system-ui"; ctx.fillText(metric, left, 12);
}

// --- start -------------------------------------------------------------------------------------

async function loadHealth() {
  const badge = $("#health");
  try {
    const resp = await fetch("/healthz");
    const h = await resp.json();
    badge.textContent = h.status === "ok" ? `${h.segments ?? 0} segments` : "store not ready";
    badge.className = `badge ${h.status}`;
    badge.title = h.detail || `generation ${h.generation}`;
  } catch (err) {
    badge.textContent = "offline"; badge.className = "badge degraded";
  }
}

document.addEventListener("DOMContentLoaded", () => {
  const keyInput = $("#api-key");
  keyInput.value = localStorage.getItem("degsearch-api-key") || "";
  keyInput.addEventListener("change", () => { localStorage.setItem("degsearch-api-key", apiKey()); loadPrototypes(); loadStats(); });
  $("#clip-form").addEventListener("submit", searchClip);
  $("#enroll-form").addEventListener("submit", enroll);
  $("#refresh-prototypes").addEventListener("click", loadPrototypes);
  $("#stats-by").addEventListener("change", loadStats);
  $("#stats-metric").addEventListener("change", drawChart);
  window.addEventListener("resize", drawChart);
  loadHealth();
  loadPrototypes();
  loadStats();
});
