// The rofr dashboard: a small single-page app over the JSON API. It keeps the token in
// this tab's sessionStorage and sends it as a bearer token; it never stores it
// anywhere else.
"use strict";

const main = document.getElementById("main");
let me = null;
let clock = { now: 0, at: 0, speed: 1 };

function token() { return sessionStorage.getItem("rofr-token"); }

async function api(path, options = {}) {
  const response = await fetch(path, {
    ...options,
    headers: { "authorization": "Bearer " + token(), "content-type": "application/json", ...(options.headers || {}) },
  });
  const text = await response.text();
  let body = null;
  try { body = JSON.parse(text); } catch (_) { body = text; }
  if (!response.ok) {
    const message = body && body.error ? body.error.code + ": " + body.error.message : response.status + "";
    throw new Error(message);
  }
  return body;
}

// Fetches with the bearer token and hands the answer to the browser as a file: a plain
// link would carry no token.
async function download(path, filename) {
  const response = await fetch(path, { headers: { "authorization": "Bearer " + token() } });
  if (!response.ok) {
    const body = await response.json().catch(() => null);
    throw new Error(body && body.error ? body.error.code + ": " + body.error.message : String(response.status));
  }
  const url = URL.createObjectURL(await response.blob());
  const link = el("a", { href: url, download: filename });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60000);
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children.flat()) {
    node.append(child instanceof Node ? child : document.createTextNode(child == null ? "" : String(child)));
  }
  return node;
}

function table(columns, rows) {
  return el("table", {},
    el("thead", {}, el("tr", {}, columns.map(([title]) => el("th", {}, title)))),
    el("tbody", {}, rows.map(row => el("tr", {}, columns.map(([, cell]) => el("td", {}, cell(row)))))));
}

function fmt(n, digits = 0) {
  return Number(n).toLocaleString("en-US", { maximumFractionDigits: digits, minimumFractionDigits: digits });
}

// Model time now, from the server's clock and its speed.
function modelNow() { return clock.now + (Date.now() - clock.at) * clock.speed; }

function countdown(deadline) {
  const span = el("span", { class: "countdown", "data-deadline": deadline });
  tick(span);
  return span;
}

function tick(span) {
  let seconds = Math.round((Date.parse(span.dataset.deadline) - modelNow()) / 1000);
  if (seconds <= 0) { span.textContent = "due"; span.className = "countdown alert"; return; }
  const d = Math.floor(seconds / 86400); seconds %= 86400;
  const h = Math.floor(seconds / 3600); seconds %= 3600;
  const m = Math.floor(seconds / 60); const s = seconds % 60;
  span.textContent = (d ? d + "d " : "") + String(h).padStart(2, "0") + ":" + String(m).padStart(2, "0") + ":" + String(s).padStart(2, "0");
}
setInterval(() => document.querySelectorAll(".countdown").forEach(tick), 1000);

function signIn(message) {
  main.replaceChildren(
    el("h1", {}, "Sign in"),
    el("p", {}, "Paste a token from `rofr token create` or the one `rofr demo --keep` printed."),
    message ? el("p", { class: "error" }, message) : "",
    el("form", { id: "signin", onsubmit: async (event) => {
      event.preventDefault();
      sessionStorage.setItem("rofr-token", document.getElementById("token").value.trim());
      await start();
    } }, el("input", { id: "token", type: "password", placeholder: "rofr_…", autocomplete: "off" }), " ", el("button", { type: "submit" }, "Sign in")));
}

const buyerPages = [["overview", "Overview"], ["offers", "Offers"], ["providers", "Providers"], ["needs", "Needs"], ["deal", "Deal"], ["ledger", "Ledger"]];
const providerPages = [["my-offers", "My offers"], ["my-rfqs", "Requests for quotes"], ["my-awards", "My awards"], ["ledger", "Ledger"]];

function navigation() {
  const pages = me.party === "provider" ? providerPages : buyerPages;
  const current = (location.hash.slice(2) || pages[0][0]).split("/")[0];
  document.getElementById("nav").replaceChildren(...pages.map(([id, title]) =>
    el("a", { href: "#/" + id, class: id === current ? "active" : "" }, title)));
  document.getElementById("who").replaceChildren(
    (me.provider ? "provider " + me.provider : me.party) + " · ",
    el("a", { href: "#", style: "color:#cfe0ff", onclick: () => { sessionStorage.clear(); location.hash = ""; start(); } }, "sign out"));
}

async function overview() {
  const s = await api("/v1/summary");
  const cards = [["needs", s.needs], ...Object.entries(s.by_status), ["lapses", s.lapses], ["re-offers", s.reoffers],
    ["median hours to award", s.median_hours_to_award == null ? "–" : fmt(s.median_hours_to_award, 1)]];
  const page = await api("/v1/needs?limit=20");
  main.replaceChildren(
    el("h1", {}, "Overview"),
    el("div", { class: "cards", id: "status-cards" }, cards.map(([k, v]) => el("div", { class: "card", "data-key": k }, el("b", {}, v), k))),
    el("h2", {}, "Needs"),
    needsTable(page.needs));
}

function needsTable(needs) {
  return table([
    ["Need", n => el("a", { href: "#/need/" + n.id }, n.id)], ["Status", n => n.status], ["SKU", n => n.sku],
    ["GPUs", n => n.gpus], ["Awarded", n => n.awarded], ["Holder", n => n.holder || "–"], ["Next deadline", n => n.next_deadline || "–"]],
    needs);
}

async function needsPage(after) {
  const page = await api("/v1/needs?limit=100" + (after ? "&after=" + encodeURIComponent(after) : ""));
  main.replaceChildren(el("h1", {}, "Needs"), needsTable(page.needs),
    page.next ? el("a", { href: "#/needs/" + page.next }, "Next page →") : "");
}

async function needTimeline(id) {
  const [need, events, checkpoint] = await Promise.all([
    api("/v1/needs/" + encodeURIComponent(id)),
    api("/v1/needs/" + encodeURIComponent(id) + "/events"),
    api("/v1/ledger/checkpoint").catch(() => null),
  ]);
  const signed = checkpoint ? Number(String(checkpoint).split("\n")[1]) : 0;
  const submitted = events.events.find(e => e.event.type === "need_submitted");
  const version = submitted && submitted.event.deal_version;
  const moves = events.events.filter(e => e.event.type === "terms_changed");
  const governed = version == null ? "Governed by the deal kept beside the log"
    : moves.length === 0 ? `Governed by deal version ${version}`
    : `Governed by deal version ${moves[moves.length - 1].event.version} (submitted under version ${version}; moved at ` +
      moves.map(m => "#" + m.index).join(", ") + ")";
  main.replaceChildren(
    el("h1", {}, "Need " + need.id),
    el("p", {}, `${need.gpus} ${need.sku} for ${need.hours} h · ${need.status} · holder ${need.holder || "none"} · awarded ${need.awarded}`),
    el("p", { id: "deal-version" }, governed),
    table([
      ["Ledger #", e => e.index], ["At", e => e.event.at], ["Event", e => e.event.type],
      ["Provider", e => e.event.provider || ""], ["GPUs", e => e.event.gpus == null ? "" : e.event.gpus],
      ["Price", e => e.event.price_per_gpu_hour == null ? "" : "$" + e.event.price_per_gpu_hour],
      ["Proof", e => e.index < signed ? el("span", { class: "ok" }, "in checkpoint " + signed) : "awaiting checkpoint"]],
      events.events),
    el("a", { href: "#", id: "evidence", onclick: (e) => { e.preventDefault(); download("/v1/ledger/evidence/" + encodeURIComponent(id), id + ".evidence.json"); } }, "Evidence bundle (JSON)"));
}

async function offersPage(mine, after) {
  const { offers, next } = await api("/v1/offers?limit=200" + (after ? "&after=" + encodeURIComponent(after) : ""));
  const columns = [["Need", o => o.need], ["Offer", o => o.offer], ["Kind", o => o.kind], ["Provider", o => o.provider],
    ["GPUs", o => o.gpus], ["Price", o => "$" + o.price_per_gpu_hour], ["Deadline", o => o.deadline], ["Time left", o => countdown(o.deadline)]];
  if (mine) {
    columns.push(["Answer", o => el("span", {},
      el("button", { "data-action": "accept", "data-need": o.need, onclick: () => answer(o, o.kind === "match" ? "match" : "accept", {}) }, o.kind === "match" ? "Match" : "Accept"), " ",
      el("button", { class: "secondary", "data-action": "decline", "data-need": o.need, onclick: () => answer(o, "decline", { reason: "no_capacity" }) }, "Decline"))]);
  }
  main.replaceChildren(el("h1", {}, mine ? "Offers awaiting your answer" : "Offers awaiting an answer"),
    offers.length ? table(columns, offers) : el("p", { id: "no-offers" }, "No open offers."),
    next ? el("a", { href: "#/" + (mine ? "my-offers/" : "offers/") + encodeURIComponent(next) }, "Next page →") : "",
    el("p", { id: "answer-result" }));
}

async function answer(offer, verb, body) {
  const result = document.getElementById("answer-result");
  try {
    const answer = await api(`/v1/needs/${encodeURIComponent(offer.need)}/${verb}`, { method: "POST", body: JSON.stringify({ offer: offer.offer, ...body }) });
    await offersPage(true);
    document.getElementById("answer-result").replaceChildren(el("span", { class: "ok" },
      `${verb} recorded for ${offer.need}: ` + answer.events.map(e => e.event.type).join(", ")));
  } catch (error) {
    result.replaceChildren(el("span", { class: "error" }, error.message));
  }
}

async function myRfqs() {
  const { rfqs } = await api("/v1/rfqs");
  main.replaceChildren(el("h1", {}, "Requests for quotes"), rfqs.length ? table([
    ["Need", r => r.need], ["Round", r => r.round], ["GPUs", r => r.gpus], ["SKU", r => r.sku], ["Hours", r => r.hours],
    ["Deadline", r => r.deadline], ["Time left", r => countdown(r.deadline)]], rfqs) : el("p", {}, "No open requests."));
}

async function myAwards(after) {
  const { awards, next } = await api("/v1/awards?limit=200" + (after ? "&after=" + encodeURIComponent(after) : ""));
  main.replaceChildren(el("h1", {}, "My awards"), table([
    ["Need", a => a.need], ["Award", a => a.award], ["Status", a => a.status], ["GPUs", a => a.gpus],
    ["Price", a => "$" + a.price_per_gpu_hour], ["Reservation", a => a.reservation || "–"]], awards),
    next ? el("a", { href: "#/my-awards/" + encodeURIComponent(next) }, "Next page →") : "");
}

// Shares of awarded GPU-hours as horizontal bars, with each provider's cap and the HHI.
function sharesChart(providers) {
  const width = 640, row = 28, left = 150, scale = (width - left - 20) / 100;
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("width", width); svg.setAttribute("height", providers.length * row + 30); svg.setAttribute("id", "shares-chart");
  const add = (tag, attrs, text) => {
    const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    if (text != null) node.textContent = text;
    svg.append(node);
  };
  providers.forEach((p, i) => {
    const y = i * row + 10;
    add("text", { x: 0, y: y + 15, "font-size": 13 }, p.provider);
    add("rect", { x: left, y, width: Math.max(1, p.share * scale), height: 18, fill: "#3662d8" });
    add("text", { x: left + p.share * scale + 6, y: y + 14, "font-size": 12 }, fmt(p.share, 1) + "%");
    if (p.cap != null) add("line", { x1: left + p.cap * scale, x2: left + p.cap * scale, y1: y - 2, y2: y + 20, stroke: "#b3261e", "stroke-width": 2 });
  });
  add("text", { x: left, y: providers.length * row + 25, "font-size": 11, fill: "#555" }, "red marks: caps");
  return svg;
}

// Cumulative shares over time, one line per provider, with the HHI (right axis) and
// its alert line dashed.
function timelineChart(points, alert) {
  const width = 760, height = 260, left = 40, right = 60, top = 10, bottom = 30;
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("width", width); svg.setAttribute("height", height); svg.setAttribute("id", "shares-over-time");
  const add = (tag, attrs, text) => {
    const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    if (text != null) node.textContent = text;
    svg.append(node);
    return node;
  };
  if (points.length === 0) { add("text", { x: left, y: 40 }, "No awards yet."); return svg; }
  const x = (i) => left + (points.length === 1 ? 0 : i * (width - left - right) / (points.length - 1));
  const y = (percent) => top + (100 - percent) * (height - top - bottom) / 100;
  const yHhi = (hhi) => top + (10000 - hhi) * (height - top - bottom) / 10000;
  add("line", { x1: left, x2: width - right, y1: y(0), y2: y(0), stroke: "#999" });
  add("text", { x: 2, y: y(100) + 4, "font-size": 10 }, "100%");
  add("text", { x: 2, y: y(0), "font-size": 10 }, "0%");
  add("text", { x: width - right + 4, y: yHhi(10000) + 4, "font-size": 10 }, "HHI 10k");
  const colors = ["#3662d8", "#e07b00", "#1e7d34", "#8e44ad", "#b3261e", "#16a2b8"];
  const providers = [...new Set(points.flatMap((p) => Object.keys(p.shares)))];
  providers.forEach((provider, k) => {
    const path = points.map((p, i) => `${i ? "L" : "M"}${x(i)},${y(p.shares[provider] || 0)}`).join(" ");
    add("path", { d: path, fill: "none", stroke: colors[k % colors.length], "stroke-width": 2 });
    add("text", { x: left + 4 + k * 120, y: height - 6, "font-size": 11, fill: colors[k % colors.length] }, provider);
  });
  add("path", { d: points.map((p, i) => `${i ? "L" : "M"}${x(i)},${yHhi(p.hhi)}`).join(" "), fill: "none", stroke: "#222", "stroke-width": 1.5 });
  if (alert != null) add("line", { x1: left, x2: width - right, y1: yHhi(alert), y2: yHhi(alert), stroke: "#b3261e", "stroke-dasharray": "5 4" });
  add("text", { x: x(0), y: height - 18, "font-size": 10 }, points[0].day);
  add("text", { x: x(points.length - 1) - 50, y: height - 18, "font-size": 10 }, points[points.length - 1].day);
  return svg;
}

async function providersPage() {
  const s = await api("/v1/summary");
  const alert = s.hhi_alert != null && s.hhi > s.hhi_alert;
  main.replaceChildren(
    el("h1", {}, "Providers"),
    el("p", { id: "hhi" }, "HHI of awarded GPU-hours: ", el("b", { class: alert ? "alert" : "ok" }, fmt(s.hhi)),
      s.hhi_alert != null ? ` (alert above ${fmt(s.hhi_alert)})` : ""),
    sharesChart(s.providers),
    el("h2", {}, "Shares over time"),
    el("p", {}, "Cumulative share of awarded GPU-hours by day; the black line is the HHI (right scale), the dashed red line its alert level."),
    timelineChart(s.timeline, s.hhi_alert),
    table([["Provider", p => p.provider], ["GPU-hours", p => fmt(p.gpu_hours)], ["Share", p => fmt(p.share, 1) + "%"], ["Cap", p => p.cap == null ? "–" : fmt(p.cap) + "%"]], s.providers),
    el("h2", {}, "Commitments"),
    table([["Provider", c => c.provider], ["Committed GPU-hours", c => c.min_gpu_hours == null ? "–" : fmt(c.min_gpu_hours)],
      ["Awarded", c => fmt(c.awarded_gpu_hours)],
      ["Remaining", c => c.min_gpu_hours == null ? "–" : fmt(Math.max(0, c.min_gpu_hours - c.awarded_gpu_hours))]], s.commitments));
}

async function dealPage() {
  const deal = await api("/v1/deal");
  main.replaceChildren(el("h1", {}, "Deal " + deal.name),
    el("p", {}, "Each version of the contract, as the ledger holds it: the file's bytes and their SHA-256, from when it governs new needs, and what an amendment does to the needs open then (keep their terms, or move to the new ones)."),
    el("div", { id: "deal-versions" }, table([["Version", v => v.version], ["File", v => v.file],
      ["Adopted", v => v.adopted_at || "before deals were entries"],
      ["Effective", v => v.effective || "–"], ["Open needs", v => v.open_needs || "–"],
      ["In force", v => v.in_force ? "yes" : "no"], ["Ledger #", v => v.index == null ? "–" : v.index],
      ["SHA-256", v => el("code", {}, v.sha256)]], deal.versions)));
}

async function ledgerPage() {
  const [key, checkpoint, w] = await Promise.all([api("/v1/ledger/key"), api("/v1/ledger/checkpoint").catch(() => "no checkpoint yet"), api("/v1/ledger/witnesses")]);
  const trailing = w.witnesses.length === 0 ? "The deal names no witness: checkpoints carry the log's signature alone."
    : w.lag_entries === 0 ? `Every entry is under a checkpoint the required witnesses cosigned (${fmt(w.witnessed_size)} entries).`
    : `Witnessing trails the log by ${fmt(w.lag_entries)} entries (${fmt(w.lag_seconds, 1)} s): the latest witnessed checkpoint covers ${fmt(w.witnessed_size)} of ${fmt(w.log_size)}.`;
  const children = [el("h1", {}, "Ledger"), el("h2", {}, "Verifier key"), el("pre", { id: "verifier-key" }, key),
    el("h2", {}, "Latest checkpoint"), el("pre", { id: "checkpoint" }, checkpoint),
    el("h2", {}, "Witnesses"), el("p", { id: "witness-lag" }, trailing),
    el("div", { id: "witnesses" }, table([["Witness", x => x.name], ["Required", x => x.required ? "yes" : "no"],
      ["Cosigned to", x => x.cosigned_size == null ? "–" : fmt(x.cosigned_size)], ["Last cosigned", x => x.last_cosigned_at || "–"],
      ["Last refusal", x => x.last_error || "–"], ["Key", x => el("code", {}, x.key)]], w.witnesses))];
  if (me.party !== "provider") {
    children.push(el("button", { onclick: async () => { await api("/v1/ledger/checkpoint", { method: "POST" }); ledgerPage(); } }, "Sign a checkpoint now"));
    // A period's export and report: the last 30 model days by default.
    const day = (ms) => new Date(ms).toISOString().slice(0, 10);
    const from = el("input", { type: "date", id: "period-from", value: day(modelNow() - 30 * 86400000) });
    const to = el("input", { type: "date", id: "period-to", value: day(modelNow() + 86400000) });
    const status = el("span", { id: "period-status" });
    const query = () => "from=" + encodeURIComponent(from.value) + "&to=" + encodeURIComponent(to.value);
    const get = (path, name, ext) => async (e) => {
      e.preventDefault();
      status.textContent = "preparing…";
      try { await download(path + "?" + query(), name + "-" + from.value + "-" + to.value + ext); status.textContent = ""; }
      catch (error) { status.textContent = error.message; }
    };
    children.push(el("h2", {}, "Period export and report"),
      el("p", {}, "Every entry of the needs active in the period under one proof against a cosigned checkpoint, and the report read from it (first refusal, the holder's conduct, what refusals cost, concentration, approvals, deliveries, the deal's versions). `rofr report verify` recomputes the report offline."),
      el("form", { id: "period" }, "From ", from, " to ", to, " ",
        el("a", { href: "#", id: "period-export", onclick: get("/v1/ledger/export", "rofr-export", ".jsonl") }, "Export (JSON Lines)"), " · ",
        el("a", { href: "#", id: "period-report", onclick: get("/v1/ledger/report", "rofr-report", ".html") }, "Report (HTML)"), " ",
        status));
    const page = await api("/v1/events?limit=50");
    children.push(el("h2", {}, "First entries"), table([["#", e => e.index], ["At", e => e.event.at], ["Type", e => e.event.type], ["Need", e => e.event.need ?? `deal ${e.event.deal} v${e.event.version}`]], page.events));
  }
  main.replaceChildren(...children);
}

async function route() {
  if (!me) return;
  navigation();
  const [page, arg] = (location.hash.slice(2) || (me.party === "provider" ? "my-offers" : "overview")).split("/");
  try {
    switch (page) {
      case "overview": return await overview();
      case "offers": return await offersPage(false, arg && decodeURIComponent(arg));
      case "providers": return await providersPage();
      case "needs": return await needsPage(arg);
      case "need": return await needTimeline(decodeURIComponent(arg));
      case "deal": return await dealPage();
      case "ledger": return await ledgerPage();
      case "my-offers": return await offersPage(true, arg && decodeURIComponent(arg));
      case "my-rfqs": return await myRfqs();
      case "my-awards": return await myAwards(arg && decodeURIComponent(arg));
      default: main.replaceChildren(el("p", {}, "No such page."));
    }
  } catch (error) {
    main.replaceChildren(el("p", { class: "error", id: "page-error" }, error.message));
  }
}

async function start() {
  const health = await (await fetch("/healthz")).json();
  clock = { now: Date.parse(health.now), at: Date.now(), speed: health.speed };
  document.getElementById("deal").textContent = "deal " + health.deal;
  if (!token()) { me = null; return signIn(); }
  try {
    me = await api("/v1/whoami");
  } catch (error) {
    sessionStorage.clear();
    me = null;
    return signIn("That token was not accepted.");
  }
  await route();
}

window.addEventListener("hashchange", route);
start();
