"""Authentication: SASL handshake and authentication, SCRAM credential administration.

``APIS`` maps an API key to (name, lowest and highest advertised version, handler); the broker
merges it into what it advertises and dispatches.

- SaslHandshake (17) v0-1 and SaslAuthenticate (36) v0-2 drive the connection's
  `sasl.SaslSession` (ingest/kafka/sasl.py: the sequence and what is allowed before it ends).
  On a listener without SASL both answer ILLEGAL_SASL_STATE.
- DescribeUserScramCredentials (50) v0 and AlterUserScramCredentials (51) v0 read and write the
  stored credentials (metadata catalog kind ``scram_credential``, one entry per user and
  mechanism; streamhouse/scram.py documents the stored form). An upsertion carries the
  client-computed salted password, from which the stored and server keys are derived; neither
  the password nor the salted password is stored. Errors as Kafka gives them, per user:
  UNACCEPTABLE_CREDENTIAL (empty name, iterations outside 4096..16384, empty salt or salted
  password of the wrong length), UNSUPPORTED_SASL_MECHANISM, DUPLICATE_RESOURCE (a user named
  twice in one request), RESOURCE_NOT_FOUND (deleting or describing a credential that does not
  exist).
"""

from __future__ import annotations

import hashlib
import logging
import time
from typing import Any

from ingest.kafka.sasl import ILLEGAL_SASL_STATE, SaslFailure, current_sasl
from metadata.store import MAX_CATALOG_NAME_LENGTH
from streamhouse.kafka.messages import (
    AlterUserScramCredentialsRequest,
    AlterUserScramCredentialsResponse,
    DescribeUserScramCredentialsRequest,
    DescribeUserScramCredentialsResponse,
    RequestHeader,
    SaslAuthenticateRequest,
    SaslAuthenticateResponse,
    SaslHandshakeRequest,
    SaslHandshakeResponse,
)
from streamhouse.scram import (
    CATALOG_KIND,
    MAX_ITERATIONS,
    MECHANISM_NAMES,
    MECHANISMS,
    MIN_ITERATIONS,
    ScramCredential,
    ScramError,
    catalog_name,
    credential_from_salted,
    hash_name,
)

log = logging.getLogger("ingest.kafka")

UNSUPPORTED_SASL_MECHANISM = 33
RESOURCE_NOT_FOUND = 91
DUPLICATE_RESOURCE = 92
UNACCEPTABLE_CREDENTIAL = 93

_NO_SASL = (
    "this listener does not use SASL (STREAMHOUSE_KAFKA_SECURITY_PROTOCOL is not SASL_PLAINTEXT "
    "or SASL_SSL)"
)


async def sasl_handshake(broker: Any, header: RequestHeader, request: SaslHandshakeRequest) -> Any:
    session = current_sasl.get()
    if session is None:
        return SaslHandshakeResponse(error_code=ILLEGAL_SASL_STATE, mechanisms=[])
    code = session.handshake(request.mechanism, header.request_api_version)
    return SaslHandshakeResponse(error_code=code, mechanisms=list(session.mechanisms))


async def sasl_authenticate(
    broker: Any, header: RequestHeader, request: SaslAuthenticateRequest
) -> Any:
    session = current_sasl.get()
    if session is None:
        return SaslAuthenticateResponse(error_code=ILLEGAL_SASL_STATE, error_message=_NO_SASL)
    try:
        token = await session.authenticate(request.auth_bytes)
    except SaslFailure as exc:
        return SaslAuthenticateResponse(error_code=exc.code, error_message=exc.message)
    return SaslAuthenticateResponse(error_message=None, auth_bytes=token, session_lifetime_ms=0)


async def lookup_credential(meta: Any, mechanism: str, user: str) -> ScramCredential | None:
    """The stored credential of ``user`` for ``mechanism`` (None if none or unstorable name)."""
    name = catalog_name(mechanism, user)
    if len(name) > MAX_CATALOG_NAME_LENGTH:
        return None
    data = await meta.get_catalog_entry(CATALOG_KIND, name)
    if data is None:
        return None
    try:
        return ScramCredential.from_bytes(data)
    except ScramError:
        log.error("the stored %s credential of %r is corrupt; refusing it", mechanism, user)
        return None


async def describe_user_scram_credentials(
    broker: Any, header: RequestHeader, request: DescribeUserScramCredentialsRequest
) -> DescribeUserScramCredentialsResponse:
    R = DescribeUserScramCredentialsResponse
    stored: dict[str, list[R.CredentialInfo]] = {}
    for name, data in await broker.meta.list_catalog_entries(CATALOG_KIND):
        mechanism, _, user = name.partition("/")
        if mechanism not in MECHANISMS:
            continue
        try:
            iterations = ScramCredential.from_bytes(data).iterations
        except ScramError:
            continue
        stored.setdefault(user, []).append(
            R.CredentialInfo(mechanism=MECHANISMS[mechanism], iterations=iterations)
        )
    results = []
    if not request.users:  # null or empty: every user
        for user in sorted(stored):
            results.append(
                R.DescribeUserScramCredentialsResult(
                    user=user, error_message=None, credential_infos=stored[user]
                )
            )
        return R(error_message=None, results=results)
    names = [u.name for u in request.users]
    for user in dict.fromkeys(names):
        if names.count(user) > 1:
            results.append(
                R.DescribeUserScramCredentialsResult(
                    user=user,
                    error_code=DUPLICATE_RESOURCE,
                    error_message="Cannot describe SCRAM credentials for the same user twice in a "
                    "single request",
                )
            )
        elif user not in stored:
            results.append(
                R.DescribeUserScramCredentialsResult(
                    user=user,
                    error_code=RESOURCE_NOT_FOUND,
                    error_message="Attempt to describe a user credential that does not exist: "
                    + user,
                )
            )
        else:
            results.append(
                R.DescribeUserScramCredentialsResult(
                    user=user, error_message=None, credential_infos=stored[user]
                )
            )
    return R(error_message=None, results=results)


def _upsertion_error(
    up: AlterUserScramCredentialsRequest.ScramCredentialUpsertion,
) -> tuple[int, str] | None:
    mechanism = MECHANISM_NAMES.get(up.mechanism)
    if mechanism is None:
        return UNSUPPORTED_SASL_MECHANISM, f"Unknown SCRAM mechanism id {up.mechanism}"
    if not MIN_ITERATIONS <= up.iterations <= MAX_ITERATIONS:
        return (
            UNACCEPTABLE_CREDENTIAL,
            f"{up.iterations} iterations: {mechanism} needs {MIN_ITERATIONS}..{MAX_ITERATIONS}",
        )
    if not up.salt:
        return UNACCEPTABLE_CREDENTIAL, "the salt must not be empty"
    size = hashlib.new(hash_name(mechanism)).digest_size
    if len(up.salted_password) != size:
        return (
            UNACCEPTABLE_CREDENTIAL,
            f"the salted password of {mechanism} must be {size} bytes, got "
            f"{len(up.salted_password)}",
        )
    return None


async def alter_user_scram_credentials(
    broker: Any, header: RequestHeader, request: AlterUserScramCredentialsRequest
) -> AlterUserScramCredentialsResponse:
    R = AlterUserScramCredentialsResponse
    names = [d.name for d in request.deletions] + [u.name for u in request.upsertions]
    errors: dict[str, tuple[int, str]] = {}
    longest = MAX_CATALOG_NAME_LENGTH - len("SCRAM-SHA-256/")
    for user in names:
        if not user:
            errors[user] = (UNACCEPTABLE_CREDENTIAL, "Username must not be empty")
        elif len(user) > longest:
            errors[user] = (UNACCEPTABLE_CREDENTIAL, f"user names are at most {longest} characters")
        elif names.count(user) > 1:
            errors[user] = (
                DUPLICATE_RESOURCE,
                "A user credential cannot be altered twice in the same request",
            )
    for deletion in request.deletions:
        if deletion.name not in errors and deletion.mechanism not in MECHANISM_NAMES:
            errors[deletion.name] = (
                UNSUPPORTED_SASL_MECHANISM,
                f"Unknown SCRAM mechanism id {deletion.mechanism}",
            )
    for up in request.upsertions:
        problem = _upsertion_error(up)
        if up.name not in errors and problem is not None:
            errors[up.name] = problem
    now_ms = int(time.time() * 1000)
    for deletion in request.deletions:
        if deletion.name in errors:
            continue
        mechanism = MECHANISM_NAMES[deletion.mechanism]
        deleted = await broker.meta.delete_catalog_entry(
            CATALOG_KIND, catalog_name(mechanism, deletion.name)
        )
        if not deleted:
            errors[deletion.name] = (
                RESOURCE_NOT_FOUND,
                f"Attempt to delete a user credential that does not exist: {deletion.name} "
                f"({mechanism})",
            )
        else:
            log.info("deleted the %s credential of %r", mechanism, deletion.name)
    for up in request.upsertions:
        if up.name in errors:
            continue
        mechanism = MECHANISM_NAMES[up.mechanism]
        credential = credential_from_salted(mechanism, up.salted_password, up.salt, up.iterations)
        await broker.meta.put_catalog_entry(
            CATALOG_KIND,
            catalog_name(mechanism, up.name),
            credential.to_bytes(),
            now_ms,
            replace=True,
        )
        log.info("stored the %s credential of %r", mechanism, up.name)
    results = []
    for user in dict.fromkeys(names):
        code, message = errors.get(user, (0, None))
        results.append(
            R.AlterUserScramCredentialsResult(user=user, error_code=code, error_message=message)
        )
    return R(results=results)


APIS: dict[int, tuple[str, int, int, Any]] = {
    17: ("SaslHandshake", 0, 1, sasl_handshake),
    36: ("SaslAuthenticate", 0, 2, sasl_authenticate),
    50: ("DescribeUserScramCredentials", 0, 0, describe_user_scram_credentials),
    51: ("AlterUserScramCredentials", 0, 0, alter_user_scram_credentials),
}
