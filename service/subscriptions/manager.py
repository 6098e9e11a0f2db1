"""The subscriptions of this process: one dispatcher per stored subscription, found by the
client that owns it and its name (another client's is not found)."""

from __future__ import annotations

from dataclasses import replace

from service.events.log import Log, Subscriptions
from service.events.model import EventFilter
from service.events.subscriptions import SubscriptionNotFound, SubscriptionRecord
from service.owners import OwnerScope
from service.subscriptions.dispatcher import Dispatcher


def event_filter(record: SubscriptionRecord) -> EventFilter:
    """The log filter of a subscription, its maker's owner scope applied."""
    base = record.filters.event_filter()
    if record.owners is None:
        return base
    return replace(base, owners=OwnerScope.parse(record.owners))


class SubscriptionManager:
    """Every subscription's dispatcher, started with the server. Make it with `open`."""

    def __init__(self, store: Subscriptions, log: Log) -> None:
        self.store = store
        self._log = log
        self._dispatchers: dict[tuple[str, str], Dispatcher] = {}

    @classmethod
    async def open(cls, store: Subscriptions, log: Log) -> SubscriptionManager:
        """Starts a dispatcher for each stored subscription."""
        manager = cls(store, log)
        for record in await store.all():
            await manager._start(record)
        return manager

    async def create(self, record: SubscriptionRecord, position: int) -> SubscriptionRecord:
        """Stores and starts a new subscription; raises `SubscriptionExists`."""
        created = await self.store.create(record, position)
        await self._start(created)
        return created

    def get(self, client: str, name: str) -> Dispatcher:
        """The client's subscription of that name; raises `SubscriptionNotFound`."""
        dispatcher = self._dispatchers.get((client, name))
        if dispatcher is None:
            raise SubscriptionNotFound(name)
        return dispatcher

    def of_client(self, client: str) -> list[SubscriptionRecord]:
        """The client's subscriptions, by name."""
        return sorted(
            (d.record for (owner, _), d in self._dispatchers.items() if owner == client),
            key=lambda record: record.name,
        )

    def all(self) -> list[Dispatcher]:
        """Every dispatcher (for the metrics)."""
        return list(self._dispatchers.values())

    async def delete(self, client: str, name: str) -> None:
        """Stops and removes the client's subscription."""
        dispatcher = self.get(client, name)
        del self._dispatchers[(client, name)]
        await dispatcher.close()
        await self.store.delete(dispatcher.record.id)

    async def close(self) -> None:
        """Stops every dispatcher."""
        for dispatcher in self._dispatchers.values():
            await dispatcher.close()
        self._dispatchers.clear()

    async def _start(self, record: SubscriptionRecord) -> None:
        dispatcher = Dispatcher(record, event_filter(record), self.store, self._log)
        await dispatcher.start()
        self._dispatchers[(record.client, record.name)] = dispatcher
