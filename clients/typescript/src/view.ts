/**
 * The accounts a watch's filters select, kept up to date from what the watch yields:
 *
 *     const view = new AccountView();
 *     for await (const item of watch(client, { providers: ["hibob"], start: "snapshot" })) {
 *       view.apply(item); // view.accounts: what a fresh snapshot with these filters lists
 *     }
 *
 * At every bookmark it equals a fresh snapshot with the watch's filters (event types
 * aside): the service marks the event that takes an account out of the filters (a new
 * owner or provider, or an owner the caller does not act for) `leavesFilter`, and the
 * view drops that account, as it drops a deleted one.
 */
import type { Account, AccountEvent } from "../gen/stackone_connect/v1/stackone_connect_pb.js";
import type { WatchItem } from "./watch.js";

/** True when, after `event`, the account is no longer in the stream's view. */
export function removesAccount(event: AccountEvent): boolean {
  return event.leavesFilter || event.type === "account.deleted";
}

/** Each account of a watch's view by id, as its last item left it. */
export class AccountView {
  readonly accounts = new Map<string, Account>();
  // Accounts of a snapshot after `resynced`, which replace the view at its end.
  private rebuilding: Map<string, Account> | undefined;

  /** Folds one item of a watch into the view. */
  apply(item: WatchItem): void {
    switch (item.kind) {
      case "event": {
        const id = item.event.account?.id ?? "";
        if (removesAccount(item.event)) this.accounts.delete(id);
        else if (item.event.account) this.accounts.set(id, item.event.account);
        break;
      }
      case "account":
        (this.rebuilding ?? this.accounts).set(item.account.id, item.account);
        break;
      case "resynced":
        this.rebuilding = new Map();
        break;
      case "snapshotEnd":
        if (this.rebuilding) {
          this.accounts.clear();
          for (const [id, account] of this.rebuilding) this.accounts.set(id, account);
          this.rebuilding = undefined;
        }
        break;
    }
  }
}
