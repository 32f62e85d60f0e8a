"""GET /status: one static HTML page whose plain script polls /v1/system/status every two seconds.

No build chain and no package data (the page lives in this module, so a wheel carries it). The script
builds the DOM with textContent only, so nothing read from Redis can become markup, and the Content
Security Policy allows exactly this script and style (by hash) and requests to this origin.

With API keys on, /v1/system/status needs an admin key (or a direct loopback call): on a 401 or 403 the
page asks for one and keeps it in this tab's sessionStorage only, sending it as a Bearer header.
"""

from __future__ import annotations

import base64
import hashlib

import falcon

POLL_MS = 2000

STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 0; background: #f6f7f9; color: #1d2330; }
header { background: #1d2330; color: #fff; padding: 10px 20px; display: flex; gap: 16px; align-items: baseline; }
header h1 { font-size: 18px; margin: 0; }
header .muted { color: #aab; }
main { padding: 16px 20px; }
.cards { display: grid; grid-template-columns: repeat(4, minmax(0, 1fr)); gap: 10px; }
.card { background: #fff; border-radius: 6px; padding: 10px 12px; box-shadow: 0 1px 2px #0002; }
.card .label { color: #667; font-size: 12px; }
.card .value { font-size: 20px; font-weight: 600; white-space: nowrap; }
h2 { font-size: 15px; margin: 20px 0 8px; }
table { border-collapse: collapse; width: 100%; background: #fff; box-shadow: 0 1px 2px #0002; }
th, td { text-align: left; padding: 6px 10px; border-bottom: 1px solid #eceef2; white-space: nowrap; }
th { font-size: 12px; color: #667; font-weight: 600; }
.state { border-radius: 10px; padding: 1px 8px; font-size: 12px; font-weight: 600; color: #fff; background: #889; }
.state-serving { background: #2e8b57; }
.state-draining { background: #c58a00; }
.state-starting, .state-restarting { background: #3b6fd0; }
.state-crash_loop { background: #c0392b; }
.slots { display: inline-block; width: 80px; height: 8px; background: #dfe3ea; border-radius: 4px;
  vertical-align: middle; margin-right: 6px; overflow: hidden; }
.slots span { display: block; height: 100%; background: #d9822b; }
.chart { background: #fff; box-shadow: 0 1px 2px #0002; padding: 8px; }
.chart svg { width: 100%; height: 90px; display: block; }
.chart rect { fill: #3b6fd0; }
.chart polyline { fill: none; stroke: #d9822b; stroke-width: 2; vector-effect: non-scaling-stroke; }
.legend { font-size: 12px; color: #667; }
#error { display: none; background: #c0392b; color: #fff; padding: 8px 20px; }
#keyform { display: none; padding: 8px 20px; background: #fff3cd; }
#keyform input { width: 24em; }
"""

SCRIPT = """
"use strict";
const POLL_MS = __POLL_MS__;
const $ = (id) => document.getElementById(id);

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function secs(v) {
  if (v === null || v === undefined) return "-";
  return v < 1 ? Math.round(v * 1000) + " ms" : v.toFixed(2) + " s";
}

function ago(t) {
  const s = Math.max(0, Date.now() / 1000 - t);
  if (s < 120) return Math.round(s) + " s";
  if (s < 7200) return Math.round(s / 60) + " min";
  return (s / 3600).toFixed(1) + " h";
}

function card(label, value, id) {
  const c = el("div", null, "card");
  c.append(el("div", label, "label"));
  const v = el("div", value, "value");
  v.id = id;
  c.append(v);
  return c;
}

function row(cells) {
  const tr = el("tr");
  for (const c of cells) {
    const td = el("td");
    if (c instanceof Node) td.append(c); else td.textContent = String(c);
    tr.append(td);
  }
  return tr;
}

function slotBar(busy, slots) {
  const wrap = el("span");
  const bar = el("span", null, "slots");
  const fill = el("span");
  fill.style.width = (slots ? Math.round(100 * busy / slots) : 0) + "%";
  bar.append(fill);
  wrap.append(bar, el("span", busy + " busy / " + Math.max(0, slots - busy) + " free"));
  return wrap;
}

function chart(series, sliceS) {
  const svg = $("chart");
  while (svg.firstChild) svg.firstChild.remove();
  const ns = "http://www.w3.org/2000/svg";
  const w = 300, h = 90, n = series.length, bw = w / Math.max(n, 1);
  const maxReq = Math.max(1, ...series.map((s) => s.requests));
  const ttfts = series.map((s) => s.ttft_mean).filter((v) => v !== null);
  const maxTtft = Math.max(0.001, ...ttfts);
  const points = [];
  series.forEach((s, i) => {
    const r = document.createElementNS(ns, "rect");
    const bh = (h - 4) * s.requests / maxReq;
    r.setAttribute("x", (i * bw + 1).toFixed(1));
    r.setAttribute("y", (h - bh).toFixed(1));
    r.setAttribute("width", Math.max(1, bw - 2).toFixed(1));
    r.setAttribute("height", bh.toFixed(1));
    svg.append(r);
    if (s.ttft_mean === null) return;
    const y = h - 2 - (h - 6) * s.ttft_mean / maxTtft;
    points.push(((i + 0.5) * bw).toFixed(1) + "," + y.toFixed(1));
  });
  if (points.length) {
    const line = document.createElementNS(ns, "polyline");
    line.setAttribute("points", points.join(" "));
    svg.append(line);
  }
  $("chart-legend").textContent = "Bars: completion requests per " + sliceS + " s" +
    " (max " + maxReq + "); line: mean time to first token (max " + secs(ttfts.length ? maxTtft : null) + ").";
}

function render(s) {
  const t = s.traffic, minute = t.last_minute, workers = s.workers;
  const models = Object.entries(s.models);
  const slots = workers.reduce((a, w) => a + w.slots, 0), busy = workers.reduce((a, w) => a + w.busy, 0);
  $("version").textContent = "v" + s.version;
  $("updated").textContent = "updated " + new Date().toLocaleTimeString();
  $("rate").textContent = minute.requests_per_second.toFixed(2) + " /s";
  $("ttft").textContent = secs(minute.ttft.p50) + " / " + secs(minute.ttft.p95);
  $("ttft5").textContent = secs(t.window.ttft.p50) + " / " + secs(t.window.ttft.p95);
  $("errors").textContent = minute.errors + " / " + minute.requests;
  $("queued").textContent = models.reduce((a, [, m]) => a + m.queued, 0);
  $("inflight").textContent = s.inflight;
  $("workers").textContent = workers.length;
  $("busy").textContent = busy + " / " + slots;

  const mt = $("models");
  mt.replaceChildren();
  for (const [id, m] of models) {
    const byKey = Object.entries(m.queued_by_key || {}).map(([k, n]) => k + ": " + n).join(", ") || "-";
    const tr = row([id, m.workers, m.slots, m.busy, Math.max(0, m.slots - m.busy), byKey, m.queued]);
    tr.dataset.model = id;
    mt.append(tr);
  }
  const wt = $("worker-rows");
  wt.replaceChildren();
  if (!workers.length) wt.append(row(["no live worker", "", "", "", "", "", "", "", ""]));
  for (const w of workers) {
    const tr = row([
      w.id, w.host, w.engine + (w.engine_pid ? " (pid " + w.engine_pid + ")" : ""), w.device,
      w.models.join(", ") || "-", el("span", w.state, "state state-" + w.state), slotBar(w.busy, w.slots),
      w.restarts + (w.last_exit ? " (" + w.last_exit + ")" : ""), ago(w.started_at),
    ]);
    tr.dataset.worker = w.id;
    wt.append(tr);
  }
  chart(t.series, t.slice_seconds);
}

const KEY_ITEM = "inference-status-key";

function askForKey(why) {
  $("keyform").style.display = "block";
  $("keywhy").textContent = why;
}

$("keyform").addEventListener("submit", (ev) => {
  ev.preventDefault();
  sessionStorage.setItem(KEY_ITEM, $("key").value.trim());
  $("key").value = "";
  $("keyform").style.display = "none";
});

async function poll() {
  try {
    const key = sessionStorage.getItem(KEY_ITEM);
    const headers = key ? { Authorization: "Bearer " + key } : {};
    const resp = await fetch("/v1/system/status", { cache: "no-store", headers: headers });
    if (resp.status === 401 || resp.status === 403) {
      askForKey(resp.status === 401 ? "This service has API keys: give an admin key."
        : "That key is not an admin key.");
      throw new Error("HTTP " + resp.status);
    }
    if (!resp.ok) throw new Error("HTTP " + resp.status);
    render(await resp.json());
    $("error").style.display = "none";
  } catch (err) {
    $("error").textContent = "Status unavailable: " + err.message;
    $("error").style.display = "block";
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

const cards = $("cards");
cards.append(
  card("Requests/s (1 min)", "-", "rate"), card("TTFT p50/p95 (1 min)", "-", "ttft"),
  card("TTFT p50/p95 (5 min)", "-", "ttft5"), card("5xx / requests (1 min)", "-", "errors"),
  card("Queued jobs", "-", "queued"), card("In flight", "-", "inflight"),
  card("Live workers", "-", "workers"), card("Busy / total slots", "-", "busy"),
);
poll();
""".replace("__POLL_MS__", str(POLL_MS))

BODY = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Inference status</title>
<link rel="icon" href="data:,">
<style>__STYLE__</style>
</head>
<body>
<header><h1>Inference status</h1><span class="muted" id="version"></span><span class="muted" id="updated">loading</span>
</header>
<div id="error"></div>
<form id="keyform"><span id="keywhy"></span> <input id="key" type="password" autocomplete="off"
 aria-label="admin API key"> <button type="submit">Use key</button> (kept in this tab only)</form>
<main>
<div class="cards" id="cards"></div>
<h2>Traffic, last 5 minutes</h2>
<div class="chart"><svg id="chart" viewBox="0 0 300 90" preserveAspectRatio="none"></svg>
<div class="legend" id="chart-legend"></div></div>
<h2>Models</h2>
<table><thead><tr><th>Model</th><th>Workers</th><th>Slots</th><th>Busy</th><th>Free</th><th>Queued by key</th>
<th>Queued</th></tr></thead>
<tbody id="models"></tbody></table>
<h2>Workers</h2>
<table><thead><tr><th>Worker</th><th>Host</th><th>Engine</th><th>Device</th><th>Models</th><th>State</th>
<th>Slots</th><th>Restarts (last exit)</th><th>Up</th></tr></thead><tbody id="worker-rows"></tbody></table>
</main>
<script>__SCRIPT__</script>
</body>
</html>
""".replace("__STYLE__", STYLE).replace("__SCRIPT__", SCRIPT)


def _sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


CSP = (
    f"default-src 'none'; script-src {_sha256(SCRIPT)}; style-src {_sha256(STYLE)}; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


class StatusPage:
    """The page itself is static; every value on it comes from /v1/system/status, read by the script."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = falcon.MEDIA_HTML
        resp.text = BODY
        resp.set_header("Content-Security-Policy", CSP)
        resp.set_header("Cache-Control", "no-store")
        resp.set_header("X-Content-Type-Options", "nosniff")
