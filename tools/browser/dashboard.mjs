// Drives Debian's Chromium through the rofr dashboard as a buyer and as two providers,
// checking what the pages show against the JSON API. Run by the Rust test `dashboard`
// with the server's URL and tokens in the environment; writes a screenshot per page.

import assert from "node:assert/strict";
import { mkdirSync, readFileSync } from "node:fs";
import { chromium } from "playwright-core";

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`missing environment variable ${name}`);
  return value;
};
const url = env("ROFR_URL");
const shots = env("SHOTS");
const [buyer, azure, oracle] = [env("BUYER"), env("AZURE"), env("ORACLE")];
const [offered, other] = [env("NEED"), env("OTHER_NEED")];
mkdirSync(shots, { recursive: true });

async function api(token, path, method = "GET") {
  const response = await fetch(url + path, { method, headers: { authorization: "Bearer " + token, "content-type": "application/json" }, body: method === "POST" ? "{}" : undefined });
  return { status: response.status, body: await response.json().catch(() => null) };
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
let checks = 0;
const check = (condition, message) => { assert.ok(condition, message); checks += 1; };

async function signedIn(token) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  page.on("pageerror", (error) => { throw error; });
  await page.goto(url + "/ui/");
  await page.fill("#token", token);
  await page.click("#signin button");
  await page.waitForSelector("#nav a");
  return page;
}

try {
  // The buyer sees the same figures as the API.
  const page = await signedIn(buyer);
  await page.waitForSelector("#status-cards");
  const summary = (await api(buyer, "/v1/summary")).body;
  const shown = await page.$$eval("#status-cards .card", (cards) => Object.fromEntries(cards.map((c) => [c.dataset.key, c.querySelector("b").textContent])));
  check(shown.needs === String(summary.needs), `needs shown ${shown.needs}, API ${summary.needs}`);
  for (const [status, count] of Object.entries(summary.by_status)) {
    check(shown[status] === String(count), `${status}: shown ${shown[status]}, API ${count}`);
  }
  await page.screenshot({ path: `${shots}/overview.png`, fullPage: true });

  await page.click("text=Providers");
  await page.waitForSelector("#shares-chart");
  check((await page.textContent("#hhi")).includes("HHI"), "the providers page shows the HHI");
  check((await page.$("#shares-over-time")) !== null, "the providers page charts shares over time");
  await page.screenshot({ path: `${shots}/providers.png`, fullPage: true });

  await page.click("text=Offers");
  await page.waitForSelector(".countdown");
  check((await page.$$(".countdown")).length >= 2, "open offers are listed with a countdown");
  await page.screenshot({ path: `${shots}/offers.png`, fullPage: true });

  const events = (await api(buyer, `/v1/needs/${offered}/events`)).body.events;
  await page.goto(`${url}/ui/#/need/${offered}`);
  await page.waitForSelector("table tbody tr");
  check((await page.$$("table tbody tr")).length === events.length, "the timeline shows every event of the need");
  const governed = await page.textContent("#deal-version");
  check(governed.includes(`deal version ${events[0].event.deal_version}`), `the need names the deal version that governs it (${governed})`);
  await page.screenshot({ path: `${shots}/need.png`, fullPage: true });

  await page.click('a[href="#/deal"]');
  await page.waitForSelector("#deal-versions tbody tr");
  const deal = (await api(buyer, "/v1/deal")).body;
  const versions = await page.textContent("#deal-versions tbody");
  check(deal.versions.every(v => versions.includes(v.sha256)), "the deal page shows each version's hash");
  check(deal.versions.every(v => v.effective == null || versions.includes(v.effective)), "the deal page shows each version's effective time");
  await page.screenshot({ path: `${shots}/deal.png`, fullPage: true });

  await page.click("text=Ledger");
  await page.waitForSelector("#verifier-key");
  const key = await (await fetch(url + "/v1/ledger/key", { headers: { authorization: "Bearer " + buyer } })).text();
  check((await page.textContent("#verifier-key")).trim() === key.trim(), "the ledger page shows the verifier key");
  const lag = await page.textContent("#witness-lag");
  check(lag.includes("names no witness"), "the ledger page says how far witnessing trails the log (here: no witness named)");
  await page.screenshot({ path: `${shots}/ledger.png`, fullPage: true });
  // The period's export and report download with the buyer's token.
  await page.fill("#period-from", "2020-01-01");
  await page.fill("#period-to", "2040-01-01");
  for (const [link, name, expect] of [["#period-export", ".jsonl", "\"format\":\"rofr-export/1\""], ["#period-report", ".html", "<section id=\"first-refusal\">"]]) {
    const [download] = await Promise.all([page.waitForEvent("download"), page.click(link)]);
    check(download.suggestedFilename().endsWith(name), `the ${link} download is named ${download.suggestedFilename()}`);
    const saved = `${shots}/download${name}`;
    await download.saveAs(saved);
    check(readFileSync(saved, "utf8").includes(expect), `the ${link} download holds ${expect}`);
  }

  // The holder accepts an offer from the page, and the need moves on.
  const holder = await signedIn(azure);
  await holder.waitForSelector(`button[data-action=accept][data-need="${offered}"]`);
  await holder.screenshot({ path: `${shots}/provider-offers.png`, fullPage: true });
  await holder.click(`button[data-action=accept][data-need="${offered}"]`);
  await holder.waitForSelector("#answer-result .ok");
  check((await holder.textContent("#answer-result")).includes("award_made"), "the page reports the award");
  const need = (await api(buyer, `/v1/needs/${offered}`)).body;
  check(need.awarded === need.gpus, `the need is awarded after the click (awarded ${need.awarded})`);

  // The holder's awards page lists the award.
  await holder.click("text=My awards");
  await holder.waitForSelector("h1:has-text('My awards')");
  await holder.waitForSelector("table tbody tr");
  check((await holder.textContent("table")).includes(offered), "the holder's awards page lists the award");
  await holder.screenshot({ path: `${shots}/provider-awards.png`, fullPage: true });

  // Another provider sees none of the holder's offers and cannot answer them.
  const stranger = await signedIn(oracle);
  await stranger.waitForSelector("#no-offers");
  check(!(await stranger.content()).includes(other), "another provider does not see the holder's offers");
  check((await api(oracle, `/v1/needs/${other}/accept`, "POST")).status === 404, "another provider's answer is 404");
  await stranger.screenshot({ path: `${shots}/other-provider.png`, fullPage: true });

  console.log(`dashboard: ${checks} checks passed; screenshots in ${shots}`);
} finally {
  await browser.close();
}
