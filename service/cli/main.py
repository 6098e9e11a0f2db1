"""The `stackone-connect` console script."""

from __future__ import annotations

import argparse
import asyncio
import difflib
import gc
import importlib.metadata
import logging
import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import uvloop
from pydantic import ValidationError

from gateway.secrets import InvalidSecretsFile
from service import logs
from service.cli.backup import add_backup_command, backup_main
from service.cli.check import add_check_command, check_main
from service.cli.commands import add_client_commands, run_client_command
from service.cli.preflight import (
    FILE_ERRORS,
    check_operator_files,
    file_problem,
    listeners,
    shared_address,
)
from service.config import ENV_PREFIX, Settings
from service.events.backends import UnsupportedEventLogUrl
from service.rpc.auth import InvalidClientsFile
from service.rpc.server import TlsFileError
from service.runtime import ConfigurationError, event_log_options, running
from service.web import CannotListen, check_free

_log = logging.getLogger("service.cli")
TARGET_VARIABLE = "STACKONE_CONNECT_TARGET"
DEFAULT_TARGET = "127.0.0.1:50051"
TOKEN_VARIABLE = "STACKONE_CONNECT_TOKEN"  # noqa: S105 - a variable name, not a secret
PACKAGE = "stackone-connect"


# Settings `serve` also takes as flags (which override their variables).
SERVE_FLAGS = ("grpc_address", "gateway_address", "event_log_url", "emulator_address")


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """A warning for each `STACKONE_CONNECT_…` variable that is neither a setting nor the
    CLI's own, naming the closest known one: pydantic-settings ignores them silently."""
    known = {name.upper() for name in Settings.model_fields}
    known |= {variable.removeprefix(ENV_PREFIX) for variable in (TARGET_VARIABLE, TOKEN_VARIABLE)}
    warnings = []
    for name in sorted(environ):
        suffix = name.upper().removeprefix(ENV_PREFIX)
        if name.upper().startswith(ENV_PREFIX) and suffix not in known:
            closest = difflib.get_close_matches(suffix, known, n=1, cutoff=0.6)
            hint = f"; did you mean {ENV_PREFIX}{closest[0]}?" if closest else ""
            warnings.append(
                f"stackone-connect: warning: {name} is not a setting and is ignored{hint}"
            )
    return warnings


def _read_settings(**overrides: Any) -> Settings:
    """The service's settings, the event log's URL checked against the backends (which the
    settings do not know): raises `ValidationError` or `UnsupportedEventLogUrl`."""
    settings = Settings(**overrides)
    event_log_options(settings)
    return settings


def _settings_error(error: ValidationError | UnsupportedEventLogUrl) -> str:
    """One line per problem, naming the setting (model-wide checks name theirs)."""
    if isinstance(error, UnsupportedEventLogUrl):
        return _invalid(f"{_setting('event_log_url')}: {error}")
    lines = []
    for problem in error.errors(include_url=False):
        message = problem["msg"].removeprefix("Value error, ")
        if problem["loc"]:
            message = f"{_setting(str(problem['loc'][0]))}: {message}"
        lines.append(_invalid(message))
    return "\n".join(lines)


def _setting(name: str) -> str:
    """A setting's variable, and its `serve` flag if it has one."""
    flag = f" (--{name.replace('_', '-')})" if name in SERVE_FLAGS else ""
    return f"{ENV_PREFIX}{name.upper()}{flag}"


def _invalid(message: str) -> str:
    """The line refusing a configuration."""
    return f"stackone-connect: invalid configuration: {message}"


def _file_error(error: TlsFileError | InvalidClientsFile | InvalidSecretsFile) -> str:
    """One line naming the setting of the file at fault."""
    return _invalid(file_problem(error))


async def serve(settings: Settings) -> None:
    """Runs the service until SIGTERM or SIGINT, then stops it gracefully."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with running(settings):
        # Everything built so far lives as long as the process: moved out of the
        # collector's reach, a full collection no longer walks it (it took ~45 ms, long
        # enough to be the p99 of sending one event to 1,000 streams).
        gc.collect()
        gc.freeze()
        _log.debug(
            "gc.freeze: %d objects out of the collector's reach",
            gc.get_freeze_count(),
            extra={"event_loop": f"{type(loop).__module__}.{type(loop).__qualname__}"},
        )
        await stop.wait()


def _serve_command(args: argparse.Namespace) -> int:
    overrides = {name: value for name in SERVE_FLAGS if (value := getattr(args, name)) is not None}
    try:
        settings = _read_settings(**overrides)
        check_operator_files(settings)  # before anything starts (and logs)
        if (shared := shared_address(listeners(settings))) is not None:
            raise CannotListen(shared)
        check_free(listeners(settings))
    except (ValidationError, UnsupportedEventLogUrl) as error:
        print(_settings_error(error), file=sys.stderr)
        return 2
    except FILE_ERRORS as error:
        print(_file_error(error), file=sys.stderr)
        return 2
    except CannotListen as error:
        print(f"stackone-connect: cannot start: {error}", file=sys.stderr)
        return 2
    logs.configure(settings.log_level)
    try:
        # uvloop: cheaper sockets and callbacks for the gateway and the StackOne client.
        uvloop.run(serve(settings))
    except (ConfigurationError, CannotListen) as error:
        print(f"stackone-connect: cannot start: {error}", file=sys.stderr)
        return 2
    except FILE_ERRORS as error:  # changed since check_operator_files
        print(_file_error(error), file=sys.stderr)
        return 2
    return 0


def _with_settings(
    command: Callable[[Settings, argparse.Namespace], int],
) -> Callable[[argparse.Namespace], int]:
    """A subcommand that reads the service's settings; exit 2 naming any that is invalid."""

    def handler(args: argparse.Namespace) -> int:
        try:
            settings = _read_settings()
        except (ValidationError, UnsupportedEventLogUrl) as error:
            print(_settings_error(error), file=sys.stderr)
            return 2
        return command(settings, args)

    return handler


def _add_global_flags(parser: argparse.ArgumentParser, *, defaults: bool) -> None:
    """The flags every client command takes, before or after its name; with `defaults`,
    their values when given in neither place."""

    def default(value: object) -> object:
        return value if defaults else argparse.SUPPRESS

    parser.add_argument(
        "--target",
        default=default(os.environ.get(TARGET_VARIABLE, DEFAULT_TARGET)),
        help=f"host:port of the service (default ${TARGET_VARIABLE} or {DEFAULT_TARGET})",
    )
    parser.add_argument(
        "--json", action="store_true", default=default(False), help="one JSON object per line"
    )
    parser.add_argument(
        "--token",
        default=default(os.environ.get(TOKEN_VARIABLE)),
        help=f"bearer token (default ${TOKEN_VARIABLE})",
    )
    parser.add_argument(
        "--ca-file",
        default=default(None),
        help="PEM CA that signed the server's certificate (TLS)",
    )
    parser.add_argument(
        "--cert-file", default=default(None), help="PEM client certificate (mutual TLS)"
    )
    parser.add_argument("--key-file", default=default(None), help="PEM client key (mutual TLS)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(
        prog="stackone-connect",
        description="Link customers' tools through StackOne and stream account events.",
    )
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {importlib.metadata.version(PACKAGE)}"
    )
    _add_global_flags(parser, defaults=True)
    # The same flags after the subcommand; unset there, they leave the values given before.
    common = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    _add_global_flags(common, defaults=False)
    commands = parser.add_subparsers(dest="subcommand", required=True)
    serve_parser = commands.add_parser(
        "serve",
        help="run the gRPC server and the webhook gateway",
        description=f"Settings come from {ENV_PREFIX}* variables; these flags override them.",
    )
    serve_parser.add_argument("--grpc-address", help="host:port of the gRPC server")
    serve_parser.add_argument("--gateway-address", help="host:port of the webhook gateway")
    serve_parser.add_argument("--event-log-url", help="e.g. sqlite:///var/events.db")
    serve_parser.add_argument("--emulator-address", help="host:port of the bundled emulator")
    serve_parser.set_defaults(handler=_serve_command)
    add_client_commands(commands, common)
    add_check_command(commands, common).set_defaults(handler=_with_settings(check_main))
    add_backup_command(commands).set_defaults(handler=_with_settings(backup_main))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script."""
    args = build_parser().parse_args(argv)
    for warning in unknown_variables(os.environ):
        print(warning, file=sys.stderr)
    if hasattr(args, "handler"):
        code: int = args.handler(args)
        return code
    try:
        return asyncio.run(run_client_command(args.command, args))
    except KeyboardInterrupt:
        return 130
