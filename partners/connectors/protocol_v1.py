"""The default connector: Spillway partner protocol v1 (``partner-protocol.md``) over HTTPS/JSON."""

from __future__ import annotations

import json
import threading
from typing import Any

import requests

from partners import signing
from partners.connectors.base import (
    ApplicationAnswer,
    Connector,
    NoticeAnswer,
    PermanentError,
    ProbeAnswer,
    TransientError,
)

# One pooled session per thread: connections to a partner are reused across calls (keep-alive),
# and requests.Session is not guaranteed thread-safe.
_local = threading.local()


def _session() -> requests.Session:
    session = getattr(_local, "session", None)
    if session is None:
        session = requests.Session()
        adapter = requests.adapters.HTTPAdapter(pool_connections=32, pool_maxsize=32, max_retries=0)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        _local.session = session
    return session


class ProtocolV1Connector(Connector):
    """Signs every request with the partner's secret, enforces its timeout, classifies failures."""

    def _url(self, path: str) -> str:
        return self.partner.api_base_url.rstrip("/") + path

    def _post(self, path: str, payload: dict[str, Any], *, idempotency_key: str | None = None) -> tuple[int, dict]:
        body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        headers = {"Content-Type": "application/json; charset=utf-8", **signing.sign(self.partner.api_secret, body)}
        if idempotency_key:
            headers["Idempotency-Key"] = idempotency_key
        timeout = self.partner.timeout_ms / 1000
        try:
            response = _session().post(self._url(path), data=body, headers=headers, timeout=(min(timeout, 5), timeout))
        except requests.Timeout as exc:
            raise TransientError(f"{path}: timed out after {self.partner.timeout_ms} ms", reason="timeout") from exc
        except requests.ConnectionError as exc:
            raise TransientError(f"{path}: connection failed", reason="connection") from exc
        except requests.RequestException as exc:
            raise TransientError(f"{path}: {type(exc).__name__}", reason="request") from exc
        status = response.status_code
        if status == 429 or status >= 500:
            raise TransientError(f"{path}: HTTP {status}", status=status, reason=f"http_{status}")
        if status >= 400:
            raise PermanentError(f"{path}: HTTP {status}", status=status, reason=f"http_{status}")
        try:
            data = response.json()
        except ValueError as exc:
            raise TransientError(f"{path}: answer is not JSON", status=status, reason="bad_json") from exc
        if not isinstance(data, dict):
            raise TransientError(f"{path}: answer is not a JSON object", status=status, reason="bad_json")
        return status, data

    def probe(self, payload: dict[str, Any]) -> ProbeAnswer:
        status, data = self._post("/probe", payload)
        decision = data.get("decision")
        if decision not in ("accept", "decline"):
            raise PermanentError("/probe: decision must be accept or decline", status=status, reason="bad_answer")
        return ProbeAnswer(decision=decision, reason=str(data.get("reason") or "")[:200], status=status)

    def submit_application(self, payload: dict[str, Any], *, idempotency_key: str) -> ApplicationAnswer:
        status, data = self._post("/applications", payload, idempotency_key=idempotency_key)
        decision = data.get("decision")
        if decision not in ("accepted", "rejected", "pending"):
            raise PermanentError("/applications: unknown decision", status=status, reason="bad_answer")
        application_id = str(data.get("application_id") or "")[:64]
        if decision != "rejected" and not application_id:
            raise PermanentError("/applications: no application_id", status=status, reason="bad_answer")
        return ApplicationAnswer(
            decision=decision, application_id=application_id, reason=str(data.get("reason") or "")[:200], status=status
        )

    def _notice(self, path: str, payload: dict[str, Any], idempotency_key: str) -> NoticeAnswer:
        status, data = self._post(path, payload, idempotency_key=idempotency_key)
        if data.get("acknowledged") is not True:
            raise TransientError(f"{path}: not acknowledged", status=status, reason="not_acknowledged")
        return NoticeAnswer(acknowledged=True, status=status)

    def notify_withdrawal(self, payload: dict[str, Any], *, idempotency_key: str) -> NoticeAnswer:
        return self._notice("/withdrawals", payload, idempotency_key)

    def notify_reclaim(self, payload: dict[str, Any], *, idempotency_key: str) -> NoticeAnswer:
        return self._notice("/reclaims", payload, idempotency_key)
