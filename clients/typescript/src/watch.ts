/**
 * A stream of account events that resumes by itself, as the Python client's
 * `EventWatch` does:
 *
 * | what happened                          | what the watch does                          |
 * |----------------------------------------|----------------------------------------------|
 * | connection lost, UNAVAILABLE, ...      | waits (jittered backoff, or the server's     |
 * |                                        | RetryInfo), resumes after the last cursor    |
 * | server shutting down (SERVER_DRAINING) | resumes at once after `resume_after_cursor`  |
 * | cursor out of range (OUT_OF_RANGE)     | yields `resynced`, then every matching       |
 * |                                        | account, `snapshotEnd`, then the events      |
 * | subscriber restarted                   | resumes after its `CursorStore`'s cursor     |
 * | bad request, no permission, ...        | throws the `ConnectError`                    |
 *
 * Delivery is at least once, in cursor order, never skipping: an item counts as
 * processed when the application asks for the next one; only then is its cursor saved.
 */
import { randomUUID } from "node:crypto";
import { readFile, rename, writeFile } from "node:fs/promises";
import { setTimeout as sleep } from "node:timers/promises";

import { create } from "@bufbuild/protobuf";
import { EmptySchema } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";

import { ErrorInfoSchema, RetryInfoSchema } from "../gen/google/rpc/error_details_pb.js";
import {
  StreamAccountEventsRequestSchema,
  type Account,
  type AccountEvent,
  type StreamAccountEventsRequest,
  type StreamAccountEventsResponse,
} from "../gen/stackone_connect/v1/stackone_connect_pb.js";
import type { ConnectServiceClient } from "./client.js";

/** Where a watch with no saved cursor starts. */
export type Start = "now" | "earliest" | "snapshot";

/** What a watch yields: events, and for a snapshot its accounts then `snapshotEnd`. */
export type WatchItem =
  | { kind: "event"; event: AccountEvent }
  | { kind: "account"; account: Account }
  /** Every matching account was sent as of `cursor`; the events after it follow. */
  | { kind: "snapshotEnd"; cursor: string }
  /**
   * Instead of a silent jump: `staleCursor` is out of the log's range (older than it
   * retains, or ahead of it), so events may be gone. The current state of every matching
   * account follows: rebuild from it what you derived from the missed events.
   */
  | { kind: "resynced"; staleCursor: string; earliestCursor: string; message: string };

/** Keeps the cursor a watch resumes after, across restarts of the subscriber. */
export interface CursorStore {
  load(): Promise<string | undefined>;
  save(cursor: string): Promise<void>;
}

/** A cursor kept in a file, replaced atomically (write aside, then rename). */
export class FileCursorStore implements CursorStore {
  constructor(readonly path: string) {}

  async load(): Promise<string | undefined> {
    try {
      return (await readFile(this.path, "utf8")).trim() || undefined;
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === "ENOENT") return undefined;
      throw error;
    }
  }

  async save(cursor: string): Promise<void> {
    const aside = `${this.path}.${randomUUID()}.tmp`;
    await writeFile(aside, cursor, { flush: true });
    await rename(aside, this.path);
  }
}

/** Why a watch reconnects and when: given to `onRetry` before the wait, for logs. */
export interface Retry {
  code: Code | undefined; // undefined: the stream ended without an error
  message: string;
  delayMs: number;
  resumeAfter: string | undefined; // undefined: from the start asked for
  draining: boolean; // the server is shutting down and said where to resume
}

export interface WatchOptions {
  /** Filters, as in `StreamAccountEventsRequest`. */
  providers?: string[];
  originOwnerIds?: string[];
  accountIds?: string[];
  eventTypes?: string[];
  /** Where to start without a saved cursor (default "now"). */
  start?: Start;
  /** Resume after this cursor (a `cursorStore`'s cursor wins). */
  afterCursor?: string;
  cursorStore?: CursorStore;
  /** Events per message while catching up (the server's `max_events_per_message`). */
  maxEventsPerMessage?: number;
  /** Full-jitter exponential backoff: a wait up to `firstMs * 2**n`, at most `capMs`. */
  backoff?: { firstMs: number; capMs: number };
  onRetry?: (retry: Retry) => void;
  /** Ends the watch (the iterator then returns). */
  signal?: AbortSignal;
}

// Codes after which reconnecting cannot help: the request or the credentials must change.
const FINAL_CODES = new Set([
  Code.InvalidArgument,
  Code.NotFound,
  Code.OutOfRange, // (but for a cursor, which resyncs instead)
  Code.PermissionDenied,
  Code.Unauthenticated,
  Code.Unimplemented,
]);

/** Follows `StreamAccountEvents` for as long as it is iterated; see the module's table. */
export async function* watch(
  client: ConnectServiceClient,
  options: WatchOptions = {},
): AsyncGenerator<WatchItem> {
  const state = new WatchState(options);
  await state.loadCursor();
  const { signal } = options;
  const ended = () => signal?.aborted === true;
  let failures = 0;
  while (!ended()) {
    const call = new AbortController();
    const stop = () => call.abort();
    signal?.addEventListener("abort", stop);
    let failure: ConnectError | undefined;
    try {
      const stream = client.streamAccountEvents(state.request(), {
        signal: call.signal,
        timeoutMs: 0, // a watch has no deadline
      });
      for await (const response of stream) {
        failures = 0;
        for (const item of state.items(response)) {
          yield item;
          await state.processed(item);
        }
        await state.bookmarked(response);
      }
    } catch (error) {
      if (ended()) return;
      // The transport reports every failure of the call as a ConnectError; anything else
      // (a cursor store that cannot write, say) is the application's to see.
      if (!(error instanceof ConnectError)) throw error;
      failure = error;
    } finally {
      signal?.removeEventListener("abort", stop);
      call.abort();
    }
    if (failure !== undefined && state.resyncs(failure)) {
      const earliestCursor = errorInfo(failure)?.metadata["earliest_cursor"] ?? "";
      yield {
        kind: "resynced",
        staleCursor: state.cursor ?? "",
        earliestCursor,
        message: failure.rawMessage,
      };
      continue;
    }
    const delayMs = await state.beforeRetry(failure, failures);
    failures += 1;
    try {
      await sleep(delayMs, undefined, signal === undefined ? {} : { signal });
    } catch {
      return; // aborted while waiting
    }
  }
}

/** Where a watch is: the cursor to resume after, and whether a snapshot is wanted. */
class WatchState {
  cursor: string | undefined;
  // A snapshot is wanted until its `initial_state_end` bookmark arrives.
  private snapshot: boolean;

  constructor(private readonly options: WatchOptions) {
    this.cursor = options.afterCursor;
    this.snapshot = options.start === "snapshot" && options.afterCursor === undefined;
  }

  async loadCursor(): Promise<void> {
    const stored = await this.options.cursorStore?.load();
    if (stored !== undefined) {
      this.cursor = stored;
      this.snapshot = false;
    }
  }

  request(): StreamAccountEventsRequest {
    const { providers = [], originOwnerIds = [], accountIds = [], eventTypes = [] } =
      this.options;
    const request = create(StreamAccountEventsRequestSchema, {
      providers,
      originOwnerIds,
      accountIds,
      eventTypes,
      maxEventsPerMessage: this.options.maxEventsPerMessage ?? 0,
    });
    const empty = create(EmptySchema);
    if (this.snapshot) request.start = { case: "fromSnapshot", value: empty };
    else if (this.cursor !== undefined) request.start = { case: "afterCursor", value: this.cursor };
    else if (this.options.start === "earliest") request.start = { case: "fromEarliest", value: empty };
    else request.start = { case: "fromNow", value: empty };
    return request;
  }

  /** The items of one message; a bookmark yields one only when it ends a snapshot. */
  *items(response: StreamAccountEventsResponse): Generator<WatchItem> {
    const item = response.item;
    // A message holds one event (or account) or a batch of them: the same items.
    switch (item.case) {
      case "event":
      case "events":
        for (const event of item.case === "event" ? [item.value] : item.value.events) {
          yield { kind: "event", event };
        }
        break;
      case "account":
      case "accounts":
        for (const account of item.case === "account" ? [item.value] : item.value.accounts) {
          yield { kind: "account", account };
        }
        break;
      case "bookmark":
        if (item.value.initialStateEnd) yield { kind: "snapshotEnd", cursor: item.value.cursor };
        break;
    }
  }

  /** Called once the application asked for the item after `item`. */
  async processed(item: WatchItem): Promise<void> {
    if (item.kind === "event") await this.keep(item.event.cursor);
    else if (item.kind === "snapshotEnd") {
      this.snapshot = false;
      await this.keep(item.cursor);
    }
  }

  /** A plain bookmark yields no item: it moves the cursor past events filtered out. */
  async bookmarked(response: StreamAccountEventsResponse): Promise<void> {
    const item = response.item;
    if (item.case === "bookmark" && !item.value.initialStateEnd && !this.snapshot) {
      await this.keep(item.value.cursor);
    }
  }

  async keep(cursor: string): Promise<void> {
    this.cursor = cursor;
    await this.options.cursorStore?.save(cursor);
  }

  /** Whether `failure` says the cursor is out of range: a snapshot is wanted next. */
  resyncs(failure: ConnectError): boolean {
    if (failure.code !== Code.OutOfRange || this.snapshot || this.cursor === undefined) {
      return false;
    }
    this.snapshot = true;
    return true;
  }

  /** The wait before the next stream; throws `failure` when retrying cannot help. */
  async beforeRetry(failure: ConnectError | undefined, failures: number): Promise<number> {
    if (failure !== undefined && FINAL_CODES.has(failure.code)) throw failure;
    const info = failure === undefined ? undefined : errorInfo(failure);
    const resume = info?.metadata["resume_after_cursor"] ?? "";
    const draining = info?.reason === "SERVER_DRAINING" && resume !== "" && !this.snapshot;
    const retryDelay = failure?.findDetails(RetryInfoSchema)[0]?.retryDelay;
    let delayMs: number;
    if (draining) {
      await this.keep(resume);
      delayMs = this.backoffMs(0); // at once, give or take the herd's spread
    } else if (retryDelay !== undefined) {
      const serverMs = Number(retryDelay.seconds) * 1000 + retryDelay.nanos / 1e6;
      delayMs = serverMs * (1 + Math.random() * 0.2);
    } else {
      delayMs = this.backoffMs(failures);
    }
    this.options.onRetry?.({
      code: failure?.code,
      message: failure?.rawMessage ?? "the stream ended",
      delayMs,
      resumeAfter: this.snapshot ? undefined : this.cursor,
      draining,
    });
    return delayMs;
  }

  private backoffMs(failures: number): number {
    const { firstMs, capMs } = this.options.backoff ?? { firstMs: 100, capMs: 5000 };
    return Math.random() * Math.min(capMs, firstMs * 2 ** Math.min(failures, 32));
  }
}

function errorInfo(failure: ConnectError) {
  return failure.findDetails(ErrorInfoSchema)[0];
}
