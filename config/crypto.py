"""Encryption at rest for personal data and secrets, and blind indexes for exact search.

Values are sealed with AES-256-GCM under the newest key of ``SPILLWAY_ENCRYPTION_KEYS`` (a list of
``key_id:base64key`` pairs, newest first). The stored text names the key id, so older keys keep
decrypting until ``manage.py reencrypt_fields`` has moved every row to the newest key. The column
name is bound in as associated data, so a ciphertext copied into another column fails to open.

A wrong or missing key is never silently ignored: decryption raises ``DecryptionError``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from dataclasses import dataclass
from functools import lru_cache

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import models

PREFIX = "enc1"
NONCE_BYTES = 12


class DecryptionError(Exception):
    """A stored value could not be opened: unknown key id, wrong key, or tampered ciphertext."""


@dataclass(frozen=True)
class KeyRing:
    """The configured keys; ``keys[0]`` encrypts, all of them decrypt."""

    keys: tuple[tuple[str, bytes], ...]

    @property
    def current_id(self) -> str:
        return self.keys[0][0]

    def key(self, key_id: str) -> bytes:
        for kid, key in self.keys:
            if kid == key_id:
                return key
        raise DecryptionError(f"no encryption key with id {key_id!r} is configured")


def parse_keys(spec: str) -> KeyRing:
    """Parse ``id:base64key,id:base64key`` (newest first) into a key ring."""
    keys: list[tuple[str, bytes]] = []
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        kid, sep, b64 = item.partition(":")
        if not sep or not kid or ":" in b64:
            raise ImproperlyConfigured("SPILLWAY_ENCRYPTION_KEYS entries must look like 'id:base64key'")
        try:
            key = base64.urlsafe_b64decode(b64 + "=" * (-len(b64) % 4))
        except ValueError as exc:
            raise ImproperlyConfigured(f"encryption key {kid!r} is not base64") from exc
        if len(key) != 32:
            raise ImproperlyConfigured(f"encryption key {kid!r} must be 32 bytes, not {len(key)}")
        if any(kid == existing for existing, _ in keys):
            raise ImproperlyConfigured(f"encryption key id {kid!r} appears twice")
        keys.append((kid, key))
    if not keys:
        raise ImproperlyConfigured("SPILLWAY_ENCRYPTION_KEYS is empty")
    return KeyRing(tuple(keys))


@lru_cache(maxsize=8)
def _ring_for(spec: str) -> KeyRing:
    return parse_keys(spec)


def keyring() -> KeyRing:
    """The key ring from settings (cached per configuration, so tests can override settings)."""
    return _ring_for(settings.SPILLWAY_ENCRYPTION_KEYS)


def generate_key() -> str:
    """A fresh random key in the format the settings expect (without the id)."""
    return base64.urlsafe_b64encode(os.urandom(32)).decode().rstrip("=")


def encrypt(plaintext: str, *, context: str) -> str:
    """Seal ``plaintext`` under the newest key; ``context`` (e.g. ``table.column``) is bound in."""
    ring = keyring()
    nonce = os.urandom(NONCE_BYTES)
    sealed = AESGCM(ring.key(ring.current_id)).encrypt(nonce, plaintext.encode(), context.encode())
    body = base64.urlsafe_b64encode(nonce + sealed).decode().rstrip("=")
    return f"{PREFIX}:{ring.current_id}:{body}"


def key_id_of(stored: str) -> str:
    """The key id a stored value was sealed with."""
    parts = stored.split(":", 2)
    if len(parts) != 3 or parts[0] != PREFIX:
        raise DecryptionError("value is not in the encrypted format")
    return parts[1]


def decrypt(stored: str, *, context: str) -> str:
    """Open a value sealed by :func:`encrypt`; raise ``DecryptionError`` on any failure."""
    kid = key_id_of(stored)
    body = stored.split(":", 2)[2]
    try:
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    except ValueError as exc:
        raise DecryptionError("encrypted value is not valid base64") from exc
    nonce, sealed = raw[:NONCE_BYTES], raw[NONCE_BYTES:]
    try:
        return AESGCM(keyring().key(kid)).decrypt(nonce, sealed, context.encode()).decode()
    except InvalidTag as exc:
        raise DecryptionError(
            f"cannot decrypt a value sealed with key {kid!r}: wrong key or tampered data ({context})"
        ) from exc


def blind_index(value: str, *, purpose: str) -> str:
    """A keyed hash for exact-match lookups of an encrypted value.

    Keyed with ``SPILLWAY_BLIND_INDEX_KEY`` (separate from the encryption keys) and the purpose
    (``phone``, ``national_id`` …), so equal phones match each other but not equal ID numbers, and
    nobody without the key can test guesses against the column.
    """
    key = settings.SPILLWAY_BLIND_INDEX_KEY.encode()
    message = f"{purpose}\x00{value.strip().upper()}".encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


class EncryptedTextField(models.TextField):
    """A text column stored sealed with AES-GCM; reads give the plaintext back.

    Only ``isnull`` lookups make sense on it (each encryption uses a fresh nonce); search through a
    separate blind-index column instead.
    """

    description = "Text encrypted at rest with AES-GCM"

    def _context(self) -> str:
        return f"{self.model._meta.db_table}.{self.column}"

    def from_db_value(self, value, expression, connection):
        if value is None or value == "":
            return value
        return decrypt(value, context=self._context())

    def get_prep_value(self, value):
        value = super().get_prep_value(value)
        if value is None or value == "":
            return value
        return encrypt(str(value), context=self._context())

    def get_lookup(self, lookup_name):
        if lookup_name not in {"isnull"}:
            return None
        return super().get_lookup(lookup_name)
