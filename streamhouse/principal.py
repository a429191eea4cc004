"""Who is making the current request: the authenticated principal, as a context variable.

A principal is Kafka's ``"<type>:<name>"`` string (``User:alice``). The Kafka connection sets
:data:`current_principal` in the context each request's handler task runs in (after SASL or TLS
authentication; :data:`ANONYMOUS` when the listener needs none), the gRPC server sets it for
each call from its token or client certificate; authorisation (ACLs) reads it. A context
variable, so no handler signature carries it and concurrent requests never see each other's.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Final

#: Kafka's principal for an unauthenticated client.
ANONYMOUS: Final = "User:ANONYMOUS"

#: The principal of the request being handled in this context.
current_principal: ContextVar[str] = ContextVar("streamhouse_principal", default=ANONYMOUS)


def user_principal(name: str) -> str:
    """The principal of a user authenticated under ``name`` (``User:<name>``)."""
    return f"User:{name}"
