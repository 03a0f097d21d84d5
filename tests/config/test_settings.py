"""Configuration: strict environment helpers and the production guard."""

from __future__ import annotations

import base64
import os
import secrets
import subprocess
import sys
from pathlib import Path

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
    # Settlement runs and the reclaim scan have a longer limit of their own: it counts too.
    settings.CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 1000}
    settings.SPILLWAY_LONG_TASK_TIME_LIMIT = 1800
    assert [e.id for e in checks.celery_visibility_check(None)] == ["spillway.E010"]


def test_language_and_time_zone_defaults(settings):
    assert settings.LANGUAGE_CODE == "zh-hans"
    assert settings.TIME_ZONE == "Asia/Shanghai"
    assert settings.USE_TZ is True
    assert "django.middleware.locale.LocaleMiddleware" in settings.MIDDLEWARE


ROOT = Path(__file__).resolve().parents[2]


def production_environment(tmp_path: Path, **overrides: str) -> dict[str, str]:
    """This process's environment with production's values: DEBUG off, fresh random secrets."""
    # Only the basics of this process's environment: not its service URLs, nor what a test set
    # (the browser tests' DJANGO_ALLOW_ASYNC_UNSAFE, which the deploy check refuses).
    environment = {key: os.environ[key] for key in ("PATH", "HOME", "LANG", "TMPDIR") if key in os.environ}
    environment.update(
        DEBUG="false",
        SECRET_KEY=secrets.token_urlsafe(50),
        SPILLWAY_ENCRYPTION_KEYS="ci:" + base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("="),
        SPILLWAY_BLIND_INDEX_KEY=secrets.token_urlsafe(48),
        ALLOWED_HOSTS="spillway.example",
        CSRF_TRUSTED_ORIGINS="https://spillway.example",
        DATABASE_URL="postgres://spillway@db.example:5432/spillway",  # never connected to by check
        CELERY_BROKER_URL="redis://redis.example:6379/0",
        CACHE_URL="redis://redis.example:6379/1",
        SPILLWAY_VAR_DIR=str(tmp_path),
        DJANGO_SETTINGS_MODULE="config.settings",
    )
    environment.update(overrides)
    return environment


def manage(environment: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(  # noqa: S603 — our own interpreter and arguments
        [sys.executable, "manage.py", *args], cwd=ROOT, env=environment, capture_output=True, text=True, timeout=120
    )


def test_deploy_check_is_clean_in_production(tmp_path):
    run = manage(production_environment(tmp_path), "check", "--deploy", "--fail-level", "WARNING")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "no issues" in run.stdout


def test_deploy_check_fails_without_hsts(tmp_path):
    """The check above is not vacuous: turning a protection off makes it fail."""
    run = manage(
        production_environment(tmp_path, SECURE_HSTS_SECONDS="0"), "check", "--deploy", "--fail-level", "WARNING"
    )
    assert run.returncode != 0
    assert "security.W004" in run.stdout + run.stderr


PRINT_SETTINGS = (
    "import django; django.setup(); from django.conf import settings as s; "
    "print(s.SECURE_SSL_REDIRECT, s.SECURE_PROXY_SSL_HEADER, s.SECURE_HSTS_SECONDS, s.SECURE_HSTS_PRELOAD, "
    "s.SECURE_REFERRER_POLICY, s.X_FRAME_OPTIONS, s.SECURE_CROSS_ORIGIN_OPENER_POLICY, s.SESSION_COOKIE_AGE)"
)


def test_production_hardening_follows_the_environment(tmp_path):
    def printed(**overrides: str) -> str:
        run = subprocess.run(  # noqa: S603
            [sys.executable, "-c", PRINT_SETTINGS],
            cwd=ROOT,
            env=production_environment(tmp_path, **overrides),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert run.returncode == 0, run.stderr
        return run.stdout.strip()

    assert printed() == "True None 31536000 True same-origin DENY same-origin 28800"
    assert printed(
        SECURE_SSL_REDIRECT="false",
        SECURE_PROXY_SSL_HEADER="true",
        SECURE_HSTS_PRELOAD="false",
        SESSION_COOKIE_AGE="3600",
    ) == ("False ('HTTP_X_FORWARDED_PROTO', 'https') 31536000 False same-origin DENY same-origin 3600")


def test_sessions_expire_absolutely_or_when_the_browser_closes(settings):
    assert settings.SESSION_COOKIE_AGE == 8 * 3600
    assert settings.SESSION_EXPIRE_AT_BROWSER_CLOSE is True
    assert settings.SESSION_SAVE_EVERY_REQUEST is False


def test_throttle_rates_are_checked_at_start(monkeypatch):
    from config.settings import throttle_rate

    monkeypatch.setenv("SPILLWAY_TEST_RATE", "100/min")
    assert throttle_rate("SPILLWAY_TEST_RATE", "1/s") == "100/min"
    monkeypatch.setenv("SPILLWAY_TEST_RATE", "lots")
    with pytest.raises(ImproperlyConfigured, match="SPILLWAY_TEST_RATE"):
        throttle_rate("SPILLWAY_TEST_RATE", "1/s")
