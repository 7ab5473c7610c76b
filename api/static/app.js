// windfarm-etl dashboard: a partition grid, a job form and a chart of one day.
// Plain DOM and SVG, no dependencies; every request goes to this API, relative
// to the page, so the page also works behind a path prefix and offline.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const SVG_NS = "http://www.w3.org/2000/svg";
  const GLYPHS = {
    succeeded: "✓", failed: "✕", running: "↻", queued: "…", waiting: "‖", never_run: "·",
  };
  const LABELS = {
    succeeded: "succeeded", failed: "failed", running: "running", queued: "queued",
    waiting: "waiting to be sent again", never_run: "never run",
  };
  const UNITS = { wind_speed: "m/s", power: "kW", ambient_temprature: "°C" };
  // The API token lives in this tab's sessionStorage only: gone when the tab
  // closes, never shared with other tabs, dropped as soon as the API refuses it.
  const TOKEN_KEY = "windfarm-etl.api-token";
  const POLL_MS = 1000;
  const REFRESH_MS = 5000;
  const TERMINAL = new Set(["succeeded", "failed"]);

  const state = {
    config: null,
    grid: null, // { key, rows: Map(day -> {tr, cells: [button x24]}) }
    days: new Map(), // day -> day object of the last /partitions answer
    focus: [0, 0], // row and hour of the grid cell that takes the Tab key
    refreshTimer: 0,
    jobTimer: 0,
    chartSeq: 0,
  };

  // ---------------------------------------------------------------- helpers

  class ApiError extends Error {
    constructor(status, detail) {
      super(detail);
      this.status = status;
    }
  }

  async function api(path, options = {}) {
    const headers = { Accept: "application/json", ...(options.headers || {}) };
    const response = await fetch(path, { ...options, headers });
    let body = null;
    try {
      body = await response.json();
    } catch (_) {
      body = null;
    }
    if (!response.ok) {
      const detail = body && body.detail ? body.detail : `${response.status} ${response.statusText}`;
      throw new ApiError(response.status, detail);
    }
    return body;
  }

  const addDays = (iso, n) => {
    const d = new Date(`${iso}T00:00:00Z`);
    d.setUTCDate(d.getUTCDate() + n);
    return d.toISOString().slice(0, 10);
  };
  const dayCount = (a, b) => Math.round((Date.parse(b) - Date.parse(a)) / 86400000) + 1;
  const weekday = (iso) =>
    new Date(`${iso}T00:00:00Z`).toLocaleDateString("en", { weekday: "short", timeZone: "UTC" });
  const when = (ts) => (ts ? `${ts.replace("T", " ").slice(0, 19)} UTC` : "—");
  const hh = (h) => String(h).padStart(2, "0");

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs)) {
      if (name === "class") node.className = value;
      else if (name === "text") node.textContent = value;
      else node.setAttribute(name, value);
    }
    node.append(...children);
    return node;
  }

  function say(id, text, kind = "") {
    const node = $(id);
    node.textContent = text;
    node.className = `message ${kind}`;
  }

  // ------------------------------------------------------------- partitions

  function cellText(day, cell) {
    const parts = [`${day} ${hh(cell.hour)}:00–${hh(cell.hour + 1)}:00 UTC: ${LABELS[cell.state]}`];
    if (cell.job_id !== null) parts.push(`job ${cell.job_id}`);
    const at = cell.finished_at || cell.started_at || cell.enqueued_at;
    if (at) parts.push(when(at));
    if (cell.error) parts.push(`error: ${cell.error}`);
    return parts.join(" · ");
  }

  function buildGrid(days) {
    const head = $("grid-head");
    if (head.children.length === 1) {
      for (let h = 0; h < 24; h += 1) head.append(el("th", { scope: "col", text: hh(h) }));
      head.append(el("th", { scope: "col", text: "done" }));
    }
    const body = $("grid-body");
    body.replaceChildren();
    const rows = new Map();
    days.forEach((day, r) => {
      const dayButton = el("button", { type: "button", class: "day-button", "data-day": day.date },
        day.date, el("span", { class: "dow", text: weekday(day.date) }));
      dayButton.addEventListener("click", () => selectDay(day.date, true));
      const tr = el("tr", { "data-day": day.date }, el("th", { scope: "row" }, dayButton));
      const cells = [];
      for (let h = 0; h < 24; h += 1) {
        const button = el("button", { type: "button", class: "cell", tabindex: "-1",
          "data-hour": String(h) });
        button.addEventListener("click", () => showCell(day.date, h));
        button.addEventListener("keydown", (event) => moveFocus(event, r, h));
        cells.push(button);
        tr.append(el("td", {}, button));
      }
      tr.append(el("td", { class: "summary" }));
      body.append(tr);
      rows.set(day.date, { tr, cells });
    });
    state.focus = [0, 0];
    return rows;
  }

  function renderGrid(partitions) {
    const key = `${partitions.start_date}/${partitions.end_date}`;
    if (!state.grid || state.grid.key !== key) {
      state.grid = { key, rows: buildGrid(partitions.days) };
    }
    state.days = new Map(partitions.days.map((d) => [d.date, d]));
    for (const day of partitions.days) {
      const row = state.grid.rows.get(day.date);
      row.tr.dataset.succeeded = String(day.counts.succeeded);
      day.hours.forEach((cell, h) => {
        const button = row.cells[h];
        button.className = `cell s-${cell.state}`;
        button.textContent = GLYPHS[cell.state];
        button.dataset.state = cell.state;
        const text = cellText(day.date, cell);
        button.title = text;
        button.setAttribute("aria-label", text);
      });
      const summary = row.tr.lastElementChild;
      summary.textContent = `${day.counts.succeeded}/24`;
      summary.title = Object.entries(day.counts).map(([s, n]) => `${n} ${LABELS[s]}`).join(", ");
    }
    const [r, h] = state.focus;
    const rows = [...state.grid.rows.values()];
    if (rows[r]) rows[r].cells[h].tabIndex = 0;
    markSelected();
    const detail = $("cell-detail");
    if (!detail.hidden && detail.dataset.day) showCell(detail.dataset.day, Number(detail.dataset.hour), false);
  }

  function moveFocus(event, r, h) {
    const moves = { ArrowLeft: [0, -1], ArrowRight: [0, 1], ArrowUp: [-1, 0], ArrowDown: [1, 0] };
    const move = moves[event.key];
    if (!move) return;
    event.preventDefault();
    const rows = [...state.grid.rows.values()];
    const nr = Math.min(rows.length - 1, Math.max(0, r + move[0]));
    const nh = Math.min(23, Math.max(0, h + move[1]));
    rows[r].cells[h].tabIndex = -1;
    rows[nr].cells[nh].tabIndex = 0;
    rows[nr].cells[nh].focus();
    state.focus = [nr, nh];
  }

  async function loadGrid() {
    clearTimeout(state.refreshTimer);
    const start = $("range-start").value;
    const end = $("range-end").value || start;
    if (!start) return;
    try {
      const partitions = await api(`partitions?${new URLSearchParams({ start_date: start, end_date: end })}`);
      renderGrid(partitions);
      const open = partitions.days.some(
        (d) => d.counts.running + d.counts.queued + d.counts.waiting > 0);
      say("grid-message", open ? "Some hours are queued, running or waiting; this view refreshes itself." : "");
      if (open && !state.jobTimer) state.refreshTimer = setTimeout(loadGrid, REFRESH_MS);
    } catch (error) {
      say("grid-message", `Could not load partitions: ${error.message}`, "error");
    }
  }

  function showCell(day, hour, select = true) {
    const found = state.days.get(day);
    const detail = $("cell-detail");
    if (!found) {
      detail.hidden = true;
      return;
    }
    const cell = found.hours[hour];
    detail.dataset.day = day;
    detail.dataset.hour = String(hour);
    detail.className = `detail ${cell.state}`;
    const rows = [
      ["Job", cell.job_id === null ? "none has covered this hour" : `#${cell.job_id}`],
      ["Attempts", cell.attempts ?? "—"],
      ["Queued", when(cell.enqueued_at)],
      ["Started", when(cell.started_at)],
      ["Finished", when(cell.finished_at)],
      ["Last success", when(cell.last_succeeded_at)],
      ...(cell.state === "waiting" ? [["Sent again", when(cell.retry_at)]] : []),
    ];
    const list = el("dl");
    for (const [name, value] of rows) list.append(el("dt", { text: name }), el("dd", { text: String(value) }));
    if (cell.error) {
      const label = cell.state === "failed" ? "Error" : "Last reason";
      list.append(el("dt", { text: label }), el("dd", {}, el("pre", { text: cell.error })));
    }
    detail.replaceChildren(
      el("strong", { text: `${day} ${hh(hour)}:00–${hh(hour + 1)}:00 UTC — ${LABELS[cell.state]}` }), list);
    detail.hidden = false;
    for (const row of state.grid.rows.values()) row.cells.forEach((b) => b.classList.remove("current"));
    state.grid.rows.get(day).cells[hour].classList.add("current");
    if (select) selectDay(day, false);
  }

  function markSelected() {
    const day = $("chart-day").value;
    for (const [date, row] of state.grid.rows) row.tr.classList.toggle("selected", date === day);
  }

  function selectDay(day, chart) {
    const changed = $("chart-day").value !== day;
    $("chart-day").value = day;
    if (!state.jobTimer) {
      $("job-start").value = day;
      $("job-end").value = "";
    }
    markSelected();
    if (chart || changed) drawChart();
  }

  // -------------------------------------------------------------------- jobs

  function jobView(job) {
    const ended = job.slices_succeeded + job.slices_failed;
    const days = job.start_date === job.end_date ? job.start_date : `${job.start_date} … ${job.end_date}`;
    const head = el("p", {}, el("strong", { text: `Job ${job.id}` }), ` (${days}): `,
      el("span", { class: `status ${job.status === "failed" ? "error" : ""}`, text: job.status }));
    const bar = el("progress", { max: String(job.slices_total), value: String(ended),
      "aria-label": `job ${job.id}: ${ended} of ${job.slices_total} slices ended` });
    const counts = el("p", { class: "counts", text:
      `${job.slices_succeeded} of ${job.slices_total} slices succeeded · ${job.slices_failed} failed · ` +
      `${job.slices_running} running · ` +
      `${job.slices_pending - job.slices_running - job.slices_waiting} queued · ` +
      `${job.slices_waiting} waiting · ` +
      `${job.rows_written.toLocaleString("en")} rows written` });
    const parts = [head, bar, counts];
    if (job.errors.length) {
      const list = el("ul");
      for (const e of job.errors.slice(0, 5)) list.append(el("li", { text: `${when(e.slice_start)}: ${e.message}` }));
      if (job.errors.length > 5) list.append(el("li", { text: `and ${job.errors.length - 5} more` }));
      parts.push(list);
    }
    $("job-status").replaceChildren(...parts);
    $("job-status").dataset.status = job.status;
  }

  function jobFailure(text) {
    $("job-status").replaceChildren(el("p", { class: "error", text }));
    $("job-status").dataset.status = "error";
  }

  function coverJob(job) {
    // Show the job's days in the grid when the current range does not hold them.
    const start = $("range-start").value;
    const end = $("range-end").value;
    if (job.start_date >= start && job.end_date <= end) return;
    const span = dayCount(job.start_date, job.end_date);
    $("range-start").value = job.start_date;
    $("range-end").value = span > 31 ? addDays(job.start_date, 30) : job.end_date;
  }

  async function followJob(id) {
    try {
      const job = await api(`jobs/${id}`);
      jobView(job);
      await loadGrid();
      if (TERMINAL.has(job.status)) {
        state.jobTimer = 0;
        const day = $("chart-day").value;
        if (day >= job.start_date && day <= job.end_date) drawChart();
        loadGrid();
        return;
      }
    } catch (error) {
      if (error.status === 404) {
        state.jobTimer = 0;
        jobFailure(error.message);
        return;
      }
      // A restart of the API or a network blip: keep polling.
    }
    state.jobTimer = setTimeout(() => followJob(id), POLL_MS);
  }

  async function submitJob(event) {
    event.preventDefault();
    const start = $("job-start").value;
    const end = $("job-end").value;
    const body = end && end !== start ? { start_date: start, end_date: end } : { date: start };
    const headers = { "Content-Type": "application/json" };
    const token = $("token").value.trim();
    if (token) headers.Authorization = `Bearer ${token}`;
    const button = $("job-submit");
    button.disabled = true;
    try {
      const job = await api("jobs", { method: "POST", headers, body: JSON.stringify(body) });
      if (token) sessionStorage.setItem(TOKEN_KEY, token);
      clearTimeout(state.jobTimer);
      jobView(job);
      coverJob(job);
      state.jobTimer = setTimeout(() => followJob(job.id), 1);
    } catch (error) {
      if (error.status === 401) {
        sessionStorage.removeItem(TOKEN_KEY);
        $("token").value = "";
        showToken(true);
        jobFailure(token ? "The API refused this token, so the page forgot it: paste the right one and run again."
          : "This API needs its token: paste it above and run again.");
        $("token").focus();
      } else {
        jobFailure(`Could not post the job: ${error.message}`);
      }
    } finally {
      button.disabled = false;
    }
  }

  function showToken(show) {
    $("token-row").hidden = !show;
    $("token-help").hidden = !show;
  }

  // ------------------------------------------------------------------- chart

  function niceTicks(lo, hi, count = 5) {
    if (lo === hi) {
      lo -= 1;
      hi += 1;
    }
    const raw = (hi - lo) / count;
    const power = 10 ** Math.floor(Math.log10(raw));
    const step = [1, 2, 2.5, 5, 10].map((m) => m * power).find((s) => s >= raw);
    const first = Math.floor(lo / step) * step;
    const ticks = [];
    for (let t = first; t <= hi + step * 0.5; t += step) ticks.push(Number(t.toFixed(10)));
    if (ticks[ticks.length - 1] < hi) ticks.push(ticks[ticks.length - 1] + step);
    return ticks;
  }

  function svg(tag, attrs = {}) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [name, value] of Object.entries(attrs)) {
      if (name === "text") node.textContent = value;
      else node.setAttribute(name, value);
    }
    return node;
  }

  const fmt = (v, unit) => (v === null || v === undefined ? "—" : `${v.toFixed(2)} ${unit}`);

  function verify(day, byMinute, windows) {
    // Recompute each window's mean, min and max from the 1-minute values.
    let matched = 0;
    let wrong = 0;
    let missing = 0;
    let worst = 0;
    for (let k = 0; k < 144; k += 1) {
      const values = byMinute.slice(k * 10, k * 10 + 10).filter((v) => v !== null && v !== undefined);
      const w = windows[k];
      if (!values.length) {
        if (w) wrong += 1;
        continue;
      }
      if (!w) {
        missing += 1;
        continue;
      }
      const mean = values.reduce((a, b) => a + b, 0) / values.length;
      const pairs = [[mean, w.mean], [Math.min(...values), w.min], [Math.max(...values), w.max]];
      let ok = true;
      for (const [mine, theirs] of pairs) {
        if (theirs === null) {
          ok = false;
          continue;
        }
        const diff = Math.abs(mine - theirs) / Math.max(1, Math.abs(theirs));
        worst = Math.max(worst, diff);
        if (diff > 1e-9) ok = false;
      }
      if (ok) matched += 1;
      else wrong += 1;
    }
    const expected = matched + wrong + missing;
    if (!expected) return ["No 1-minute source values on this day.", "warn"];
    if (wrong) return [`✕ ${wrong} of ${expected} windows disagree with the 1-minute values.`, "error"];
    if (!matched) return [`No 10-minute statistics for ${day} yet: run a job for it.`, "warn"];
    const agree = `✓ ${matched} windows checked in this browser: their mean, min and max equal the ` +
      `1-minute values (largest relative difference ${worst.toExponential(1)})`;
    if (missing) return [`${agree}; ${missing} windows with source data have no statistics yet.`, "warn"];
    return [`${agree}.`, "good"];
  }

  function drawChart() {
    const day = $("chart-day").value;
    const variable = $("chart-variable").value;
    if (!day || !variable) return;
    markSelected();
    const seq = ++state.chartSeq;
    const start = `${day}T00:00:00`;
    const dataQuery = new URLSearchParams({ start, variables: variable });
    const seriesQuery = new URLSearchParams({ start });
    for (const stat of ["mean", "min", "max"]) seriesQuery.append("signal", `${variable}_${stat}_10m`);
    say("chart-check", "Loading…");
    Promise.all([api(`data?${dataQuery}`), api(`series?${seriesQuery}`)]).then(
      ([raw, series]) => {
        if (seq === state.chartSeq) renderChart(day, variable, raw, series);
      },
      (error) => {
        if (seq === state.chartSeq) say("chart-check", `Could not load the day: ${error.message}`, "error");
      },
    );
  }

  function renderChart(day, variable, raw, series) {
    const W = 960;
    const H = 340;
    const m = { l: 60, r: 16, t: 18, b: 34 };
    const dayStart = Date.parse(`${day}T00:00:00Z`);
    const minuteOf = (ts) => Math.round((Date.parse(`${ts}Z`) - dayStart) / 60000);
    const unit = UNITS[variable] || "";
    const byMinute = new Array(1440).fill(null);
    for (const row of raw) byMinute[minuteOf(row.timestamp)] = row[variable];
    const windows = new Array(144).fill(null);
    for (const row of series) {
      const s = (stat) => row[`${variable}_${stat}_10m`];
      windows[Math.floor(minuteOf(row.timestamp) / 10)] = { mean: s("mean"), min: s("min"), max: s("max") };
    }
    const values = byMinute.filter((v) => v !== null);
    for (const w of windows) if (w) values.push(...[w.min, w.max, w.mean].filter((v) => v !== null));

    const chart = $("chart");
    chart.replaceChildren();
    const desc = svg("desc", { id: "chart-desc" });
    chart.append(desc);
    const [check, kind] = verify(day, byMinute, windows);
    say("chart-check", check, kind);
    if (!values.length) {
      desc.textContent = `No data for ${variable} on ${day}.`;
      chart.append(svg("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "empty",
        text: `No source data for ${day}.` }));
      return;
    }
    const ticks = niceTicks(Math.min(...values), Math.max(...values));
    const lo = ticks[0];
    const hi = ticks[ticks.length - 1];
    const x = (minute) => (m.l + (minute / 1440) * (W - m.l - m.r)).toFixed(1);
    const y = (v) => (m.t + (1 - (v - lo) / (hi - lo)) * (H - m.t - m.b)).toFixed(1);

    const axis = svg("g", { class: "axis" });
    for (const t of ticks) {
      axis.append(svg("line", { x1: m.l, x2: W - m.r, y1: y(t), y2: y(t) }));
      axis.append(svg("text", { x: m.l - 6, y: Number(y(t)) + 4, "text-anchor": "end",
        text: t.toLocaleString("en") }));
    }
    for (let h = 0; h <= 24; h += 3) {
      axis.append(svg("line", { x1: x(h * 60), x2: x(h * 60), y1: m.t, y2: H - m.b }));
      axis.append(svg("text", { x: x(h * 60), y: H - m.b + 18, "text-anchor": "middle",
        text: `${hh(h)}:00` }));
    }
    axis.append(svg("text", { x: 8, y: 12, class: "axis-title", text: `${variable} (${unit})` }));
    axis.append(svg("text", { x: W - m.r, y: 12, class: "axis-title", "text-anchor": "end",
      text: `${day}, UTC` }));
    chart.append(axis);

    let band = "";
    let mean = "";
    let meanEnd = -1;
    windows.forEach((w, k) => {
      if (!w) return;
      const x0 = x(k * 10);
      const x1 = x(k * 10 + 10);
      if (w.min !== null && w.max !== null) band += `M${x0},${y(w.max)}H${x1}V${y(w.min)}H${x0}Z`;
      if (w.mean !== null) {
        mean += `${meanEnd === k * 10 ? "L" : "M"}${x0},${y(w.mean)}H${x1}`;
        meanEnd = k * 10 + 10;
      }
    });
    let line = "";
    let previous = -2;
    byMinute.forEach((v, minute) => {
      if (v === null) return;
      line += `${previous === minute - 1 ? "L" : "M"}${x(minute)},${y(v)}`;
      previous = minute;
    });
    chart.append(svg("path", { class: "band", d: band, "data-series": "band" }));
    chart.append(svg("path", { class: "raw", d: line, "data-series": "raw" }));
    chart.append(svg("path", { class: "mean", d: mean, "data-series": "mean" }));
    const cursor = svg("line", { class: "cursor", y1: m.t, y2: H - m.b, visibility: "hidden" });
    chart.append(cursor);
    desc.textContent = `${variable} on ${day}: ${raw.length} 1-minute values ` +
      `and ${series.length} 10-minute windows, from ${lo} to ${hi} ${unit}.`;

    chart.onpointermove = (event) => {
      const point = new DOMPoint(event.clientX, event.clientY).matrixTransform(chart.getScreenCTM().inverse());
      const minute = Math.round(((point.x - m.l) / (W - m.l - m.r)) * 1440);
      if (minute < 0 || minute >= 1440) return;
      cursor.setAttribute("x1", x(minute));
      cursor.setAttribute("x2", x(minute));
      cursor.setAttribute("visibility", "visible");
      const k = Math.floor(minute / 10);
      const w = windows[k];
      const at = `${hh(Math.floor(minute / 60))}:${hh(minute % 60)}`;
      const span = `${hh(Math.floor(k / 6))}:${hh((k % 6) * 10)}`;
      $("chart-readout").textContent = `${at} UTC · 1-minute ${fmt(byMinute[minute], unit)} · window from ${span}: ` +
        (w ? `mean ${fmt(w.mean, unit)}, min ${fmt(w.min, unit)}, max ${fmt(w.max, unit)}` : "no statistics");
    };
    chart.onpointerleave = () => cursor.setAttribute("visibility", "hidden");
  }

  // -------------------------------------------------------------------- start

  async function checkHealth() {
    const node = $("health");
    try {
      const response = await fetch("health");
      const body = await response.json();
      node.textContent = response.ok ? "databases ok" : `databases: ${body.status}`;
      node.className = `health ${response.ok ? "ok" : "bad"}`;
    } catch (_) {
      node.textContent = "API unreachable";
      node.className = "health bad";
    }
  }

  function lagText(seconds) {
    const minutes = Math.floor(seconds / 60);
    if (minutes < 60) return `${minutes} min`;
    const hours = Math.floor(minutes / 60);
    return hours < 48 ? `${hours} h ${minutes % 60} min` : `${Math.floor(hours / 24)} days`;
  }

  async function checkFreshness() {
    const node = $("freshness");
    const failed = $("failed-link");
    try {
      const fresh = await api("freshness");
      node.textContent = fresh.newest_complete_hour
        ? `newest hour ${when(fresh.newest_complete_hour).slice(0, 16)} UTC, ${lagText(fresh.lag_s)} behind`
        : "no hour complete yet";
      node.className = `freshness ${fresh.stale ? "bad" : "ok"}`;
      node.title = fresh.stale
        ? `more than ${fresh.stale_after_s / 3600} h behind: the alert on stale statistics fires`
        : "the newest hour whose statistics are complete";
      failed.textContent = `${fresh.failed_slices_24h} failed in 24 h`;
      failed.hidden = fresh.failed_slices_24h === 0;
    } catch (_) {
      node.textContent = "freshness unknown";
      node.className = "freshness bad";
    }
  }

  function defaults(config) {
    const today = new Date().toISOString().slice(0, 10);
    const last = config.source_last_day || today;
    let first = config.source_first_day || addDays(last, -13);
    if (dayCount(first, last) > 31) first = addDays(last, -30);
    return [first, last];
  }

  async function start() {
    let config = { token_required: false, flower_url: null, variables: ["wind_speed", "power"] };
    try {
      config = await api("dashboard/config");
    } catch (error) {
      say("grid-message", `Could not read the dashboard settings: ${error.message}`, "error");
    }
    state.config = config;
    $("flower-link").href = config.flower_url || `${location.protocol}//${location.hostname}:5555/`;
    localStorage.removeItem(TOKEN_KEY); // where earlier versions kept it, for good
    const saved = sessionStorage.getItem(TOKEN_KEY);
    if (saved) $("token").value = saved;
    showToken(config.token_required || Boolean(saved));
    const select = $("chart-variable");
    for (const v of config.variables) select.append(el("option", { value: v, text: `${v} (${UNITS[v] || ""})` }));

    const [first, last] = defaults(config);
    $("range-start").value = first;
    $("range-end").value = last;
    $("range-form").addEventListener("submit", (event) => {
      event.preventDefault();
      loadGrid();
    });
    $("job-form").addEventListener("submit", submitJob);
    $("chart-form").addEventListener("submit", (event) => {
      event.preventDefault();
      drawChart();
    });
    $("chart-variable").addEventListener("change", drawChart);
    $("chart-day").addEventListener("change", drawChart);
    checkHealth();
    checkFreshness();
    setInterval(checkFreshness, 60000);
    await loadGrid();

    const days = [...state.days.values()];
    const done = days.filter((d) => d.counts.succeeded > 0);
    const todo = days.find((d) => d.counts.never_run > 0);
    $("chart-day").value = (done.length ? done[done.length - 1] : days[days.length - 1] || { date: last }).date;
    $("job-start").value = (todo || days[days.length - 1] || { date: last }).date;
    drawChart();
  }

  document.addEventListener("DOMContentLoaded", start);
})();
