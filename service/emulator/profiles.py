"""The emulator's connector profiles room: StackOne's connector profiles API over the
catalogue of `connectors` (a default profile per connector, and a disabled beta one).

    GET    /connector_profiles[?connector_key&enabled&page&page_size]
                                             200 {data, page, page_size, total}; pages
                                             count from 1 (StackOne's models do not say)
    GET    /connector_profiles/{id}/versions 200 [{version, owner, builtin, pinned}]
    GET    /connector_profiles/{id}/pinned_version   200 the pin, 404 when none
    PUT    /connector_profiles/{id}/pinned_version   200 the pin (a version listed)
    DELETE /connector_profiles/{id}/pinned_version   204

They sit behind StackOne's edge (`stackone_api`), API key included.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable

from aiohttp import web
from pydantic import JsonValue

from service.emulator.answers import Handler, base_url, body_as, emulator_state, stackone_error
from service.emulator.bodies import PinnedVersionBody
from service.emulator.connectors import (
    CONNECTOR_VERSIONS,
    PROFILES,
    PROFILES_BY_ID,
    ConnectorProfile,
)
from service.emulator.state import Json, PinnedVersion, iso, now

_MAX_PAGE_SIZE = 100
ProfileHandler = Callable[[web.Request, ConnectorProfile], Awaitable[web.StreamResponse]]


def _with_profile(handler: ProfileHandler) -> Handler:
    """Hands `handler` the path's profile, or answers StackOne's 404."""

    @functools.wraps(handler)
    async def found(request: web.Request) -> web.StreamResponse:
        profile_id = request.match_info["profile_id"]
        profile = PROFILES_BY_ID.get(profile_id)
        if profile is None:
            return stackone_error(404, f"Connector profile {profile_id} not found")
        return await handler(request, profile)

    return found


def _pinned(request: web.Request, profile: ConnectorProfile) -> PinnedVersion | None:
    return emulator_state(request).lasting.pinned_versions.get(profile.id)


def _pin_json(profile: ConnectorProfile, pin: PinnedVersion) -> Json:
    return {"connector_profile_id": profile.id, **vars(pin)}


def _number(request: web.Request, name: str, default: int, least: int) -> int:
    raw = request.query.get(name, str(default))
    if not raw.isdecimal() or int(raw) < least:
        raise web.HTTPBadRequest(text=f"{name} must be a number from {least}")
    return int(raw)


async def list_profiles(request: web.Request) -> web.Response:
    """GET /connector_profiles with StackOne's filters and page numbers."""
    try:
        page = _number(request, "page", 1, 1)
        page_size = min(_number(request, "page_size", 25, 1), _MAX_PAGE_SIZE)
    except web.HTTPBadRequest as error:
        return stackone_error(400, error.text or "bad page")
    key, enabled = request.query.get("connector_key"), request.query.get("enabled")
    if enabled not in (None, "true", "false"):
        return stackone_error(400, "enabled must be true or false")
    matching = [
        profile
        for profile in PROFILES
        if (key is None or profile.connector.key == key)
        and (enabled is None or profile.active == (enabled == "true"))
    ]
    base, pins = base_url(request), emulator_state(request).lasting.pinned_versions
    data: list[JsonValue] = [
        profile.to_json(base, pin.pinned_version if (pin := pins.get(profile.id)) else None)
        for profile in matching[(page - 1) * page_size : page * page_size]
    ]
    answer: Json = {"data": data, "page": page, "page_size": page_size, "total": len(matching)}
    return web.json_response(answer)


@_with_profile
async def list_versions(request: web.Request, profile: ConnectorProfile) -> web.Response:
    """GET /connector_profiles/{id}/versions."""
    pin = _pinned(request, profile)
    versions = [
        {
            "version": version,
            "owner": "stackone",
            "builtin": True,
            "pinned": pin is not None and pin.pinned_version == version,
        }
        for version in CONNECTOR_VERSIONS
    ]
    return web.json_response(versions)


@_with_profile
async def get_pin(request: web.Request, profile: ConnectorProfile) -> web.Response:
    """GET /connector_profiles/{id}/pinned_version."""
    pin = _pinned(request, profile)
    if pin is None:
        return stackone_error(404, f"Connector profile {profile.id} has no pinned version")
    return web.json_response(_pin_json(profile, pin))


@_with_profile
async def put_pin(request: web.Request, profile: ConnectorProfile) -> web.Response:
    """PUT /connector_profiles/{id}/pinned_version: pins one of the listed versions."""
    body = await body_as(request, PinnedVersionBody, "not a pinned version")
    if body.pinned_version not in CONNECTOR_VERSIONS:
        listed = ", ".join(CONNECTOR_VERSIONS)
        return stackone_error(400, f"{body.pinned_version} is not a version of it ({listed})")
    state, stamp = emulator_state(request), iso(now())
    before = _pinned(request, profile)
    pin = PinnedVersion(
        body.pinned_version, body.owner, before.created_at if before else stamp, stamp
    )
    state.lasting.pinned_versions[profile.id] = pin
    state.changed()
    return web.json_response(_pin_json(profile, pin))


@_with_profile
async def delete_pin(request: web.Request, profile: ConnectorProfile) -> web.Response:
    """DELETE /connector_profiles/{id}/pinned_version."""
    state = emulator_state(request)
    if state.lasting.pinned_versions.pop(profile.id, None) is not None:
        state.changed()
    return web.Response(status=204)


def add_connector_profiles(app: web.Application) -> None:
    """Adds StackOne's connector profiles API to the emulator `app`."""
    app.router.add_get("/connector_profiles", list_profiles)
    app.router.add_get("/connector_profiles/{profile_id}/versions", list_versions)
    pinned = "/connector_profiles/{profile_id}/pinned_version"
    app.router.add_get(pinned, get_pin)
    app.router.add_put(pinned, put_pin)
    app.router.add_delete(pinned, delete_pin)
