"""Third-party apps speak Chinese too: ``locale/vendor`` translates what their own catalogues don't.

``locale/vendor/extract.py`` builds that catalogue. These tests extract each package's strings
again from the installed source, so an upgrade that brings new strings fails here until they are
translated; and they check that the catalogue is compiled, in use, and contradicts no translation
Django, an app or the project already has (Django merges all catalogues into one per language).
Extraction needs GNU gettext: skipped without it, unless REQUIRE_SERVICES=1.
"""

from __future__ import annotations

import gettext
import importlib.util
import re
import shutil
from pathlib import Path
from types import ModuleType

import pytest
from django.apps import apps
from django.conf import settings
from django.utils import translation

from tests.config.test_translations import REQUIRE_SERVICES, Entry, _header, _messages, _placeholders, parse_po
from tests.factories import UserFactory

BASE_DIR = Path(settings.BASE_DIR)
VENDOR_DIR = BASE_DIR / "locale" / "vendor"


def _load_extract() -> ModuleType:
    """locale/vendor/extract.py (a script in a folder that is no Python package)."""
    spec = importlib.util.spec_from_file_location("vendor_extract", VENDOR_DIR / "extract.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


extract = _load_extract()


@pytest.fixture(scope="module")
def vendor() -> dict[tuple[str | None, str], Entry]:
    assert extract.PO_PATH.is_file(), f"{extract.PO_PATH} is missing: run locale/vendor/extract.py"
    return {entry.key: entry for entry in _messages(parse_po(extract.PO_PATH))}


@pytest.fixture
def gettext_tools() -> None:
    if shutil.which("xgettext") is None or shutil.which("msgmerge") is None:
        reason = "GNU gettext (xgettext) is not installed: apt-get install gettext"
        if REQUIRE_SERVICES:
            pytest.fail(f"REQUIRE_SERVICES=1 but {reason}", pytrace=False)
        pytest.skip(reason)


def _resolved(entry: Entry) -> str:
    """What the active language's merged catalogue gives for the entry (the singular, for plurals)."""
    if entry.msgid_plural is not None:
        if entry.msgctxt is not None:
            return translation.npgettext(entry.msgctxt, entry.msgid, entry.msgid_plural, 1)
        return translation.ngettext(entry.msgid, entry.msgid_plural, 1)
    if entry.msgctxt is not None:
        return translation.pgettext(entry.msgctxt, entry.msgid)
    return translation.gettext(entry.msgid)


def _own_catalogue_keys(package: str) -> set:
    """The messages the package's own zh_Hans catalogue translates, as keys of its .mo."""
    mo = extract.own_catalogue(package)
    if mo is None:
        return set()
    with mo.open("rb") as handle:
        catalogue = gettext.GNUTranslations(handle)
    return {key for key, text in catalogue._catalog.items() if key and text}


def _mo_key(entry: Entry) -> str | tuple[str, int]:
    msgid = entry.msgid if entry.msgctxt is None else f"{entry.msgctxt}\x04{entry.msgid}"
    return msgid if entry.msgid_plural is None else (msgid, 0)


# --- the catalogue is well-formed, complete and compiled ------------------------------------------
def test_locale_paths_put_ours_first_then_the_vendor_catalogue():
    assert [Path(path) for path in settings.LOCALE_PATHS] == [BASE_DIR / "locale", VENDOR_DIR]


def test_header_and_every_entry_translated_with_its_placeholders():
    entries = parse_po(extract.PO_PATH)
    header = _header(entries)
    assert header.get("Language") == "zh_Hans"
    assert header.get("Plural-Forms", "").replace(" ", "") == "nplurals=1;plural=0;"
    messages = _messages(entries)
    assert len(messages) > 50, "the catalogue looks truncated"
    wrong = []
    for entry in messages:
        if "fuzzy" in entry.flags or not entry.msgstr or not all(entry.msgstr.values()):
            wrong.append(f"{entry}: fuzzy or untranslated")
        elif entry.msgid_plural is not None and sorted(entry.msgstr) != [0]:
            wrong.append(f"{entry}: a plural needs exactly msgstr[0] (nplurals=1)")
        elif _placeholders(entry.msgstr[0], entry.flags) != _placeholders(
            entry.msgid_plural or entry.msgid, entry.flags
        ):
            wrong.append(f"{entry}: placeholders changed in {entry.msgstr[0]!r}")
    assert not wrong, "\n".join(wrong)


def test_mo_is_compiled_from_the_current_po(vendor):
    assert extract.MO_PATH.is_file(), "django.mo is missing: run locale/vendor/extract.py"
    with extract.MO_PATH.open("rb") as handle:
        compiled = gettext.GNUTranslations(handle)._catalog
    stale = [
        f"{entry}: .mo has {compiled.get(_mo_key(entry))!r}"
        for entry in vendor.values()
        if compiled.get(_mo_key(entry)) != entry.msgstr[0]
    ]
    assert not stale, "django.mo is older than django.po: run locale/vendor/extract.py\n" + "\n".join(stale)


# --- every string of the covered packages has a translation ------------------------------------
@pytest.mark.usefixtures("gettext_tools")
@pytest.mark.parametrize("package", extract.PACKAGES)
def test_every_string_the_package_marks_is_translated(package, vendor, tmp_path):
    """Each string the installed package marks: in its own zh_Hans catalogue, or here."""
    found = _messages(parse_po(extract.extract(package, tmp_path)))
    assert found, f"makemessages found no strings in {package}: is the copy complete?"
    own = _own_catalogue_keys(package)
    missing = []
    for entry in found:
        if _mo_key(entry) in own:
            continue
        known = vendor.get(entry.key)
        if known is None or not all(known.msgstr.values()):
            missing.append(str(entry).partition(": ")[2])
        elif known.msgid_plural != entry.msgid_plural:
            missing.append(f"{entry.msgid!r} (plural changed to {entry.msgid_plural!r})")
    assert not missing, (
        f"{package} has strings without a Chinese translation — run locale/vendor/extract.py and "
        "translate them in locale/vendor/zh_Hans/LC_MESSAGES/django.po:\n" + "\n".join(missing)
    )


@pytest.mark.usefixtures("gettext_tools")
def test_every_other_third_party_package_has_nothing_to_translate(tmp_path):
    """A third-party app added later, or a covered one that starts marking strings, is noticed."""
    third_party = {
        app.name.partition(".")[0]
        for app in apps.get_app_configs()
        if not app.name.startswith("django.") and Path(app.path).parent != BASE_DIR  # not Django's, not ours
    }
    unknown = third_party - set(extract.PACKAGES) - set(extract.NOTHING_TO_TRANSLATE)
    assert not unknown, f"installed apps neither covered nor known to have no strings: {sorted(unknown)}"
    marking = {}
    for package in extract.NOTHING_TO_TRANSLATE:
        found = _messages(parse_po(extract.extract(package, tmp_path)))
        if found:
            marking[package] = [entry.msgid for entry in found][:5]
    assert not marking, f"now marked for translation — add these to PACKAGES in extract.py: {marking}"


# --- the catalogue is in use, and overrides nobody ----------------------------------------------
@pytest.fixture
def _keep_active_language():
    """Requests and overrides change the thread's language: put ours back afterwards."""
    with translation.override(translation.get_language()):
        yield


@pytest.mark.usefixtures("_keep_active_language")
def test_each_entry_is_what_zh_hans_shows(vendor):
    """Not shadowed by a different translation in the project's catalogue (which comes first)."""
    with translation.override("zh-hans"):
        shadowed = [
            f"{entry}: shows {_resolved(entry)!r}" for entry in vendor.values() if _resolved(entry) != entry.msgstr[0]
        ]
    assert not shadowed, "the project's catalogue translates these differently:\n" + "\n".join(shadowed)


@pytest.mark.usefixtures("_keep_active_language")
def test_no_entry_retranslates_what_django_or_an_app_already_translates(vendor, settings):
    """Without locale/vendor, a message is either still English or translated exactly as here."""
    settings.LOCALE_PATHS = [BASE_DIR / "locale"]  # resets Django's translation caches
    with translation.override("zh-hans"):
        differ = [
            f"{entry}: elsewhere {_resolved(entry)!r}, here {entry.msgstr[0]!r}"
            for entry in vendor.values()
            if _resolved(entry) not in {entry.msgid, entry.msgstr[0]}
        ]
    assert not differ, "translate these as Django (or the app, or the project) already does:\n" + "\n".join(differ)


# --- pages -----------------------------------------------------------------------------------
@pytest.fixture
def superuser():
    return UserFactory(username="vendor-i18n-root", is_superuser=True)


@pytest.mark.django_db
@pytest.mark.usefixtures("_keep_active_language")
def test_axes_access_attempts_are_chinese(client, superuser):
    from axes.models import AccessAttempt

    AccessAttempt.objects.create(
        username="someone", ip_address="127.0.0.1", user_agent="test", http_accept="*/*", path_info="/admin/login/",
        get_data="", post_data="", failures_since_start=1,
    )  # fmt: skip
    client.force_login(superuser)

    page = client.get("/admin/axes/accessattempt/").text
    assert "<title>选择 登录尝试记录 来修改" in page
    for text in ("尝试时间", "IP 地址", "用户代理", "登录失败次数", "次剩余尝试机会", "以 已锁定"):
        assert text in page, text

    english = client.get("/admin/axes/accessattempt/", HTTP_ACCEPT_LANGUAGE="en").text
    assert "Select access attempt to change" in english


@pytest.mark.django_db
@pytest.mark.usefixtures("_keep_active_language")
def test_celery_beat_strings_its_own_catalogue_misses_are_chinese(client, superuser):
    client.force_login(superuser)
    page = client.get("/admin/django_celery_beat/periodictask/add/").text
    for heading in ("时间表", "参数", "执行选项"):  # fieldsets
        assert re.search(rf"<h2[^>]*>\s*{heading}\s*</h2>", page), heading
    assert "Execution Options" not in page


@pytest.mark.django_db
@pytest.mark.usefixtures("_keep_active_language")
def test_django_otp_messages_are_chinese():
    from django_otp.forms import OTPTokenForm

    from tests.signin import authenticator

    user = UserFactory(username="vendor-i18n-otp")
    device = authenticator(user)
    with translation.override("zh-hans"):
        form = OTPTokenForm(user, data={"otp_device": device.persistent_id, "otp_token": "not-a-code"})
        assert form.errors["__all__"] == ["动态验证码无效，请确认输入无误。"]
