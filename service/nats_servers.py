"""The servers a NATS URL setting names: one (`nats://a:4222`) or several of a cluster,
separated by commas (`nats://a:4222,nats://b:4222`)."""

from __future__ import annotations


def nats_servers(url: str) -> list[str]:
    """The servers `url` names, as nats.connect takes them: a list (a comma-separated
    string is one malformed URL to it)."""
    return [server.strip() for server in url.split(",") if server.strip()]
