"""The cast, the service gates (PostgreSQL, Redis, Chromium) and API clients."""

from __future__ import annotations

import os
import shutil
import socket

import pytest
from django.conf import settings as django_settings
from django.db import connection
from rest_framework.test import APIClient

from tests.factories import UserFactory
from tests.signin import TwoFactorClient

REQUIRE_SERVICES = os.environ.get("REQUIRE_SERVICES", "").lower() in {"1", "true", "yes"}

# Transactional tests empty the database between tests; the ledger's triggers would refuse that.
# (See referrals/management/commands/flush.py: off everywhere but here.)
django_settings.SPILLWAY_ALLOW_LEDGER_FLUSH = True


def _unavailable(reason: str) -> None:
    """Skip with a clear message, or fail when the run promised the services are there."""
    if REQUIRE_SERVICES:
        pytest.fail(f"REQUIRE_SERVICES=1 but {reason}", pytrace=False)
    pytest.skip(reason)


def redis_url() -> str:
    return os.environ.get("REDIS_URL") or os.environ.get("CELERY_BROKER_URL", "").strip() or "redis://127.0.0.1:6379/0"


def _redis_reachable() -> bool:
    url = redis_url()
    if not url.startswith("redis://"):
        return False
    hostport = url[len("redis://") :].split("/")[0].split("@")[-1]
    host, _, port = hostport.partition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port or 6379)), timeout=1):
            return True
    except OSError:
        return False


def chromium_path() -> str | None:
    path = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
    return path if shutil.which(path) else None


def pytest_runtest_setup(item):
    if item.get_closest_marker("postgres") and connection.vendor != "postgresql":
        _unavailable("this test needs PostgreSQL: set DATABASE_URL=postgres://…")
    if item.get_closest_marker("redis") and not _redis_reachable():
        _unavailable(f"this test needs Redis at {redis_url()}")
    if item.get_closest_marker("browser") and chromium_path() is None:
        _unavailable("this test needs Chromium (apt-get install chromium fonts-wqy-microhei)")


@pytest.fixture
def compliance_officer(db):
    return UserFactory(username="compliance", roles=["compliance_officer"])


@pytest.fixture
def second_compliance_officer(db):
    return UserFactory(username="compliance2", roles=["compliance_officer"])


@pytest.fixture
def partnership_manager(db):
    return UserFactory(username="partnerships", roles=["partnership_manager"])


@pytest.fixture
def operations_user(db):
    return UserFactory(username="operations", roles=["operations"])


@pytest.fixture
def finance_user(db):
    return UserFactory(username="finance", roles=["finance"])


@pytest.fixture
def auditor(db):
    return UserFactory(username="auditor", roles=["auditor"])


@pytest.fixture
def origination(db):
    return UserFactory(username="origination", roles=["origination"], is_staff=False)


@pytest.fixture
def outsider(db):
    """Logged in, but in no role."""
    return UserFactory(username="outsider", is_staff=False)


@pytest.fixture
def cast(compliance_officer, partnership_manager, operations_user, finance_user, auditor, origination, outsider):
    return {
        "compliance_officer": compliance_officer,
        "partnership_manager": partnership_manager,
        "operations": operations_user,
        "finance": finance_user,
        "auditor": auditor,
        "origination": origination,
        "outsider": outsider,
    }


@pytest.fixture
def client():
    """pytest-django's ``client``, whose ``force_login`` signs in with both factors (tests.signin)."""
    return TwoFactorClient()


@pytest.fixture
def api():
    """``api(user)`` → an APIClient authenticated with that user's DRF token."""
    from rest_framework.authtoken.models import Token

    def make(user=None):
        client = APIClient()
        if user is not None:
            token, _ = Token.objects.get_or_create(user=user)
            client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
        return client

    return make


@pytest.fixture
def page_queries(django_assert_max_num_queries):
    """``django_assert_max_num_queries`` for an admin page, with the one query PostgreSQL adds.

    A changelist's count there starts with the planner's row estimate for the table
    (``EstimatedCountPaginator``: ``reltuples`` from ``pg_class``) before a bounded count; SQLite has
    no estimate to ask for. Budgets are written for SQLite.
    """
    from django.db import connection

    extra = 1 if connection.vendor == "postgresql" else 0
    return lambda budget: django_assert_max_num_queries(budget + extra)


@pytest.fixture(autouse=True)
def _fast_password_hasher(settings):
    """Real hashing costs ~0.3 s per user; tests create many users."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def _checkpoint_dir(settings, tmp_path):
    """Each test writes its ledger checkpoint files (and its jobs' files) to its own folder."""
    settings.SPILLWAY_CHECKPOINT_DIR = tmp_path / "checkpoints"
    settings.SPILLWAY_JOB_DIR = tmp_path / "jobs"  # background jobs' files (evidence exports) too


# --- browser tests (Playwright with Debian's Chromium; see docs in design/browser-tests.md) --------
BROWSER_FIXTURES = {"page", "context", "new_context", "browser", "launch_browser", "browser_type", "playwright"}


def pytest_collection_modifyitems(config, items):
    """Any test that drives a browser gets the ``browser`` marker (and so the Chromium gate)."""
    for item in items:
        if BROWSER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.browser)


@pytest.fixture(scope="session")
def playwright():
    """pytest-playwright's fixture, plus DJANGO_ALLOW_ASYNC_UNSAFE for as long as it lives.

    Playwright's sync API keeps an event loop marked as running in the main thread while it is
    started, and Django then refuses every ORM call in that thread — in tests, fixtures and the
    database flush after them. Setting the variable only around browser tests does not work.
    """
    from playwright.sync_api import sync_playwright

    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    started = sync_playwright().start()
    try:
        yield started
    finally:
        started.stop()
        if previous is None:
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


@pytest.fixture(scope="session")
def browser_type_launch_args(pytestconfig):
    """Debian's Chromium, never a downloaded one; no calls to hosts this machine cannot reach."""
    return {
        "executable_path": chromium_path() or os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium"),
        "headless": not pytestconfig.getoption("--headed"),
        "args": [
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-quic",
            "--no-first-run",
        ],
    }


@pytest.fixture(scope="session")
def browser_context_args(browser_context_args):
    """Chinese UI: headless Chromium would otherwise send ``Accept-Language: en-US``."""
    return {**browser_context_args, "locale": "zh-CN", "accept_downloads": True}


@pytest.fixture(scope="session")
def base_url():
    """No base URL (tests use ``live_server.url``); pytest-playwright's own fallback warns under pytest 9."""
    return None


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup, django_db_blocker):
    """pytest-django's test database, and at the end of the session, on PostgreSQL, the sessions
    still connected to it are named and ended before it is dropped (a worker process or a thread
    of some test that has not let go would otherwise make the drop fail). What was left is printed:
    a leak to fix, not to hide."""
    yield
    with django_db_blocker.unblock():
        if connection.vendor != "postgresql":
            return
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pid, application_name, state, left(query, 200) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            left = cursor.fetchall()
            for pid, application, state, query in left:
                print(f"\n[test database] session {pid} ({application or '?'}, {state}) still open: {query}")
                cursor.execute("SELECT pg_terminate_backend(%s)", [pid])


@pytest.fixture(autouse=True)
def csp_violations(request):
    """For browser tests (the ``page`` fixture): what Chromium's console reports about the
    Content-Security-Policy. Any report fails the test at teardown: a page whose script or style
    the policy refused is broken for real users, whatever the test itself checked."""
    reports: list[str] = []
    own_argument = "page" in getattr(getattr(request.node, "callspec", None), "params", {})  # not Playwright's
    if "page" not in request.fixturenames or own_argument:
        yield reports
        return

    def record(message):
        if "Content Security Policy" in message.text:
            reports.append(message.text)

    # The page's whole context: popups and new tabs the test opens from it are watched too.
    request.getfixturevalue("page").context.on("console", record)
    yield reports
    if reports:
        pytest.fail("Content-Security-Policy violations:\n" + "\n".join(reports), pytrace=False)
