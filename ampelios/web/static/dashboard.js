// The Ampelios dashboard: reads the worker's JSON endpoints, draws the segments, refreshes
// itself (every 2 s while events are being processed, every 10 s otherwise), no reload.
"use strict";

const FEATURES = ["views", "add-to-carts", "purchases", "visits", "views per visit", "purchase ratio"];
const POWERS_OF_TEN = [0.01, 0.1, 1, 10, 100, 1000, 10000];
const COLORS = ["#2b63c6", "#c05a00", "#1b7f4c", "#8a3ffc", "#d12771", "#007d79", "#6f5f00", "#5b6475"];
const $ = (id) => document.getElementById(id);
const number = (n) => Number(n).toLocaleString("en-US");
const percent = (x) => `${(100 * x).toFixed(1)}%`;
const colorOf = (id) => COLORS[id % COLORS.length]; // a segment's one colour: card, lines, bars
// "1 visit", "2 visits": the noun in the singular only for exactly one.
const counted = (n, noun, plural = `${noun}s`) => `${number(n)} ${Number(n) === 1 ? noun : plural}`;

let token = null;
let busy = false; // events wait to be processed
let running = null; // the replay job this page started, while it runs
let sharesChart = null;
let labels = new Map(); // segment id -> its label now (history has the labels of their time)
let profileChart = null;

async function api(path, options = {}) {
  const headers = { "Content-Type": "application/json" };
  if (token) headers.Authorization = `Bearer ${token}`;
  const response = await fetch(path, { ...options, headers });
  const body = await response.json().catch(() => ({ error: `HTTP ${response.status}` }));
  return { status: response.status, body };
}

function source() {
  return Number($("source").value || 0);
}

function element(tag, className, text) {
  const e = document.createElement(tag);
  if (className) e.className = className;
  if (text !== undefined) e.textContent = text;
  return e;
}

function renderStatus(stats) {
  const parts = [
    `${counted(stats.events, "event")} from ${counted(stats.visitors, "visitor")}`,
    `${counted(stats.rejected, "row")} rejected`,
    stats.model_version === null ? "no model yet" : `model version ${stats.model_version}`,
    stats.lag ? `${counted(stats.lag, "record")} still to process` : "up to date",
  ];
  if (stats.sink_error) parts.push(`history not saved: ${stats.sink_error}`);
  $("status").textContent = parts.join(" · ");
  $("status").dataset.events = stats.events;
}

function renderCards(segments) {
  const cards = $("cards");
  cards.replaceChildren();
  for (const s of segments) {
    const card = element("article", "card");
    card.dataset.segment = s.id;
    card.dataset.users = s.users;
    card.dataset.color = colorOf(s.id);
    card.style.borderLeftColor = colorOf(s.id);
    const title = element("h3", "label", s.label);
    title.prepend(element("span", "swatch"));
    title.firstChild.style.background = colorOf(s.id);
    const size = element("p", "size");
    size.append(element("span", "count", number(s.users)), " ");
    size.append(element("span", "share", `${s.users === 1 ? "visitor" : "visitors"} · ${percent(s.share)}`));
    card.dataset.action = s.action;
    card.append(title, size, element("p", "summary", s.summary), element("p", "advice", s.advice));
    if (s.users > 0) {
      const download = element("a", "download", `Download ${counted(s.users, "member")} (CSV)`);
      download.href = `/segments/${s.id}/members?source_id=${source()}&format=csv`;
      download.download = `${s.label}.csv`;
      card.append(download);
    }
    cards.append(card);
  }
}

function renderProfile(segments) {
  const total = segments.reduce((sum, s) => sum + s.users, 0) || 1;
  const mean = FEATURES.map((_, f) => segments.reduce((sum, s) => sum + s.users * s.centroid[f], 0) / total);
  const datasets = segments
    .filter((s) => s.users > 0)
    .map((s) => ({
      label: s.label,
      data: s.centroid.map((x, f) => (mean[f] > 0 ? Math.max(x / mean[f], 0.01) : 1)),
      backgroundColor: colorOf(s.id),
    }));
  // Bars across, the features down the side: their names fit at any width.
  const scales = {
    x: {
      type: "logarithmic",
      min: 0.01,
      title: { display: true, text: "times the average (log scale)" },
      // only the powers of ten: the log scale's 2, 3, 5, 20, ... ticks would overlap
      ticks: { autoSkip: false, maxRotation: 0, callback: (value) => (POWERS_OF_TEN.includes(value) ? `${value}` : "") },
    },
  };
  profileChart = draw(profileChart, "profile", "bar", { labels: FEATURES, datasets }, scales, { indexAxis: "y" });
}

// A chart on canvas `id`, created on first use, given new data after that.
function draw(chart, id, type, data, scales, options = {}) {
  if (chart) {
    chart.data = data;
    chart.update("none");
    return chart;
  }
  // The chart fills its box, whose height the style sheet sets for the screen's width.
  const base = { animation: false, maintainAspectRatio: false, scales };
  const plugins = type === "line" ? [alertLines] : [];
  return new Chart($(id), { type, data, options: { ...base, ...options }, plugins });
}

const SIGNALS = {
  purchase_rate: ["Purchase rate", "of the day's visitors bought"],
  conversion: ["Add-to-cart to purchase", "of add-to-carts were bought"],
  events_per_visitor: ["Events per visitor", "events per visitor a day"],
  share: ["Share", "of the day's visitors"],
};
let alertMarks = []; // [{day, text, color}] drawn on the shares chart: alerts, renamed segments
let renameMarks = [];

// A level as it reads for its signal: a rate in %, events per visitor as a number.
function level(alert, value) {
  return alert.signal === "events_per_visitor" ? value.toFixed(2) : `${(100 * value).toFixed(value < 0.01 ? 2 : 1)}%`;
}

function alertText(a) {
  const [name] = SIGNALS[a.signal] || [a.signal];
  const what = a.signal === "share" ? `${name} of ${labels.get(a.segment) ?? a.label}` : name;
  const moved = a.direction === "down" ? "fell" : "rose";
  const since = shortDay(a.started_at);
  const text = `${what} ${moved} from ${level(a, a.before)} to ${level(a, a.after)} from ${since} (seen ${shortDay(a.detected_at)})`;
  return a.recovered_at ? `${text}; back to normal from ${shortDay(a.recovered_at)}.` : `${text}.`;
}

function shortDay(iso) {
  return new Date(iso).toLocaleDateString("en-US", { month: "short", day: "numeric", year: "numeric", timeZone: "UTC" });
}

async function renderAlerts() {
  const { status, body } = await api(`/alerts?source_id=${source()}`);
  const banner = $("alerts");
  const alerts = status === 200 ? body.alerts : [];
  alertMarks = alerts.map((a) => ({
    day: a.started_at.slice(0, 10),
    text: a.direction === "down" ? "▼" : "▲",
    color: "#b45309",
  }));
  banner.hidden = alerts.length === 0;
  const open = alerts.filter((a) => !a.recovered_at);
  const lines = [element("p", "", open.length ? `${counted(open.length, "change")} in behaviour now:` : "Changes in behaviour, all back to normal:")];
  for (const a of [...open, ...alerts.filter((x) => x.recovered_at)]) {
    const line = element("p", a.recovered_at ? "recovered" : "", alertText(a));
    line.dataset.signal = a.signal;
    lines.push(line);
  }
  banner.replaceChildren(...lines);
}

// Chart.js plugin: a dashed vertical line where each alert's shift began (▼ or ▲) and
// where a settling of the model renamed segments (✎: not a shift of people).
const alertLines = {
  id: "alertLines",
  afterDatasetsDraw(chart) {
    const { ctx, chartArea, scales } = chart;
    ctx.save();
    ctx.setLineDash([4, 3]);
    for (const mark of [...renameMarks, ...alertMarks]) {
      const index = chart.data.labels.indexOf(mark.day);
      if (index < 0) continue;
      const x = scales.x.getPixelForValue(index);
      ctx.strokeStyle = mark.color;
      ctx.fillStyle = mark.color;
      ctx.beginPath();
      ctx.moveTo(x, chartArea.top);
      ctx.lineTo(x, chartArea.bottom);
      ctx.stroke();
      const width = ctx.measureText(mark.text).width;
      ctx.fillStyle = "rgba(255, 255, 255, 0.85)"; // legible over the lines it crosses
      ctx.fillRect(x + 2, chartArea.top + 1, width + 2, 12);
      ctx.fillStyle = mark.color;
      ctx.fillText(mark.text, x + 3, chartArea.top + 10);
    }
    ctx.restore();
  },
};

async function renderShares() {
  const { status, body } = await api(`/history?source_id=${source()}&clock=event`);
  const note = $("shares-note");
  if (status !== 200) {
    note.textContent = body.error || "";
    return;
  }
  note.textContent = body.snapshots.length
    ? ""
    : "The chart appears when the segments are next settled: at the end of a replay, or within a minute.";
  renameMarks = (body.model_changes || []).map((c) => ({ day: c.at.slice(0, 10), text: "✎", color: "#5b6475" }));
  const names = new Map();
  for (const snapshot of body.snapshots) for (const s of snapshot.segments) names.set(s.id, labels.get(s.id) ?? s.label);
  const datasets = [...names.entries()].map(([id, label]) => ({
    label,
    data: body.snapshots.map((snapshot) => {
      const s = snapshot.segments.find((x) => x.id === id);
      return { x: snapshot.at.slice(0, 10), y: s && s.visitor_share ? 100 * s.visitor_share : null };
    }),
    borderColor: colorOf(id),
    backgroundColor: colorOf(id),
    pointRadius: 0,
  }));
  const data = { labels: body.snapshots.map((s) => s.at.slice(0, 10)), datasets };
  sharesChart = draw(sharesChart, "shares", "line", data, {
    x: { ticks: { maxRotation: 0, autoSkip: true, autoSkipPadding: 12, callback: shortDate } }, // level, spaced
    y: {
      type: "logarithmic", // a segment of 0.5% moves as visibly as one of 50%
      title: { display: true, text: "% of the day's visitors" },
      ticks: { autoSkip: false, callback: (value) => (POWERS_OF_TEN.includes(value) ? `${value}%` : "") },
    },
  });
}

// "2015-06-02" as "Jun 2" (the chart's ticks; its tooltips keep the whole date), "Jun 2 2016"
// when the snapshots span more than one year.
function shortDate(value) {
  const labels = this.chart.data.labels;
  const day = new Date(`${this.getLabelForValue(value)}T00:00:00Z`);
  const years = new Set(labels.map((l) => l.slice(0, 4)));
  const options = { month: "short", day: "numeric", timeZone: "UTC", ...(years.size > 1 ? { year: "numeric" } : {}) };
  return day.toLocaleDateString("en-US", options);
}

async function refresh() {
  const [stats, view] = await Promise.all([api(`/stats?source_id=${source()}`), api(`/view?source_id=${source()}`)]);
  if (stats.status === 200) {
    renderStatus(stats.body);
    busy = busy || stats.body.lag > 0;
  } else {
    $("status").textContent = stats.body.error;
  }
  if (view.status === 200) {
    labels = new Map(view.body.map((s) => [s.id, s.label]));
    renderCards(view.body);
    renderProfile(view.body);
  } else {
    $("cards").replaceChildren(element("p", "note", view.body.error));
  }
  await renderAlerts();
  await renderShares();
  document.body.dataset.refreshed = Date.now();
}

async function loop() {
  busy = false;
  try {
    await refresh();
  } catch (error) {
    $("status").textContent = `The worker does not answer: ${error}`;
  }
  setTimeout(loop, busy || running ? 2000 : 10000);
}

async function loadFiles() {
  const { status, body } = await api("/files");
  const select = $("file");
  select.replaceChildren();
  if (status !== 200 || !body.files.length) {
    select.append(element("option", "", "no CSV files in the data directory"));
    $("replay").disabled = true;
    return;
  }
  for (const f of body.files) {
    const option = element("option", "", `${f.name} (${number(Math.round(f.bytes / 1024))} KiB)`);
    option.value = f.name;
    select.append(option);
  }
}

async function followJob(id) {
  const { status, body } = await api(`/trigger/${id}`);
  const job = $("job");
  if (status !== 200) {
    job.textContent = body.error;
    running = null;
    return;
  }
  job.dataset.state = body.state;
  job.dataset.rowsSent = body.rows_sent;
  job.dataset.rowsRejected = body.rows_rejected;
  $("progress").value = body.rows ? body.rows_sent / body.rows : 0;
  if (body.state === "running") {
    job.textContent = body.rows_sent < body.rows || !body.rows
      ? `Sending rows: ${number(body.rows_sent)} of ${number(body.rows)} (${number(body.rows_rejected)} rejected)`
      : `All ${counted(body.rows, "row")} sent; waiting until every event is in the segments…`;
    setTimeout(() => followJob(id), 1000);
    return;
  }
  running = null;
  $("replay").disabled = false;
  job.textContent = body.state === "done"
    ? `Done: ${counted(body.rows_sent, "row")} replayed, ${number(body.rows_rejected)} rejected; every event is in the segments.`
    : `Failed: ${body.error}`;
  refresh();
}

async function startReplay() {
  if (token === null && !$("token-row").hidden) token = $("token").value || null;
  const { status, body } = await api("/trigger", {
    method: "POST",
    body: JSON.stringify({ source_id: source(), events_path: $("file").value }),
  });
  if (status === 401) {
    $("token-row").hidden = false;
    token = null;
    $("job").textContent = "This server needs its API token: enter it and start again.";
    return;
  }
  if (status !== 202) {
    $("job").textContent = body.error;
    return;
  }
  running = body.job;
  $("replay").disabled = true;
  $("progress").value = 0;
  followJob(body.job);
}

async function lookUp(event) {
  event.preventDefault();
  const id = $("visitor").value;
  const out = $("visitor-result");
  if (id === "") return;
  if (token === null && !$("token-row").hidden) token = $("token").value || null;
  const { status, body } = await api(`/visitors/${id}?source_id=${source()}`);
  if (status === 401) {
    $("token-row").hidden = false;
    token = null;
    out.textContent = "This server shows visitors only with its API token: enter it above and look up again.";
    return;
  }
  if (status !== 200) {
    out.textContent = body.error;
    return;
  }
  const [views, carts, buys] = body.state;
  const summary = element(
    "p",
    "visitor-summary",
    `Visitor ${body.visitorid}: ${body.label ? `in “${body.label}”` : "in no segment (inactive)"}; ` +
      `${counted(body.sessions.length, "visit")}, ${counted(views, "view")}, ${counted(carts, "add-to-cart")}, ` +
      `${counted(buys, "purchase")}.`,
  );
  out.replaceChildren(summary);
  const why = body.why;
  if (why && why.nearest_other) {
    out.append(element("p", "why-title", `Why here rather than in “${why.nearest_other.label}”:`));
    const reasons = element("ul", "why");
    for (const reason of why.reasons) reasons.append(element("li", "", reason.says));
    out.append(reasons);
  }
}



$("replay").addEventListener("click", startReplay);
$("lookup").addEventListener("submit", lookUp);
$("source").addEventListener("change", () => {
  sharesChart?.destroy();
  sharesChart = null;
  refresh();
});
loadFiles();
loop();
