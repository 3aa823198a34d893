// Drives headless Chromium for tests/browser.rs and benches/browser.rs:
// reads one JSON command per line on stdin, answers one JSON line on
// stdout. Pages are named by the caller.
//
//   {"id":1,"op":"open","page":"a","url":"https://127.0.2.1:8080/j/…#p=…"}
//   {"id":2,"op":"eval","page":"a","js":"window.rr.snapshot()"}
//   {"id":3,"op":"click","page":"a","selector":"#join-button"}
//   {"id":4,"op":"fill","page":"a","selector":"#display-name","value":"Ada"}
//   {"id":5,"op":"screenshot","page":"a","path":"target/browser/call.png"}
//   {"id":6,"op":"close","page":"a"}
//
// Chromium is Debian's (CHROMIUM, default /usr/bin/chromium), launched with
// fake camera and microphone, without its background traffic, and never
// with --disable-quic (WebTransport runs on QUIC). It accepts the dev
// routers' self-signed certificate (config/dev-router.crt, or the file in
// ROUTER_CERT), and only that one, by its public key: every other
// certificate is verified as usual.

import { createHash, X509Certificate } from "node:crypto";
import { readFileSync } from "node:fs";
import { createInterface } from "node:readline";
import { chromium } from "playwright-core";

const routerCert = new X509Certificate(readFileSync(process.env.ROUTER_CERT || "config/dev-router.crt"));
const routerSpki = createHash("sha256")
  .update(routerCert.publicKey.export({ type: "spki", format: "der" }))
  .digest("base64");

const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
const args = [
  "--use-fake-device-for-media-stream",
  "--use-fake-ui-for-media-stream",
  "--autoplay-policy=no-user-gesture-required",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--no-first-run",
  "--disable-gpu",
  `--ignore-certificate-errors-spki-list=${routerSpki}`,
];
if (process.getuid?.() === 0) args.push("--no-sandbox");

const browser = await chromium.launch({ executablePath, headless: true, args });
const pages = new Map();
const log = [];

async function handle(cmd) {
  switch (cmd.op) {
    case "open": {
      const context = await browser.newContext({
        viewport: { width: 1280, height: 720 },
        extraHTTPHeaders: cmd.headers ?? undefined,
      });
      const page = await context.newPage();
      page.on("console", (m) => log.push(`[${cmd.page}] ${m.type()}: ${m.text()}`));
      page.on("pageerror", (e) => log.push(`[${cmd.page}] pageerror: ${e}`));
      page.on("dialog", (d) => d.accept(cmd.prompt ?? undefined));
      pages.set(cmd.page, { context, page });
      await page.goto(cmd.url);
      return null;
    }
    case "eval":
      return await pages.get(cmd.page).page.evaluate(cmd.js);
    case "click":
      await pages.get(cmd.page).page.click(cmd.selector, { timeout: 10_000 });
      return null;
    case "fill":
      await pages.get(cmd.page).page.fill(cmd.selector, cmd.value, { timeout: 10_000 });
      return null;
    case "text":
      return await pages.get(cmd.page).page.textContent(cmd.selector, { timeout: 10_000 });
    case "url":
      return pages.get(cmd.page).page.url();
    case "screenshot":
      await pages.get(cmd.page).page.screenshot({ path: cmd.path });
      return cmd.path;
    case "close": {
      const p = pages.get(cmd.page);
      pages.delete(cmd.page);
      await p?.context.close();
      return null;
    }
    case "log":
      return log.splice(0);
    case "version":
      return browser.version();
    default:
      throw new Error(`unknown op ${cmd.op}`);
  }
}

const lines = createInterface({ input: process.stdin });
console.log(JSON.stringify({ ready: true, version: browser.version() }));
for await (const line of lines) {
  if (!line.trim()) continue;
  let cmd;
  try {
    cmd = JSON.parse(line);
  } catch (e) {
    console.log(JSON.stringify({ id: null, error: `bad command: ${e}` }));
    continue;
  }
  try {
    const value = await handle(cmd);
    console.log(JSON.stringify({ id: cmd.id, value: value ?? null }));
  } catch (e) {
    console.log(JSON.stringify({ id: cmd.id, error: String(e) }));
  }
}
await browser.close();
