// Opens a report written by `rofr report` in Debian's Chromium with the network off,
// checks its figures against the broker's /v1/summary (saved as JSON beside it) and
// takes a screenshot of each section. Run by the Rust test in crates/rofr/tests/demo.rs.

import assert from "node:assert/strict";
import { mkdirSync, readFileSync } from "node:fs";
import { pathToFileURL } from "node:url";
import { chromium } from "playwright-core";

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`missing environment variable ${name}`);
  return value;
};
const report = env("REPORT");
const summary = JSON.parse(readFileSync(env("SUMMARY"), "utf8"));
const shots = env("SHOTS");
mkdirSync(shots, { recursive: true });

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
let checks = 0;
const check = (condition, message) => { assert.ok(condition, message); checks += 1; };
const close = (a, b) => Math.abs(Number(a) - Number(b)) <= 1e-9 * Math.max(1, Math.abs(Number(b)));

try {
  const context = await browser.newContext({ viewport: { width: 1100, height: 900 }, offline: true });
  const requests = [];
  context.on("request", (r) => { if (!r.url().startsWith("file:")) requests.push(r.url()); });
  const page = await context.newPage();
  page.on("pageerror", (error) => { throw error; });
  await page.goto(pathToFileURL(report).href);
  const figure = async (key) => page.getAttribute(`[data-figure="${key}"]`, "data-value");
  check(close(await figure("needs.total"), summary.needs), `needs: page ${await figure("needs.total")}, API ${summary.needs}`);
  check(close(await figure("holder.lapses"), summary.lapses), `lapses: page ${await figure("holder.lapses")}, API ${summary.lapses}`);
  check(close(await figure("holder.reoffers"), summary.reoffers), `re-offers: page ${await figure("holder.reoffers")}, API ${summary.reoffers}`);
  check(close(await page.getAttribute("#hhi", "data-value"), summary.hhi), `HHI: page ${await page.getAttribute("#hhi", "data-value")}, API ${summary.hhi}`);
  for (const p of summary.providers) {
    const row = `[data-provider="${p.provider}"]`;
    check(close(await page.getAttribute(row, "data-gpu-hours"), p.gpu_hours), `${p.provider} GPU-hours`);
    check(close(await page.getAttribute(row, "data-share"), p.share), `${p.provider} share`);
  }
  check((await page.$$("svg.chart")).length >= 2, "the concentration section charts shares and HHI");
  for (const section of ["checkpoint", "first-refusal", "holder", "cost", "rounds", "concentration", "approvals", "deal"]) {
    const node = await page.$(`section#${section}`);
    check(node !== null, `section ${section}`);
    await node.screenshot({ path: `${shots}/report-${section}.png` });
  }
  check(requests.length === 0, `the page asked the network for ${requests.join(", ")}`);
  await page.emulateMedia({ media: "print" });
  await page.pdf({ path: `${shots}/report.pdf` });
  console.log(`${checks} checks passed`);
} finally {
  await browser.close();
}
