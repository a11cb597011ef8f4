// Drives orderd's live dashboard in headless Chromium (Debian's `chromium`, through the pinned
// playwright-core; no browser is downloaded). Used by daemon/tests/it/dashboard.rs.
//
// Environment: ORDERD_URL (base URL), ORDERD_TOKEN (an operator's bearer token, sent with every
// request of the page), CHROMIUM (the browser's path), STEP_TIMEOUT_MS (each wait's deadline).
//
// Protocol on stdout, one JSON object per line:
//   {"phase":"before", ...figures}   the page has loaded and rendered its first data;
//   then it waits for one line on stdin, {"orders": N, "rejected": R}: the test has put N
//   orders through and had R refused;
//   {"phase":"after", ...figures}    once the page shows at least that many orders and
//                                    rejections in the last minute and latency points (all
//                                    from one poll made after the load), or at the deadline
//                                    (the test then fails on the figures);
//   figures include "console_errors": every console error and uncaught page error seen.
import { chromium } from "playwright-core";
import { createInterface } from "node:readline";

const base = process.env.ORDERD_URL;
const token = process.env.ORDERD_TOKEN;
const executablePath = process.env.CHROMIUM;
const stepTimeout = Number(process.env.STEP_TIMEOUT_MS || "20000");
if (!base || !token || !executablePath) {
  console.error("dashboard.mjs needs ORDERD_URL, ORDERD_TOKEN and CHROMIUM");
  process.exit(2);
}

const errors = [];
const browser = await chromium.launch({
  executablePath,
  headless: true,
  // The test may run as root in a container, where Chromium's sandbox cannot start.
  args: ["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"],
});
try {
  const context = await browser.newContext({
    extraHTTPHeaders: { authorization: `Bearer ${token}` },
    viewport: { width: 1400, height: 1000 },
  });
  const page = await context.newPage();
  page.on("console", (m) => { if (m.type() === "error") errors.push(`console: ${m.text()}`); });
  page.on("pageerror", (e) => errors.push(`pageerror: ${e.message}`));
  page.on("requestfailed", (r) => errors.push(`requestfailed: ${r.url()} ${r.failure()?.errorText}`));

  const resp = await page.goto(`${base}/ops/dashboard`, { timeout: stepTimeout });
  if (!resp || resp.status() !== 200) throw new Error(`GET /ops/dashboard answered ${resp && resp.status()}`);
  await page.waitForFunction(
    () => document.getElementById("status").textContent.startsWith("updated"),
    null, { timeout: stepTimeout });

  const figures = () => page.evaluate(() => {
    const text = (id) => document.getElementById(id).textContent;
    const num = (id) => Number(text(id).replace(/,/g, ""));
    const canvas = (id) => Number(document.getElementById(id).dataset.points || "0");
    return {
      status: text("status"),
      orders_last_minute: num("orders-last-minute"),
      orders_per_s: text("orders-per-s"),
      p50: text("p50"), p99: text("p99"), p999: text("p999"),
      rejected: num("rejected"),
      refused: text("refused"),
      throughput_points: canvas("throughput-chart"),
      latency_points: canvas("latency-chart"),
      sources: [...document.querySelectorAll("#sources tr")].slice(1).map((tr) => tr.textContent),
      rejection_codes: [...document.querySelectorAll("#rejections tr")].slice(1).map((tr) => tr.textContent),
      queue_rows: document.querySelectorAll("#queues tr").length - 1,
      dead_letters: text("dead-letters"),
      dead_letter_rows: [...document.querySelectorAll("#dead-letter-table tr")].slice(1).map((tr) => tr.textContent),
    };
  });

  const before = await figures();
  console.log(JSON.stringify({ phase: "before", ...before, console_errors: [...errors] }));

  const lines = createInterface({ input: process.stdin });
  // stdin closing first means the test gave up: close the browser and end.
  const load = await new Promise((resolve) => {
    lines.once("line", (line) => resolve(JSON.parse(line)));
    lines.once("close", () => resolve(null));
  });
  if (load) await afterLoad(page, load, figures);
  lines.close();
} finally {
  await browser.close();
}

async function afterLoad(page, load, figures) {
  try {
    await page.waitForFunction(
      (want) => {
        const count = (id) => Number(document.getElementById(id).textContent.replace(/,/g, ""));
        return count("orders-last-minute") >= want.orders && count("rejected") >= want.rejected
          && document.getElementById("latency-chart").dataset.points !== "0";
      },
      load, { timeout: stepTimeout, polling: 200 });
  } catch (e) {
    errors.push(`the page did not show the load within ${stepTimeout} ms: ${e.message}`);
  }
  const after = await figures();
  console.log(JSON.stringify({ phase: "after", ...after, console_errors: [...errors] }));
}
