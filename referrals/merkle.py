"""Hashing for the consent ledger: canonical JSON, chained event hashes, RFC 6962 Merkle trees.

Pure functions with no Django in them, so an outside verifier can read exactly what Spillway
computes (``docs/compliance.md`` repeats them in a few lines of stdlib Python).
"""

from __future__ import annotations

import datetime
import hashlib
import json
from collections.abc import Sequence
from typing import Any

GENESIS_HASH = "0" * 64


def canonical_json(value: Any) -> bytes:
    """UTF-8 JSON with sorted keys and no whitespace: the same bytes for the same content."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def utc_iso(moment: datetime.datetime) -> str:
    """``2026-11-28T02:14:55.000000Z``: UTC with microseconds, one spelling per instant."""
    if moment.tzinfo is None:
        raise ValueError("ledger times must be timezone-aware")
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def event_document(
    *, consent_id: str, seq: int, type: str, occurred_at: datetime.datetime, payload: dict, prev_hash: str
) -> dict:
    """The exact fields an event's hash covers."""
    return {
        "consent_id": str(consent_id),
        "seq": seq,
        "type": type,
        "occurred_at": utc_iso(occurred_at),
        "payload": payload,
        "prev_hash": prev_hash,
    }


def event_hash(document: dict) -> str:
    """SHA-256 (hex) of the canonical JSON of an event document."""
    return hashlib.sha256(canonical_json(document)).hexdigest()


def _leaf(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two smaller than ``n`` (RFC 6962 §2.1)."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def merkle_root(leaves: Sequence[bytes]) -> str:
    """RFC 6962 Merkle Tree Hash (hex) of the leaf data (here: each event's 32-byte hash)."""
    return _mth(list(leaves)).hex()


def _mth(leaves: list[bytes]) -> bytes:
    if not leaves:
        return hashlib.sha256(b"").digest()
    # Level by level, pairing neighbours and carrying an odd last node up unchanged: the same tree
    # as RFC 6962's split at the largest power of two, without recursion or list slicing.
    level = [_leaf(data) for data in leaves]
    while len(level) > 1:
        paired = [_node(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            paired.append(level[-1])
        level = paired
    return level[0]


def _fold(nodes: list[bytes]) -> bytes:
    n = len(nodes)
    if n == 1:
        return nodes[0]
    k = _split(n)
    return _node(_fold(nodes[:k]), _fold(nodes[k:]))


def inclusion_proof(leaves: Sequence[bytes], index: int) -> list[str]:
    """The audit path (hex, bottom-up) proving leaf ``index`` is in ``merkle_root(leaves)``."""
    if not 0 <= index < len(leaves):
        raise IndexError("leaf index out of range")
    hashed = [_leaf(data) for data in leaves]
    return [node.hex() for node in _path(index, hashed)]


def _path(m: int, nodes: list[bytes]) -> list[bytes]:
    n = len(nodes)
    if n == 1:
        return []
    k = _split(n)
    if m < k:
        return [*_path(m, nodes[:k]), _fold(nodes[k:])]
    return [*_path(m - k, nodes[k:]), _fold(nodes[:k])]


def verify_inclusion(leaf: bytes, index: int, size: int, proof: Sequence[str], root: str) -> bool:
    """Check an audit path (RFC 9162 §2.1.3.2 algorithm) against a root."""
    if not 0 <= index < size:
        return False
    fn, sn = index, size - 1
    current = _leaf(leaf)
    for step in proof:
        sibling = bytes.fromhex(step)
        if sn == 0:
            return False
        if fn % 2 == 1 or fn == sn:
            current = _node(sibling, current)
            if fn % 2 == 0:
                while fn % 2 == 0 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            current = _node(current, sibling)
        fn >>= 1
        sn >>= 1
    return sn == 0 and current.hex() == root
