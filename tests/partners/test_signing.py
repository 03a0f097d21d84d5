"""Partner protocol v1 signing and phone hashing (partner-protocol.md, "Signing" and "Probe")."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from partners import signing

SECRET = "s3cret-a"
BODY = b'{"referral_id": "0b7f3c1e-6f3a-4c1b-9f2e-1d2c3b4a5f60", "phone_hash": "ab"}'
NOW = 1_796_000_000


def signed(body: bytes = BODY, secret: str = SECRET, timestamp: int = NOW) -> dict[str, str]:
    return signing.sign(secret, body, timestamp=timestamp)


def test_signature_is_hmac_sha256_over_timestamp_dot_body():
    headers = signed()

    expected = hmac.new(SECRET.encode(), f"{NOW}.".encode() + BODY, hashlib.sha256).hexdigest()
    assert headers == {"X-Spillway-Timestamp": str(NOW), "X-Spillway-Signature": f"sha256={expected}"}


def test_signed_request_verifies_and_returns_its_timestamp():
    assert signing.verify(SECRET, signed(), BODY, now=NOW + 10) == NOW


def test_sign_uses_the_current_time_by_default():
    headers = signing.sign(SECRET, BODY)

    assert signing.verify(SECRET, headers, BODY) == int(headers["X-Spillway-Timestamp"])


def test_header_names_are_case_insensitive():
    headers = {name.lower(): value for name, value in signed().items()}

    assert signing.verify(SECRET, headers, BODY, now=NOW) == NOW


def test_wrong_secret_is_rejected():
    with pytest.raises(signing.SignatureError) as info:
        signing.verify("another-partners-secret", signed(), BODY, now=NOW)
    assert info.value.reason == "wrong"


def test_tampered_body_is_rejected():
    tampered = BODY.replace(b'"ab"', b'"ac"')

    with pytest.raises(signing.SignatureError) as info:
        signing.verify(SECRET, signed(), tampered, now=NOW)
    assert info.value.reason == "wrong"


def test_changed_timestamp_is_rejected_even_within_the_window():
    headers = {**signed(), "X-Spillway-Timestamp": str(NOW + 1)}

    with pytest.raises(signing.SignatureError) as info:
        signing.verify(SECRET, headers, BODY, now=NOW)
    assert info.value.reason == "wrong"


@pytest.mark.parametrize("offset", [300, -300, 0])
def test_timestamp_up_to_300_seconds_away_either_way_is_accepted(offset):
    assert signing.verify(SECRET, signed(timestamp=NOW + offset), BODY, now=NOW) == NOW + offset


@pytest.mark.parametrize("offset", [-301, 301, -3600])
def test_timestamp_more_than_300_seconds_away_either_way_is_stale(offset):
    """-301: an old (possibly replayed) request; +301: a sender whose clock runs ahead."""
    with pytest.raises(signing.SignatureError) as info:
        signing.verify(SECRET, signed(timestamp=NOW + offset), BODY, now=NOW)
    assert info.value.reason == "stale"


def test_tolerance_is_configurable():
    with pytest.raises(signing.SignatureError) as info:
        signing.verify(SECRET, signed(timestamp=NOW - 31), BODY, now=NOW, tolerance=30)
    assert info.value.reason == "stale"


@pytest.mark.parametrize("missing", ["X-Spillway-Timestamp", "X-Spillway-Signature"])
def test_missing_header_is_rejected(missing):
    headers = {name: value for name, value in signed().items() if name != missing}

    with pytest.raises(signing.SignatureError) as info:
        signing.verify(SECRET, headers, BODY, now=NOW)
    assert info.value.reason == "missing"
    assert missing in str(info.value)


def test_no_headers_at_all_is_missing():
    with pytest.raises(signing.SignatureError) as info:
        signing.verify(SECRET, {}, BODY, now=NOW)
    assert info.value.reason == "missing"


@pytest.mark.parametrize(
    ("timestamp", "signature"),
    [
        ("yesterday", None),
        ("1796000000.5", None),
        (None, "md5=abc"),
        (None, "sha256=" + "z" * 64),
        (None, "sha256=" + "a" * 63),
    ],
)
def test_malformed_headers_are_rejected(timestamp, signature):
    headers = signed()
    if timestamp is not None:
        headers["X-Spillway-Timestamp"] = timestamp
    if signature is not None:
        headers["X-Spillway-Signature"] = signature

    with pytest.raises(signing.SignatureError) as info:
        signing.verify(SECRET, headers, BODY, now=NOW)
    assert info.value.reason == "malformed"


def test_verify_compares_in_constant_time(monkeypatch):
    calls = []
    real = hmac.compare_digest
    monkeypatch.setattr(signing.hmac, "compare_digest", lambda a, b: calls.append((a, b)) or real(a, b))

    signing.verify(SECRET, signed(), BODY, now=NOW)

    assert len(calls) == 1


def test_empty_secret_cannot_sign():
    with pytest.raises(ValueError, match="empty"):
        signing.sign("", BODY)


# --- phone hashes ----------------------------------------------------------------------------
PHONE = "13812345678"


def test_hmac_sha256_phone_hash_is_keyed_with_the_partner_secret():
    value = signing.phone_hash(PHONE, "hmac_sha256", SECRET)

    assert value == hmac.new(SECRET.encode(), PHONE.encode(), hashlib.sha256).hexdigest()
    assert value != signing.phone_hash(PHONE, "hmac_sha256", "another-partners-secret")


def test_keyed_hash_differs_from_plain_sha256():
    assert signing.phone_hash(PHONE, "hmac_sha256", SECRET) != signing.phone_hash(PHONE, "sha256", SECRET)


def test_legacy_sha256_and_md5_ignore_the_secret():
    assert signing.phone_hash(PHONE, "sha256", SECRET) == hashlib.sha256(PHONE.encode()).hexdigest()
    assert signing.phone_hash(PHONE, "sha256", "other") == signing.phone_hash(PHONE, "sha256", SECRET)
    assert signing.phone_hash(PHONE, "md5", SECRET) == hashlib.md5(PHONE.encode()).hexdigest()  # noqa: S324
    assert len(signing.phone_hash(PHONE, "md5", SECRET)) == 32


@pytest.mark.parametrize("written", ["+86 138 1234 5678", "0086-13812345678", " 13812345678 "])
def test_phone_is_normalised_to_eleven_digits_before_hashing(written):
    assert signing.phone_hash(written, "hmac_sha256", SECRET) == signing.phone_hash(PHONE, "hmac_sha256", SECRET)


@pytest.mark.parametrize("phone", ["1381234567", "23812345678", "021-12345678", ""])
def test_not_a_mainland_mobile_number_cannot_be_hashed(phone):
    with pytest.raises(ValueError, match="11-digit"):
        signing.phone_hash(phone, "sha256", SECRET)


def test_unknown_hash_algorithm_is_refused():
    with pytest.raises(ValueError, match="unknown phone hash"):
        signing.phone_hash(PHONE, "sha1", SECRET)
