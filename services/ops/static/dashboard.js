/* streamml ops dashboard: renders whatever views/panels GET /api/views returns, one uPlot chart per panel.
 *
 * Test hooks (headless Chromium): body[data-renders] counts successful renders, body[data-error] holds the
 * last fetch error (absent after a success), body[data-chart-builds] counts uPlot instances created (a
 * refresh with an unchanged series set reuses the chart via setData), and every panel has data-panel /
 * data-series / data-points.
 */
(function () {
  "use strict";

  const REFRESH_MS = 5000;
  const FETCH_TIMEOUT_MS = 4000;
  const CHART_HEIGHT = 200;
  const DEFAULT_MINUTES = 15;
  const PALETTE = [
    "#4cc9f0", "#f4a261", "#90be6d", "#f94144", "#b388eb",
    "#ffd166", "#43aa8b", "#f8961e", "#7aa2f7", "#e76f51",
  ];
  const AXIS = {
    stroke: "#8b949e",
    font: "11px system-ui, -apple-system, 'Segoe UI', 'DejaVu Sans', sans-serif",
    labelFont: "12px system-ui, -apple-system, 'Segoe UI', 'DejaVu Sans', sans-serif",
    grid: { stroke: "rgba(139, 148, 158, 0.13)", width: 1 },
    ticks: { stroke: "rgba(139, 148, 158, 0.25)", width: 1, size: 4 },
  };

  const $ = (id) => document.getElementById(id);
  const els = {
    views: $("views"), banner: $("banner"), targets: $("targets"), updated: $("updated"), range: $("range"),
  };

  const state = {
    minutes: readMinutes(),
    renders: 0,
    chartBuilds: 0, // body[data-chart-builds]: a refresh with the same series set must not add to it
    seq: 0, // request sequence: a response older than the latest request is dropped
    timer: null,
    lastOk: null,
    sections: new Map(), // view name -> {el, titleEl, grid}
    panels: new Map(), // panel id -> {el, titleEl, unitEl, body, chart, sig, observer}
  };

  // ---------- formatting ----------

  function fmtNum(v) {
    if (v == null || !Number.isFinite(v)) return "--";
    const a = Math.abs(v);
    if (a >= 1e9) return trim((v / 1e9).toFixed(2)) + "G";
    if (a >= 1e6) return trim((v / 1e6).toFixed(2)) + "M";
    if (a >= 1e4) return trim((v / 1e3).toFixed(1)) + "k";
    if (a >= 100) return v.toFixed(0);
    if (a >= 1) return trim(v.toFixed(2));
    if (a === 0) return "0";
    return String(Number(v.toPrecision(3)));
  }

  function trim(s) {
    return s.includes(".") ? s.replace(/\.?0+$/, "") : s;
  }

  function fmtAxis(v) {
    if (v == null) return "";
    const a = Math.abs(v);
    if (a >= 1e4) return fmtNum(v);
    return String(Number(v.toPrecision(6)));
  }

  function fmtTime(epochS, withDate) {
    const d = new Date(epochS * 1000);
    const t = d.toLocaleTimeString([], { hour12: false });
    return withDate ? d.toLocaleDateString() + " " + t : t;
  }

  function lastValue(arr) {
    if (!arr) return null;
    for (let i = arr.length - 1; i >= 0; i--) if (arr[i] != null) return arr[i];
    return null;
  }

  // ---------- range selector ----------

  function readMinutes() {
    const m = Number(new URLSearchParams(location.search).get("minutes"));
    return Number.isFinite(m) && m > 0 ? m : DEFAULT_MINUTES;
  }

  function markRange() {
    for (const b of els.range.querySelectorAll("button")) {
      b.classList.toggle("active", Number(b.dataset.minutes) === state.minutes);
    }
  }

  els.range.addEventListener("click", (ev) => {
    const b = ev.target.closest("button[data-minutes]");
    if (!b) return;
    state.minutes = Number(b.dataset.minutes);
    const url = new URL(location.href);
    url.searchParams.set("minutes", String(state.minutes));
    history.replaceState(null, "", url);
    markRange();
    refresh();
  });

  // ---------- fetching ----------

  async function getJSON(path) {
    const ctl = new AbortController();
    const t = setTimeout(() => ctl.abort(), FETCH_TIMEOUT_MS);
    try {
      const r = await fetch(path, { cache: "no-store", signal: ctl.signal, headers: { Accept: "application/json" } });
      if (!r.ok) throw new Error(`GET ${path}: HTTP ${r.status} ${r.statusText}`.trim());
      return await r.json();
    } catch (e) {
      if (e.name === "AbortError") throw new Error(`GET ${path}: no answer in ${FETCH_TIMEOUT_MS / 1000} s`);
      if (String(e.message).startsWith("GET ")) throw e;
      throw new Error(`GET ${path}: ${e.message || "network error"}`); // network failure, invalid JSON
    } finally {
      clearTimeout(t);
    }
  }

  async function refresh() {
    clearTimeout(state.timer);
    const seq = ++state.seq;
    const [views, summary] = await Promise.allSettled([
      getJSON(`/api/views?minutes=${encodeURIComponent(state.minutes)}`),
      getJSON("/api/summary"),
    ]);
    if (seq !== state.seq) return; // a newer refresh (range change) took over; it schedules the next one
    const errors = [];
    if (summary.status === "fulfilled") {
      try { renderTargets(summary.value); } catch (e) { errors.push(`summary: ${e.message}`); }
    } else errors.push(summary.reason.message);
    if (views.status === "fulfilled") {
      try {
        renderViews(views.value);
        state.renders += 1;
        document.body.dataset.renders = String(state.renders);
        state.lastOk = views.value.generated_at;
      } catch (e) {
        console.error(e);
        errors.push(`render: ${e.message}`);
      }
    } else errors.push(views.reason.message);
    showErrors(errors);
    state.timer = setTimeout(refresh, REFRESH_MS);
  }

  function showErrors(errors) {
    document.body.classList.toggle("stale", errors.length > 0);
    if (!errors.length) {
      delete document.body.dataset.error;
      els.banner.hidden = true;
      els.banner.textContent = "";
      return;
    }
    const text = errors.join("; ");
    document.body.dataset.error = text;
    const since = state.lastOk ? ` Showing data from ${fmtTime(state.lastOk)}.` : "";
    els.banner.textContent = `Cannot refresh: ${text}. Retrying every ${REFRESH_MS / 1000}\u00a0s.${since}`;
    els.banner.hidden = false;
  }

  // ---------- header ----------

  function renderTargets(summary) {
    const targets = Array.isArray(summary && summary.targets) ? summary.targets : [];
    els.targets.replaceChildren(...targets.map((t) => {
      const chip = document.createElement("span");
      chip.className = "target " + (t.up ? "up" : "down");
      chip.dataset.target = t.name;
      chip.dataset.up = t.up ? "1" : "0";
      chip.title = `${t.url || ""} — ${t.up ? "up" : "down"}`;
      const dot = document.createElement("i");
      chip.append(dot, document.createTextNode(t.name));
      return chip;
    }));
    if (!targets.length) {
      const none = document.createElement("span");
      none.className = "muted";
      none.textContent = "no targets";
      els.targets.append(none);
    }
  }

  // ---------- views and panels ----------

  function renderViews(payload) {
    const ts = (payload.timestamps || []).map(Number);
    const views = payload.views || [];
    $("loading")?.remove();

    const seenViews = new Set();
    const seenPanels = new Set();
    for (const view of views) {
      seenViews.add(view.name);
      const sec = ensureSection(view);
      els.views.append(sec.el); // (re)appending keeps the server's order
      for (const panel of view.panels || []) {
        seenPanels.add(panel.id);
        const p = ensurePanel(panel);
        sec.grid.append(p.el);
        updatePanel(p, panel, ts);
      }
      sec.el.classList.toggle("empty-view", !(view.panels || []).length);
    }
    for (const [id, p] of state.panels) {
      if (!seenPanels.has(id)) {
        destroyChart(p);
        p.observer.disconnect();
        p.el.remove();
        state.panels.delete(id);
      }
    }
    for (const [name, sec] of state.sections) {
      if (!seenViews.has(name)) {
        sec.el.remove();
        state.sections.delete(name);
      }
    }
    if (!views.length) {
      let msg = $("loading");
      if (!msg) {
        msg = document.createElement("p");
        msg.id = "loading";
        msg.className = "loading";
        els.views.append(msg);
      }
      msg.textContent = "the server has no views";
    }
    const gen = Number(payload.generated_at);
    els.updated.textContent = Number.isFinite(gen) ? `updated ${fmtTime(gen)}` : "updated";
    els.updated.title = Number.isFinite(gen) ? `generated_at ${fmtTime(gen, true)}; interval ${payload.interval_s ?? "?"} s` : "";
  }

  function ensureSection(view) {
    let sec = state.sections.get(view.name);
    if (!sec) {
      const el = document.createElement("section");
      el.className = "view";
      el.dataset.view = view.name;
      const titleEl = document.createElement("h2");
      const grid = document.createElement("div");
      grid.className = "grid";
      el.append(titleEl, grid);
      sec = { el, titleEl, grid };
      state.sections.set(view.name, sec);
    }
    sec.titleEl.textContent = view.title || view.name;
    return sec;
  }

  function ensurePanel(panel) {
    let p = state.panels.get(panel.id);
    if (!p) {
      const el = document.createElement("div");
      el.className = "panel";
      el.dataset.panel = panel.id;
      const head = document.createElement("div");
      head.className = "panel-head";
      const titleEl = document.createElement("h3");
      const unitEl = document.createElement("span");
      unitEl.className = "unit";
      head.append(titleEl, unitEl);
      const body = document.createElement("div");
      body.className = "panel-body";
      el.append(head, body);
      p = { el, titleEl, unitEl, body, chart: null, sig: null, observer: null };
      p.observer = new ResizeObserver(() => {
        const w = Math.floor(p.body.clientWidth);
        if (p.chart && w > 0 && w !== p.chart.width) p.chart.setSize({ width: w, height: CHART_HEIGHT });
      });
      p.observer.observe(body);
      state.panels.set(panel.id, p);
    }
    p.titleEl.textContent = panel.title || panel.id;
    p.unitEl.textContent = panel.unit || "";
    return p;
  }

  function cleanValues(values, n) {
    const out = new Array(n);
    let points = 0;
    for (let i = 0; i < n; i++) {
      const v = values && values[i];
      const num = v == null ? null : Number(v);
      out[i] = num != null && Number.isFinite(num) ? num : null;
      if (out[i] != null) points++;
    }
    return [out, points];
  }

  function updatePanel(p, panel, ts) {
    const series = panel.series || [];
    let points = 0;
    const data = [ts];
    for (const s of series) {
      const [vals, n] = cleanValues(s.values, ts.length);
      data.push(vals);
      points += n;
    }
    p.el.dataset.series = String(series.length);
    p.el.dataset.points = String(points);
    p.el.classList.toggle("no-data", points === 0);

    if (points === 0) {
      destroyChart(p);
      if (!p.body.querySelector(".empty")) {
        const msg = document.createElement("div");
        msg.className = "empty";
        msg.textContent = "no data yet";
        p.body.replaceChildren(msg);
      }
      return;
    }
    const sig = JSON.stringify([panel.unit || "", series.map((s) => s.label)]);
    if (p.chart && p.sig === sig) {
      p.chart.setData(data);
      return;
    }
    destroyChart(p);
    p.body.replaceChildren();
    p.sig = sig;
    p.chart = new uPlot(chartOptions(panel, series, p.body), data, p.body);
    state.chartBuilds += 1;
    document.body.dataset.chartBuilds = String(state.chartBuilds);
  }

  function destroyChart(p) {
    if (p.chart) {
      p.chart.destroy();
      p.chart = null;
      p.sig = null;
    }
  }

  function yRange(u, min, max) {
    if (min == null || max == null) return [0, 1];
    if (min >= 0 && min <= max / 2) {
      // rates, counts, latencies that span down toward zero: anchor at zero, leave headroom
      return [0, max > 0 ? max * 1.1 : 1];
    }
    // values far from zero (accuracy ~0.9, a steady 1k events/s): zoom on them
    const pad = (max - min) * 0.1 || Math.abs(max) * 0.05 || 1;
    return [min >= 0 ? Math.max(0, min - pad) : min - pad, max + pad];
  }

  function fmtTick(epochS, incr) {
    const d = new Date(epochS * 1000);
    const hh = String(d.getHours()).padStart(2, "0");
    const mm = String(d.getMinutes()).padStart(2, "0");
    if (incr >= 86400) return d.toLocaleDateString([], { month: "short", day: "numeric" });
    if (incr < 60) return `${hh}:${mm}:${String(d.getSeconds()).padStart(2, "0")}`;
    return `${hh}:${mm}`;
  }

  function yAxisSize(u, values, axisIdx, cycleNum) {
    const axis = u.axes[axisIdx];
    if (cycleNum > 1) return axis._size;
    let size = axis.ticks.size + axis.gap;
    const longest = (values || []).reduce((acc, v) => (v.length > acc.length ? v : acc), "");
    if (longest) {
      u.ctx.font = axis.font[0];
      size += u.ctx.measureText(longest).width / devicePixelRatio;
    }
    return Math.ceil(size) + 4;
  }

  function chartOptions(panel, series, body) {
    return {
      width: Math.max(200, Math.floor(body.clientWidth)),
      height: CHART_HEIGHT,
      scales: { x: { time: true }, y: { range: yRange } },
      cursor: { points: { size: 6 }, drag: { x: true, y: false } },
      legend: { show: true, live: true },
      series: [
        { label: "time", value: (u, v, sidx, didx) => (didx == null ? "latest" : fmtTime(v)) },
        ...series.map((s, i) => ({
          label: s.label,
          stroke: PALETTE[i % PALETTE.length],
          width: 1.5,
          spanGaps: false,
          points: { filter: isolatedPoints },
          value: (u, v, sidx, didx) => fmtNum(didx == null ? lastValue(u.data[sidx]) : v),
        })),
      ],
      axes: [
        { ...AXIS, space: 80, values: (u, splits, ax, space, incr) => splits.map((v) => fmtTick(v, incr)) },
        {
          ...AXIS,
          label: panel.unit || "",
          labelSize: 16,
          size: yAxisSize,
          values: (u, splits) => splits.map(fmtAxis),
        },
      ],
    };
  }

  // A value with gaps on both sides draws no line segment: show it as a dot (e.g. right after start-up).
  function isolatedPoints(u, sidx, show) {
    if (show) return null; // uPlot already draws every point (dense enough)
    const arr = u.data[sidx] || [];
    const out = [];
    for (let i = 0; i < arr.length; i++) {
      if (arr[i] != null && (i === 0 || arr[i - 1] == null) && (i === arr.length - 1 || arr[i + 1] == null)) out.push(i);
    }
    return out.length ? out : null;
  }

  // ---------- start ----------

  markRange();
  refresh();
})();
