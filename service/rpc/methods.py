"""ConnectService's methods as the proto declares them: the one source of every RPC table.

The handler table (`service.rpc.server`) and the scope table (`service.rpc.auth`) are both
derived from the service descriptor, so adding an RPC touches the proto, the servicer and
the StackOne client, and nothing else. A method without a `required_scope` option stops
the server at start-up rather than denying every caller in production.
"""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass

from stackone_connect.v1 import stackone_connect_pb2 as pb

CONNECT_SERVICE: ServiceDescriptor = pb.DESCRIPTOR.services_by_name["ConnectService"]


class MethodTableError(RuntimeError):
    """The proto and the code disagree about a method; the message names it."""


@dataclass(frozen=True, slots=True)
class Method:
    """One RPC: its name, the scope a caller needs, and its message classes."""

    name: str
    scope: str
    request: type[Message]
    response: type[Message]
    server_streaming: bool
    client_streaming: bool = False


def methods_of(service: ServiceDescriptor) -> tuple[Method, ...]:
    """Every method of `service`; raises `MethodTableError` for one without a scope."""
    methods = []
    for method in service.methods:
        scope = method.GetOptions().Extensions[pb.required_scope]
        if not scope:
            raise MethodTableError(
                f"{service.full_name}.{method.name} declares no (required_scope) option; "
                "add one in the proto so callers can be authorised for it"
            )
        methods.append(
            Method(
                name=method.name,
                scope=scope,
                request=GetMessageClass(method.input_type),
                response=GetMessageClass(method.output_type),
                server_streaming=method.server_streaming,
                client_streaming=method.client_streaming,
            )
        )
    return tuple(methods)


CONNECT_METHODS = methods_of(CONNECT_SERVICE)
