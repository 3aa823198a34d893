// What the Firefox and WebKit drivers start besides the browser, and how
// they make sure none of it outlives them.
//
// The Rust side stops a driver with SIGKILL, which no exit handler sees,
// and these browsers are reached over sockets (not a pipe that closes with
// the driver, as playwright's Chromium is). So each driver starts this
// file as a second, detached process, the reaper, and tells it, one line
// at a time on its stdin, what to end:
//
//   +group 1234      kill process group 1234 (everything started detached)
//   -group 1234      forget it (the driver ended it itself)
//   +dir /tmp/x      remove this directory (a profile, a socket's home)
//   -dir /tmp/x
//
// When that stdin closes (the driver exited, however it died), every group
// still listed gets SIGKILL and every directory still listed is removed.
// Being detached, the reaper is in no process group a terminal's ^C
// reaches, so it outlives the driver long enough to do that.

import { spawn } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";

/** Starts the reaper; its methods list what it must end. */
export function reaper() {
  const child = spawn(process.execPath, [fileURLToPath(import.meta.url)], {
    stdio: ["pipe", "ignore", "inherit"],
    detached: true,
  });
  // Neither the reaper nor the pipe to it keeps the driver alive.
  child.unref();
  child.stdin.unref();
  const say = (line) => child.stdin.write(`${line}\n`);
  return {
    group: (pid) => say(`+group ${pid}`),
    ungroup: (pid) => say(`-group ${pid}`),
    dir: (path) => say(`+dir ${path}`),
    undir: (path) => say(`-dir ${path}`),
  };
}

/** A fresh directory under the system's temporary one, removed by `reap`
 * if the driver does not remove it first. */
export function scratch(reap, prefix) {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  reap.dir(dir);
  return {
    path: dir,
    remove() {
      rmSync(dir, { recursive: true, force: true });
      reap.undir(dir);
    },
  };
}

/** Starts `command` in a process group of its own that `reap` kills. */
export function detached(reap, command, args, options = {}) {
  const child = spawn(command, args, { stdio: ["ignore", "ignore", "inherit"], ...options, detached: true });
  reap.group(child.pid);
  child.unref();
  return {
    child,
    stop() {
      try {
        process.kill(-child.pid, "SIGKILL");
      } catch {
        // Already gone.
      }
      reap.ungroup(child.pid);
    },
  };
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** A private PulseAudio server with only a null sink (PULSEAUDIO, default
 * /usr/bin/pulseaudio): a sound device that plays in real time to nowhere,
 * and not to the speakers of the desktop a developer runs the tests on.
 * Gives the value for PULSE_SERVER, or null when there is no PulseAudio
 * (said on stderr, with `without`: what that costs). */
export async function sound(reap, without) {
  const binary = process.env.PULSEAUDIO || "/usr/bin/pulseaudio";
  if (!existsSync(binary)) {
    console.error(`no ${binary} (apt-get install pulseaudio): ${without}`);
    return null;
  }
  const home = scratch(reap, "rr-pulse-");
  const socket = join(home.path, "native");
  const server = detached(
    reap,
    binary,
    [
      "-n", // none of the system's default.pa (no hardware, no D-Bus)
      "--daemonize=no",
      "--exit-idle-time=-1",
      "--use-pid-file=no",
      "--realtime=no",
      "--high-priority=no",
      "--log-target=stderr",
      "--log-level=error",
      "-L",
      "module-null-sink",
      "-L",
      `module-native-protocol-unix socket=${socket} auth-anonymous=1`,
    ],
    // Its cookie and runtime files go to the scratch directory, not ~.
    { env: { ...process.env, HOME: home.path, XDG_RUNTIME_DIR: home.path } },
  );
  for (let i = 0; i < 100 && !existsSync(socket); i++) await sleep(50);
  if (!existsSync(socket)) throw new Error(`${binary} did not start`);
  return {
    server: `unix:${socket}`,
    stop() {
      server.stop();
      home.remove();
    },
  };
}

/** A private X server (XVFB, default /usr/bin/Xvfb) on the first free
 * display number, which Xvfb picks itself (-displayfd) so that parallel
 * drivers never race for one. Gives e.g. ":3". */
export async function display(reap) {
  const binary = process.env.XVFB || "/usr/bin/Xvfb";
  if (!existsSync(binary)) throw new Error(`no ${binary} (apt-get install xvfb)`);
  const x = detached(
    reap,
    binary,
    ["-displayfd", "3", "-screen", "0", "1920x1080x24", "-nolisten", "tcp", "-noreset"],
    { stdio: ["ignore", "ignore", "inherit", "pipe"] },
  );
  let timer;
  const number = await new Promise((resolve, reject) => {
    let text = "";
    x.child.stdio[3].on("data", (d) => {
      text += d;
      if (text.includes("\n")) resolve(text.trim());
    });
    x.child.on("exit", (code) => reject(new Error(`${binary} exited (${code})`)));
    timer = setTimeout(() => reject(new Error(`${binary} did not start`)), 10_000);
  }).finally(() => clearTimeout(timer));
  x.child.stdio[3].destroy();
  return { display: `:${number}`, stop: x.stop };
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const groups = new Set();
  const dirs = new Set();
  // Ending with the driver's terminal is the driver's business; this
  // process ends when its stdin does.
  process.on("SIGINT", () => {});
  process.on("SIGHUP", () => {});
  for await (const line of createInterface({ input: process.stdin })) {
    const space = line.indexOf(" ");
    const [what, arg] = [line.slice(0, space), line.slice(space + 1)];
    if (what === "+group") groups.add(Number(arg));
    else if (what === "-group") groups.delete(Number(arg));
    else if (what === "+dir") dirs.add(arg);
    else if (what === "-dir") dirs.delete(arg);
  }
  for (const pid of groups) {
    try {
      process.kill(-pid, "SIGKILL");
    } catch {
      // Already gone.
    }
  }
  // A killed browser may still be writing its profile for a moment.
  if (dirs.size) await sleep(200);
  for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
}
