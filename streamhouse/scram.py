"""SCRAM (RFC 5802, RFC 7677) without I/O: the math, both sides' messages, stored credentials.

Mechanisms: SCRAM-SHA-256 and SCRAM-SHA-512 (Kafka's mechanism ids 1 and 2); SHA-1 is here only
for the RFC 5802 test vector and is never offered. Passwords are UTF-8 bytes without SASLprep,
as Kafka and librdkafka do. No channel binding ("n" or "y" GS2 flag; "p=" is refused).

The exchange (each line one SaslAuthenticate round trip on Kafka)::

    client-first  n,[a=authzid],n=<saslname>,r=<client nonce>[,<extensions>]
    server-first  r=<client nonce><server nonce>,s=<base64 salt>,i=<iterations>
    client-final  c=<base64 GS2 header>,r=<nonce>,p=<base64 ClientProof>
    server-final  v=<base64 ServerSignature>          (or e=<error> on failure)

    SaltedPassword  = PBKDF2-HMAC-H(password, salt, iterations)
    ClientKey       = HMAC(SaltedPassword, "Client Key");  StoredKey = H(ClientKey)
    ServerKey       = HMAC(SaltedPassword, "Server Key")
    AuthMessage     = client-first-bare "," server-first "," client-final-without-proof
    ClientProof     = ClientKey XOR HMAC(StoredKey, AuthMessage)
    ServerSignature = HMAC(ServerKey, AuthMessage)

The server keeps only salt, iterations, StoredKey and ServerKey (:class:`ScramCredential`): the
password is never stored, and StoredKey alone does not let anyone log in.

Stored form (metadata catalog, kind ``scram_credential``, name ``<mechanism>/<user>``, e.g.
``SCRAM-SHA-256/alice``): the definition is UTF-8 JSON
``{"salt": b64, "iterations": int, "stored_key": b64, "server_key": b64}`` (standard base64).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass
from typing import Final

#: Kafka's mechanism ids (ScramMechanism) by name, as in the credential admin APIs.
MECHANISMS: Final = {"SCRAM-SHA-256": 1, "SCRAM-SHA-512": 2}
MECHANISM_NAMES: Final = {v: k for k, v in MECHANISMS.items()}
_HASHES: Final = {"SCRAM-SHA-1": "sha1", "SCRAM-SHA-256": "sha256", "SCRAM-SHA-512": "sha512"}

#: Iteration bounds Kafka accepts for a stored credential.
MIN_ITERATIONS: Final = 4096
MAX_ITERATIONS: Final = 16384
DEFAULT_ITERATIONS: Final = 8192

#: Catalog kind of stored SCRAM credentials.
CATALOG_KIND: Final = "scram_credential"


class ScramError(Exception):
    """The exchange cannot go on: a malformed message or a wrong proof. The message says why."""


@dataclass(frozen=True)
class ScramCredential:
    """What the server stores for one user and mechanism."""

    salt: bytes
    iterations: int
    stored_key: bytes
    server_key: bytes

    def to_bytes(self) -> bytes:
        """The catalog definition (see the module docstring)."""
        b64 = base64.b64encode
        doc = {
            "salt": b64(self.salt).decode(),
            "iterations": self.iterations,
            "stored_key": b64(self.stored_key).decode(),
            "server_key": b64(self.server_key).decode(),
        }
        return json.dumps(doc, sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> ScramCredential:
        try:
            doc = json.loads(data)
            return cls(
                salt=base64.b64decode(doc["salt"], validate=True),
                iterations=int(doc["iterations"]),
                stored_key=base64.b64decode(doc["stored_key"], validate=True),
                server_key=base64.b64decode(doc["server_key"], validate=True),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise ScramError(f"stored SCRAM credential is corrupt: {exc}") from None


def catalog_name(mechanism: str, user: str) -> str:
    """The catalog entry name of ``user``'s credential for ``mechanism``."""
    return f"{mechanism}/{user}"


def hash_name(mechanism: str) -> str:
    try:
        return _HASHES[mechanism]
    except KeyError:
        raise ScramError(f"unknown SCRAM mechanism {mechanism!r}") from None


def _hmac(mechanism: str, key: bytes, msg: bytes) -> bytes:
    return hmac.new(key, msg, hash_name(mechanism)).digest()


def _h(mechanism: str, data: bytes) -> bytes:
    return hashlib.new(hash_name(mechanism), data).digest()


def salted_password(mechanism: str, password: str, salt: bytes, iterations: int) -> bytes:
    """PBKDF2 of the UTF-8 password (Hi() of RFC 5802)."""
    return hashlib.pbkdf2_hmac(hash_name(mechanism), password.encode(), salt, iterations)


def credential_from_salted(
    mechanism: str, salted: bytes, salt: bytes, iterations: int
) -> ScramCredential:
    """The stored credential for a salted password (what AlterUserScramCredentials carries)."""
    client_key = _hmac(mechanism, salted, b"Client Key")
    return ScramCredential(
        salt=salt,
        iterations=iterations,
        stored_key=_h(mechanism, client_key),
        server_key=_hmac(mechanism, salted, b"Server Key"),
    )


def make_credential(
    mechanism: str, password: str, iterations: int = DEFAULT_ITERATIONS, salt: bytes | None = None
) -> ScramCredential:
    salt = secrets.token_bytes(32) if salt is None else salt
    salted = salted_password(mechanism, password, salt, iterations)
    return credential_from_salted(mechanism, salted, salt, iterations)


def check_password(mechanism: str, credential: ScramCredential, password: str) -> bool:
    """True when ``password`` matches the stored credential (used by SASL/PLAIN)."""
    salted = salted_password(mechanism, password, credential.salt, credential.iterations)
    candidate = credential_from_salted(mechanism, salted, credential.salt, credential.iterations)
    return hmac.compare_digest(candidate.stored_key, credential.stored_key)


def new_nonce() -> str:
    """A printable nonce (no commas), 32 random bytes in URL-safe base64."""
    return secrets.token_urlsafe(32)


def escape_name(name: str) -> str:
    """A user name as a SCRAM saslname (RFC 5802: "=" as "=3D", "," as "=2C")."""
    return name.replace("=", "=3D").replace(",", "=2C")


def unescape_name(saslname: str) -> str:
    out = []
    i = 0
    while i < len(saslname):
        c = saslname[i]
        if c == ",":
            raise ScramError("a user name must not contain an unescaped ','")
        if c == "=":
            code = saslname[i + 1 : i + 3]
            if code == "3D":
                out.append("=")
            elif code == "2C":
                out.append(",")
            else:
                raise ScramError(f"bad escape '={code}' in user name: only =3D and =2C exist")
            i += 3
            continue
        out.append(c)
        i += 1
    return "".join(out)


def _attributes(message: str, what: str) -> list[tuple[str, str]]:
    pairs = []
    for part in message.split(","):
        if len(part) < 2 or part[1] != "=":
            raise ScramError(f"malformed {what}: attribute {part[:20]!r} is not k=value")
        pairs.append((part[0], part[2:]))
    return pairs


def _b64decode(value: str, what: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except ValueError:
        raise ScramError(f"{what} is not valid base64") from None


@dataclass(frozen=True)
class ClientFirst:
    """A parsed client-first message."""

    gs2_header: str  # "n,," or "y,," (with any authzid), as sent
    user: str
    nonce: str
    bare: str  # client-first-message-bare, part of AuthMessage
    extensions: dict[str, str]


def parse_client_first(message: bytes) -> ClientFirst:
    try:
        text = message.decode()
    except UnicodeDecodeError:
        raise ScramError("client-first message is not UTF-8") from None
    flag, sep1, rest = text.partition(",")
    authzid, sep2, bare = rest.partition(",")
    if not (sep1 and sep2):
        raise ScramError("malformed client-first message: no GS2 header")
    if flag.startswith("p="):
        raise ScramError("channel binding is not supported: use the 'n' GS2 flag")
    if flag not in ("n", "y"):
        raise ScramError(f"malformed client-first message: GS2 flag {flag!r}")
    parts = bare.split(",")
    attrs = _attributes(",".join(parts[:2]), "client-first message")
    if len(attrs) < 2 or attrs[0][0] != "n" or attrs[1][0] != "r":
        raise ScramError("malformed client-first message: expected n=<user>,r=<nonce>")
    user = unescape_name(attrs[0][1])
    if authzid and authzid != "a=" + escape_name(user):
        raise ScramError("an authorization id other than the user name is not supported")
    nonce = attrs[1][1]
    if not user or not nonce:
        raise ScramError("the user name and the nonce must not be empty")
    # Extensions (Kafka's "tokenauth=true" for delegation tokens) are key=value pairs.
    extensions = dict(part.partition("=")[::2] for part in parts[2:])
    if "m" in extensions:
        raise ScramError("mandatory SCRAM extensions ('m=') are not supported")
    return ClientFirst(f"{flag},{authzid},", user, nonce, bare, extensions)


def server_first(first: ClientFirst, credential: ScramCredential, server_nonce: str) -> str:
    salt = base64.b64encode(credential.salt).decode()
    return f"r={first.nonce}{server_nonce},s={salt},i={credential.iterations}"


class ScramServer:
    """One server-side exchange: ``first(client_first, credential)`` then ``final(...)``."""

    def __init__(self, mechanism: str, server_nonce: str | None = None) -> None:
        hash_name(mechanism)
        self.mechanism = mechanism
        self._server_nonce = server_nonce or new_nonce()
        self._client_first: ClientFirst | None = None
        self._server_first = ""
        self._credential: ScramCredential | None = None

    def first(self, client_first: ClientFirst, credential: ScramCredential) -> bytes:
        self._client_first = client_first
        self._credential = credential
        self._server_first = server_first(client_first, credential, self._server_nonce)
        return self._server_first.encode()

    def final(self, message: bytes) -> bytes:
        """Checks the client's proof; returns server-final (``v=...``) or raises ScramError."""
        first, credential = self._client_first, self._credential
        if first is None or credential is None:
            raise ScramError("client-final message before client-first")
        try:
            text = message.decode()
        except UnicodeDecodeError:
            raise ScramError("client-final message is not UTF-8") from None
        without_proof, sep, proof_part = text.rpartition(",p=")
        if not sep:
            raise ScramError("malformed client-final message: no proof")
        attrs = dict(_attributes(without_proof, "client-final message"))
        binding = _b64decode(attrs.get("c", ""), "channel binding")
        if binding != first.gs2_header.encode():
            raise ScramError("channel binding does not match the client-first GS2 header")
        # As Kafka: the nonce must end with the server-first nonce (librdkafka before 1.x puts
        # its own nonce in front once more; the server's part still makes the proof fresh).
        if not attrs.get("r", "").endswith(first.nonce + self._server_nonce):
            raise ScramError("nonce mismatch")
        proof = _b64decode(proof_part, "client proof")
        auth_message = f"{first.bare},{self._server_first},{without_proof}".encode()
        signature = _hmac(self.mechanism, credential.stored_key, auth_message)
        if len(proof) != len(signature):
            raise ScramError("client proof has the wrong length")
        client_key = bytes(a ^ b for a, b in zip(proof, signature, strict=True))
        if not hmac.compare_digest(_h(self.mechanism, client_key), credential.stored_key):
            raise ScramError("invalid credentials")
        server_signature = _hmac(self.mechanism, credential.server_key, auth_message)
        return b"v=" + base64.b64encode(server_signature)


class ScramClient:
    """The client side (tests, and anyone scripting SCRAM): first(), final(), verify().
    ``final`` refuses a server-first message asking for iterations outside
    ``MIN_ITERATIONS``..``MAX_ITERATIONS``."""

    def __init__(self, mechanism: str, user: str, password: str, nonce: str | None = None) -> None:
        hash_name(mechanism)
        self.mechanism = mechanism
        self.password = password
        self._bare = f"n={escape_name(user)},r={nonce or new_nonce()}"
        self._nonce = nonce
        self._auth_message = b""
        self._server_key = b""

    def first(self) -> bytes:
        return ("n,," + self._bare).encode()

    def final(self, server_first_message: bytes) -> bytes:
        text = server_first_message.decode()
        attrs = dict(_attributes(text, "server-first message"))
        nonce, salt_b64, iterations = attrs.get("r", ""), attrs.get("s", ""), attrs.get("i", "")
        client_nonce = self._bare.split(",r=", 1)[1]
        if not nonce.startswith(client_nonce) or not iterations.isdigit():
            raise ScramError("malformed server-first message")
        if not MIN_ITERATIONS <= int(iterations) <= MAX_ITERATIONS:
            # Fewer makes a captured exchange cheap to brute-force; more is a server making the
            # client burn CPU. Kafka's client refuses fewer than 4096 too; the maximum is the
            # one Kafka accepts for a stored credential.
            raise ScramError(
                f"the server asks for {iterations} iterations, outside {MIN_ITERATIONS}.."
                f"{MAX_ITERATIONS}: refusing to authenticate (check the server's SCRAM "
                "credentials; streamctl user add stores them with valid iterations)"
            )
        salted = salted_password(
            self.mechanism, self.password, _b64decode(salt_b64, "salt"), int(iterations)
        )
        without_proof = f"c={base64.b64encode(b'n,,').decode()},r={nonce}"
        self._auth_message = f"{self._bare},{text},{without_proof}".encode()
        client_key = _hmac(self.mechanism, salted, b"Client Key")
        signature = _hmac(self.mechanism, _h(self.mechanism, client_key), self._auth_message)
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        self._server_key = _hmac(self.mechanism, salted, b"Server Key")
        return f"{without_proof},p={base64.b64encode(proof).decode()}".encode()

    def verify(self, server_final_message: bytes) -> None:
        expected = _hmac(self.mechanism, self._server_key, self._auth_message)
        if server_final_message != b"v=" + base64.b64encode(expected):
            raise ScramError(f"server signature does not verify: {server_final_message!r}")
