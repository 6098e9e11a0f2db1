"""Which customers a caller acts for, and the caller of the RPC being served.

A client entry of the clients file may name the `origin_owner_id`s it acts for, exactly
or by prefix (`acme-*`); `OwnerScope` is that list, checked on every RPC and every
streamed event. The authentication interceptor sets `CALLER_OWNERS` for the call, and
the servicer reads it: None is a caller acting for every customer (no owners listed, or
no clients file at all).
"""

from __future__ import annotations

from collections.abc import Iterable
from contextvars import ContextVar
from dataclasses import dataclass

PREFIX_MARK = "*"


class InvalidOwners(ValueError):
    """An owners list cannot be used; the message says why."""


class OwnerNotAllowed(Exception):
    """The caller asked to act for a customer its client entry does not list."""

    def __init__(self, origin_owner_id: str) -> None:
        self.origin_owner_id = origin_owner_id
        super().__init__(
            f"this client does not act for origin_owner_id {origin_owner_id!r}: "
            "it is not among the owners of its entry in the clients file"
        )


class AccountNotAllowed(Exception):
    """A re-connect session names an account that is not known to be one of the caller's
    customers (missing, or another customer's: the answer does not say which)."""

    def __init__(self, account_id: str) -> None:
        super().__init__(
            f"this client may not re-connect account {account_id!r}: it is not an account "
            "of the owners of its entry in the clients file"
        )


@dataclass(frozen=True, slots=True)
class OwnerScope:
    """The customers a client acts for: exact `origin_owner_id`s and id prefixes."""

    exact: frozenset[str]
    prefixes: tuple[str, ...]

    @classmethod
    def parse(cls, patterns: Iterable[str]) -> OwnerScope:
        """`acme-*` is a prefix, anything else an exact id; raises `InvalidOwners`."""
        exact: set[str] = set()
        prefixes: set[str] = set()
        for pattern in patterns:
            if not pattern or not pattern.isprintable():
                raise InvalidOwners("an owner must be a non-empty printable string")
            if pattern.endswith(PREFIX_MARK):
                prefix = pattern.removesuffix(PREFIX_MARK)
                if not prefix or PREFIX_MARK in prefix:
                    raise InvalidOwners(
                        f"{pattern!r}: a prefix is some characters then one '*' (such as "
                        "'acme-*'); a client acting for every owner lists no owners"
                    )
                prefixes.add(prefix)
            elif PREFIX_MARK in pattern:
                raise InvalidOwners(f"{pattern!r}: '*' may only end a prefix")
            else:
                exact.add(pattern)
        if not (exact or prefixes):
            raise InvalidOwners("an empty owners list would act for nobody; omit it instead")
        return cls(frozenset(exact), tuple(sorted(prefixes)))

    def allows(self, origin_owner_id: str) -> bool:
        """True when the client acts for the customer `origin_owner_id`."""
        return origin_owner_id in self.exact or origin_owner_id.startswith(self.prefixes)

    @property
    def exact_only(self) -> frozenset[str] | None:
        """The exact ids when the scope has no prefix: a filter that selects it exactly."""
        return None if self.prefixes else self.exact


CALLER_OWNERS: ContextVar[OwnerScope | None] = ContextVar("caller_owners", default=None)
"""The owners of the client calling the RPC this task serves; None: every owner."""
