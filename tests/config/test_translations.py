"""The Simplified Chinese catalogue: complete, compiled, up to date with the source, and in use.

The .po and the .mo are both kept in git (a machine without GNU gettext still shows Chinese), so
these tests read them with the standard library only. The up-to-date check runs ``makemessages``
on a copy of the source and needs xgettext: it is skipped without it, unless REQUIRE_SERVICES=1.
"""

from __future__ import annotations

import dataclasses
import gettext
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings
from django.utils import translation

from tests.factories import UserFactory

LOCALE_DIR = Path(settings.BASE_DIR) / "locale" / "zh_Hans" / "LC_MESSAGES"
PO_PATH = LOCALE_DIR / "django.po"
MO_PATH = LOCALE_DIR / "django.mo"
REQUIRE_SERVICES = os.environ.get("REQUIRE_SERVICES", "").lower() in {"1", "true", "yes"}
MAKEMESSAGES = ["makemessages", "-l", "zh_Hans", "--ignore=.venv", "--ignore=var", "--ignore=tests", "--no-location"]
# Not source: left out of the copy that makemessages reads.
NOT_SOURCE = {".git", ".venv", "var", "tests", "locale", "node_modules", "__pycache__", ".ruff_cache", ".pytest_cache"}


# --- a tiny .po reader ------------------------------------------------------------------------
@dataclasses.dataclass
class Entry:
    line: int
    msgid: str = ""
    msgid_plural: str | None = None
    msgctxt: str | None = None
    msgstr: dict[int, str] = dataclasses.field(default_factory=dict)
    flags: set[str] = dataclasses.field(default_factory=set)

    @property
    def key(self) -> tuple[str | None, str]:
        return (self.msgctxt, self.msgid)

    def __str__(self) -> str:
        context = f" (context {self.msgctxt!r})" if self.msgctxt is not None else ""
        return f"line {self.line}: {self.msgid!r}{context}"


_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\", "a": "\a", "b": "\b", "f": "\f", "v": "\v"}
_KEYWORD = re.compile(r'^(msgctxt|msgid_plural|msgid|msgstr(?:\[(\d+)\])?)\s+(".*")\s*$')


def _unquote(quoted: str) -> str:
    return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), m.group(1)), quoted.strip()[1:-1])


def parse_po(path: Path) -> list[Entry]:
    """Every entry of a .po file, the header (msgid "") first; obsolete (#~) entries are left out."""
    entries: list[Entry] = []
    entry: Entry | None = None
    target: tuple[str, int | None] | None = None  # the field continuation lines ("...") extend

    def finish() -> None:
        nonlocal entry, target
        if entry is not None and target is not None:
            entries.append(entry)
        entry, target = None, None

    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.strip()
        if not line:
            finish()
            continue
        if line.startswith("#~"):
            continue
        if line.startswith("#"):
            if target is not None and target[0] == "msgstr":  # a comment starts the next entry
                finish()
            if entry is None:
                entry = Entry(line=number)
            if line.startswith("#,"):
                entry.flags.update(flag.strip() for flag in line[2:].split(",") if flag.strip())
            continue
        match = _KEYWORD.match(line)
        if match:
            keyword, index, quoted = match.groups()
            if keyword in {"msgctxt", "msgid"} and target is not None and target[0] == "msgstr":
                finish()  # entries not separated by a blank line
            if entry is None:
                entry = Entry(line=number)
            name = "msgstr" if keyword.startswith("msgstr") else keyword
            target = (name, int(index) if index is not None else (0 if name == "msgstr" else None))
            _extend(entry, target, _unquote(quoted))
        elif line.startswith('"') and entry is not None and target is not None:
            _extend(entry, target, _unquote(line))
        else:
            raise AssertionError(f"{path.name} line {number}: cannot read {raw!r}")
    finish()
    return entries


def _extend(entry: Entry, target: tuple[str, int | None], text: str) -> None:
    name, index = target
    if name == "msgstr":
        entry.msgstr[index] = entry.msgstr.get(index, "") + text
    else:
        setattr(entry, name, (getattr(entry, name) or "") + text)


def _header(entries: list[Entry]) -> dict[str, str]:
    assert entries, "the catalogue is empty"
    assert entries[0].key == (None, ""), "the catalogue has no header entry"
    lines = entries[0].msgstr.get(0, "").splitlines()
    return {name.strip(): value.strip() for name, _sep, value in (line.partition(":") for line in lines) if _sep}


def _messages(entries: list[Entry]) -> list[Entry]:
    return [entry for entry in entries if entry.key != (None, "")]


@pytest.fixture(scope="module")
def committed() -> list[Entry]:
    assert PO_PATH.is_file(), f"{PO_PATH} is missing: run makemessages -l zh_Hans (see the README)"
    return parse_po(PO_PATH)


# --- (a) complete and well-formed ---------------------------------------------------------------
def test_header_declares_simplified_chinese(committed):
    header = _header(committed)
    assert header.get("Language") == "zh_Hans"
    assert "charset=UTF-8" in header.get("Content-Type", "")
    assert header.get("Plural-Forms", "").replace(" ", "") == "nplurals=1;plural=0;"
    assert "fuzzy" not in committed[0].flags, "the header is still marked fuzzy"


def test_every_message_is_translated_and_none_is_fuzzy(committed):
    messages = _messages(committed)
    assert len(messages) > 100, "the catalogue looks truncated"
    fuzzy = [str(entry) for entry in messages if "fuzzy" in entry.flags]
    assert not fuzzy, "fuzzy entries (check the translation, then drop the flag):\n" + "\n".join(fuzzy)
    empty = [str(entry) for entry in messages if not entry.msgstr or not all(entry.msgstr.values())]
    assert not empty, "untranslated entries:\n" + "\n".join(empty)


def test_plurals_have_the_one_chinese_form(committed):
    wrong = [
        f"{entry}: msgstr indexes {sorted(entry.msgstr)}"
        for entry in _messages(committed)
        if entry.msgid_plural is not None and sorted(entry.msgstr) != [0]
    ]
    assert not wrong, "a plural entry needs exactly msgstr[0] (nplurals=1):\n" + "\n".join(wrong)


PRINTF = re.compile(r"%(?:\([A-Za-z_]\w*\))?[-#0 +]*\d*(?:\.\d+)?[sdifrxXeEgGcao%]")
BRACES = re.compile(r"\{[A-Za-z_]?\w*(?:![rsa])?(?::[^{}]*)?\}")


def _placeholders(text: str, flags: set[str]) -> list[str]:
    found: list[str] = []
    if "python-format" in flags:
        found += [p for p in PRINTF.findall(text) if p != "%%"]
    if "python-brace-format" in flags:
        found += BRACES.findall(text)
    return sorted(found)


def test_translations_keep_every_placeholder(committed):
    wrong = []
    for entry in _messages(committed):
        expected = _placeholders(entry.msgid_plural or entry.msgid, entry.flags)
        for index, text in entry.msgstr.items():
            if _placeholders(text, entry.flags) != expected:
                wrong.append(f"{entry} msgstr[{index}]: {text!r} (expected {expected})")
    assert not wrong, "placeholders changed in translation:\n" + "\n".join(wrong)


# --- (b) up to date with the source -------------------------------------------------------------
def test_catalogue_covers_every_string_in_the_source(tmp_path):
    """makemessages on a copy of the source: every string it finds must have a committed translation."""
    if shutil.which("xgettext") is None or shutil.which("msgmerge") is None:
        reason = "GNU gettext (xgettext) is not installed: apt-get install gettext"
        if REQUIRE_SERVICES:
            pytest.fail(f"REQUIRE_SERVICES=1 but {reason}", pytrace=False)
        pytest.skip(reason)
    source = Path(settings.BASE_DIR)
    copy = tmp_path / "src"
    copy.mkdir()
    for item in source.iterdir():
        if item.name in NOT_SOURCE or item.is_symlink():
            continue
        if item.is_dir():
            shutil.copytree(item, copy / item.name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(item, copy / item.name)
    env = {**os.environ, "SPILLWAY_VAR_DIR": str(tmp_path / "var"), "PYTHONDONTWRITEBYTECODE": "1"}
    result = subprocess.run(  # noqa: S603 — our own interpreter and manage.py, fixed arguments
        [sys.executable, "manage.py", *MAKEMESSAGES],
        cwd=copy,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, f"makemessages failed:\n{result.stdout}\n{result.stderr}"
    fresh = _messages(parse_po(copy / "locale" / "zh_Hans" / "LC_MESSAGES" / "django.po"))
    assert fresh, "makemessages found no strings at all: is the copy complete?"

    translated = {entry.key: entry for entry in _messages(parse_po(PO_PATH))}
    missing = []
    for entry in fresh:
        known = translated.get(entry.key)
        if known is None or not known.msgstr or not all(known.msgstr.values()):
            missing.append(repr(entry.msgid) + (f" (context {entry.msgctxt!r})" if entry.msgctxt is not None else ""))
        elif entry.msgid_plural != known.msgid_plural:
            missing.append(f"{entry.msgid!r} (plural changed to {entry.msgid_plural!r})")
    assert not missing, (
        "strings in the source without a Chinese translation — run "
        "`python manage.py makemessages -l zh_Hans --ignore=.venv --ignore=var --ignore=tests --no-location`, "
        "translate them in locale/zh_Hans/LC_MESSAGES/django.po, then compilemessages:\n" + "\n".join(missing)
    )


# --- (c) the compiled catalogue matches the .po -------------------------------------------------
def test_mo_is_compiled_from_the_current_po(committed):
    assert MO_PATH.is_file(), f"{MO_PATH} is missing: run compilemessages -l zh_Hans --ignore=.venv"
    with MO_PATH.open("rb") as handle:
        compiled = gettext.GNUTranslations(handle)
    stale = []
    for entry in _messages(committed):
        if entry.msgid_plural is not None:
            got = [
                compiled.npgettext(entry.msgctxt, entry.msgid, entry.msgid_plural, n)
                if entry.msgctxt is not None
                else compiled.ngettext(entry.msgid, entry.msgid_plural, n)
                for n in (1, 2, 5)
            ]
            if got != [entry.msgstr.get(0)] * 3:
                stale.append(f"{entry}: .mo has {got[0]!r}")
            continue
        got = (
            compiled.pgettext(entry.msgctxt, entry.msgid)
            if entry.msgctxt is not None
            else compiled.gettext(entry.msgid)
        )
        if got != entry.msgstr.get(0):
            stale.append(f"{entry}: .mo has {got!r}, .po has {entry.msgstr.get(0)!r}")
    assert not stale, (
        "django.mo is older than django.po — run `python manage.py compilemessages -l zh_Hans --ignore=.venv`:\n"
        + "\n".join(stale)
    )


# --- (d) the back office speaks Chinese by default ----------------------------------------------
@pytest.fixture
def _keep_active_language():
    """LocaleMiddleware activates each request's language for the thread: put ours back afterwards."""
    with translation.override(translation.get_language()):
        yield


@pytest.mark.django_db
@pytest.mark.usefixtures("_keep_active_language")
def test_admin_login_is_chinese_by_default_and_english_on_request(client):
    chinese = client.get("/admin/login/")
    assert chinese.status_code == 200
    assert chinese.headers["Content-Language"] == "zh-hans"
    assert "登录" in chinese.text

    english = client.get("/admin/login/", HTTP_ACCEPT_LANGUAGE="en")
    assert english.status_code == 200
    assert english.headers["Content-Language"] == "en"
    assert "Log in" in english.text
    assert "登录" not in english.text


@pytest.mark.django_db
@pytest.mark.usefixtures("_keep_active_language")
def test_our_own_strings_render_in_chinese_on_the_admin_index(client):
    client.force_login(UserFactory(username="translation-auditor", roles=["auditor"]))

    chinese = client.get("/admin/")
    assert chinese.status_code == 200
    # The Partner model's verbose_name_plural ("partners") and the app's name, both ours.
    assert re.search(r'<a href="/admin/partners/partner/"[^>]*>\s*合作机构\s*</a>', chinese.text), chinese.text
    assert re.search(r'<a href="/admin/partners/contract/"[^>]*>\s*合同版本\s*</a>', chinese.text)
    assert "合作机构与合同" in chinese.text

    english = client.get("/admin/", HTTP_ACCEPT_LANGUAGE="en")
    assert re.search(r'<a href="/admin/partners/partner/"[^>]*>\s*Partners\s*</a>', english.text)
    assert "Partners and contracts" in english.text
