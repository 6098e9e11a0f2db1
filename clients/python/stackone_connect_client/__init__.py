"""A Python client of stackone-connect: every RPC as an async method, and a watch of
account events that resumes, follows a server's shutdown and resyncs by itself.

    async with Client.connect("127.0.0.1:50051", token="...") as client:
        store = FileCursorStore("var/billing.cursor")
        async for item in client.watch(providers=["hibob"], cursor_store=store):
            match item:
                case Resynced():   # events were missed: the current state follows
                    ...
                case pb.Account(): # an account of a snapshot
                    ...
                case SnapshotEnd():
                    ...
                case pb.AccountEvent():
                    ...

`AccountView` keeps the accounts a watch selects from its items: a deleted account, or
one whose event says it `leaves_filter` (it moved to another owner or provider), is
removed.
"""

from stackone_connect.v1 import stackone_connect_pb2 as pb
from stackone_connect_client.client import AccountListing, Client
from stackone_connect_client.connection import Connection
from stackone_connect_client.consume import Consumption, Delivery
from stackone_connect_client.cursors import CursorStore, FileCursorStore, MemoryCursorStore
from stackone_connect_client.view import AccountView, removes_account
from stackone_connect_client.watch import (
    Backoff,
    EventWatch,
    Resynced,
    Retry,
    SnapshotEnd,
    Start,
    WatchItem,
)

__all__ = [
    "AccountListing",
    "AccountView",
    "Backoff",
    "Client",
    "Connection",
    "Consumption",
    "CursorStore",
    "Delivery",
    "EventWatch",
    "FileCursorStore",
    "MemoryCursorStore",
    "Resynced",
    "Retry",
    "SnapshotEnd",
    "Start",
    "WatchItem",
    "pb",
    "removes_account",
]
