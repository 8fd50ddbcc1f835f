"""Bearer-token access control for StreamLoop's HTTP endpoints.

Two tokens, both optional in development:

- the **operator token** guards actions that change the system (promote, roll back,
  retrain). Without one, those actions are refused: they are closed by default;
- the **read token**, when set, guards reads (the registry API, the dashboard,
  ``POST /predict``). Without one, reads are open. The operator token is accepted for
  reads as well, so an operator needs only one secret.

Tokens are ``SecretStr``: their ``repr`` is masked, and nothing here logs or echoes a
presented credential. Comparison is constant-time over SHA-256 digests, so neither the
content nor the length of the token leaks through timing.

Settings come from the shared ``STREAMLOOP_HTTP_*`` variables (every service), and a
service may override any of them with its own nested variable, for example
``STREAMLOOP_REGISTRY_HTTP_AUTH__OPERATOR_TOKEN``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import ClassVar

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = [
    "MIN_PRODUCTION_TOKEN_LENGTH",
    "PREDICT_BODY_BYTES",
    "SMALL_BODY_BYTES",
    "ApiAuthSettings",
    "Decision",
    "HttpAuthSettings",
    "OperatorApiAuthSettings",
    "authorize_operator",
    "authorize_read",
    "check_bearer",
    "check_length",
]

PREDICT_BODY_BYTES = 8_000_000
"""Default body limit of ``POST /predict``: ingest's default image limit
(``STREAMLOOP_INGEST_MAX_IMAGE_BYTES``), so an image the stream accepts is accepted here."""

SMALL_BODY_BYTES = 64 * 1024
"""Default body limit of the registry API and the dashboard, whose bodies are small JSON
commands (or nothing at all)."""

MIN_PRODUCTION_TOKEN_LENGTH = 16
"""Shortest HTTP token accepted in production: a bearer token can be guessed at the speed
the endpoint answers, so it must be long enough that guessing is hopeless."""

REALM = "streamloop"


class HttpAuthSettings(BaseSettings):
    """Tokens and body limit of one service's HTTP endpoint (``STREAMLOOP_HTTP_*``, or
    ``STREAMLOOP_<SERVICE>_HTTP_AUTH__*`` for one service only)."""

    model_config = SettingsConfigDict(env_prefix="STREAMLOOP_HTTP_", frozen=True, extra="ignore")

    operator_actions: ClassVar[bool] = False
    """Whether the endpoint offers operator actions. Only then is an operator token required
    in production; elsewhere it is merely checked not to be a default when set."""

    operator_token: SecretStr | None = None
    """Bearer token of operator actions; unset closes them (403)."""

    read_token: SecretStr | None = None
    """Bearer token of reads; unset leaves reads open. Health probes are always open."""

    max_body_bytes: int = Field(default=PREDICT_BODY_BYTES, ge=1, le=64 * 1024 * 1024)
    """Largest request body accepted; a larger ``Content-Length`` is answered 413 before the
    body is read. A shared ``STREAMLOOP_HTTP_MAX_BODY_BYTES`` applies to every service:
    prefer the per-service variable."""

    @field_validator("operator_token", "read_token", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        """An empty variable (``TOKEN=`` in a compose file) means no token, not the empty
        token, which would otherwise be a valid credential of length zero."""
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if isinstance(value, str) and not value.strip():
            return None
        return value


class ApiAuthSettings(HttpAuthSettings):
    """``HttpAuthSettings`` of an endpoint whose bodies are small JSON (the dashboard)."""

    max_body_bytes: int = Field(default=SMALL_BODY_BYTES, ge=1, le=64 * 1024 * 1024)


class OperatorApiAuthSettings(ApiAuthSettings):
    """``ApiAuthSettings`` of an endpoint with operator actions (the registry API): in
    production it needs an operator token."""

    operator_actions: ClassVar[bool] = True


@dataclass(frozen=True)
class Decision:
    """Whether a request may go on (its credentials, its declared body): ``status`` None
    lets it through; otherwise answer ``status`` with ``message`` and ``headers``."""

    status: HTTPStatus | None = None
    message: str = ""
    headers: tuple[tuple[str, str], ...] = ()

    @property
    def allowed(self) -> bool:
        return self.status is None


ALLOWED = Decision()


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode("utf-8", "surrogateescape")).digest()


def _presented(authorization: str | None, *, basic: bool) -> str | None:
    """The credential in an ``Authorization`` header, or None when there is none usable:
    ``Bearer <token>``, or, with ``basic``, the password of ``Basic`` credentials (so that a
    browser's login prompt can carry the token to a page)."""
    if not authorization:
        return None
    scheme, _, rest = authorization.strip().partition(" ")
    rest = rest.strip()
    if scheme.lower() == "bearer" and rest:
        return rest
    if basic and scheme.lower() == "basic" and rest:
        try:
            decoded = base64.b64decode(rest, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        _user, sep, password = decoded.partition(":")
        return password if sep and password else None
    return None


def _challenge(basic: bool) -> tuple[tuple[str, str], ...]:
    bearer = ("WWW-Authenticate", f'Bearer realm="{REALM}"')
    if basic:
        # Browsers use the first scheme they know: Basic brings up their login prompt.
        return (("WWW-Authenticate", f'Basic realm="{REALM}", charset="UTF-8"'), bearer)
    return (bearer,)


def check_bearer(
    authorization: str | None, *tokens: SecretStr | None, basic: bool = False
) -> Decision:
    """Check an ``Authorization`` header against ``tokens`` (any of them will do; None
    entries are skipped). No usable credential: 401 with a ``WWW-Authenticate`` challenge.
    A credential that matches none: 403. With ``basic``, the password of ``Basic``
    credentials counts too, and the challenge offers Basic first.

    Every configured token is compared, in constant time, whatever the outcome, so the
    answer's timing says nothing about which token came close."""
    expected = [t.get_secret_value() for t in tokens if t is not None]
    if not expected:
        raise ValueError("check_bearer needs at least one token")
    presented = _presented(authorization, basic=basic)
    if presented is None:
        return Decision(HTTPStatus.UNAUTHORIZED, "authentication required", _challenge(basic))
    got = _digest(presented)
    match = False
    for token in expected:
        match |= hmac.compare_digest(got, _digest(token))
    if not match:
        return Decision(HTTPStatus.FORBIDDEN, "invalid token")
    return ALLOWED


def authorize_read(
    authorization: str | None, auth: HttpAuthSettings, *, basic: bool = False
) -> Decision:
    """A read: open when no read token is set; otherwise the read or the operator token."""
    if auth.read_token is None:
        return ALLOWED
    return check_bearer(authorization, auth.read_token, auth.operator_token, basic=basic)


def authorize_operator(
    authorization: str | None, auth: HttpAuthSettings, env_hint: str
) -> Decision:
    """An operator action: refused (403) when no operator token is set, naming the variable
    ``env_hint`` that would enable it; otherwise the operator token alone."""
    if auth.operator_token is None:
        return Decision(HTTPStatus.FORBIDDEN, f"operator actions are disabled: set {env_hint}")
    return check_bearer(authorization, auth.operator_token)


def check_length(
    lengths: Sequence[str], limit: int, *, chunked: bool = False, required: bool = True
) -> Decision:
    """Check a request's declared body size (its ``Content-Length`` values) before reading
    any of it: 413 above ``limit``; 400 for a malformed or repeated length; 411 when
    ``required`` and there is none, or the body is chunked (its size unknown in advance).
    Without ``required``, an undeclared size is let through: the reader must then stop at
    ``limit`` itself."""
    if required and (chunked or not lengths):
        return Decision(HTTPStatus.LENGTH_REQUIRED, "Content-Length required")
    if not lengths:
        return ALLOWED
    if len(lengths) > 1 or not lengths[0].strip().isdigit():
        return Decision(HTTPStatus.BAD_REQUEST, "invalid Content-Length")
    if int(lengths[0]) > limit:
        return Decision(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body larger than {limit} bytes")
    return ALLOWED
