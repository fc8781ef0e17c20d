/* valueloop web view: value stream map, releases, DORA. Vanilla JS, inline SVG, no dependencies.
 *
 * Live mode (served by the worker): each page fetches its JSON from api/... and re-renders every
 * few seconds without reloading. Report mode (the static HTML file): the data is embedded as JSON
 * in the element with id "valueloop-data", pages are switched by the URL hash.
 * Every string from the data goes into the DOM as text, never as markup.
 */
(function () {
  "use strict";

  const SVGNS = "http://www.w3.org/2000/svg";
  const REFRESH_MS = 5000;
  const VERDICTS = ["degraded", "improved", "confounded", "inconclusive", "neutral"];
  const PAGES = [
    ["vsm", "Value stream map"],
    ["releases", "Releases"],
    ["value", "Value"],
    ["dora", "DORA"],
  ];
  const OUTCOMES = ["met", "partly-met", "not-met", "went-the-other-way", "inconclusive", "pending"];

  // ---------------------------------------------------------------------------- DOM helpers

  function add(node, children) {
    for (const c of children) {
      if (c === null || c === undefined || c === false) continue;
      node.appendChild(typeof c === "string" || typeof c === "number" ? document.createTextNode(String(c)) : c);
    }
    return node;
  }

  function setAttrs(node, attrs) {
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k.startsWith("on") && typeof v === "function") node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v === true ? "" : String(v));
    }
    return node;
  }

  function h(tag, attrs, ...children) {
    return add(setAttrs(document.createElement(tag), attrs), children);
  }

  function s(tag, attrs, ...children) {
    return add(setAttrs(document.createElementNS(SVGNS, tag), attrs), children);
  }

  // ---------------------------------------------------------------------------- formatting

  function dur(sec) {
    if (sec === null || sec === undefined) return "–";
    const a = Math.abs(sec);
    if (a < 90) return Math.round(sec) + " s";
    if (a < 5400) return Math.round(sec / 60) + " min";
    if (a < 3 * 86400) return (sec / 3600).toFixed(1) + " h";
    return (sec / 86400).toFixed(1) + " d";
  }

  function pct(x, signed) {
    if (x === null || x === undefined) return "–";
    const v = (100 * x).toFixed(1) + "%";
    return signed && x > 0 ? "+" + v : v.replace("-", "−");
  }

  function num(x, digits) {
    if (x === null || x === undefined) return "–";
    const a = Math.abs(x);
    if (a >= 1e6) return (x / 1e6).toFixed(2) + "M";
    if (a >= 1e4) return (x / 1e3).toFixed(1) + "k";
    if (a >= 100) return x.toFixed(0);
    if (a >= 1) return x.toFixed(digits === undefined ? 2 : digits);
    return x.toPrecision(3);
  }

  function when(t) {
    if (t === null || t === undefined) return "–";
    const d = new Date(t * 1000);
    const days = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
    const p = (n) => String(n).padStart(2, "0");
    return `${days[d.getUTCDay()]} ${d.getUTCFullYear()}-${p(d.getUTCMonth() + 1)}-${p(d.getUTCDate())} ${p(d.getUTCHours())}:${p(d.getUTCMinutes())} UTC`;
  }

  function periodLabel(sec) {
    const d = sec / 86400;
    return d >= 1 ? (Number.isInteger(d) ? d : d.toFixed(1)) + (d === 1 ? " day" : " days") : dur(sec);
  }

  function chip(verdict, interim) {
    return h("span", { class: `chip v-${verdict}${interim ? " interim" : ""}`, "data-verdict": verdict }, verdict + (interim ? " (interim)" : ""));
  }

  // ---------------------------------------------------------------------------- data access

  const embedded = document.getElementById("valueloop-data");
  const REPORT = embedded ? JSON.parse(embedded.textContent) : null;
  const state = {
    page: document.body.dataset.page || "vsm",
    period: null,
    stream: null,
    release: null,
    stage: null,
    refreshes: 0,
  };

  function query() {
    return new URLSearchParams(window.location.search);
  }

  function readLocation() {
    if (REPORT) {
      const [page, arg] = window.location.hash.replace(/^#/, "").split("/");
      state.page = PAGES.some(([p]) => p === page) ? page : "vsm";
      if (state.page === "releases" && arg) state.release = decodeURIComponent(arg);
      state.stage = null;
      if (state.page === "value" && arg) {
        const a = decodeURIComponent(arg);
        if (a.startsWith("stage:")) state.stage = a.slice(6);
        else state.release = a;
      }
    } else {
      const q = query();
      if (q.get("period")) state.period = Number(q.get("period"));
      if (q.get("stream")) state.stream = q.get("stream");
      if (q.get("release")) state.release = q.get("release");
      if (q.get("stage")) state.stage = q.get("stage");
    }
  }

  async function getJson(path) {
    const r = await fetch(path, { cache: "no-store", headers: { Accept: "application/json" } });
    if (!r.ok) throw new Error(`${path}: HTTP ${r.status}`);
    return r.json();
  }

  function periodKey(p) {
    return String(Math.trunc(p));
  }

  async function loadFlow() {
    if (REPORT) return REPORT.flow[periodKey(state.period || REPORT.default_period)];
    return getJson("api/flow" + (state.period ? `?period=${state.period}` : ""));
  }

  async function loadDora() {
    if (REPORT) return REPORT.dora[periodKey(state.period || REPORT.default_period)];
    return getJson("api/dora" + (state.period ? `?period=${state.period}` : ""));
  }

  async function loadValue() {
    if (REPORT) return REPORT.value[periodKey(state.period || REPORT.default_period)];
    return getJson("api/value" + (state.period ? `?period=${state.period}` : ""));
  }

  // A link to the Value page: a release's bets, or a stage's work in progress.
  function valueHref(release, stage) {
    if (REPORT) return "#value" + (release ? "/" + encodeURIComponent(release) : stage ? "/" + encodeURIComponent("stage:" + stage) : "");
    return "value" + (release ? "?release=" + encodeURIComponent(release) : stage ? "?stage=" + encodeURIComponent(stage) : "");
  }

  async function loadReleases() {
    if (REPORT) return REPORT.releases;
    return getJson("api/releases");
  }

  async function loadRelease(id) {
    if (REPORT) return REPORT.release[id] || null;
    try {
      return await getJson("api/release?id=" + encodeURIComponent(id));
    } catch (e) {
      return null;
    }
  }

  function syncUrl() {
    if (REPORT) {
      let arg = state.page === "releases" && state.release ? state.release : null;
      if (state.page === "value") arg = state.stage ? "stage:" + state.stage : state.release;
      const hash = "#" + state.page + (arg ? "/" + encodeURIComponent(arg) : "");
      if (window.location.hash !== hash) history.replaceState(null, "", hash);
      return;
    }
    const q = query();
    const set = (k, v) => (v ? q.set(k, v) : q.delete(k));
    set("period", state.period);
    set("stream", state.page === "vsm" ? state.stream : null);
    set("release", state.page === "releases" || state.page === "value" ? state.release : null);
    set("stage", state.page === "value" ? state.stage : null);
    const url = window.location.pathname + (q.toString() ? "?" + q.toString() : "");
    if (url !== window.location.pathname + window.location.search) history.replaceState(null, "", url);
  }

  // ---------------------------------------------------------------------------- shell

  function renderHeader() {
    const nav = h("nav", {});
    for (const [page, label] of PAGES) {
      const href = REPORT ? "#" + page : page;
      nav.appendChild(h("a", { href, class: page === state.page ? "current" : null, "data-page": page }, label));
    }
    const header = document.querySelector("header");
    header.replaceChildren(h("span", { class: "brand" }, REPORT ? REPORT.title || "valueloop" : "valueloop"), nav, h("span", { class: "status", id: "status" }, ""));
  }

  function setStatus(now, error) {
    const el = document.getElementById("status");
    if (!el) return;
    el.classList.toggle("error", Boolean(error));
    const asOf = now ? "data as of " + when(now) : "no events yet";
    if (REPORT) el.textContent = `static report · ${asOf}`;
    else if (error) el.textContent = `${asOf} · refresh failed (${error}), retrying`;
    else el.textContent = `${asOf} · refreshed ${new Date().toLocaleTimeString()}`;
  }

  function periodSelect(periods, current, onChange) {
    const sel = h("select", { id: "period", onchange: (e) => onChange(Number(e.target.value)) });
    for (const p of periods) sel.appendChild(h("option", { value: p, selected: Math.abs(p - current) < 1 ? true : null }, periodLabel(p)));
    return h("label", {}, "period", sel);
  }

  function tile(label, value, sub, cls, attrs) {
    return h("div", Object.assign({ class: "tile" + (cls ? " " + cls : "") }, attrs || {}), h("div", { class: "label" }, label), h("div", { class: "value" }, value), sub ? h("div", { class: "sub" }, sub) : null);
  }

  // ---------------------------------------------------------------------------- value stream map

  let valueData = null;

  function renderVsm(data) {
    const main = [];
    const names = Object.keys(data.value_streams);
    main.push(h("h1", {}, "Value stream map"));
    if (!names.length) {
      main.push(h("div", { class: "empty" }, "No work items yet: the map appears once workflow events arrive."));
      return main;
    }
    if (!state.stream || !data.value_streams[state.stream]) state.stream = names[0];
    const sel = h("select", { id: "stream", onchange: (e) => { state.stream = e.target.value; refresh(); } });
    for (const n of names) sel.appendChild(h("option", { value: n, selected: n === state.stream ? true : null }, n));
    main.push(h("div", { class: "controls" }, h("label", {}, "value stream", sel), periodSelect(data.periods, data.period_seconds, (p) => { state.period = p; refresh(); }), h("span", { class: "note" }, `period ${when(data.now - data.period_seconds)} → ${when(data.now)}`)));
    const r = data.value_streams[state.stream];
    const neck = r.bottleneck;
    main.push(
      h(
        "div",
        { class: "tiles" },
        tile("Flow time (p50 / p85)", r.flow_time ? dur(r.flow_time.p50) : "–", r.flow_time ? `p85 ${dur(r.flow_time.p85)} · ${r.flow_time.count} item(s)` : "no finished items", null, { id: "flow-time" }),
        tile("Flow efficiency", pct(r.efficiency), r.finished ? `active ${dur(r.active_seconds / r.finished)} of ${dur(r.flow_seconds / r.finished)} per item` : "no finished items", null, { id: "efficiency" }),
        tile("Finished in period", String(r.finished), `${num(r.velocity_per_day)} per day`),
        tile("Work in progress", String(r.open_items), "items in the stream now", null, { id: "wip" }),
        neck
          ? tile("Bottleneck", neck.stage, `items wait ${dur(neck.wait_p50)} (p50), ${dur(neck.wait_p85)} (p85) · ${pct(neck.wait_share)} of all waiting`, "neck", { id: "bottleneck", "data-stage": neck.stage })
          : tile("Bottleneck", "none", "no waiting time in the period", null, { id: "bottleneck" }),
      ),
    );
    main.push(h("div", { class: "card" }, vsmSvg(r, data.period_seconds), h("div", { class: "legend" }, h("span", {}, h("i", { class: "sw-waiting" }), "waiting (p50 solid, p85 light)"), h("span", {}, h("i", { class: "sw-active" }), "active (p50 solid, p85 light)"), h("span", {}, h("i", { class: "sw-wip" }), "WIP: items in the stage now"), h("span", {}, "dashed box: before the flow starts (backlog, not flow time)"))));
    main.push(h("h2", {}, "Where an average item's flow time goes (to scale)"));
    main.push(h("div", { class: "card" }, ladderSvg(r)));
    const wip = (valueData && valueData.wip ? valueData.wip : []).filter((w) => w.value_stream === r.value_stream);
    if (wip.length) {
      const byStage = {};
      for (const w of wip) byStage[w.stage || "between stages"] = (byStage[w.stage || "between stages"] || 0) + 1;
      main.push(h("h2", {}, "Bets in progress, by stage"));
      main.push(h("div", { class: "card", id: "stage-bets" }, ...Object.entries(byStage).map(([st, n]) => h("a", { class: "stage-bets", "data-stage": st, href: valueHref(null, st) }, `${st}: ${n} item(s) with a bet →`)), h("a", { class: "stage-bets", href: valueHref(null, null) }, "all bets →")));
    }
    return main;
  }

  function vsmSvg(r, period) {
    const W = 136, G = 20, X0 = 10, BOX_Y = 34, BOX_H = 84, BAR_Y = BOX_Y + BOX_H + 30, ROW = 30;
    const stages = r.stages;
    const width = X0 * 2 + stages.length * W + (stages.length - 1) * G;
    const height = BAR_Y + 2 * ROW + 26;
    let max = 0;
    for (const st of stages) for (const d of [st.active, st.wait]) if (d) max = Math.max(max, d.p85, d.p50);
    const scale = max > 0 ? (W - 4) / max : 0;
    const svg = s("svg", { id: "vsm-map", "data-stream": r.value_stream, "data-period": Math.trunc(period), width, height, viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": "value stream map" });
    svg.appendChild(s("title", {}, `Value stream ${r.value_stream}: stages, WIP, active and waiting times`));
    stages.forEach((st, i) => {
      const x = X0 + i * (W + G);
      const cls = "stage" + (st.bottleneck ? " bottleneck" : "") + (st.in_flow ? "" : " preflow");
      const g = s("g", { class: cls, "data-stage": st.stage, "data-bottleneck": st.bottleneck ? "true" : "false", "data-wip": st.wip });
      if (i > 0) {
        const ax = x - G;
        g.appendChild(s("path", { class: "arrow", d: `M${ax + 3},${BOX_Y + BOX_H / 2} L${x - 5},${BOX_Y + BOX_H / 2} M${x - 10},${BOX_Y + BOX_H / 2 - 5} L${x - 4},${BOX_Y + BOX_H / 2} L${x - 10},${BOX_Y + BOX_H / 2 + 5}` }));
      }
      if (st.bottleneck) g.appendChild(s("text", { class: "neck-label", x: x + W / 2, y: BOX_Y - 8, "text-anchor": "middle" }, "▼ BOTTLENECK"));
      g.appendChild(s("rect", { class: "stage-box", x, y: BOX_Y, width: W, height: BOX_H, rx: 6 }));
      g.appendChild(s("text", { class: "name", x: x + 10, y: BOX_Y + 22 }, st.stage));
      g.appendChild(s("text", { class: "small", x: x + 10, y: BOX_Y + 40 }, `${st.kind} by default`));
      g.appendChild(s("text", { class: "small", x: x + 10, y: BOX_Y + 56 }, `${st.items} item(s) passed`));
      if (st.in_flow && st.wait_share !== null) g.appendChild(s("text", { class: "small", x: x + 10, y: BOX_Y + 72 }, `${pct(st.wait_share)} of waiting`));
      // WIP badge
      g.appendChild(s("rect", { class: "wip", x: x + W - 50, y: BOX_Y + BOX_H + 4, width: 46, height: 16, rx: 8 }));
      g.appendChild(s("text", { class: "wip-text", x: x + W - 27, y: BOX_Y + BOX_H + 16, "text-anchor": "middle" }, `WIP ${st.wip}`));
      // Bars drawn to one scale across all stages.
      [["wait", "waiting", st.wait], ["active", "active", st.active]].forEach(([key, kind, d], row) => {
        const y = BAR_Y + row * ROW;
        g.appendChild(s("rect", { class: "grid", x, y: y + 2, width: W, height: 12, fill: "none" }));
        if (d) {
          g.appendChild(s("rect", { class: `bar-${kind} bar-p85`, x, y: y + 2, width: Math.max(d.p85 * scale, d.p85 > 0 ? 1 : 0), height: 12, "data-kind": key }));
          g.appendChild(s("rect", { class: `bar-${kind}`, x, y: y + 2, width: Math.max(d.p50 * scale, d.p50 > 0 ? 1 : 0), height: 12 }));
        }
        g.appendChild(s("text", { class: "small", x, y: y + 26 }, `${key} ${d ? dur(d.p50) + " / " + dur(d.p85) : "–"}`));
      });
      svg.appendChild(g);
    });
    svg.appendChild(s("text", { class: "small", x: X0, y: height - 4 }, `bars: one scale for every stage, full width = ${dur(max)}`));
    return svg;
  }

  function ladderSvg(r) {
    const inflow = r.stages.filter((st) => st.in_flow);
    const n = Math.max(r.finished, 1);
    const segs = [];
    for (const st of inflow) {
      if (st.wait_seconds > 0) segs.push({ stage: st.stage, kind: "waiting", sec: st.wait_seconds / n, neck: st.bottleneck });
      if (st.active_seconds > 0) segs.push({ stage: st.stage, kind: "active", sec: st.active_seconds / n, neck: false });
    }
    const total = segs.reduce((a, b) => a + b.sec, 0);
    const width = 1100, height = 96, X0 = 10, span = width - 2 * X0;
    const svg = s("svg", { id: "vsm-ladder", width, height, viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": "flow time ladder" });
    if (!total) {
      svg.appendChild(s("text", { class: "small", x: X0, y: 30 }, "no finished items in the period"));
      return svg;
    }
    let x = X0;
    for (const seg of segs) {
      const w = (seg.sec / total) * span;
      const y = seg.kind === "waiting" ? 14 : 40;
      const g = s("g", { class: "ladder-seg", "data-stage": seg.stage, "data-kind": seg.kind });
      g.appendChild(s("rect", { class: (seg.kind === "waiting" ? "bar-waiting" : "bar-active") + (seg.neck ? " neck-seg" : " seg"), x, y, width: Math.max(w, 1), height: 22 }, s("title", {}, `${seg.stage} ${seg.kind}: ${dur(seg.sec)}`)));
      if (w > 60) g.appendChild(s("text", { class: "small ladder-text", x: x + 4, y: y + 15 }, `${seg.stage} ${dur(seg.sec)}`));
      svg.appendChild(g);
      x += w;
    }
    svg.appendChild(s("text", { class: "small", x: X0, y: 82 }, `upper: waiting, lower: active · per finished item ${dur(total)} (${pct(r.active_seconds / Math.max(r.flow_seconds, 1e-9))} active = flow efficiency)`));
    return svg;
  }

  // ---------------------------------------------------------------------------- releases

  function defaultRelease(data) {
    let best = null;
    for (const rels of Object.values(data.services)) {
      for (const r of rels) {
        const rank = r.overall === "degraded" ? 1 : 0;
        if (!best || rank > best.rank || (rank === best.rank && r.time > best.r.time)) best = { r, rank };
      }
    }
    return best ? best.r.id : null;
  }

  function renderReleases(data, detail) {
    const main = [h("h1", {}, "Releases")];
    const services = Object.keys(data.services);
    if (!services.length) {
      main.push(h("div", { class: "empty" }, "No releases of services with KPIs yet."));
      return main;
    }
    main.push(h("div", { class: "legend" }, ...VERDICTS.map((v) => h("span", {}, chip(v))), h("span", {}, "dashed: interim (the post window is still open)")));
    main.push(h("div", { class: "card" }, timelineSvg(data)));
    const table = h("table", { id: "release-table" });
    const head = h("tr", {}, h("th", {}, "service"), h("th", {}, "version"), h("th", {}, "time"), h("th", {}, "kind"), h("th", {}, "overall"), h("th", {}, "bets"));
    for (const k of data.kpis) head.appendChild(h("th", { class: "center" }, k));
    table.appendChild(h("thead", {}, head));
    const body = h("tbody", {});
    const rows = [];
    for (const svc of services) for (const r of data.services[svc]) rows.push(r);
    // Per product (value stream): its member services' releases together, newest first.
    const products = data.products || {};
    const grouped = Object.entries(products).some(([p, svcs]) => svcs.length > 1 || svcs[0] !== p);
    const productOf = (r) => r.product || r.service;
    rows.sort((a, b) => (grouped ? productOf(a).localeCompare(productOf(b)) : 0) || b.time - a.time || a.service.localeCompare(b.service));
    let current = null;
    for (const r of rows) {
      if (grouped && productOf(r) !== current) {
        current = productOf(r);
        const members = (products[current] || [r.service]).join(", ");
        body.appendChild(h("tr", { class: "product-row", "data-product": current }, h("th", { colspan: String(5 + data.kpis.length) }, `${current}`, h("span", { class: "note" }, ` · ${members}`))));
      }
      const tr = h("tr", { class: "release-row" + (r.id === state.release ? " selected" : ""), "data-release-id": r.id, "data-service": r.service, "data-product": productOf(r), "data-version": r.version, "data-verdict": r.overall || "", onclick: () => selectRelease(r.id) });
      tr.appendChild(h("td", {}, r.service));
      tr.appendChild(h("td", {}, r.version, Object.keys(r.scope).length ? h("span", { class: "note" }, " " + Object.entries(r.scope).map(([k, v]) => `${k}=${v}`).join(",")) : null));
      tr.appendChild(h("td", {}, when(r.time)));
      tr.appendChild(h("td", {}, r.kind));
      tr.appendChild(h("td", {}, r.overall ? chip(r.overall, !r.finalized) : h("span", { class: "note" }, "waiting")));
      const bets = r.bets || [];
      tr.appendChild(h("td", {}, bets.length ? h("a", { class: "bets-link", href: valueHref(r.id, null), onclick: (e) => e.stopPropagation() }, bets.map((b) => `${b.kpi} ${pct(b.expected, true)}`).join(", ") + " →") : h("span", { class: "note" }, "–")));
      for (const k of data.kpis) {
        const v = r.verdicts[k];
        const td = h("td", { class: "cell", "data-kpi": k });
        if (v) {
          const label = v.change !== undefined && v.change !== null ? pct(v.change, true) : v.verdict;
          td.appendChild(h("span", { class: `v-${v.verdict}${v.phase === "interim" ? " interim" : ""}`, "data-verdict": v.verdict, title: `${k}: ${v.verdict} (${v.phase})` }, label));
        }
        tr.appendChild(td);
      }
      body.appendChild(tr);
    }
    table.appendChild(body);
    main.push(h("div", { class: "card" }, table));
    main.push(h("div", { id: "release-detail" }, detail ? renderDetail(detail) : h("div", { class: "empty" }, "Select a release to see its KPIs before and after.")));
    return main;
  }

  function timelineSvg(data) {
    const services = Object.keys(data.services);
    const all = services.flatMap((s) => data.services[s]);
    let t0 = Math.min(...all.map((r) => r.time));
    let t1 = Math.max(data.now || 0, ...all.map((r) => r.time));
    if (t1 - t0 < 3600) t0 = t1 - 3600;
    const pad = (t1 - t0) * 0.03;
    t0 -= pad;
    t1 += pad;
    const L = 110, R = 20, LANE = 44, width = 1100, height = 28 + services.length * LANE + 20;
    const x = (t) => L + ((t - t0) / (t1 - t0)) * (width - L - R);
    const svg = s("svg", { id: "release-timeline", width, height, viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": "release timeline" });
    // time ticks: every 6 hours (or a day when long)
    const stepH = (t1 - t0) > 6 * 86400 ? 24 : (t1 - t0) > 2 * 86400 ? 12 : (t1 - t0) > 12 * 3600 ? 6 : 1;
    const step = stepH * 3600;
    for (let t = Math.ceil(t0 / step) * step; t <= t1; t += step) {
      svg.appendChild(s("line", { class: "grid", x1: x(t), x2: x(t), y1: 18, y2: height - 16 }));
      const d = new Date(t * 1000);
      const lbl = d.getUTCHours() === 0 ? when(t).slice(0, 15) : String(d.getUTCHours()).padStart(2, "0") + ":00";
      svg.appendChild(s("text", { class: "small", x: x(t), y: 12, "text-anchor": "middle" }, lbl));
    }
    services.forEach((svc, i) => {
      const y = 28 + i * LANE + LANE / 2;
      svg.appendChild(s("text", { class: "name", x: 6, y: y + 4 }, svc));
      svg.appendChild(s("line", { class: "axis", x1: L, x2: width - R, y1: y, y2: y }));
      data.services[svc].forEach((r, j) => {
        const v = r.overall || "neutral";
        const g = s("g", { class: `v-${v} release-marker`, "data-release-id": r.id, "data-verdict": r.overall || "", onclick: () => selectRelease(r.id) });
        g.appendChild(s("circle", { class: "marker" + (r.id === state.release ? " selected" : "") + (r.finalized ? "" : " interim"), cx: x(r.time), cy: y, r: 8 }, s("title", {}, `${r.service} ${r.version} (${r.kind}) ${when(r.time)}: ${r.overall || "waiting"}`)));
        g.appendChild(s("text", { class: "small", x: x(r.time), y: y + (j % 2 ? 22 : -12), "text-anchor": "middle" }, r.version.length > 18 ? r.version.slice(0, 17) + "…" : r.version));
        svg.appendChild(g);
      });
    });
    return svg;
  }

  function pathOf(series, x, y) {
    if (!series) return "";
    let d = "";
    let pen = false;
    series.values.forEach((v, i) => {
      if (v === null) {
        pen = false;
        return;
      }
      const t = series.start + (i + 0.5) * series.bucket_seconds;
      d += (pen ? "L" : "M") + x(t).toFixed(1) + "," + y(v).toFixed(1);
      pen = true;
    });
    return d;
  }

  function kpiChart(k, releaseTime) {
    const width = 600, height = 220, L = 56, R = 10, T = 16, B = 26;
    const b = k.baseline, p = k.post, ref = k.reference;
    const t0 = b.start, t1 = p.end;
    const vals = [];
    for (const ser of [b, p, ref && ref.baseline, ref && ref.post]) if (ser) for (const v of ser.values) if (v !== null) vals.push(v);
    for (const v of [b.value, p.value]) if (v !== null && v !== undefined) vals.push(v);
    let lo = vals.length ? Math.min(...vals) : 0, hi = vals.length ? Math.max(...vals) : 1;
    if (hi === lo) { hi += Math.abs(hi) * 0.1 + 1e-9; lo -= Math.abs(lo) * 0.1 + 1e-9; }
    const m = (hi - lo) * 0.08;
    lo -= m; hi += m;
    const x = (t) => L + ((t - t0) / (t1 - t0)) * (width - L - R);
    const y = (v) => T + (1 - (v - lo) / (hi - lo)) * (height - T - B);
    const svg = s("svg", { class: "kpi-chart", "data-kpi": k.kpi, "data-verdict": k.verdict ? k.verdict.verdict : "", width, height, viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": `${k.kpi} before and after the release` });
    svg.appendChild(s("rect", { class: "win-base", x: x(b.start), y: T, width: x(b.end) - x(b.start), height: height - T - B }));
    svg.appendChild(s("rect", { class: "win-post", x: x(p.start), y: T, width: x(p.end) - x(p.start), height: height - T - B }));
    for (let i = 0; i <= 4; i++) {
      const v = lo + ((hi - lo) * i) / 4;
      svg.appendChild(s("line", { class: "grid", x1: L, x2: width - R, y1: y(v), y2: y(v) }));
      svg.appendChild(s("text", { class: "small", x: L - 4, y: y(v) + 4, "text-anchor": "end" }, num(v)));
    }
    svg.appendChild(s("text", { class: "small", x: x(b.start) + 3, y: T + 11 }, "baseline"));
    svg.appendChild(s("text", { class: "small", x: x(p.start) + 3, y: T + 11 }, "post"));
    if (ref) {
      svg.appendChild(s("path", { class: "series-ref", "data-series": "reference", d: pathOf(ref.baseline, x, y) + pathOf(ref.post, x, y) }));
    }
    svg.appendChild(s("path", { class: "series-base", "data-series": "baseline", d: pathOf(b, x, y) }));
    svg.appendChild(s("path", { class: "series-post", "data-series": "post", d: pathOf(p, x, y) }));
    if (b.value !== null) svg.appendChild(s("line", { class: "mean mean-base", x1: x(b.start), x2: x(b.end), y1: y(b.value), y2: y(b.value) }, s("title", {}, `baseline ${num(b.value)}`)));
    if (p.value !== null) svg.appendChild(s("line", { class: "mean mean-post", x1: x(p.start), x2: x(p.end), y1: y(p.value), y2: y(p.value) }, s("title", {}, `post ${num(p.value)}`)));
    svg.appendChild(s("line", { class: "release-line", x1: x(releaseTime), x2: x(releaseTime), y1: T - 4, y2: height - B }));
    svg.appendChild(s("text", { class: "small", x: x(t0), y: height - 8 }, when(t0).slice(15)));
    svg.appendChild(s("text", { class: "small", x: x(releaseTime), y: height - 8, "text-anchor": "middle" }, "release " + when(releaseTime).slice(15, 21)));
    svg.appendChild(s("text", { class: "small", x: x(t1), y: height - 8, "text-anchor": "end" }, when(t1).slice(15, 21)));
    return svg;
  }

  function ciSvg(k) {
    const v = k.verdict;
    const width = 600, height = 34, L = 10, R = 10;
    const svg = s("svg", { class: `ci-chart v-${v ? v.verdict : "neutral"}`, width, height, viewBox: `0 0 ${width} ${height}` });
    if (!v || v.change === null || v.change === undefined) return svg;
    const lo0 = v.ci_low === null ? v.change : v.ci_low, hi0 = v.ci_high === null ? v.change : v.ci_high;
    const ext = Math.max(Math.abs(lo0), Math.abs(hi0), k.min_change * 1.5, 0.01) * 1.1;
    const x = (c) => L + ((c + ext) / (2 * ext)) * (width - L - R);
    svg.appendChild(s("rect", { class: "ci-band", x: x(-k.min_change), y: 4, width: x(k.min_change) - x(-k.min_change), height: 16 }, s("title", {}, `±${pct(k.min_change)}: too small to matter`)));
    svg.appendChild(s("line", { class: "axis", x1: L, x2: width - R, y1: 12, y2: 12 }));
    svg.appendChild(s("line", { class: "axis", x1: x(0), x2: x(0), y1: 2, y2: 22 }));
    svg.appendChild(s("line", { class: "ci-whisker", x1: x(lo0), x2: x(hi0), y1: 12, y2: 12 }));
    svg.appendChild(s("circle", { class: "ci-dot", cx: x(v.change), cy: 12, r: 5 }));
    svg.appendChild(s("text", { class: "small", x: L, y: 32 }, pct(-ext)));
    svg.appendChild(s("text", { class: "small", x: x(0), y: 32, "text-anchor": "middle" }, "0"));
    svg.appendChild(s("text", { class: "small", x: width - R, y: 32, "text-anchor": "end" }, pct(ext, true)));
    return svg;
  }

  function renderDetail(d) {
    const verdicts = d.kpis.map((k) => (k.verdict ? k.verdict.verdict : null)).filter(Boolean);
    const top = VERDICTS.find((v) => verdicts.includes(v));
    const box = h("div", { class: "card", id: "release-charts", "data-release-id": d.id });
    box.appendChild(h("h2", {}, `${d.service} ${d.version} `, top ? chip(top, !d.finalized) : null));
    box.appendChild(h("div", { class: "note" }, `${d.kind} at ${when(d.time)}` + (Object.keys(d.scope).length ? ` · scope ${Object.entries(d.scope).map(([a, b]) => a + "=" + b).join(", ")}` : "") + ` · release id ${d.id}`));
    box.appendChild(h("div", { class: "legend" }, h("span", {}, h("i", { class: "sw-base" }), "baseline"), h("span", {}, h("i", { class: "sw-post" }), "post"), h("span", {}, h("i", { class: "sw-ref" }), "reference (dashed: the same hours on earlier days, or the rest of the traffic)"), h("span", {}, "thick lines: window values")));
    const grid = h("div", { class: "charts" });
    for (const k of d.kpis) {
      const v = k.verdict;
      const card = h("div", { class: `kpi v-${v ? v.verdict : "neutral"}`, "data-kpi": k.kpi, "data-verdict": v ? v.verdict : "" });
      card.appendChild(h("div", { class: "head" }, h("h3", {}, k.kpi, k.critical ? h("span", { class: "note" }, " critical") : null, h("span", { class: "note" }, ` · ${k.aggregation}, good ${k.direction}`)), v ? chip(v.verdict, v.phase === "interim") : h("span", { class: "note" }, "not judged yet")));
      card.appendChild(kpiChart(k, d.time));
      if (v && v.change !== undefined) {
        card.appendChild(h("div", { class: "estimate" }, `change ${pct(v.change, true)}`, v.ci_low !== null && v.ci_low !== undefined ? ` (95% CI ${pct(v.ci_low, true)} … ${pct(v.ci_high, true)})` : "", ` · baseline ${num(v.baseline_value)} → post ${num(v.post_value)}`));
        card.appendChild(ciSvg(k));
        card.appendChild(h("div", { class: "reason" }, v.reason || ""));
        const ref = k.reference ? `reference: ${k.reference.label} (lag ${dur(k.reference.lag_seconds)})` : "no reference: compared with the baseline only";
        card.appendChild(h("div", { class: "reason" }, `${ref}${v.method ? " · method " + v.method : ""}${v.p_adjusted !== null && v.p_adjusted !== undefined ? " · adjusted p " + num(v.p_adjusted, 3) : ""}`));
      } else if (v) {
        card.appendChild(h("div", { class: "reason" }, "interim look: the estimate comes with the final verdict"));
      }
      grid.appendChild(card);
    }
    box.appendChild(grid);
    return box;
  }

  function selectRelease(id) {
    state.release = id;
    refresh();
    const el = document.getElementById("release-detail");
    if (el) el.scrollIntoView({ block: "start" });
  }


  // ---------------------------------------------------------------------------- value

  function units(x, unit) {
    if (x === null || x === undefined) return "–";
    return (x > 0 ? "+" : "") + num(x, 1).replace("-", "−") + " " + unit + "/day";
  }

  function money(x, currency) {
    if (x === null || x === undefined) return null;
    return (currency ? currency + " " : "") + Math.round(x).toLocaleString("en");
  }

  function outcomeChip(o) {
    return h("span", { class: `chip o-${o || "none"}`, "data-outcome": o || "" }, o ? o.replaceAll("-", " ") : "undeclared");
  }

  // The delivered change with its interval, drawn against the declared expectation (and zero).
  function betSvg(x) {
    const width = 240, height = 30, L = 6, R = 6;
    const vals = [0, x.expected];
    for (const v of [x.change, x.ci_low, x.ci_high]) if (v !== null && v !== undefined) vals.push(v);
    const ext = Math.max(...vals.map(Math.abs), 0.01) * 1.15;
    const X = (c) => L + ((c + ext) / (2 * ext)) * (width - L - R);
    const svg = s("svg", { class: `bet-chart o-${x.outcome}`, "data-kpi": x.kpi, "data-expected": x.expected, "data-delivered": x.change === null ? "" : x.change, width, height, viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": `${x.kpi}: expected ${pct(x.expected, true)}, delivered ${pct(x.change, true)}` });
    svg.appendChild(s("line", { class: "axis", x1: L, x2: width - R, y1: 13, y2: 13 }));
    svg.appendChild(s("line", { class: "axis", x1: X(0), x2: X(0), y1: 3, y2: 23 }));
    // Expected: a band from zero to the bet, and a marker at it.
    const e0 = Math.min(0, x.expected), e1 = Math.max(0, x.expected);
    svg.appendChild(s("rect", { class: "bet-expected-band", x: X(e0), y: 6, width: X(e1) - X(e0), height: 14 }));
    svg.appendChild(s("line", { class: "bet-expected", "data-series": "expected", x1: X(x.expected), x2: X(x.expected), y1: 1, y2: 25 }, s("title", {}, `expected ${pct(x.expected, true)}`)));
    if (x.change !== null && x.change !== undefined) {
      const lo = x.ci_low === null ? x.change : x.ci_low, hi = x.ci_high === null ? x.change : x.ci_high;
      svg.appendChild(s("line", { class: "ci-whisker bet-ci", "data-series": "interval", x1: X(lo), x2: X(hi), y1: 13, y2: 13 }, s("title", {}, `95% interval ${pct(lo, true)} … ${pct(hi, true)}`)));
      svg.appendChild(s("circle", { class: "bet-dot", "data-series": "delivered", cx: X(x.change), cy: 13, r: 5 }, s("title", {}, `delivered ${pct(x.change, true)}`)));
    }
    svg.appendChild(s("text", { class: "small", x: L, y: 29 }, pct(-ext)));
    svg.appendChild(s("text", { class: "small", x: width - R, y: 29, "text-anchor": "end" }, pct(ext, true)));
    return svg;
  }

  function renderValue(data) {
    const main = [h("h1", {}, "Value: which bets paid off, what they cost")];
    const cur = data.currency || "";
    main.push(h("div", { class: "controls" }, periodSelect(data.periods, data.period_seconds, (p) => { state.period = p; refresh(); }), h("span", { class: "note" }, `releases of ${when(data.now - data.period_seconds)} → ${when(data.now)}; value = the judge's baseline level × the change, per day; cost = active engineering hours` + (data.cost_per_hour ? ` × ${money(data.cost_per_hour, cur)}/h` : " (set VALUELOOP_COST_PER_HOUR for money)"))));
    const services = Object.keys(data.portfolio);
    if (services.length) {
      main.push(h("h2", {}, "Portfolio"));
      const grid = h("div", { class: "tiles", id: "portfolio" });
      for (const svc of services) {
        const p = data.portfolio[svc];
        const vpd = Object.entries(p.value_per_day).map(([u, v]) => units(v, u)).join(", ") || "–";
        grid.appendChild(h("div", { class: "tile portfolio", "data-service": svc }, h("div", { class: "label" }, svc), h("div", { class: "value" }, `${p.bets} bet(s)`), h("div", { class: "sub" }, `met ${pct(p.share_met)} · not met ${pct(p.share_not_met)} · other way ${pct(p.share_went_the_other_way)}` + (p.outcomes.pending ? ` · ${p.outcomes.pending} pending` : "")), h("div", { class: "sub" }, `delivered ${vpd}`), h("div", { class: "sub" }, `cost ${num(p.active_hours, 1)} h` + (p.cost !== null ? ` · ${money(p.cost, cur)}` : ""))));
      }
      main.push(grid);
    }
    main.push(h("h2", {}, "Bets, ranked by value per engineering hour"));
    if (!data.bets.length) {
      main.push(h("div", { class: "empty" }, "No bets yet: declare one on a deployment (customData.valueloop.expect, valueloop emit deployment --expect conversion:+3%), on a work item, or in the features file."));
    } else {
      main.push(h("div", { class: "legend" }, ...OUTCOMES.map((o) => h("span", {}, outcomeChip(o))), h("span", {}, h("i", { class: "sw-expected" }), "expected (from zero to the bet)"), h("span", {}, "● delivered, line: 95% interval")));
      const table = h("table", { id: "bet-table" });
      table.appendChild(h("thead", {}, h("tr", {}, ...["#", "bet", "expected vs delivered (95% interval)", "outcome", "cost", "value a day", "per eng. hour"].map((c) => h("th", {}, c)))));
      const body = h("tbody", {});
      for (const b of data.bets) {
        const subject = b.kind === "item" ? `${b.service} item ${b.item_id}` : `${b.service} ${b.version}`;
        const sel = state.release && b.release_id === state.release;
        const tr = h("tr", { class: "bet-row" + (sel ? " selected" : ""), "data-rank": b.rank, "data-outcome": b.outcome || "", "data-release-id": b.release_id || "", "data-item-id": b.item_id || "", "data-service": b.service, "data-version": b.version });
        tr.appendChild(h("td", { class: "rank" }, String(b.rank)));
        tr.appendChild(h("td", {}, subject, h("div", { class: "note" }, b.kind === "item" ? `shipped by ${b.version || "no release yet"}` : when(b.time))));
        tr.appendChild(
          h(
            "td",
            {},
            ...b.expectations.map((x) =>
              h(
                "div",
                { class: "bet", "data-kpi": x.kpi },
                betSvg(x),
                h("div", { class: "bet-expect" }, `${x.kpi}: expected ${pct(x.expected, true)}`, x.value && x.value.expected_per_day !== null ? h("span", { class: "note" }, ` ≈ ${units(x.value.expected_per_day, x.value.unit)}`) : null),
                h("div", { class: "bet-delivered" }, x.change === null || x.change === undefined ? "delivered: no verdict yet" : `delivered ${pct(x.change, true)}`, x.ci_low !== null && x.ci_low !== undefined ? h("span", { class: "note" }, ` [${pct(x.ci_low, true)} … ${pct(x.ci_high, true)}]`) : null),
              ),
            ),
          ),
        );
        tr.appendChild(h("td", {}, outcomeChip(b.outcome), ...b.expectations.filter(() => b.expectations.length > 1).map((x) => h("div", { class: "note" }, `${x.kpi}: ${x.outcome.replaceAll("-", " ")}`))));
        tr.appendChild(h("td", { class: "cost" }, `${num(b.active_hours, 1)} h active`, h("div", { class: "note" }, `${num(b.total_hours, 1)} h in flow · ${b.items} item(s)`), b.cost !== null ? h("div", {}, money(b.cost, cur)) : null));
        const hd = b.headline;
        tr.appendChild(h("td", { class: "value-day" }, hd ? units(hd.per_day, hd.unit) : "–", hd && hd.per_day_low !== null ? h("div", { class: "note" }, `[${units(hd.per_day_low, hd.unit)} … ${units(hd.per_day_high, hd.unit)}]`) : null));
        tr.appendChild(h("td", { class: "value-hour" }, b.value_per_hour !== null && hd ? `${num(b.value_per_hour)} ${hd.unit}/day/h` : "–"));
        body.appendChild(tr);
      }
      table.appendChild(body);
      main.push(h("div", { class: "card" }, table));
    }
    main.push(h("h2", {}, "Work in progress with a bet" + (state.stage ? ` (stage ${state.stage})` : "")));
    const wip = data.wip.filter((w) => !state.stage || (w.stage || "between stages") === state.stage);
    if (!wip.length) {
      main.push(h("div", { class: "empty" }, "No unfinished work item carries a bet."));
    } else {
      const t = h("table", { id: "wip-table" }, h("thead", {}, h("tr", {}, ...["item", "value stream", "stage", "bet", "cost so far"].map((c) => h("th", {}, c)))));
      const tb = h("tbody", {});
      for (const w of wip) {
        tb.appendChild(h("tr", { class: "wip-row", "data-item-id": w.item_id, "data-stage": w.stage || "" }, h("td", {}, w.item_id), h("td", {}, w.value_stream), h("td", {}, w.stage || "between stages"), h("td", {}, w.expectations.map((x) => `${x.kpi} ${pct(x.expected, true)}`).join(", ")), h("td", {}, `${num(w.active_hours, 1)} h active`, h("span", { class: "note" }, ` · ${num(w.total_hours, 1)} h in flow`), w.cost !== null ? h("div", {}, money(w.cost, cur)) : null)));
      }
      t.appendChild(tb);
      main.push(h("div", { class: "card" }, t));
    }
    return main;
  }

  // ---------------------------------------------------------------------------- DORA

  function spark(points, key, fmt) {
    const width = 150, height = 36;
    const vals = points.map((p) => p[key]);
    const known = vals.filter((v) => v !== null && v !== undefined);
    const svg = s("svg", { class: "sparkline", "data-metric": key, width, height, viewBox: `0 0 ${width} ${height}` });
    if (!known.length) {
      svg.appendChild(s("text", { class: "small", x: 2, y: 22 }, "no data yet"));
      return svg;
    }
    const hi = Math.max(...known, 1e-9), lo = Math.min(0, ...known);
    const x = (i) => 4 + (i / Math.max(points.length - 1, 1)) * (width - 8);
    const y = (v) => 4 + (1 - (v - lo) / (hi - lo || 1)) * (height - 8);
    let d = "", pen = false;
    vals.forEach((v, i) => {
      if (v === null || v === undefined) { pen = false; return; }
      d += (pen ? "L" : "M") + x(i).toFixed(1) + "," + y(v).toFixed(1);
      pen = true;
      svg.appendChild(s("circle", { class: "spark-dot", cx: x(i), cy: y(v), r: 2.2 }, s("title", {}, `until ${when(points[i].end)}: ${fmt(v)}`)));
    });
    svg.insertBefore(s("path", { class: "spark", d }), svg.firstChild);
    return svg;
  }

  function renderDora(data) {
    const main = [h("h1", {}, "DORA metrics")];
    main.push(h("div", { class: "controls" }, periodSelect(data.periods, data.period_seconds, (p) => { state.period = p; refresh(); }), h("span", { class: "note" }, `period ${when(data.now - data.period_seconds)} → ${when(data.now)}; trend: ${periodLabel(data.trend_step_seconds)} slices, oldest first`)));
    const services = Object.keys(data.services);
    if (!services.length) {
      main.push(h("div", { class: "empty" }, "No deployments or incidents yet."));
      return main;
    }
    const grid = h("div", { class: "services" });
    for (const svc of services) {
      const r = data.services[svc];
      const card = h("div", { class: "card dora-service", "data-service": svc });
      card.appendChild(h("h2", {}, svc));
      const causes = Object.entries(r.failures_by_cause).filter(([, n]) => n).map(([c, n]) => `${c} ${n}`).join(", ");
      card.appendChild(
        h(
          "div",
          { class: "tiles" },
          h("div", { class: "tile", "data-metric": "deployment-frequency" }, h("div", { class: "label" }, "Deployment frequency"), h("div", { class: "value" }, num(r.per_day) + "/day"), h("div", { class: "sub" }, `${r.deployments} deployment(s)`), spark(r.trend, "per_day", (v) => num(v) + "/day")),
          h("div", { class: "tile", "data-metric": "lead-time" }, h("div", { class: "label" }, "Change lead time"), h("div", { class: "value" }, r.lead_time ? dur(r.lead_time.p50) : "–"), h("div", { class: "sub" }, r.lead_time ? `p85 ${dur(r.lead_time.p85)} · ${r.changes} change(s)` : "no changes with a first commit"), spark(r.trend, "lead_time_p50", dur)),
          h("div", { class: "tile", "data-metric": "change-failure-rate" }, h("div", { class: "label" }, "Change failure rate"), h("div", { class: "value" }, pct(r.change_failure_rate)), h("div", { class: "sub" }, `${r.failed_deployments} failed` + (causes ? ` · ${causes}` : "")), spark(r.trend, "change_failure_rate", pct)),
          h("div", { class: "tile", "data-metric": "recovery-time" }, h("div", { class: "label" }, "Failed deployment recovery"), h("div", { class: "value" }, r.recovery_time ? dur(r.recovery_time.p50) : "–"), h("div", { class: "sub" }, (r.recovery_time ? `p85 ${dur(r.recovery_time.p85)}` : "none recovered") + (r.unrecovered ? ` · ${r.unrecovered} unrecovered` : "")), spark(r.trend, "recovery_p50", dur)),
          h("div", { class: "tile", "data-metric": "rework-rate" }, h("div", { class: "label" }, "Deployment rework rate"), h("div", { class: "value" }, pct(r.rework_rate)), h("div", { class: "sub" }, `${r.rework_deployments} of ${r.deployments + r.rollbacks} unplanned (${r.rollbacks} rollback(s), fixes within ${dur(data.rework_window_seconds)} of a failure)`), spark(r.trend, "rework_rate", pct), h("div", { class: "sub" }, "no DORA level: no published bands")),
        ),
      );
      // Each metric's DORA performance level, now and per trend slice (oldest first).
      const levelNames = { deployment_frequency: "deployment-frequency", lead_time: "lead-time", change_failure_rate: "change-failure-rate", recovery_time: "recovery-time" };
      for (const [key, metric] of Object.entries(levelNames)) {
        const tileEl = card.querySelector(`.tile[data-metric="${metric}"]`);
        if (!tileEl) continue;
        const lvl = r.levels[key];
        tileEl.insertBefore(h("span", { class: `level l-${lvl || "none"}`, "data-level": lvl || "", title: "DORA performance level (2023 report clusters)" }, lvl || "no data"), tileEl.children[1]);
        tileEl.appendChild(h("div", { class: "level-trend", "data-metric": metric }, ...r.trend.map((p) => h("i", { class: `l-${(p.levels && p.levels[key]) || "none"}`, title: `until ${when(p.end)}: ${(p.levels && p.levels[key]) || "no data"}` }))));
      }
      card.appendChild(h("div", { class: "dora-levels" }, "levels: elite / high / medium / low from the 2023 Accelerate State of DevOps Report clusters (small squares: the level in each trend slice)"));
      if (r.failures.length) {
        const t = h("table", { class: "failures" }, h("thead", {}, h("tr", {}, h("th", {}, "failed deployment"), h("th", {}, "time"), h("th", {}, "causes"), h("th", {}, "from impact verdicts"), h("th", {}, "recovered after"))));
        const tb = h("tbody", {});
        for (const f of r.failures) {
          tb.appendChild(
            h(
              "tr",
              { class: "failure", "data-deployment-id": f.deployment_id, "data-from-impact": f.from_impact ? "true" : "false" },
              h("td", {}, f.version),
              h("td", {}, when(f.time)),
              h("td", {}, f.causes.join(", ")),
              h("td", { class: f.from_impact ? "failure-impact" : "" }, f.from_impact ? "degraded: " + f.degraded_kpis.join(", ") : "–"),
              h("td", {}, f.recovery_seconds === null ? "not yet" : dur(f.recovery_seconds)),
            ),
          );
        }
        t.appendChild(tb);
        card.appendChild(t);
      } else {
        card.appendChild(h("div", { class: "note" }, "no failed deployments in the period"));
      }
      grid.appendChild(card);
    }
    main.push(grid);
    return main;
  }

  // ---------------------------------------------------------------------------- main loop

  let inflight = null;
  let again = false;

  async function render() {
    let content, now;
    if (state.page === "vsm") {
      const data = await loadFlow();
      try {
        valueData = await loadValue();
      } catch (e) {
        valueData = null; // the map stands without its links to bets
      }
      content = renderVsm(data);
      now = data.now;
    } else if (state.page === "value") {
      const data = await loadValue();
      content = renderValue(data);
      now = data.now;
    } else if (state.page === "releases") {
      const data = await loadReleases();
      if (!state.release || !Object.values(data.services).some((rs) => rs.some((r) => r.id === state.release))) {
        if (!state.release || REPORT) state.release = defaultRelease(data);
      }
      const detail = state.release ? await loadRelease(state.release) : null;
      content = renderReleases(data, detail);
      now = data.now;
    } else {
      const data = await loadDora();
      content = renderDora(data);
      now = data.now;
    }
    renderHeader();
    document.querySelector("main").replaceChildren(...content);
    syncUrl();
    state.refreshes += 1;
    document.body.dataset.refreshes = String(state.refreshes);
    document.body.dataset.ready = "true";
    setStatus(now, null);
  }

  function refresh() {
    if (inflight) {
      again = true; // a selection changed while a render was running: render once more after it
      return inflight;
    }
    inflight = render()
      .catch((e) => {
        renderHeader();
        setStatus(null, e.message || String(e));
      })
      .finally(() => {
        inflight = null;
        if (again) {
          again = false;
          refresh();
        }
      });
    return inflight;
  }

  readLocation();
  if (REPORT) {
    if (!state.period) state.period = REPORT.default_period;
    window.addEventListener("hashchange", () => {
      readLocation();
      refresh();
    });
  } else {
    setInterval(() => {
      // Not while the reader is choosing in a list (a re-render would close it) or not looking.
      const el = document.activeElement;
      if (document.hidden || (el && el.tagName === "SELECT")) return;
      refresh();
    }, REFRESH_MS);
  }
  refresh();
})();
