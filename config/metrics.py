"""``/metrics`` for Prometheus: django-prometheus's request, database and cache metrics, plus the
collectors the apps register here (Spillway's own: ``referrals.metrics``).

Who may read it: anyone while ``DEBUG`` is on; otherwise a scraper on this machine (a loopback
address and no ``X-Forwarded-For``/``Forwarded`` header, so requests relayed by a local reverse
proxy do not count as local — such a proxy must set one, as nginx does with
``proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for``), or one sending
``Authorization: Bearer <SPILLWAY_METRICS_TOKEN>``. Everyone else gets 403.

Several processes. Counters kept in memory (requests, queries, cache gets, callback rejections)
are per process. Under gunicorn with several workers, start gunicorn with
``PROMETHEUS_MULTIPROC_DIR`` pointing at an empty directory (emptied before each start, and set
before anything imports prometheus_client): each worker then writes its values to files there and
``/metrics`` sums them (prometheus_client's multiprocess mode; process and platform metrics are
not available in it). Leave it out of the Celery processes' environment: they serve no
``/metrics``, and everything about dispatch is read from the database at scrape time by the
registered collectors, so it is the same whichever web process answers.

The cache backends below are django-prometheus's counters on Django's own backends: its
``NativeRedisCache`` module imports django-redis, which Spillway does not use
(django-commons/django-prometheus#406), and its ``LocMemCache`` returns the default for any
falsy cached value (``0``, ``""``); these two count the same ``django_cache_get_*`` metrics
without either problem.
"""

from __future__ import annotations

import hmac
import ipaddress
import os

from django.conf import settings
from django.core.cache.backends.locmem import LocMemCache as DjangoLocMemCache
from django.core.cache.backends.redis import RedisCache as DjangoRedisCache
from django.http import HttpRequest, HttpResponse, HttpResponseForbidden
from django_prometheus.cache.metrics import (
    django_cache_get_fail_total,
    django_cache_get_total,
    django_cache_hits_total,
    django_cache_misses_total,
)
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter, generate_latest, multiprocess
from prometheus_client.registry import Collector

_MISSING = object()

# Sign-ins and refusals (config.security): kept in memory, so per process (or summed over the
# processes' files in multiprocess mode).
LOGIN_OUTCOMES = ("success", "failure", "logout", "locked_out")
LOGINS = Counter("spillway_logins", "Sign-ins, failed sign-ins, lockouts and sign-outs, by outcome.", ["outcome"])
for _outcome in LOGIN_OUTCOMES:
    LOGINS.labels(outcome=_outcome)  # on the page from the start, at 0
ACCESS_DENIED_KINDS = ("admin", "api", "other")
ACCESS_DENIED = Counter("spillway_access_denied", "Requests answered 403, by part of the site.", ["kind"])
for _kind in ACCESS_DENIED_KINDS:
    ACCESS_DENIED.labels(kind=_kind)

# Collectors that read shared state (the database) when scraped; see register_collector().
_collectors: list[Collector] = []


def register_collector(collector: Collector) -> None:
    """Serve ``collector`` on ``/metrics`` (an app calls this once, from its ``AppConfig.ready``).

    It goes into the default registry and, in multiprocess mode, into the registry built for each
    scrape — prometheus_client's multiprocess collector only reads the processes' files.
    """
    if any(type(known) is type(collector) for known in _collectors):
        return  # AppConfig.ready ran again (some test runners do): one is enough
    REGISTRY.register(collector)
    _collectors.append(collector)


def scrape_registry() -> CollectorRegistry:
    """The registry one scrape reads: every process's files in multiprocess mode, else this one's."""
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return REGISTRY
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    for collector in _collectors:
        registry.register(collector)
    return registry


def _is_local(request: HttpRequest) -> bool:
    if "x-forwarded-for" in request.headers or "forwarded" in request.headers:
        return False  # relayed by a proxy: the loopback address is the proxy's, not the client's
    try:
        address = ipaddress.ip_address(request.META.get("REMOTE_ADDR", ""))
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def _has_token(request: HttpRequest) -> bool:
    token = settings.SPILLWAY_METRICS_TOKEN
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if not token or scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode(), token.encode())


def metrics_view(request: HttpRequest) -> HttpResponse:
    """Prometheus text exposition; see the module docstring for who may read it."""
    if not (settings.DEBUG or _is_local(request) or _has_token(request)):
        return HttpResponseForbidden("Metrics need a bearer token.\n", content_type="text/plain")
    return HttpResponse(generate_latest(scrape_registry()), content_type=CONTENT_TYPE_LATEST)


class _CacheMetricsMixin:
    """Counts ``get`` calls, hits, misses and failures, labelled by ``metrics_backend``."""

    metrics_backend = ""

    def get(self, key, default=None, version=None):
        django_cache_get_total.labels(backend=self.metrics_backend).inc()
        try:
            value = super().get(key, _MISSING, version=version)
        except Exception:
            django_cache_get_fail_total.labels(backend=self.metrics_backend).inc()
            raise
        if value is _MISSING:
            django_cache_misses_total.labels(backend=self.metrics_backend).inc()
            return default
        django_cache_hits_total.labels(backend=self.metrics_backend).inc()
        return value


class LocMemCache(_CacheMetricsMixin, DjangoLocMemCache):
    """Django's local-memory cache (the laptop default), counted."""

    metrics_backend = "locmem"


class RedisCache(_CacheMetricsMixin, DjangoRedisCache):
    """Django's Redis cache (production), counted."""

    metrics_backend = "redis"
