// Drives headless Firefox as tests/browser/driver.mjs drives Chromium: the
// same commands, one JSON line each on stdin, one JSON line answered on
// stdout (see driver.mjs for the list). Each "open" gets its own user
// context (cookies, storage and permissions apart, like a playwright
// context).
//
// Firefox is Debian's firefox-esr (FIREFOX, default /usr/bin/firefox-esr),
// spoken to over WebDriver BiDi by puppeteer-core (package.json), with a
// fake camera and microphone, a private PulseAudio null sink to play to
// (children.mjs) and none of its background traffic.
//
// Certificates: acceptInsecureCerts, so every certificate passes, for
// pages, fetch and WebSocket alike. Firefox has no counterpart to the
// Chromium driver's allow-list of one public key
// (--ignore-certificate-errors-spki-list). It does not cover WebTransport:
// a relay's self-signed certificate passes there only as the page pins it
// (serverCertificateHashes), as the call page does.
//
// Extra request headers ("open" with headers) go with every request of
// the page: Firefox 140 lacks BiDi's network.setExtraHeaders, so each
// request is intercepted and sent on with them.

import { mkdirSync } from "node:fs";
import { dirname } from "node:path";
import { createInterface } from "node:readline";
import puppeteer from "puppeteer-core";
import { reaper, scratch, sound } from "./children.mjs";

const executablePath = process.env.FIREFOX || "/usr/bin/firefox-esr";

const prefs = {
  // A fake camera and microphone, granted without asking.
  "media.navigator.streams.fake": true,
  "media.navigator.permission.disabled": true,
  // A mock sound device, in Firefox versions that have it; 140 has not
  // (the pref does nothing there) and plays to the private PulseAudio
  // below instead.
  "media.cubeb.force_mock_context": true,
  // Media plays without a click, as --autoplay-policy=no-user-gesture-required
  // lets it in Chromium.
  "media.autoplay.default": 0,
  "media.autoplay.block-webaudio": false,
  // Nothing fetched behind the tests' back (the machine may have no
  // network at all, and a lookup that hangs slows start-up): no updates,
  // telemetry, studies, captive portal or connectivity probes, safe
  // browsing lists, remote settings (at the address Firefox's own
  // automation uses, which Firefox honours only with
  // MOZ_REMOTE_SETTINGS_DEVTOOLS=1 in its environment), plugin (OpenH264,
  // Widevine) downloads, DNS over HTTPS, prefetching, push, region or geo
  // lookups.
  "services.settings.server": "data:,#remote-settings-dummy/v1",
  "app.update.auto": false,
  "app.update.checkInstallTime": false,
  "app.update.disabledForTesting": true,
  "app.normandy.enabled": false,
  "app.shield.optoutstudies.enabled": false,
  "messaging-system.rsexperimentloader.enabled": false,
  "toolkit.telemetry.enabled": false,
  "toolkit.telemetry.unified": false,
  "toolkit.telemetry.archive.enabled": false,
  "toolkit.telemetry.server": "",
  "datareporting.healthreport.uploadEnabled": false,
  "datareporting.policy.dataSubmissionEnabled": false,
  "browser.ping-centre.telemetry": false,
  "network.captive-portal-service.enabled": false,
  "captivedetect.canonicalURL": "",
  "network.connectivity-service.enabled": false,
  "browser.safebrowsing.malware.enabled": false,
  "browser.safebrowsing.phishing.enabled": false,
  "browser.safebrowsing.downloads.enabled": false,
  "browser.safebrowsing.blockedURIs.enabled": false,
  "browser.safebrowsing.downloads.remote.enabled": false,
  "security.remote_settings.crlite_filters.enabled": false,
  "security.remote_settings.intermediates.enabled": false,
  "security.OCSP.enabled": 0,
  "extensions.update.enabled": false,
  "extensions.getAddons.cache.enabled": false,
  "extensions.systemAddon.update.enabled": false,
  "extensions.blocklist.enabled": false,
  "media.gmp-manager.updateEnabled": false,
  "media.gmp-gmpopenh264.enabled": false,
  "media.gmp-widevinecdm.enabled": false,
  "network.trr.mode": 5,
  "network.dns.disablePrefetch": true,
  "network.prefetch-next": false,
  "network.predictor.enabled": false,
  "network.http.speculative-parallel-limit": 0,
  "dom.push.connection.enabled": false,
  "browser.region.network.url": "",
  "browser.region.update.enabled": false,
  "geo.provider.network.url": "",
  "browser.search.update": false,
  "browser.newtabpage.enabled": false,
  "browser.newtabpage.activity-stream.feeds.system.topstories": false,
  "browser.newtabpage.activity-stream.feeds.topsites": false,
  "browser.topsites.contile.enabled": false,
  "identity.fxaccounts.enabled": false,
};

const reap = reaper();
const profile = scratch(reap, "rr-firefox-");
// Firefox 140 needs a sound device: without one an AudioContext never
// leaves "suspended" and the page hears and sends no audio.
const speaker = await sound(reap, "without a sound device pages get no running AudioContext");

const browser = await puppeteer.launch({
  browser: "firefox",
  executablePath,
  headless: true,
  userDataDir: profile.path,
  env: {
    ...process.env,
    MOZ_REMOTE_SETTINGS_DEVTOOLS: "1",
    ...(speaker && { PULSE_SERVER: speaker.server }),
  },
  acceptInsecureCerts: true,
  defaultViewport: { width: 1280, height: 720 },
  extraPrefsFirefox: prefs,
  // The reaper ends Firefox on any exit; puppeteer's own signal handlers
  // would only race it.
  handleSIGINT: false,
  handleSIGTERM: false,
  handleSIGHUP: false,
});
// puppeteer starts Firefox in a process group of its own.
const firefox = browser.process()?.pid;
if (firefox) reap.group(firefox);
const version = await browser.version();
const pages = new Map();
const log = [];

/** Sends `headers` with every request of `page`: BiDi's
 * network.setExtraHeaders where Firefox has it, else by rewriting each
 * request on its way out. */
async function sendHeaders(page, headers) {
  try {
    await page.setExtraHTTPHeaders(headers);
  } catch {
    await page.setRequestInterception(true);
    page.on("request", (request) => {
      request.continue({ headers: { ...request.headers(), ...headers } });
    });
  }
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Runs `f` on the element `selector` names once it is there and, if
 * `usable`, shown and enabled (as playwright waits before a click), within
 * 10 s. By hand rather than with puppeteer's locators or waitForSelector:
 * those poll with a function made by `new Function` in the page, which the
 * call page's Content-Security-Policy (no 'unsafe-eval') refuses. */
async function withElement(page, selector, usable, f) {
  const deadline = Date.now() + 10_000;
  for (;;) {
    const e = await page.$(selector);
    try {
      const ready =
        e &&
        (!usable ||
          (await e.evaluate((e) => {
            const r = e.getBoundingClientRect();
            return e.isConnected && !e.disabled && r.width > 0 && r.height > 0 && e.checkVisibility();
          })));
      if (ready) return await f(e);
      if (Date.now() > deadline) {
        throw new Error(`${selector}: ${e ? "not shown or not enabled" : "no such element"} within 10 s`);
      }
    } finally {
      // Each look holds a reference in the page until let go.
      await e?.dispose().catch(() => {});
    }
    await sleep(100);
  }
}

async function handle(cmd) {
  switch (cmd.op) {
    case "open": {
      const context = await browser.createBrowserContext();
      // A window of its own: in a tab behind another the page would be
      // hidden, its timers throttled and its video frames stopped.
      const page = await context.newPage({ type: "window" });
      page.on("console", (m) => log.push(`[${cmd.page}] ${m.type()}: ${m.text()}`));
      page.on("pageerror", (e) => log.push(`[${cmd.page}] pageerror: ${e}`));
      page.on("dialog", (d) => d.accept(cmd.prompt ?? undefined));
      if (cmd.headers) await sendHeaders(page, cmd.headers);
      pages.set(cmd.page, { context, page });
      await page.goto(cmd.url);
      return null;
    }
    case "eval":
      // A string is evaluated as a script (its completion value), and a
      // promise it gives is awaited, as playwright's page.evaluate does.
      return await pages.get(cmd.page).page.evaluate(cmd.js);
    case "click":
      await withElement(pages.get(cmd.page).page, cmd.selector, true, (e) => e.click());
      return null;
    case "fill": {
      // Replaces what the field holds by typing, as a person would.
      const page = pages.get(cmd.page).page;
      await withElement(page, cmd.selector, true, (e) =>
        e.evaluate((e) => {
          e.focus();
          e.select?.();
        }),
      );
      if (cmd.value) await page.keyboard.type(cmd.value);
      else await page.keyboard.press("Backspace");
      return null;
    }
    case "text":
      return await withElement(pages.get(cmd.page).page, cmd.selector, false, (e) => e.evaluate((e) => e.textContent));
    case "url":
      return pages.get(cmd.page).page.url();
    case "screenshot":
      // Into a directory that may not be there yet, as playwright writes.
      mkdirSync(dirname(cmd.path), { recursive: true });
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
      return version;
    default:
      throw new Error(`unknown op ${cmd.op}`);
  }
}

const lines = createInterface({ input: process.stdin });
console.log(JSON.stringify({ ready: true, version }));
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
if (firefox) reap.ungroup(firefox);
speaker?.stop();
profile.remove();
