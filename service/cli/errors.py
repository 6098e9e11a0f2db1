"""Errors of the CLI's client commands."""


class CommandFailed(Exception):
    """A client command cannot do what was asked; its message says why, in one line."""
