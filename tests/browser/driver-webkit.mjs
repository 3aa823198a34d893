// Drives WebKitGTK as tests/browser/driver.mjs drives Chromium: the same
// commands, one JSON line each on stdin, one JSON line answered on stdout
// (see driver.mjs for the list).
//
// The browser is WebKitGTK's MiniBrowser (MINIBROWSER, default Debian's
// /usr/lib/x86_64-linux-gnu/webkit2gtk-4.1/MiniBrowser), driven through
// Debian's WebKitWebDriver (WEBKITWEBDRIVER, default /usr/bin/WebKitWebDriver)
// over the W3C WebDriver HTTP protocol. MiniBrowser has no headless mode,
// so the driver starts its own X server (Xvfb) on a free display, and a
// null PulseAudio sink (if there is PulseAudio) for pages to play to. Extra MiniBrowser arguments
// may be given, space-separated, in MINIBROWSER_ARGS (e.g.
// "--features=+WebTransport").
//
// Every "open" is a WebDriver session of its own: its own MiniBrowser and
// WebKitWebDriver. Windows of one session would share cookies and storage
// (localStorage and IndexedDB per origin; sessionStorage stays per tab),
// as no playwright context does, and WebKitWebDriver runs one session at a
// time.
//
// Certificates: acceptInsecureCerts, so every certificate passes (the
// Chromium driver accepts only the dev routers' key). Not supported: extra
// request headers (WebDriver cannot set them; "open" with headers fails
// rather than quietly sending none). Console messages and uncaught errors
// are caught by a hook the driver adds to each page once it has loaded
// (WebKitWebDriver has no log endpoint, and MiniBrowser prints no console
// messages in automation, whose sessions are private): what a page logs
// while it loads is lost.

import { spawn } from "node:child_process";
import { existsSync, mkdirSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { dirname } from "node:path";
import { createInterface } from "node:readline";
import { detached, display, reaper, sound } from "./children.mjs";

const minibrowser = process.env.MINIBROWSER || "/usr/lib/x86_64-linux-gnu/webkit2gtk-4.1/MiniBrowser";
const webdriver = process.env.WEBKITWEBDRIVER || "/usr/bin/WebKitWebDriver";
const args = [
  "--automation",
  // A fake camera and microphone (a test pattern and a tone)...
  "--enable-mock-capture-devices=true",
  // ...granted without the prompt MiniBrowser would otherwise show and no
  // one would answer, and to every window, focused or not (with several
  // MiniBrowsers on one X server only one has the focus).
  "--features=-MockCaptureDevicesPrompt,-GetUserMediaRequiresFocus",
  // Media plays, with sound, without a click (MiniBrowser's default lets
  // only muted media play).
  "--autoplay-policy=allow",
  ...(process.env.MINIBROWSER_ARGS?.split(" ").filter(Boolean) ?? []),
];
for (const [what, path] of [
  ["MiniBrowser (apt-get install libwebkit2gtk-4.1-0)", minibrowser],
  ["WebKitWebDriver (apt-get install webkit2gtk-driver)", webdriver],
]) {
  if (!existsSync(path)) throw new Error(`no ${what} at ${path}`);
}

const reap = reaper();
const screen = await display(reap);
// WebKit plays to a sink of its own making when there is no sound device,
// and its audio clock still runs; the null sink keeps it off a desktop's
// speakers all the same, and where there is none, no server is named.
const speaker = await sound(reap, "WebKit plays to no device (its audio clock still runs)");
const env = {
  ...process.env,
  DISPLAY: screen.display,
  GDK_BACKEND: "x11",
  // No accessibility bus to look for.
  NO_AT_BRIDGE: "1",
  PULSE_SERVER: speaker?.server ?? "unix:/nonexistent",
};
delete env.WAYLAND_DISPLAY;

const version = await new Promise((resolve, reject) => {
  const p = spawn(minibrowser, ["--version"], { env, stdio: ["ignore", "pipe", "inherit"] });
  let out = "";
  p.stdout.on("data", (d) => (out += d));
  p.on("error", reject);
  p.on("exit", () => resolve(out.trim()));
});

const ELEMENT = "element-6066-11e4-a52e-4f735466cecf";
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** One WebDriver command; its value, or throws the driver's error. */
async function call(base, method, path, body) {
  const response = await fetch(base + path, {
    method,
    // Past the Rust side's 120 s wait: a hung WebKitWebDriver fails the
    // command rather than the driver.
    signal: AbortSignal.timeout(125_000),
    headers: body === undefined ? {} : { "content-type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const answer = await response.json();
  if (answer.value?.error) throw new Error(`${answer.value.error}: ${answer.value.message}`);
  return answer.value;
}

function freePort() {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.on("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

/** Starts a WebKitWebDriver and waits until it answers. */
async function startWebDriver() {
  for (let attempt = 0; ; attempt++) {
    const port = await freePort();
    const wd = detached(reap, webdriver, [`--port=${port}`, "--host=127.0.0.1"], { env });
    let exited = false;
    wd.child.on("exit", () => (exited = true));
    const base = `http://127.0.0.1:${port}`;
    for (let i = 0; i < 200 && !exited; i++) {
      try {
        if ((await call(base, "GET", "/status")).ready) {
          // Still running a moment later: the answer was its, not that of
          // whatever else took the port first.
          await sleep(25);
          if (!exited) return { base, stop: wd.stop };
        }
      } catch {
        // Not listening yet.
      }
      await sleep(25);
    }
    wd.stop();
    // Someone else took the port between our look and its bind: another.
    if (attempt === 2) throw new Error(`${webdriver} did not start`);
  }
}

// Each page's console messages and uncaught errors, kept in the page until
// "log" collects them. Added again wherever it is missing (a page that
// navigated itself lost it), before each eval and log.
const HOOK = `
const kept = Symbol.for("rr.driver.log");
if (!window[kept]) {
  const log = (window[kept] = []);
  const text = (a) => {
    if (typeof a === "string") return a;
    if (a instanceof Error) return String(a);
    try { return JSON.stringify(a) ?? String(a); } catch { return String(a); }
  };
  for (const type of ["log", "info", "warn", "error", "debug"]) {
    const original = console[type];
    console[type] = function (...args) {
      log.push(type + ": " + args.map(text).join(" "));
      return original.apply(this, args);
    };
  }
  addEventListener("error", (e) => log.push("pageerror: " + (e.error ?? e.message)));
  addEventListener("unhandledrejection", (e) => log.push("pageerror: " + e.reason));
}
`;

const pages = new Map();
// Pages opened again under a name still open: left running, as the
// Chromium driver leaves them, and ended with the driver.
const replaced = [];

function page(name) {
  const p = pages.get(name);
  if (!p) throw new Error(`no page ${name}`);
  return p;
}

const run = (p, method, path, body) => call(p.session, method, path, body);

/** The element `selector` names once it is there and, if `usable`, shown
 * and enabled (as playwright waits before a click), within 10 s. */
async function element(p, selector, usable) {
  const deadline = Date.now() + 10_000;
  let why = "no such element";
  for (;;) {
    try {
      const e = (await run(p, "POST", "/element", { using: "css selector", value: selector }))[ELEMENT];
      if (!usable) return e;
      if (!(await run(p, "GET", `/element/${e}/displayed`))) why = "not shown";
      else if (!(await run(p, "GET", `/element/${e}/enabled`))) why = "not enabled";
      else return e;
    } catch (e) {
      if (!String(e).startsWith("no such element")) throw e;
    }
    if (Date.now() > deadline) throw new Error(`${selector}: ${why} within 10 s`);
    await sleep(100);
  }
}

/** Answers the dialogs a click opened, one after another, as the Chromium
 * driver does: accepted, a prompt with the page's prompt text if it was
 * given one. Left to the session's unhandledPromptBehavior, a dialog that
 * follows another (a confirm, then a prompt) hangs WebKitWebDriver's next
 * command. A dialog opened later, by a timer, is still left to it. */
async function answerDialogs(p) {
  for (let i = 0; i < 10; i++) {
    // The next dialog of a chain opens a moment after the last is answered.
    if (i > 0) await sleep(50);
    try {
      await run(p, "GET", "/alert/text");
    } catch {
      return; // none open
    }
    if (p.prompt !== undefined) {
      try {
        await run(p, "POST", "/alert/text", { text: p.prompt });
      } catch {
        // An alert or a confirm: nothing to type.
      }
    }
    await run(p, "POST", "/alert/accept", {});
  }
}

/** Whether the page's web process crashed (WebKitWebDriver then ends the
 * session). */
async function crashed(p) {
  try {
    await run(p, "GET", "/url");
    return false;
  } catch (e) {
    return /crash/.test(String(e));
  }
}

async function open(cmd) {
  if (cmd.headers) throw new Error("extra request headers: WebDriver cannot send them (use the Chromium or Firefox driver)");
  if (pages.has(cmd.page)) replaced.push(pages.get(cmd.page));
  const wd = await startWebDriver();
  try {
    const created = await call(wd.base, "POST", "/session", {
      capabilities: {
        alwaysMatch: {
          acceptInsecureCerts: true,
          unhandledPromptBehavior: "accept",
          "webkitgtk:browserOptions": { binary: minibrowser, args },
        },
      },
    });
    const p = { ...wd, session: `${wd.base}/session/${created.sessionId}`, prompt: cmd.prompt };
    pages.set(cmd.page, p);
    // The Rust side waits 120 s for an answer; WebDriver's own default for
    // a script is 30 s.
    await run(p, "POST", "/timeouts", { script: 120_000, pageLoad: 60_000, implicit: 0 });
    // 1280×720 of page, as the Chromium driver's viewport: the window is
    // that plus MiniBrowser's own bars.
    await run(p, "POST", "/window/rect", { width: 1280, height: 720 });
    const [w, h] = await run(p, "POST", "/execute/sync", { script: "return [innerWidth, innerHeight]", args: [] });
    if (w !== 1280 || h !== 720) {
      await run(p, "POST", "/window/rect", { width: 1280 + 1280 - w, height: 720 + 720 - h });
    }
    await run(p, "POST", "/url", { url: cmd.url });
    await run(p, "POST", "/execute/sync", { script: HOOK, args: [] });
    return null;
  } catch (e) {
    pages.delete(cmd.page);
    wd.stop();
    throw e;
  }
}

async function handle(cmd) {
  switch (cmd.op) {
    case "open":
      return await open(cmd);
    case "eval": {
      // The text is an expression (as all the tests' are: statements, which
      // playwright also takes, are a syntax error here); a promise it gives
      // is awaited, as playwright's page.evaluate does. The value comes
      // back as JSON made in the page: the same JSON the Rust side gets
      // from the Chromium driver, and no WebDriver element references.
      const p = page(cmd.page);
      const script = `${HOOK}
const done = arguments[arguments.length - 1];
Promise.resolve()
  .then(() => (
${cmd.js}
  ))
  .then((v) => JSON.stringify(v === undefined ? null : v))
  .then(
    (json) => done({ json }),
    (e) => done({ failed: String(e) + (/:\\d+:\\d+/.test(e?.stack) ? "\\n" + e.stack : "") }),
  );`;
      let answer;
      try {
        answer = await run(p, "POST", "/execute/async", { script, args: [] });
      } catch (e) {
        throw (await crashed(p)) ? new Error(`WebKit's web process crashed (${e})`) : e;
      }
      if (answer.failed !== undefined) throw new Error(answer.failed);
      return JSON.parse(answer.json);
    }
    case "click": {
      const p = page(cmd.page);
      const deadline = Date.now() + 10_000;
      for (;;) {
        const e = await element(p, cmd.selector, true);
        try {
          await run(p, "POST", `/element/${e}/click`, {});
          break;
        } catch (err) {
          // Covered for a moment (an animation, a banner): again, as
          // playwright does, until the deadline.
          const transient = /click intercepted|not interactable|stale element/.test(String(err));
          if (!transient || Date.now() > deadline) throw err;
          await sleep(100);
        }
      }
      await answerDialogs(p);
      return null;
    }
    case "fill": {
      const p = page(cmd.page);
      const e = await element(p, cmd.selector, true);
      await run(p, "POST", `/element/${e}/clear`, {});
      if (cmd.value) await run(p, "POST", `/element/${e}/value`, { text: cmd.value });
      return null;
    }
    case "text": {
      const p = page(cmd.page);
      const e = await element(p, cmd.selector, false);
      return await run(p, "POST", "/execute/sync", {
        script: "return arguments[0].textContent",
        args: [{ [ELEMENT]: e }],
      });
    }
    case "url":
      return await run(page(cmd.page), "GET", "/url");
    case "screenshot": {
      const png = await run(page(cmd.page), "GET", "/screenshot");
      mkdirSync(dirname(cmd.path), { recursive: true });
      writeFileSync(cmd.path, Buffer.from(png, "base64"));
      return cmd.path;
    }
    case "close": {
      const p = pages.get(cmd.page);
      pages.delete(cmd.page);
      if (p) await closePage(p);
      return null;
    }
    case "log": {
      const out = [];
      for (const [name, p] of pages) {
        try {
          const lines = await run(p, "POST", "/execute/sync", {
            script: `${HOOK}\nreturn window[kept].splice(0);`,
            args: [],
          });
          out.push(...lines.map((l) => `[${name}] ${l}`));
        } catch (e) {
          out.push(`[${name}] (no log: ${e})`);
        }
      }
      return out;
    }
    case "version":
      return version;
    default:
      throw new Error(`unknown op ${cmd.op}`);
  }
}

/** Ends a page's session (MiniBrowser quits) and its WebKitWebDriver. */
async function closePage(p) {
  await Promise.race([call(p.base, "DELETE", p.session.slice(p.base.length)).catch(() => {}), sleep(5_000)]);
  p.stop();
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
for (const p of [...pages.values(), ...replaced]) await closePage(p);
speaker?.stop();
screen.stop();
// fetch keeps idle connections to the WebKitWebDrivers open for a few
// seconds more; nothing is left to wait for.
process.exit(0);
