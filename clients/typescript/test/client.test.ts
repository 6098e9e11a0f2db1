/**
 * The TypeScript client against the real service (`serve` with the bundled emulator):
 * a session, a listing, a stream, and a watch that resumes across a restart of the
 * server, a restart of the subscriber, and a cursor the log does not hold.
 */
import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";

import {
  AccountStatus,
  connectService,
  FileCursorStore,
  listAllAccounts,
  watch,
  type AccountEvent,
  type ConnectServiceClient,
  type Retry,
  type WatchItem,
} from "../src/index.js";
import { startServe, type Serve } from "./serve.js";

const TIMEOUT = { timeout: 90_000 };
let directory = "";

before(async () => {
  directory = await mkdtemp(join(tmpdir(), "stackone-connect-ts-"));
});
after(async () => {
  await rm(directory, { recursive: true, force: true });
});

/** Plays "the customer linked a new account in the Hub" for a new session of `owner`. */
async function linkAccount(
  serve: Serve,
  client: ConnectServiceClient,
  owner: string,
  provider = "hibob",
) {
  const session = await client.createSession({
    originOwnerId: owner,
    originOwnerName: `${owner} Inc`,
    provider,
    categories: ["hris"],
  });
  const answer = await fetch(`${serve.emulatorUrl}/emulator/link`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ token: session.token }),
  });
  assert.equal(answer.status, 201, await answer.clone().text());
  return ((await answer.json()) as { id: string }).id;
}

/** Creates `count` accounts of nobody's interest in the emulator. */
async function burnAccountIds(serve: Serve, count: number): Promise<void> {
  for (let i = 0; i < count; i++) {
    const answer = await fetch(`${serve.emulatorUrl}/emulator/accounts`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ origin_owner_id: "tenant-burnt" }),
    });
    assert.equal(answer.status, 201, await answer.text());
  }
}

/** The next item of `items`, failing the test after 30 s. */
async function next(items: AsyncIterator<WatchItem>): Promise<WatchItem> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error("no item within 30 s")), 30_000);
  });
  try {
    const result = await Promise.race([items.next(), late]);
    assert.ok(result.done !== true, "the watch ended");
    return result.value;
  } finally {
    clearTimeout(timer);
  }
}

async function nextEvent(items: AsyncIterator<WatchItem>): Promise<AccountEvent> {
  const item = await next(items);
  assert.equal(item.kind, "event", `not an event: ${item.kind}`);
  return (item as { event: AccountEvent }).event;
}

describe("the TypeScript client", () => {
  test("creates a session, lists the linked account and streams its event", TIMEOUT, async (t) => {
    const serve = await startServe(join(directory, "first.db"));
    try {
      const { client, close } = connectService({ target: serve.grpcTarget });
      t.after(close);
      const items = watch(client, { originOwnerIds: ["tenant-ts"], start: "earliest", signal: t.signal });
      const accountId = await linkAccount(serve, client, "tenant-ts");

      const event = await nextEvent(items);
      assert.equal(event.type, "account.created");
      assert.equal(event.account?.id, accountId);
      assert.equal(event.account?.status, AccountStatus.ACTIVE);
      const listed = [];
      for await (const account of listAllAccounts(client, { originOwnerIds: ["tenant-ts"] })) {
        listed.push(account.id);
      }
      assert.deepEqual(listed, [accountId]);
      await items.return(undefined);
    } finally {
      await serve.stop();
    }
  });

  test("retries a CreateSession past its deadline under one request id", TIMEOUT, async (t) => {
    const serve = await startServe(join(directory, "retried.db"));
    try {
      // StackOne answers after 1.5 s, each attempt may wait 1 s: the first gives up.
      const { client, close } = connectService({ target: serve.grpcTarget, timeoutMs: 1_000 });
      t.after(close);
      const slow = async (latency: number) => {
        const answer = await fetch(`${serve.emulatorUrl}/emulator/behaviour`, {
          method: "PUT",
          headers: { "content-type": "application/json" },
          body: JSON.stringify({ latency }),
        });
        assert.equal(answer.status, 200, await answer.text());
      };
      await slow(1.5);
      const owner = { originOwnerId: "tenant-retry", originOwnerName: "Retry Inc" };
      const retried = await client.createSession(owner);
      await slow(0);
      const following = await client.createSession(owner);
      // The emulator numbers its sessions: the retries minted none of their own.
      assert.equal(Number(following.id), Number(retried.id) + 1);
    } finally {
      await serve.stop();
    }
  });

  test("resumes after a restart of the server, then of the subscriber", TIMEOUT, async (t) => {
    const eventLog = join(directory, "restart.db");
    const store = new FileCursorStore(join(directory, "watch.cursor"));
    const retries: Retry[] = [];
    const first = await startServe(eventLog);
    const connection = connectService({ target: first.grpcTarget });
    t.after(connection.close);
    const client = connection.client;
    const items = watch(client, {
      originOwnerIds: ["tenant-kept"],
      start: "earliest",
      cursorStore: store,
      onRetry: (retry) => retries.push(retry),
      signal: t.signal,
    });
    let second: Serve | undefined;
    try {
      const kept = await linkAccount(first, client, "tenant-kept");
      assert.equal((await nextEvent(items)).account?.id, kept);
      // Filtered out: only the server's `resume_after_cursor` tells the watch it is past.
      await linkAccount(first, client, "tenant-other");
      const everything = watch(client, { start: "earliest", signal: t.signal });
      await nextEvent(everything);
      const latest = (await nextEvent(everything)).cursor;
      await everything.return(undefined);

      const pending = next(items); // reading when the server shuts down
      assert.equal(await first.stop("SIGTERM"), 0);
      second = await startServe(eventLog, first.grpcTarget);
      assert.ok(retries[0]?.draining, JSON.stringify(retries));
      assert.equal(retries[0]?.resumeAfter, latest);
      assert.equal(await store.load(), latest);

      // An emulator that forgot its accounts on restart would number them from 1 again:
      // these take the ids the first run gave, so that `later` is new either way.
      await burnAccountIds(second, 2);
      const later = await linkAccount(second, client, "tenant-kept", "personio");
      const resumed = await pending;
      assert.equal(resumed.kind, "event");
      const resumedEvent = (resumed as { event: AccountEvent }).event;
      assert.equal(resumedEvent.account?.id, later);
      assert.ok(BigInt(resumedEvent.cursor) > BigInt(latest));
      // The subscriber stops before asking for more: `later` is not processed yet.
      await items.return(undefined);

      const again = connectService({ target: second.grpcTarget });
      t.after(again.close);
      const restarted = watch(again.client, {
        originOwnerIds: ["tenant-kept"],
        cursorStore: store,
        signal: t.signal,
      });
      const last = await linkAccount(second, again.client, "tenant-kept", "bamboohr");
      assert.equal((await nextEvent(restarted)).cursor, resumedEvent.cursor); // at least once
      assert.equal((await nextEvent(restarted)).account?.id, last);
      await restarted.return(undefined);
    } finally {
      await first.stop("SIGKILL");
      await second?.stop();
    }
  });

  test("resyncs from a snapshot when its cursor is out of the log's range", TIMEOUT, async (t) => {
    const serve = await startServe(join(directory, "resync.db"));
    try {
      const { client, close } = connectService({ target: serve.grpcTarget });
      t.after(close);
      const linked = [
        await linkAccount(serve, client, "tenant-resync", "hibob"),
        await linkAccount(serve, client, "tenant-resync", "personio"),
      ].sort();
      const recorded = watch(client, { start: "earliest", signal: t.signal });
      await nextEvent(recorded);
      await nextEvent(recorded);
      await recorded.return(undefined);
      // Both recorded: from the earliest, two to a message, they arrive as one batch.
      const batched = watch(client, { start: "earliest", maxEventsPerMessage: 2, signal: t.signal });
      const caughtUp = [await nextEvent(batched), await nextEvent(batched)];
      assert.deepEqual(caughtUp.map((event) => event.account?.id).sort(), linked);
      await batched.return(undefined);
      // A cursor of another log (e.g. before a restore from backup): ahead of this one.
      // Two to a message: the snapshot's accounts arrive as one batch.
      const items = watch(client, {
        originOwnerIds: ["tenant-resync"],
        afterCursor: "1000",
        maxEventsPerMessage: 2,
        signal: t.signal,
      });

      const marker = await next(items);
      assert.equal(marker.kind, "resynced", `not the marker: ${marker.kind}`);
      assert.equal((marker as { staleCursor: string }).staleCursor, "1000");
      const snapshot = [];
      let item: WatchItem;
      while ((item = await next(items)).kind === "account") snapshot.push(item.account.id);
      assert.equal(item.kind, "snapshotEnd");
      assert.deepEqual(snapshot.sort(), linked);
      const live = await linkAccount(serve, client, "tenant-resync", "bamboohr");
      assert.equal((await nextEvent(items)).account?.id, live);
      await items.return(undefined);
    } finally {
      await serve.stop();
    }
  });
});
