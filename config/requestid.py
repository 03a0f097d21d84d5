"""One id per request, on every log line it causes — in the web process and in the Celery tasks
it queues.

The middleware takes the caller's ``X-Request-ID`` when it is a sane token (1–64 characters of
``A–Z a–z 0–9 . _ -``; anything else could forge or break log lines) or makes one, binds it to
structlog's context variables (``config.logs`` puts them on structlog events and on plain
``logging`` records alike) and returns it in the response's ``X-Request-ID``. The context is
emptied when a request starts and again when the response is finished: not when the middleware
returns, because Django logs 4xx/5xx responses (``django.request``) after every middleware has
run, and those lines should carry the id too.

Celery: publishing a task copies the bound id into the message's headers (``request_id``); the
worker binds it, with the task's name and id, for the task's run and unbinds them afterwards. A
task run eagerly (in the caller's thread) keeps the caller's context and gets it back unchanged.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from typing import Any

import structlog
from celery.signals import before_task_publish, task_postrun, task_prerun
from django.core.signals import request_finished
from django.http import HttpRequest, HttpResponse

HEADER = "X-Request-ID"
TASK_HEADER = "request_id"
_SANE = re.compile(r"[A-Za-z0-9._-]{1,64}")

# Context tokens of running tasks, by task id, to put back exactly what was bound before.
_task_tokens: dict[str, Any] = {}


def is_sane(value: object) -> bool:
    return isinstance(value, str) and _SANE.fullmatch(value) is not None


def current_request_id() -> str | None:
    return structlog.contextvars.get_contextvars().get("request_id")


class RequestIdMiddleware:
    """Binds ``request_id`` for the request's log lines and answers it in ``X-Request-ID``."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        given = request.headers.get(HEADER, "")
        request_id = given if is_sane(given) else uuid.uuid4().hex
        request.request_id = request_id
        structlog.contextvars.clear_contextvars()  # nothing left over from this thread's last request
        structlog.contextvars.bind_contextvars(request_id=request_id)
        response = self.get_response(request)
        response[HEADER] = request_id
        return response


def _clear_after_response(**kwargs: Any) -> None:
    structlog.contextvars.clear_contextvars()


def _add_request_id_header(headers: dict | None = None, **kwargs: Any) -> None:
    """``before_task_publish``: runs in the publishing process, ``headers`` become the message's."""
    request_id = current_request_id()
    if headers is not None and request_id and TASK_HEADER not in headers:
        headers[TASK_HEADER] = request_id


def _bind_task_context(task_id: str | None = None, task: Any = None, **kwargs: Any) -> None:
    """``task_prerun``: in the worker, bind the publisher's request id and the task's name and id."""
    request = getattr(task, "request", None)
    eager = bool(getattr(request, "is_eager", False))
    if not eager:
        structlog.contextvars.clear_contextvars()  # a pool thread runs one task after another
    context = {"task_name": getattr(task, "name", None), "task_id": task_id}
    request_id = getattr(request, TASK_HEADER, None)
    if is_sane(request_id):
        context["request_id"] = request_id
    tokens = structlog.contextvars.bind_contextvars(**context)
    if task_id:
        _task_tokens[task_id] = tokens


def _unbind_task_context(task_id: str | None = None, **kwargs: Any) -> None:
    """``task_postrun``: put the context back as it was before the task."""
    tokens = _task_tokens.pop(task_id, None) if task_id else None
    if tokens:
        structlog.contextvars.reset_contextvars(**tokens)


def connect_signals() -> None:
    """Called once by ``config.celery`` (imported by every process: web, worker, beat)."""
    request_finished.connect(_clear_after_response, dispatch_uid="spillway.requestid.finished")
    before_task_publish.connect(_add_request_id_header, dispatch_uid="spillway.requestid.publish")
    task_prerun.connect(_bind_task_context, dispatch_uid="spillway.requestid.prerun")
    task_postrun.connect(_unbind_task_context, dispatch_uid="spillway.requestid.postrun")
