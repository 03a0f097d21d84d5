"""Encryption at rest: round trip, wrong key fails loudly, rotation, blind indexes."""

from __future__ import annotations

import io

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.db import connection

from config import crypto
from partners.models import Partner
from tests.factories import PartnerFactory

KEY_A = "ka:" + "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUE"  # 32 bytes of "A"
KEY_B = "kb:" + "QkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkI"  # 32 bytes of "B"


def raw_secret(partner: Partner) -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT api_secret FROM partners_partner WHERE id = %s", [partner.pk])
        return cursor.fetchone()[0]


def test_encrypted_field_round_trips_and_stores_no_plaintext(db):
    partner = PartnerFactory(code="PARTNER_X", api_secret="s3cret-value-x")
    stored = raw_secret(partner)
    assert "s3cret" not in stored
    assert stored.startswith("enc1:")
    assert Partner.objects.get(pk=partner.pk).api_secret == "s3cret-value-x"


def test_same_plaintext_encrypts_differently_each_time(settings):
    assert crypto.encrypt("x", context="t.c") != crypto.encrypt("x", context="t.c")


def test_ciphertext_moved_to_another_column_does_not_open(settings):
    sealed = crypto.encrypt("13812345678", context="referrals_applicant.phone")
    with pytest.raises(crypto.DecryptionError):
        crypto.decrypt(sealed, context="referrals_applicant.name")


def test_wrong_key_fails_loudly(db, settings):
    settings.SPILLWAY_ENCRYPTION_KEYS = KEY_A
    partner = PartnerFactory(code="PARTNER_Y")
    # Same key id, different key material: the tag check must fail, not return garbage.
    settings.SPILLWAY_ENCRYPTION_KEYS = "ka:" + KEY_B.split(":")[1]
    with pytest.raises(crypto.DecryptionError, match="wrong key"):
        Partner.objects.get(pk=partner.pk)


def test_unknown_key_id_fails_loudly(db, settings):
    settings.SPILLWAY_ENCRYPTION_KEYS = KEY_A
    partner = PartnerFactory(code="PARTNER_Z")
    settings.SPILLWAY_ENCRYPTION_KEYS = KEY_B
    with pytest.raises(crypto.DecryptionError, match="no encryption key"):
        Partner.objects.get(pk=partner.pk)


def test_rotation_old_keys_decrypt_and_command_moves_rows_to_newest(db, settings):
    settings.SPILLWAY_ENCRYPTION_KEYS = KEY_A
    partners = [PartnerFactory(code=f"ROT_{i}", api_secret=f"secret-{i}") for i in range(3)]
    assert {crypto.key_id_of(raw_secret(p)) for p in partners} == {"ka"}

    settings.SPILLWAY_ENCRYPTION_KEYS = f"{KEY_B},{KEY_A}"  # new key first, old still decrypts
    assert Partner.objects.get(pk=partners[0].pk).api_secret == "secret-0"

    call_command("reencrypt_fields", stdout=io.StringIO())
    assert {crypto.key_id_of(raw_secret(p)) for p in partners} == {"kb"}

    settings.SPILLWAY_ENCRYPTION_KEYS = KEY_B  # the old key can now be retired
    assert [Partner.objects.get(pk=p.pk).api_secret for p in partners] == ["secret-0", "secret-1", "secret-2"]


def test_reencrypt_dry_run_writes_nothing(db, settings):
    settings.SPILLWAY_ENCRYPTION_KEYS = KEY_A
    partner = PartnerFactory(code="DRY_1")
    before = raw_secret(partner)
    settings.SPILLWAY_ENCRYPTION_KEYS = f"{KEY_B},{KEY_A}"
    call_command("reencrypt_fields", "--dry-run", stdout=io.StringIO())
    assert raw_secret(partner) == before


@pytest.mark.parametrize(
    "spec",
    ["", "nokey", "k1:c2hvcnQ", f"{KEY_A},{KEY_A}", "k1:not*base64*at*all*!!!!!!!!!!!!!!!!!!!!!"],
)
def test_bad_key_configuration_is_rejected(spec):
    with pytest.raises(ImproperlyConfigured):
        crypto.parse_keys(spec)


def test_encrypted_field_refuses_exact_lookups(db):
    with pytest.raises(Exception, match="Unsupported lookup"):
        list(Partner.objects.filter(api_secret="x"))


def test_blind_index_is_keyed_normalised_and_purpose_bound(settings):
    a = crypto.blind_index("11010519491231002x", purpose="national_id")
    assert a == crypto.blind_index(" 11010519491231002X ", purpose="national_id")
    assert a != crypto.blind_index("11010519491231002X", purpose="phone")
    settings.SPILLWAY_BLIND_INDEX_KEY = "another-blind-index-key-for-this-test"
    assert a != crypto.blind_index("11010519491231002X", purpose="national_id")
