#!/usr/bin/env python3
"""Verify a Spillway evidence bundle with nothing but the Python standard library.

    python3 verify_evidence.py evidence-APP-2026-000123.json checkpoint-0000000001-….json [more checkpoint files]

The checkpoint files must come from the lender's write-once checkpoint storage, not from the
bundle (the bundle's copies are only for convenience). Exit status 0 means every check passed.
"""

from __future__ import annotations

import hashlib
import json
import sys


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def canonical(value) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def inclusion_ok(leaf: bytes, index: int, size: int, proof: list[str], root: str) -> bool:
    """RFC 9162 §2.1.3.2: recompute the root from a leaf and its audit path."""
    if not 0 <= index < size:
        return False
    fn, sn = index, size - 1
    current = hashlib.sha256(b"\x00" + leaf).digest()
    for step in proof:
        sibling = bytes.fromhex(step)
        if sn == 0:
            return False
        if fn % 2 == 1 or fn == sn:
            current = node(sibling, current)
            while fn % 2 == 0 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            current = node(current, sibling)
        fn >>= 1
        sn >>= 1
    return sn == 0 and current.hex() == root


def main(argv: list[str]) -> int:
    with open(argv[1], encoding="utf-8") as handle:
        bundle = json.load(handle)
    roots = {}
    for name in argv[2:]:
        with open(name, encoding="utf-8") as handle:
            checkpoint = json.load(handle)
        roots[checkpoint["checkpoint"]] = checkpoint["root"]
    failures = []

    for text in bundle["consent_texts"]:
        if sha256_hex(text["body"].encode("utf-8")) != text["sha256"]:
            failures.append(f"consent text {text['code']}: body does not match its SHA-256")

    for consent in bundle["consents"]:
        texts = {t["code"]: t["sha256"] for t in bundle["consent_texts"]}
        if texts.get(consent["text_code"]) != consent["text_sha256"]:
            failures.append(f"consent {consent['id']}: text hash differs from the text shown")
        previous = "0" * 64
        for expected_seq, entry in enumerate(consent["events"], start=1):
            document = entry["document"]
            where = f"consent {consent['id']} event #{document['seq']}"
            if document["seq"] != expected_seq:
                failures.append(f"{where}: expected sequence {expected_seq}")
            if document["prev_hash"] != previous:
                failures.append(f"{where}: does not link to the previous event")
            digest = sha256_hex(canonical(document))
            if digest != entry["hash"]:
                failures.append(f"{where}: hash does not match its content")
            previous = entry["hash"]
            checkpoint = entry.get("checkpoint")
            if checkpoint is None:
                print(f"{where}: not sealed by a checkpoint yet")
            elif checkpoint not in roots:
                failures.append(f"{where}: checkpoint #{checkpoint} file was not supplied")
            elif not inclusion_ok(bytes.fromhex(digest), entry["leaf_index"], entry["tree_size"],
                                  entry["inclusion_proof"], roots[checkpoint]):  # fmt: skip
                failures.append(f"{where}: not included in checkpoint #{checkpoint}'s root")

    for failure in failures:
        print("FAIL", failure)
    if not failures:
        events = sum(len(c["events"]) for c in bundle["consents"])
        print(f"OK: {len(bundle['consents'])} consent(s), {events} event(s) verified")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
