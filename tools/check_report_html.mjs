// Opens an index.html of `vssl compare` in headless Chromium (playwright-core driving
// the system's chromium) and fails on any console error, page error, failed load
// or network request other than the page itself; writes a full-page screenshot.
// Usage: node check_report_html.mjs INDEX_HTML SCREENSHOT_PNG [CHROMIUM]
import { chromium } from "playwright-core";
import { pathToFileURL } from "node:url";

const [page_path, shot, exe = "/usr/bin/chromium"] = process.argv.slice(2);
const url = pathToFileURL(page_path).href;
const browser = await chromium.launch({ executablePath: exe, args: ["--no-sandbox"] });
const page = await browser.newPage({ viewport: { width: 1200, height: 900 } });
const problems = [];
const requests = [];
page.on("console", (m) => {
  if (m.type() === "error" || m.type() === "warning") problems.push(`console ${m.type()}: ${m.text()}`);
});
page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
page.on("request", (r) => requests.push(r.url()));
page.on("requestfailed", (r) => problems.push(`failed: ${r.url()}`));
await page.goto(url, { waitUntil: "networkidle" });
const info = await page.evaluate(() => ({
  svgs: document.querySelectorAll("svg").length,
  rows: document.querySelectorAll("table tr").length,
  links: [...document.querySelectorAll("a")].map((a) => a.href),
  width: document.documentElement.scrollWidth,
  height: document.documentElement.scrollHeight,
}));
await page.screenshot({ path: shot, fullPage: true });
await browser.close();
const others = requests.filter((r) => r !== url);
if (others.length) problems.push(`requests besides the page: ${others.join(", ")}`);
if (info.svgs < 2) problems.push(`expected the metric panels and loss curves inline, found ${info.svgs} <svg>`);
console.log(`${url}: ${requests.length} request(s) (the page), ${info.svgs} inline SVGs, ` +
  `${info.rows} table rows, ${info.links.length} recipe links, ${info.width}x${info.height}px; screenshot ${shot}`);
if (problems.length) {
  console.log("FAILED:\n" + problems.join("\n"));
  process.exit(1);
}
console.log("OK: no console errors, no network requests");
