"""Who is calling the gRPC service: moved to streamhouse/grpc_auth.py (the sql service uses it
too, and process folders do not import each other); these names stay importable from here."""

from streamhouse.grpc_auth import (
    CATALOG_KIND,
    TOKEN_CACHE_TTL_S,
    TOKEN_PREFIX,
    AuthenticationFailed,
    GrpcAuthenticator,
    new_token,
    parse_token_record,
    token_hash,
    token_record,
)

__all__ = [
    "CATALOG_KIND",
    "TOKEN_CACHE_TTL_S",
    "TOKEN_PREFIX",
    "AuthenticationFailed",
    "GrpcAuthenticator",
    "new_token",
    "parse_token_record",
    "token_hash",
    "token_record",
]
