// Drives the web UI in a real headless Chromium (playwright-core with the
// system's /usr/bin/chromium). Run by tests/ui.rs against a real daemon:
//   DUCKPOND_URL, DUCKPOND_KEY, SCREENSHOT_DIR, CHROMIUM [, CSV_FILE]
// Exits non-zero with a message on the first failed expectation.
import { chromium } from "playwright-core";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { tmpdir } from "node:os";

const url = process.env.DUCKPOND_URL;
const key = process.env.DUCKPOND_KEY;
const shots = process.env.SCREENSHOT_DIR;
const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
const STEP_MS = 30_000;
const NOTEBOOK_READY_MS = 90_000;
mkdirSync(shots, { recursive: true });

function expect(cond, what) {
  if (!cond) throw new Error(`expectation failed: ${what}`);
}

const browser = await chromium.launch({
  executablePath,
  args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"],
});
const step = async (name, fn) => {
  const t = Date.now();
  try {
    await fn();
    console.log(`ok   ${name} (${Date.now() - t} ms)`);
  } catch (e) {
    console.log(`FAIL ${name}: ${e.message}`);
    throw e;
  }
};

/// Every form control is labelled (a <label for>, aria-label or wrapping label).
async function checkLabels(page, where) {
  const unlabelled = await page.evaluate(() =>
    [...document.querySelectorAll("input:not([type=hidden]), select, textarea")]
      .filter((el) => !el.closest(".cm-editor"))
      .filter((el) => !(el.labels && el.labels.length) && !el.getAttribute("aria-label"))
      .map((el) => el.outerHTML.slice(0, 80)),
  );
  expect(unlabelled.length === 0, `unlabelled controls on ${where}: ${unlabelled.join(", ")}`);
}

async function snap(page, name) {
  await page.screenshot({ path: join(shots, `${name}-1280.png`), fullPage: true });
  await page.setViewportSize({ width: 390, height: 844 });
  // Nothing may stick out sideways at phone width.
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  await page.screenshot({ path: join(shots, `${name}-phone.png`), fullPage: true });
  await page.setViewportSize({ width: 1280, height: 900 });
  expect(overflow <= 1, `${name} overflows a phone screen by ${overflow}px`);
}

let failed = false;
const context = await browser.newContext({ viewport: { width: 1280, height: 900 }, acceptDownloads: true });
const page = await context.newPage();
page.setDefaultTimeout(STEP_MS);
page.on("dialog", (d) => d.accept(d.type() === "prompt" ? "renamed notebook" : undefined));
try {
  await step("sign in with the keyboard only", async () => {
    await page.goto(url + "/");
    await page.waitForSelector("#api-key:focus");
    await checkLabels(page, "sign in");
    await snap(page, "signin");
    await page.keyboard.type("dpk_wrong_key");
    await page.keyboard.press("Enter");
    await page.waitForSelector(".signin .error");
    await page.fill("#api-key", key);
    await page.keyboard.press("Enter");
    await page.waitForSelector("header.top:not([hidden])");
    const cookies = await context.cookies();
    const c = cookies.find((c) => c.name === "duckpond_session");
    expect(c && c.httpOnly && c.sameSite === "Strict", "an HttpOnly SameSite=Strict session cookie");
    const stored = await page.evaluate(() => JSON.stringify(localStorage) + document.cookie);
    expect(!stored.includes(key), "the key is not readable by page scripts");
  });

  await step("create and start a notebook; it becomes ready", async () => {
    await page.goto(url + "/#/notebooks");
    await page.fill("#nb-name", "e2e notebook");
    await page.click("text=Create");
    const row = page.locator("article.row", { hasText: "e2e notebook" });
    await row.waitFor();
    await row.locator("button", { hasText: "Start" }).click();
    await row.locator('[data-state="ready"]').waitFor({ timeout: NOTEBOOK_READY_MS });
    await checkLabels(page, "notebooks");
    await snap(page, "notebooks");
    // The editor opens through the proxy with the cookie alone.
    const href = await row.locator("a", { hasText: "Open editor" }).getAttribute("href");
    const editor = await context.newPage();
    const resp = await editor.goto(url + href);
    expect(resp.status() === 200, `the editor answered ${resp.status()}`);
    const html = await editor.content();
    expect(html.includes("marimo") && !html.includes("Login"), "marimo's editor without its login page");
    await editor.waitForTimeout(2000);
    await editor.screenshot({ path: join(shots, "marimo-editor-1280.png") });
    await editor.close();
    await row.locator("button", { hasText: "Stop" }).click();
    await row.locator('[data-state="stopped"]').waitFor();
  });

  await step("upload a CSV and see it in datasets", async () => {
    const file = join(tmpdir(), `e2e-${process.pid}.csv`);
    writeFileSync(file, "ts,value,label\n2026-01-01 00:00:00,1.5,a\n2026-01-01 00:01:00,2.5,b\n2026-01-01 00:02:00,4.0,c\n");
    await page.goto(url + "/#/datasets");
    await page.fill("#up-table", "e2e_series");
    await page.setInputFiles("#up-file", file);
    await page.waitForSelector("text=Uploaded 3 rows into e2e_series");
    await page.waitForSelector('a[href="#/datasets/e2e_series"]');
    await checkLabels(page, "datasets");
    await snap(page, "datasets");
    // A malformed file gets a readable error where the upload is.
    writeFileSync(file, "ts,value\n2026-01-01,not a number\n");
    await page.fill("#up-table", "e2e_series");
    await page.setInputFiles("#up-file", file);
    await page.waitForSelector(".card .error");
    await page.click('a[href="#/datasets/e2e_series"]');
    await page.waitForSelector("text=Schema");
    await page.waitForSelector("td >> text=value");
    await snap(page, "dataset-detail");
  });

  await step("delete a dataset after confirming", async () => {
    const file = join(tmpdir(), `e2e-del-${process.pid}.csv`);
    writeFileSync(file, "a\n1\n");
    await page.goto(url + "/#/datasets");
    await page.fill("#up-table", "e2e_doomed");
    await page.setInputFiles("#up-file", file);
    await page.waitForSelector('a[href="#/datasets/e2e_doomed"]');
    await page.click('a[href="#/datasets/e2e_doomed"]');
    await page.click("text=Delete dataset");
    await page.waitForSelector('a[href="#/datasets/e2e_series"]');
    await page.waitForFunction(() => !document.querySelector('a[href="#/datasets/e2e_doomed"]'));
  });

  await step("run a query and see the table and a chart", async () => {
    await page.goto(url + "/#/sql");
    await page.waitForSelector(".cm-content");
    await page.click(".cm-content");
    await page.keyboard.press("Control+A");
    await page.keyboard.type("SELECT ts, value FROM e2e_series ORDER BY ts");
    await page.keyboard.press("Control+Enter");
    await page.waitForSelector("text=3 rows");
    await page.waitForSelector(".plot canvas");
    await page.selectOption("#ch-kind", "bar");
    await page.waitForSelector(".plot canvas");
    await checkLabels(page, "sql");
    await snap(page, "sql");
    // Errors appear under the editor.
    await page.click(".cm-content");
    await page.keyboard.press("Control+A");
    await page.keyboard.type("SELECT * FROM no_such_table");
    await page.click("#run");
    await page.waitForSelector("main .error");
    // Export downloads a file.
    await page.click(".cm-content");
    await page.keyboard.press("Control+A");
    await page.keyboard.type("SELECT value, label FROM e2e_series ORDER BY value");
    const [download] = await Promise.all([page.waitForEvent("download"), page.click("text=Export CSV")]);
    expect(download.suggestedFilename() === "result.csv", "a CSV download");
    // The file holds the query's result: its header and every row.
    const saved = join(tmpdir(), `e2e-export-${process.pid}.csv`);
    await download.saveAs(saved);
    const got = readFileSync(saved, "utf8").trim().split(/\r?\n/);
    const want = ["value,label", "1.5,a", "2.5,b", "4.0,c"];
    expect(JSON.stringify(got) === JSON.stringify(want), `the exported CSV is ${JSON.stringify(got)}, not ${JSON.stringify(want)}`);
  });

  await step("create and revoke a key", async () => {
    await page.goto(url + "/#/account");
    await page.fill("#key-label", "e2e key");
    await page.selectOption("#key-scope", "write");
    await page.click("text=Create key");
    const shown = await page.textContent("#new-key");
    expect(shown.startsWith("dpk_"), "the new key is shown once");
    const row = page.locator("tr", { hasText: "e2e key" });
    expect((await row.textContent()).includes("write"), "the key's scope is listed");
    // A write key is refused what only a manage key may do.
    const keysRes = await fetch(url + "/api/account/keys", { headers: { "X-API-Key": shown } });
    expect(keysRes.status === 403, `a write key listed keys: ${keysRes.status}`);
    await row.locator("button", { hasText: "Revoke" }).click();
    await row.locator("text=revoked").waitFor();
    await checkLabels(page, "account");
    await snap(page, "account");
    // The revoked key no longer works.
    const res = await fetch(url + "/api/account", { headers: { "X-API-Key": shown } });
    expect(res.status === 401, `revoked key answered ${res.status}`);
  });

  await step("sign out", async () => {
    const cookies = await page.context().cookies();
    const session = cookies.find((c) => c.name === "duckpond_session");
    expect(session && session.value.startsWith("dps_"), "the cookie holds a session id, not the key");
    await page.click("#signout");
    await page.waitForSelector("#api-key");
    const res = await page.evaluate(async () => (await fetch("/api/account")).status);
    expect(res === 401, "signed out");
    // A copy of the cookie taken before signing out works no more.
    const copied = await fetch(url + "/api/account", { headers: { Cookie: `duckpond_session=${session.value}` } });
    expect(copied.status === 401, `a copied cookie answered ${copied.status} after sign-out`);
  });
} catch (e) {
  failed = true;
  await page.screenshot({ path: join(shots, "failure.png"), fullPage: true }).catch(() => {});
}
await browser.close();
process.exit(failed ? 1 : 0);
