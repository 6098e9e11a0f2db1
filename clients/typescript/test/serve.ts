/**
 * Runs the real `stackone-connect serve` (gRPC server, gateway and the bundled StackOne
 * emulator) as a child process on free loopback ports, as tests/harness/processes.py does.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { once } from "node:events";
import { fileURLToPath } from "node:url";
import { createInterface } from "node:readline";

// dist/test/ -> the repository's root.
const REPOSITORY = fileURLToPath(new URL("../../../../", import.meta.url));
const PYTHON = process.env["STACKONE_CONNECT_PYTHON"] ?? `${REPOSITORY}.venv/bin/python`;
const READY_MESSAGE = "stackone-connect serving";

export interface Serve {
  grpcTarget: string;
  gatewayUrl: string;
  emulatorUrl: string;
  /** Its log lines (JSON), for a failure's report. */
  log: string[];
  /** Sends `signal` and resolves with the exit code (null: ended by a signal). */
  stop(signal?: NodeJS.Signals): Promise<number | null>;
}

/** Starts `serve` with its event log in `eventLog` (a path), on `grpcAddress`. */
export async function startServe(eventLog: string, grpcAddress = "127.0.0.1:0"): Promise<Serve> {
  const child = spawn(PYTHON, ["-m", "service.cli", "serve"], {
    cwd: REPOSITORY,
    env: {
      ...process.env,
      STACKONE_CONNECT_GRPC_ADDRESS: grpcAddress,
      STACKONE_CONNECT_GATEWAY_ADDRESS: "127.0.0.1:0",
      STACKONE_CONNECT_ADMIN_ADDRESS: "127.0.0.1:0",
      STACKONE_CONNECT_EMULATOR_ADDRESS: "127.0.0.1:0",
      STACKONE_CONNECT_EVENT_LOG_URL: `sqlite:///${eventLog}`,
      // No bookmark moves a watch's cursor: only what a test names does.
      STACKONE_CONNECT_BOOKMARK_INTERVAL: "60",
    },
    stdio: ["ignore", "ignore", "pipe"],
  });
  const log: string[] = [];
  const ready = await readUntilReady(child, log);
  return {
    ...ready,
    log,
    async stop(signal: NodeJS.Signals = "SIGTERM") {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
      if (child.exitCode === null && child.signalCode === null) await once(child, "exit");
      return child.exitCode;
    },
  };
}

function readUntilReady(
  child: ChildProcess,
  log: string[],
): Promise<Pick<Serve, "grpcTarget" | "gatewayUrl" | "emulatorUrl">> {
  let emulatorUrl = "";
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => child.kill("SIGKILL"), 30_000);
    // Every line is read (so the pipe never fills) and kept for a failure's report.
    createInterface({ input: child.stderr! }).on("line", (line) => {
      log.push(line);
      const entry = parse(line);
      emulatorUrl = entry["emulator_url"] ?? emulatorUrl;
      if (entry["message"]?.startsWith(READY_MESSAGE)) {
        clearTimeout(timer);
        resolve({
          grpcTarget: entry["grpc_target"] ?? "",
          gatewayUrl: entry["gateway_url"] ?? "",
          emulatorUrl,
        });
      }
    });
    child.on("exit", () => {
      clearTimeout(timer);
      reject(new Error(`serve exited before it was ready:\n${log.join("\n")}`));
    });
  });
}

function parse(line: string): Record<string, string | undefined> {
  try {
    return JSON.parse(line) as Record<string, string | undefined>;
  } catch {
    return { message: line };
  }
}
