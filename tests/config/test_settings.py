"""Configuration: strict environment helpers and the production guard."""

from __future__ import annotations

import pytest
from django.core.exceptions import ImproperlyConfigured

from config import checks
from config.env import env_bool, env_int, env_list, env_str

GOOD_KEYS = "prod1:" + "cHJvZHVjdGlvbi1vbmx5LWtleS0zMi1ieXRlcy1sb24"  # 32 bytes


@pytest.mark.parametrize(("raw", "expected"), [("true", True), ("FALSE", False), ("1", True), ("off", False)])
def test_env_bool_accepts_true_and_false(monkeypatch, raw, expected):
    monkeypatch.setenv("SPILLWAY_TEST_FLAG", raw)
    assert env_bool("SPILLWAY_TEST_FLAG", not expected) is expected


def test_env_bool_rejects_anything_else(monkeypatch):
    monkeypatch.setenv("SPILLWAY_TEST_FLAG", "maybe")
    with pytest.raises(ImproperlyConfigured, match="SPILLWAY_TEST_FLAG"):
        env_bool("SPILLWAY_TEST_FLAG", False)


def test_env_bool_default_when_unset(monkeypatch):
    monkeypatch.delenv("SPILLWAY_TEST_FLAG", raising=False)
    assert env_bool("SPILLWAY_TEST_FLAG", True) is True


def test_env_int_is_strict(monkeypatch):
    monkeypatch.setenv("SPILLWAY_TEST_INT", "ten")
    with pytest.raises(ImproperlyConfigured):
        env_int("SPILLWAY_TEST_INT", 1)
    monkeypatch.setenv("SPILLWAY_TEST_INT", "0")
    with pytest.raises(ImproperlyConfigured):
        env_int("SPILLWAY_TEST_INT", 1, minimum=1)


def test_secret_read_from_name_file(monkeypatch, tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("from-a-file\n")
    monkeypatch.delenv("SPILLWAY_TEST_SECRET", raising=False)
    monkeypatch.setenv("SPILLWAY_TEST_SECRET_FILE", str(secret))
    assert env_str("SPILLWAY_TEST_SECRET", "default") == "from-a-file"


def test_env_list(monkeypatch):
    monkeypatch.setenv("SPILLWAY_TEST_LIST", "a.example, b.example,,")
    assert env_list("SPILLWAY_TEST_LIST", []) == ["a.example", "b.example"]


def test_production_refuses_development_secrets(settings):
    settings.DEBUG = False
    errors = checks.production_secrets_check(None)
    assert {e.id for e in errors} == {"spillway.E001", "spillway.E002", "spillway.E004"}
    with pytest.raises(ImproperlyConfigured, match="Refusing to start"):
        checks.refuse_insecure_production()


def test_production_starts_with_real_secrets(settings):
    settings.DEBUG = False
    settings.SECRET_KEY = "x" * 50
    settings.SPILLWAY_ENCRYPTION_KEYS = GOOD_KEYS
    settings.SPILLWAY_BLIND_INDEX_KEY = "y" * 40
    assert checks.production_secrets_check(None) == []
    checks.refuse_insecure_production()


def test_production_refuses_dev_key_kept_for_decryption(settings):
    settings.DEBUG = False
    settings.SECRET_KEY = "x" * 50
    settings.SPILLWAY_ENCRYPTION_KEYS = f"{GOOD_KEYS},{settings.DEV_ENCRYPTION_KEYS}"
    settings.SPILLWAY_BLIND_INDEX_KEY = "y" * 40
    assert [e.id for e in checks.production_secrets_check(None)] == ["spillway.E002"]


def test_visibility_timeout_must_outlast_task_time_limit(settings):
    settings.CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 100}
    settings.CELERY_TASK_TIME_LIMIT = 300
    assert [e.id for e in checks.celery_visibility_check(None)] == ["spillway.E010"]
    settings.CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 3600}
    assert checks.celery_visibility_check(None) == []


def test_language_and_time_zone_defaults(settings):
    assert settings.LANGUAGE_CODE == "zh-hans"
    assert settings.TIME_ZONE == "Asia/Shanghai"
    assert settings.USE_TZ is True
    assert "django.middleware.locale.LocaleMiddleware" in settings.MIDDLEWARE
