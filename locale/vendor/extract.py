"""Refresh ``zh_Hans/LC_MESSAGES/django.po`` here: Simplified Chinese for third-party apps.

The apps in :data:`PACKAGES` ship no Chinese catalogue Django would use for ``zh-hans`` (or one
that misses some of their strings). Django merges every catalogue into one per language: the
project's own (``locale/``, first in LOCALE_PATHS) wins over this one (``locale/vendor/``, second),
which wins over each installed app's own and over Django's. So an entry here translates its msgid
everywhere: ``tests/config/test_vendor_translations.py`` checks that none contradicts Django, an
app or the project, and that every string these packages mark for translation is covered.

For each package: copy the installed package (without its ``locale``, ``migrations`` and
``tests``) to a temporary folder and run Django's makemessages *there* (never in the project: it
would write into ``locale/``); keep the strings the package's own zh_Hans catalogue, if it ships
one, leaves untranslated; merge them all into django.po (msgmerge: translations kept, new strings
empty, strings no longer used dropped); compile django.mo. Needs GNU gettext (``apt-get install
gettext``). After upgrading any of these packages::

    .venv/bin/python locale/vendor/extract.py   # then translate every empty msgstr in django.po
    .venv/bin/python locale/vendor/extract.py   # once more: compiles django.mo

Not covered, because there is nothing a catalogue could translate: django-health-check (no string
is marked for translation), django-csp, django-prometheus, drf-spectacular-sidecar; nor the names
and help texts of django-otp's models and admin (plain English strings in its source).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PO_PATH = HERE / "zh_Hans" / "LC_MESSAGES" / "django.po"
MO_PATH = PO_PATH.with_suffix(".mo")
# Import names, in the order their strings appear in django.po.
PACKAGES = (
    "axes",  # no Chinese catalogue
    "django_otp",  # no Chinese catalogue
    "django_filters",  # zh_CN only: Django looks for zh_Hans (then zh) for zh-hans
    "drf_spectacular",  # no catalogue at all
    "django_celery_beat",  # zh_Hans, incomplete
    "simple_history",  # zh_Hans, incomplete
    "rest_framework",  # zh_Hans, incomplete
)
# Installed and used, but marking no string for translation (the tests check that they still don't).
NOTHING_TO_TRANSLATE = ("health_check", "csp", "django_prometheus", "drf_spectacular_sidecar")
# Not strings anybody reads in the back office.
NOT_COPIED = ("locale", "migrations", "tests", "__pycache__", "*.pyc")
HEADER = """\
# Simplified Chinese (zh_Hans) for third-party apps: the strings that their own catalogues
# leave in English under zh-hans. Generated and merged by locale/vendor/extract.py (which says
# how to refresh it); translate here, never in the packages.
# Covers:
{versions}
"""
SEED = r"""msgid ""
msgstr ""
"Project-Id-Version: Spillway third-party apps\n"
"PO-Revision-Date: 2026-11-29 20:00+0800\n"
"Last-Translator: Spillway team\n"
"Language-Team: Simplified Chinese\n"
"Language: zh_Hans\n"
"MIME-Version: 1.0\n"
"Content-Type: text/plain; charset=UTF-8\n"
"Content-Transfer-Encoding: 8bit\n"
"Plural-Forms: nplurals=1; plural=0;\n"
"""


def run(*args: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    """A gettext (or Django) command's messages (stderr); all its output in the exception if it fails."""
    result = subprocess.run(  # noqa: S603 — fixed tools, our own arguments
        [str(arg) for arg in args], cwd=cwd, env=env, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"{args[0]} failed:\n{result.stdout}\n{result.stderr}")
    return result.stderr


def package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise LookupError(f"{package} is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def own_catalogue(package: str) -> Path | None:
    """The compiled zh_Hans catalogue the package ships, which Django loads for zh-hans."""
    mo = package_dir(package) / "locale" / "zh_Hans" / "LC_MESSAGES" / "django.mo"
    return mo if mo.is_file() else None


def extract(package: str, workdir: Path) -> Path:
    """A .pot of every string ``package`` marks for translation (empty if none), as makemessages finds them.

    makemessages runs on a copy, without the project's settings (so it knows no LOCALE_PATHS and
    writes only into the copy's own ``locale``).
    """
    root = workdir / package
    shutil.copytree(package_dir(package), root / package, ignore=shutil.ignore_patterns(*NOT_COPIED))
    (root / "locale").mkdir()
    env = {name: value for name, value in os.environ.items() if name != "DJANGO_SETTINGS_MODULE"}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    run(
        sys.executable, "-m", "django", "makemessages", "--locale=zh_Hans", "--keep-pot",
        "--add-location=file", "--no-obsolete", cwd=root, env=env,
    )  # fmt: skip
    pot = root / "locale" / "django.pot"
    if not pot.exists():  # makemessages writes none when the package marks no string
        pot.write_text("", encoding="utf-8")
    return pot


def untranslated(package: str, pot: Path, workdir: Path) -> Path:
    """The entries of ``pot`` that the package's own zh_Hans catalogue does not translate."""
    own = own_catalogue(package)
    if own is None:
        return pot
    decompiled, merged, left = (workdir / f"{package}.{name}.po" for name in ("own", "merged", "left"))
    run("msgunfmt", own, "-o", decompiled)
    run("msgmerge", "--quiet", "--no-fuzzy-matching", decompiled, pot, "-o", merged)
    run("msgattrib", "--untranslated", "--no-obsolete", merged, "-o", left)
    return left


def versions() -> str:
    distributions = importlib.metadata.packages_distributions()
    names = sorted({distributions[package][0] for package in PACKAGES})
    return "\n".join(f"#   {name} {importlib.metadata.version(name)}" for name in names)


def with_header(po_text: str) -> str:
    """``po_text`` with its leading comment replaced by :data:`HEADER` (fresh versions)."""
    body = po_text[po_text.index('msgid ""') :]
    return HEADER.format(versions=versions()) + "#\n" + body


def refresh() -> str:
    """Merge the packages' current strings into django.po and compile it; msgfmt's statistics."""
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        parts = [untranslated(package, extract(package, workdir), workdir) for package in PACKAGES]
        combined = workdir / "combined.pot"
        run("msgcat", "--use-first", *parts, "-o", combined)
        if not PO_PATH.is_file():
            PO_PATH.parent.mkdir(parents=True, exist_ok=True)
            PO_PATH.write_text(SEED, encoding="utf-8")
        merged = workdir / "vendor.po"
        run("msgmerge", "--quiet", "--no-fuzzy-matching", PO_PATH, combined, "-o", merged)
        run("msgattrib", "--no-obsolete", merged, "-o", merged)
        PO_PATH.write_text(with_header(merged.read_text(encoding="utf-8")), encoding="utf-8")
    return run("msgfmt", "--check-format", "--statistics", "-o", MO_PATH, PO_PATH)


if __name__ == "__main__":
    print(f"{PO_PATH.relative_to(HERE.parent.parent)}: {refresh().strip()}")
    print("Translate every untranslated (empty) msgstr there, then run this again to compile django.mo.")
