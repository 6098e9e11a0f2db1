"""Reads of what StackOne keeps besides accounts: a connect session with its latest
connection attempt, and the project's connector profiles.

A scoped caller sees only its customers' sessions: another customer's session and a
missing one get the same words, after the same one call. Connector profiles belong to the
project, not to a customer, so every caller holding the scope sees all of them.
"""

from __future__ import annotations

from service.api import convert
from service.owners import OwnerScope
from service.rpc import page_tokens, validation
from service.rpc.page_tokens import PageTokens
from service.rpc.validation import ProfilesPosition
from service.stackone.client import StackOneClient
from service.stackone.errors import StackOneNotFound
from service.stackone.models import ConnectorProfilesPage
from stackone_connect.v1 import stackone_connect_pb2 as pb


def session_not_found(session_id: int) -> StackOneNotFound:
    """What a scoped caller is told of another customer's session and of a missing one."""
    return StackOneNotFound(404, f"Connect session {session_id} not found")


async def fetched_session(
    stackone: StackOneClient, scope: OwnerScope | None, session_id: int, deadline: float
) -> pb.Session:
    """The session as StackOne reports it now, if the caller may see it."""
    try:
        session = await stackone.get_connect_session(session_id, deadline=deadline)
    except StackOneNotFound:
        if scope is None:
            raise
        raise session_not_found(session_id) from None
    if scope is not None and not scope.allows(session.origin_owner_id or ""):
        raise session_not_found(session_id)
    return convert.fetched_session_message(session)


class ConnectorProfiles:
    """Pages of StackOne's connector profiles, behind the caller's sealed page tokens."""

    def __init__(self, stackone: StackOneClient, tokens: PageTokens) -> None:
        self._stackone = stackone
        self._tokens = tokens

    async def page(
        self, request: pb.ListConnectorProfilesRequest, caller: str, deadline: float
    ) -> pb.ListConnectorProfilesResponse:
        """The page the request's token (or none: the first) names, and the next one's token."""
        position = ProfilesPosition()
        if request.page_token:
            opened = validation.profiles_position(self._tokens.open(caller, request.page_token))
            if opened is None:  # a token of another listing
                raise page_tokens.not_ours()
            position = opened
        query = validation.connector_profiles_query(request, position)
        page = await self._stackone.list_connector_profiles(query, deadline=deadline)
        following = _following(position, page, query.page_size)
        return pb.ListConnectorProfilesResponse(
            connector_profiles=[convert.connector_profile_message(p) for p in page.data],
            next_page_token="" if following is None else self._tokens.seal(caller, following),
            total=page.total or 0,
        )


def _following(
    position: ProfilesPosition, page: ConnectorProfilesPage, page_size: int
) -> str | None:
    """The next page's position, None after the last: StackOne counts the total, so a
    page is the last once the pages so far hold that many (a full page, when it does not)."""
    seen = position.seen + len(page.data)
    if not page.data or (
        seen >= page.total if page.total is not None else len(page.data) < page_size
    ):
        return None
    answered = page.page if page.page is not None else (position.page or 0)
    return ProfilesPosition(answered + 1, seen).token()
