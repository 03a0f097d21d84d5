"""How personal data looks on screens, in API responses and in logs: masked.

``138****5678``, ``张*``, ``110105********002X`` (api.md). Revealing the clear value is a separate,
permissioned and recorded action; nothing here decrypts anything.
"""

from __future__ import annotations


def mask_phone(phone: str | None) -> str:
    if not phone:
        return ""
    if len(phone) < 7:
        return "*" * len(phone)
    return f"{phone[:3]}{'*' * (len(phone) - 7)}{phone[-4:]}"


def mask_national_id(number: str | None) -> str:
    if not number:
        return ""
    if len(number) < 10:
        return "*" * len(number)
    return f"{number[:6]}{'*' * (len(number) - 10)}{number[-4:]}"


def mask_name(name: str | None) -> str:
    """Keep the family name (the first character): ``张三`` → ``张*``, ``欧阳娜娜`` → ``欧***``."""
    if not name:
        return ""
    return name[0] + "*" * max(len(name) - 1, 1)
