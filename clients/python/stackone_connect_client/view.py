"""The accounts a watch's filters select, kept up to date from what the watch yields.

    view = AccountView()
    async for item in client.watch(providers=["hibob"], start="snapshot"):
        view.apply(item)
        ...  # view.accounts: what a fresh snapshot with these filters would list

At every bookmark the view equals a fresh snapshot with the watch's filters (event types
aside: accounts have none): the service marks the event that takes an account out of the
filters (a new owner or provider, or an owner the caller does not act for)
`leaves_filter`, and the view drops that account, as it drops a deleted one.
"""

from __future__ import annotations

from stackone_connect.v1 import stackone_connect_pb2 as pb
from stackone_connect_client.watch import Resynced, SnapshotEnd, WatchItem

DELETED = "account.deleted"


def removes_account(event: pb.AccountEvent) -> bool:
    """True when, after `event`, the account is no longer in the stream's view: it was
    deleted, or it left the stream's filters."""
    return event.leaves_filter or event.type == DELETED


class AccountView:
    """Each account of the watch's view by id, as its last item left it."""

    def __init__(self) -> None:
        self.accounts: dict[str, pb.Account] = {}
        # Accounts of a snapshot after `Resynced`, which replace the view at its end.
        self._rebuilding: dict[str, pb.Account] | None = None

    def apply(self, item: WatchItem) -> None:
        """Folds one item of a watch into the view (bookmarks change nothing)."""
        if isinstance(item, pb.AccountEvent):
            if removes_account(item):
                self.accounts.pop(item.account.id, None)
            else:
                self.accounts[item.account.id] = item.account
        elif isinstance(item, pb.Account):
            target = self.accounts if self._rebuilding is None else self._rebuilding
            target[item.id] = item
        elif isinstance(item, Resynced):
            self._rebuilding = {}
        elif isinstance(item, SnapshotEnd) and self._rebuilding is not None:
            self.accounts, self._rebuilding = self._rebuilding, None
