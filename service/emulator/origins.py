"""Which requests from web browsers the emulator takes.

The emulator listens on loopback while its user browses the web (`make demo`), and any page
open in that browser can send a "simple" request to a loopback address without asking
first: a form post, or a fetch with a text/plain or form-encoded body (CORS only hides the
answer). So the emulator refuses what a browser could send it on another site's behalf:

- a request whose Host is not a loopback name (nor `public_base_url`'s host), 403: a site
  whose name was re-pointed at 127.0.0.1 (DNS rebinding) would otherwise be same-origin;
- a request that changes state (any method but GET, HEAD and OPTIONS) sent by a page of
  another origin, by its `Origin` or `Sec-Fetch-Site`, 403. Only the Hub's endpoints
  (`/hub/`) take them from other origins, and only from loopback ones: the page that embeds
  the Hub (examples/web) is on loopback too. The emulator's own Auth Link page is
  same-origin;
- a body not declared `application/json`, 415: a page of another origin can send that
  content type only after a CORS preflight, which only `/hub/` answers, for loopback
  origins (`hub.hub_cors`).

Clients that are not browsers (httpx, curl, StackOne's SDK on Node) send neither `Origin`
nor `Sec-Fetch-Site`, and JSON with its content type, so none of this concerns them.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from aiohttp import web

from service.config import is_loopback

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# What a browser says of a request its own page sent, or a person typed.
_OWN_SITE = frozenset({"same-origin", "none"})
Origin = tuple[str, str, int]


def _parsed(url: str) -> Origin | None:
    """(scheme, host, port) of a URL or `Origin` header; None when it names no host."""
    try:
        parts = urlsplit(url)
        port = parts.port or {"http": 80, "https": 443}.get(parts.scheme, 0)
    except ValueError:
        return None
    if parts.hostname is None:
        return None
    return parts.scheme, parts.hostname, port


def is_loopback_origin(origin: str) -> bool:
    """True for an `Origin` of a page served from this machine's loopback."""
    parsed = _parsed(origin)
    return parsed is not None and parsed[0] in {"http", "https"} and is_loopback(parsed[1])


def _own_origins(request: web.Request, public_base_url: str | None) -> set[Origin]:
    urls = [f"{request.scheme}://{request.host}", public_base_url or ""]
    return {parsed for url in urls if (parsed := _parsed(url)) is not None}


def _addressed_here(request: web.Request, public_base_url: str | None) -> bool:
    host = request.headers.get("host")
    if host is None:  # HTTP/1.0: no name to check, and no browser sends it
        return True
    name = _parsed(f"//{host}")
    public = _parsed(public_base_url or "")
    return name is not None and (
        is_loopback(name[1]) or (public is not None and name[1] == public[1])
    )


def _from_another_origin(request: web.Request, public_base_url: str | None) -> str | None:
    """The origin of the page that sent `request` when it is not the emulator's own."""
    origin = request.headers.get("origin")
    if origin is not None and _parsed(origin) not in _own_origins(request, public_base_url):
        return origin
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in _OWN_SITE:
        return origin or f"a {site} page"
    return None


def refusal(request: web.Request, public_base_url: str | None) -> tuple[int, str] | None:
    """The status and message refusing `request` as a browser could have sent it on
    another site's behalf, or None to answer it."""
    if not _addressed_here(request, public_base_url):
        return 403, (
            f"The emulator answers requests addressed to loopback only, not to "
            f"{request.headers.get('host')!r}: a name re-pointed at it (DNS rebinding) "
            "must not reach it"
        )
    if request.method in SAFE_METHODS:
        return None
    origin = _from_another_origin(request, public_base_url)
    hub_page = request.path.startswith("/hub/") and is_loopback_origin(origin or "")
    if origin is not None and not hub_page:
        return 403, (
            f"Cross-origin request refused: a page of {origin} may not change the emulator "
            "(only its own pages may, and pages on loopback through the Hub's /hub/ endpoints)"
        )
    if request.body_exists and request.content_type != "application/json":
        return 415, "Content-Type must be application/json"
    return None
