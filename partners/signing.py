"""Request signing and phone hashing of partner protocol v1 (``partner-protocol.md``).

Both directions sign the same way: ``X-Spillway-Timestamp`` carries unix seconds and
``X-Spillway-Signature`` carries ``sha256=<hex HMAC-SHA256(secret, "<timestamp>.<raw body>")>``.
The timestamp is inside the MAC, so a captured request cannot be replayed after the tolerance
window; the raw body bytes are signed, so the receiver must verify before parsing JSON.

This module is pure (no Django, no database): the connectors, the callback view and the partner
simulator all use it.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from collections.abc import Mapping
from typing import Any, Literal

TIMESTAMP_HEADER = "X-Spillway-Timestamp"
SIGNATURE_HEADER = "X-Spillway-Signature"
SIGNATURE_PREFIX = "sha256="
DEFAULT_TOLERANCE_SECONDS = 300

PhoneHashAlg = Literal["hmac_sha256", "sha256", "md5"]
PHONE_HASH_ALGS: tuple[str, ...] = ("hmac_sha256", "sha256", "md5")

SignatureFailure = Literal["missing", "malformed", "stale", "wrong"]

_TIMESTAMP_RE = re.compile(r"^\d{1,12}$")
_SIGNATURE_RE = re.compile(r"^sha256=([0-9a-f]{64})$")
_MAINLAND_MOBILE_RE = re.compile(r"^1\d{10}$")


class SignatureError(Exception):
    """A request's signature cannot be accepted; answer HTTP 401.

    ``reason`` says why, for logs and metrics: ``missing`` (a header is absent), ``malformed``
    (a header is not in the protocol's format), ``stale`` (the timestamp is more than the
    tolerance away from our clock, either direction) or ``wrong`` (the MAC does not match: wrong
    secret or a tampered body).
    """

    def __init__(self, reason: SignatureFailure, detail: str = "") -> None:
        self.reason: SignatureFailure = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


def _key(secret: str | bytes) -> bytes:
    key = secret.encode() if isinstance(secret, str) else secret
    if not key:
        # An empty key would make every signature forgeable by anyone who knows the protocol.
        raise ValueError("a signing secret must not be empty")
    return key


def compute_signature(secret: str | bytes, body: bytes, timestamp: int) -> str:
    """The ``X-Spillway-Signature`` value for ``body`` sent at ``timestamp`` (unix seconds)."""
    message = f"{int(timestamp)}.".encode() + body
    return SIGNATURE_PREFIX + hmac.new(_key(secret), message, hashlib.sha256).hexdigest()


def sign(secret: str | bytes, body: bytes, timestamp: int | None = None) -> dict[str, str]:
    """The two headers that sign ``body`` (the exact bytes that will be sent).

    ``timestamp`` defaults to now; pass one only in tests or to re-sign a retried request.
    """
    ts = int(time.time()) if timestamp is None else int(timestamp)
    return {TIMESTAMP_HEADER: str(ts), SIGNATURE_HEADER: compute_signature(secret, body, ts)}


def _header(headers: Mapping[str, Any] | Any, name: str) -> str | None:
    """Case-insensitive header lookup that works on plain dicts, Django's ``request.headers``,
    ``requests``' headers and ``http.server``'s ``email.message.Message``."""
    value = headers.get(name)
    if value is None:
        lowered = name.lower()
        for key, candidate in headers.items():
            if key.lower() == lowered:
                value = candidate
                break
    return None if value is None else str(value).strip()


def verify(
    secret: str | bytes,
    headers: Mapping[str, Any] | Any,
    body: bytes,
    now: float | None = None,
    tolerance: int = DEFAULT_TOLERANCE_SECONDS,
) -> int:
    """Check that ``body`` was signed with ``secret`` within ``tolerance`` seconds of ``now``.

    Returns the signed timestamp; raises :class:`SignatureError` otherwise. The MAC comparison is
    constant-time (``hmac.compare_digest``), so response timing reveals nothing about the secret.
    """
    raw_ts = _header(headers, TIMESTAMP_HEADER)
    raw_sig = _header(headers, SIGNATURE_HEADER)
    if not raw_ts or not raw_sig:
        missing = [name for name, value in ((TIMESTAMP_HEADER, raw_ts), (SIGNATURE_HEADER, raw_sig)) if not value]
        raise SignatureError("missing", ", ".join(missing))
    if not _TIMESTAMP_RE.match(raw_ts):
        raise SignatureError("malformed", f"{TIMESTAMP_HEADER} must be unix seconds")
    if not _SIGNATURE_RE.match(raw_sig.lower()):
        raise SignatureError("malformed", f"{SIGNATURE_HEADER} must look like sha256=<64 hex digits>")
    timestamp = int(raw_ts)
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance:
        raise SignatureError("stale", f"timestamp is {int(current - timestamp)} s from our clock")
    expected = compute_signature(secret, body, timestamp)
    if not hmac.compare_digest(expected.encode(), raw_sig.lower().encode()):
        raise SignatureError("wrong", "signature does not match")
    return timestamp


def normalise_phone(phone: str) -> str:
    """The 11-digit mainland mobile number that gets hashed (``+86``/``0086`` and separators dropped).

    Both sides must hash exactly the same string, or a probe never matches.
    """
    digits = re.sub(r"[\s\-()]", "", phone or "")
    for prefix in ("+86", "0086"):
        if digits.startswith(prefix):
            digits = digits[len(prefix) :]
    if not _MAINLAND_MOBILE_RE.match(digits):
        raise ValueError("a phone hash needs an 11-digit mainland mobile number")
    return digits


def phone_hash(phone: str, alg: PhoneHashAlg | str, secret: str | bytes) -> str:
    """The probe's ``phone_hash`` (hex) as the partner's ``phone_hash`` setting says.

    ``hmac_sha256`` (default) is keyed with the partner's ``api_secret``, so the value is useless
    to anyone else. ``sha256`` and ``md5`` are legacy: an 11-digit phone hash is reversed by
    enumerating ~10^10 numbers, which is why the admin flags them as weak; ``secret`` is ignored.
    """
    number = normalise_phone(phone).encode()
    if alg == "hmac_sha256":
        return hmac.new(_key(secret), number, hashlib.sha256).hexdigest()
    if alg == "sha256":
        return hashlib.sha256(number).hexdigest()
    if alg == "md5":
        # Not a security use on our side: the partner asked for this format (and it is flagged).
        return hashlib.md5(number, usedforsecurity=False).hexdigest()
    raise ValueError(f"unknown phone hash algorithm {alg!r}; expected one of {', '.join(PHONE_HASH_ALGS)}")
