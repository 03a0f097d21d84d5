"""Spillway settings: one module, every value from the environment with a safe laptop default.

Production differs only by environment values (see ``.env.example``); ``config.checks`` refuses
to start with DEBUG off and any development secret or key still in place.
"""

from __future__ import annotations

import datetime
import re
from pathlib import Path

from celery.schedules import crontab
from csp.constants import NONCE, NONE, SELF
from django.core.exceptions import ImproperlyConfigured

from config.env import env, env_bool, env_int, env_list, env_str

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(env_str("SPILLWAY_VAR_DIR", str(BASE_DIR / "var")))

# Development-only values. config.checks refuses them when DEBUG is off.
DEV_SECRET_KEY = "dev-insecure-spillway-secret-key-do-not-use-in-production"  # noqa: S105
DEV_ENCRYPTION_KEYS = "dev1:ZGV2LW9ubHktc3BpbGx3YXktZW5jcnlwdGlvbi1rZXk"
DEV_BLIND_INDEX_KEY = "dev-only-spillway-blind-index-key"

DEBUG = env_bool("DEBUG", True)
SECRET_KEY = env_str("SECRET_KEY", DEV_SECRET_KEY)
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]", "testserver"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

SPILLWAY_ENCRYPTION_KEYS = env_str("SPILLWAY_ENCRYPTION_KEYS", DEV_ENCRYPTION_KEYS)
SPILLWAY_BLIND_INDEX_KEY = env_str("SPILLWAY_BLIND_INDEX_KEY", DEV_BLIND_INDEX_KEY)

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "simple_history",
    "django_celery_beat",
    "django_prometheus",
    "django_otp",
    "django_otp.plugins.otp_totp",
    "django_otp.plugins.otp_static",
    "csp",
    "config",
    "partners",
    "referrals",
    "settlements",
    "axes",  # last, as django-axes asks
]

MIDDLEWARE = [
    "django_prometheus.middleware.PrometheusBeforeMiddleware",  # first: times the whole stack
    "config.requestid.RequestIdMiddleware",  # before anything that may log
    "django.middleware.security.SecurityMiddleware",
    "csp.middleware.CSPMiddleware",  # Content-Security-Policy with a per-response script nonce
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.locale.LocaleMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django_otp.middleware.OTPMiddleware",  # request.user.is_verified(): signed in with a one-time code
    "config.twofactor.RequireTwoFactorMiddleware",  # no page, no session API call, without the second factor
    "config.security.AccessDeniedMiddleware",  # logs and counts every 403 (after auth: knows the user)
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "simple_history.middleware.HistoryRequestMiddleware",
    "axes.middleware.AxesMiddleware",  # answers a locked-out sign-in with the lockout page
    "django_prometheus.middleware.PrometheusAfterMiddleware",  # last: sees the view and its status
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "django.template.context_processors.i18n",
                "csp.context_processors.nonce",
            ],
        },
    },
]

# --- database and cache ---------------------------------------------------------------------
# The same backends wrapped to count queries, errors, connections and cache hits for /metrics
# (django-prometheus; our cache backends: config.metrics). Anything else is left as it is.
METRICS_BACKENDS = {
    "django.db.backends.sqlite3": "django_prometheus.db.backends.sqlite3",
    "django.db.backends.postgresql": "django_prometheus.db.backends.postgresql",
    "django.core.cache.backends.locmem.LocMemCache": "config.metrics.LocMemCache",
    "django.core.cache.backends.redis.RedisCache": "config.metrics.RedisCache",
}


def with_metrics(backend: str) -> str:
    """The instrumented twin of a database ENGINE or cache BACKEND that django-environ produced."""
    return METRICS_BACKENDS.get(backend, backend)


DATABASES = {
    "default": env.db_url("DATABASE_URL", default=f"sqlite:///{VAR_DIR / 'spillway.sqlite3'}"),
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # WAL lets the web app, the worker and beat read while one of them writes.
    DATABASES["default"]["OPTIONS"] = {
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
    }
else:
    DATABASES["default"].setdefault("CONN_MAX_AGE", env_int("DATABASE_CONN_MAX_AGE", 60))
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
DATABASES["default"]["ENGINE"] = with_metrics(DATABASES["default"]["ENGINE"])
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

CACHES = {"default": env.cache_url("CACHE_URL", default="locmemcache://spillway")}
CACHES["default"]["BACKEND"] = with_metrics(CACHES["default"]["BACKEND"])

# --- auth -----------------------------------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 10}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "admin:login"
# django-axes first: it refuses a locked-out username before the password is even checked.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
# Lockout (django-axes): after this many failed sign-ins (a wrong password or a wrong one-time
# code) for one username (from any address), or from one address (for any usernames), that
# username or address is refused for the cool-off; a success resets the count.
# `manage.py axes_reset_username <name>` lifts a lockout early.
AXES_FAILURE_LIMIT = env_int("SPILLWAY_LOGIN_FAILURE_LIMIT", 5, minimum=1)
AXES_COOLOFF_TIME = datetime.timedelta(minutes=env_int("SPILLWAY_LOGIN_LOCKOUT_MINUTES", 30, minimum=1))
AXES_LOCKOUT_PARAMETERS = ["username", "ip_address"]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_TEMPLATE = "admin/lockout.html"
AXES_ENABLE_ACCESS_FAILURE_LOG = True
AXES_VERBOSE = False  # config.security logs sign-ins, failures and lockouts as structured events
# Two factors for every back-office user (config.twofactor): TOTP in an authenticator app, and
# single-use backup codes.
OTP_TOTP_ISSUER = env_str("SPILLWAY_OTP_ISSUER", "Spillway")

# --- language and time ----------------------------------------------------------------------
LANGUAGE_CODE = "zh-hans"
LANGUAGES = [("zh-hans", "简体中文"), ("en", "English")]
LOCALE_PATHS = [BASE_DIR / "locale", BASE_DIR / "locale" / "vendor"]  # ours first; vendor: third-party apps
TIME_ZONE = "Asia/Shanghai"
USE_I18N = True
USE_TZ = True

# --- static files ---------------------------------------------------------------------------
STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
# The SQLite file, the filesystem broker and collected static files all live under var/.
STATIC_ROOT.mkdir(parents=True, exist_ok=True)
# Our own static files (vendored Chart.js, the settlement screens' scripts), next to the apps' ones.
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}

# --- production hardening (only when DEBUG is off) -----------------------------------------
# `manage.py check --deploy --fail-level WARNING` is clean with these (CI runs it: .ci/run).
if not DEBUG:
    SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", True)
    # Behind a TLS-terminating proxy that sets X-Forwarded-Proto (and strips it from clients).
    if env_bool("SECURE_PROXY_SSL_HEADER", False):
        SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31536000, minimum=0)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", True)
    SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", True)
    CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", True)
    SECURE_CONTENT_TYPE_NOSNIFF = True
    SECURE_REFERRER_POLICY = "same-origin"
    SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
    X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_HTTPONLY = True
# Sessions end 8 hours after login (absolute: activity does not extend them) or when the browser closes.
SESSION_COOKIE_AGE = env_int("SESSION_COOKIE_AGE", 8 * 3600, minimum=60)
SESSION_EXPIRE_AT_BROWSER_CLOSE = True
SESSION_SAVE_EVERY_REQUEST = False


# Content-Security-Policy (django-csp): our own origin only; scripts only from files or with the
# response's nonce. Styles allow inline attributes (Django's admin templates use a few).
# Pages that need more widen it for themselves only (config/urls.py: Redoc's logo);
# tests/config/test_csp.py checks every page against it.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF, NONCE],
        "style-src": [SELF, "'unsafe-inline'"],
        "img-src": [SELF, "data:"],
        "font-src": [SELF, "data:"],
        "connect-src": [SELF],
        "worker-src": [SELF, "blob:"],  # Redoc (/api/redoc/) starts its search worker from a blob:
        "object-src": [NONE],
        "base-uri": [SELF],
        "form-action": [SELF],
        "frame-ancestors": [NONE],
    },
}


# --- REST API -------------------------------------------------------------------------------
def throttle_rate(name: str, default: str) -> str:
    """A DRF rate, ``<requests>/<sec|min|hour|day>``; checked here rather than at the first request."""
    rate = env_str(name, default)
    if not re.fullmatch(r"[1-9]\d*/(s|sec|second|m|min|minute|h|hour|d|day)", rate):
        raise ImproperlyConfigured(f"{name} must look like 60/min (per s, min, hour or day), not {rate!r}")
    return rate


REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["config.api.RolePermission"],
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    # api.md: JSON in and out. (Views that take files or raw bytes say so themselves.)
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "TEST_REQUEST_DEFAULT_FORMAT": "json",
    # Per user (token or session) and per client address for anonymous calls; a 429 says how long
    # to wait (Retry-After). Counted in the cache (CACHE_URL), shared by every process.
    "DEFAULT_THROTTLE_CLASSES": [
        "config.api.UserRateThrottle",  # DRF's, failing open when the cache is unreachable
        "config.api.AnonRateThrottle",
    ],
    "DEFAULT_THROTTLE_RATES": {
        "user": throttle_rate("SPILLWAY_API_USER_RATE", "6000/min"),
        "anon": throttle_rate("SPILLWAY_API_ANON_RATE", "60/min"),
    },
    "DEFAULT_PAGINATION_CLASS": "config.api.Pagination",
    "PAGE_SIZE": 50,
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "config.api.exception_handler",
    "COERCE_DECIMAL_TO_STRING": True,
    "DATETIME_FORMAT": "iso-8601",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Spillway API",
    "DESCRIPTION": "Declined-lead referral (拒量导流): partners, contracts, consents, referrals, settlements.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["config.api.InARole"],
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    # No badge image from validator.swagger.io (it would send it the schema's URL; the CSP's
    # img-src refuses it anyway). Swagger UI leaves it out on localhost only.
    "SWAGGER_UI_SETTINGS": {"deepLinking": True, "validatorUrl": None},
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    "ENUM_NAME_OVERRIDES": {
        "CreditGradeEnum": "partners.terms.CREDIT_GRADES",
        "PartnerStatusEnum": "partners.models.Partner.Status",
        "ContractStatusEnum": "partners.models.Contract.Status",
        "ConsentStatusEnum": "referrals.models.Consent.Status",
        "ReferralStatusEnum": "referrals.models.Referral.Status",
        "LoanStatusEnum": "referrals.models.Loan.Status",
        "ReclaimStatusEnum": "referrals.models.Reclaim.Status",
        "SettlementRunStatusEnum": "settlements.models.SettlementRun.Status",
        "StatementStatusEnum": "settlements.models.Statement.Status",
        "LineTypeEnum": "settlements.models.LineType",
        "ReconciliationKindEnum": "settlements.models.ReconciliationItem.Kind",
    },
    # api.md's error answers (400/401/403/404) on every operation: drf-spectacular documents only successes.
    "POSTPROCESSING_HOOKS": ["drf_spectacular.hooks.postprocess_schema_enums", "config.api.document_error_responses"],
}

# --- Celery ---------------------------------------------------------------------------------
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", "filesystem://localhost//")
if CELERY_BROKER_URL.startswith("filesystem://"):
    # One folder for both directions: every process on this machine reads and writes the same queue.
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(VAR_DIR / "celery" / "queue"),
        "data_folder_out": str(VAR_DIR / "celery" / "queue"),
        "processed_folder": str(VAR_DIR / "celery" / "processed"),
        "control_folder": str(VAR_DIR / "celery" / "control"),
        "store_processed": False,
        "polling_interval": 0.2,
    }
else:
    # Redis redelivers an unacknowledged message after the visibility timeout; with acks_late it
    # must be longer than the longest task (config.checks enforces it), or a slow task runs twice.
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "visibility_timeout": env_int("CELERY_VISIBILITY_TIMEOUT", 3600, minimum=1),
    }
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SOFT_TIME_LIMIT = env_int("CELERY_TASK_SOFT_TIME_LIMIT", 240, minimum=1)
CELERY_TASK_TIME_LIMIT = env_int("CELERY_TASK_TIME_LIMIT", 300, minimum=1)
# Settlement runs and the reclaim scan walk a whole month or book of loans: their own, longer limit
# (the visibility timeout must exceed it too; checked by spillway.E010).
SPILLWAY_LONG_TASK_TIME_LIMIT = env_int("SPILLWAY_LONG_TASK_TIME_LIMIT", 1800, minimum=1)
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", False)
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_TIMEZONE = TIME_ZONE
CELERY_ENABLE_UTC = True
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
# The schedule lives here, in code; the database scheduler syncs it into its tables at start.
CELERY_BEAT_SCHEDULE = {
    "heartbeat": {"task": "config.tasks.heartbeat", "schedule": 60.0},
    "consents-expire-due": {"task": "referrals.consents_expire_due", "schedule": 60.0},
    "dispatch-sweep": {
        "task": "referrals.dispatch_sweep",
        "schedule": float(env_int("SPILLWAY_SWEEP_SECONDS", 10, minimum=1)),
    },
    "reclaims-scan": {  # nightly at 02:30 Asia/Shanghai, or every N seconds when set (the demo)
        "task": "referrals.reclaims_scan",
        "schedule": float(env_int("SPILLWAY_RECLAIM_SCAN_SECONDS", 0, minimum=0)) or crontab(hour=2, minute=30),
    },
    "settlement-runs-sweep": {"task": "settlements.runs_sweep", "schedule": 300.0},
    "jobs-sweep": {"task": "referrals.jobs_sweep", "schedule": 300.0},
    "callbacks-sweep": {"task": "referrals.callbacks_sweep", "schedule": 60.0},
    "ledger-checkpoint": {
        "task": "referrals.ledger_checkpoint",
        "schedule": 60.0 * env_int("SPILLWAY_CHECKPOINT_MINUTES", 5, minimum=1),
    },
}

# --- health and metrics ---------------------------------------------------------------------
HEALTH_CHECK_CELERY_TIMEOUT = env_int("HEALTH_CHECK_CELERY_TIMEOUT_SECONDS", 3, minimum=1)
# /metrics from anywhere but this machine needs "Authorization: Bearer <token>" (config.metrics).
SPILLWAY_METRICS_TOKEN = env_str("SPILLWAY_METRICS_TOKEN", "")

# --- logging --------------------------------------------------------------------------------
LOG_LEVEL = env_str("LOG_LEVEL", "INFO")
# json: one JSON object per line (what production's log shipper reads); console: for people.
LOG_FORMAT = env_str("LOG_FORMAT", "console" if DEBUG else "json").lower()
if LOG_FORMAT not in {"console", "json"}:
    raise ImproperlyConfigured(f"LOG_FORMAT must be console or json, not {LOG_FORMAT!r}")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        # structlog events and plain logging records alike, with the request id (config.logs).
        "structured": {"()": "config.logs.formatter", "json": LOG_FORMAT == "json"},
    },
    "filters": {"mask_pii": {"()": "config.logs.MaskingFilter"}},
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "structured", "filters": ["mask_pii"]},
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        # Django installs its own console handler for "django"; route it through ours only.
        "django": {"handlers": ["console"], "level": LOG_LEVEL, "propagate": False},
        "django.db.backends": {"level": "INFO"},
        # WeasyPrint narrates every PDF at INFO (fonts, layout steps); only its warnings matter.
        "weasyprint": {"level": "WARNING"},
        "fontTools": {"level": "WARNING"},
    },
}

# --- Spillway business settings ------------------------------------------------------------
SPILLWAY_SIMULATOR_URL = env_str("SPILLWAY_SIMULATOR_URL", "http://127.0.0.1:9100")
SPILLWAY_SUITABILITY_MIN_AGE = env_int("SPILLWAY_SUITABILITY_MIN_AGE", 22, minimum=18)
SPILLWAY_SUITABILITY_MAX_AGE = env_int("SPILLWAY_SUITABILITY_MAX_AGE", 60, minimum=18)
SPILLWAY_CHECKPOINT_DIR = Path(env_str("SPILLWAY_CHECKPOINT_DIR", str(VAR_DIR / "checkpoints")))
SPILLWAY_CHECKPOINT_MINUTES = env_int("SPILLWAY_CHECKPOINT_MINUTES", 5, minimum=1)
# Files made by background jobs (evidence exports), each downloadable by its requester only and
# deleted after SPILLWAY_JOB_FILE_DAYS; workers and the web app must share this folder.
SPILLWAY_JOB_DIR = Path(env_str("SPILLWAY_JOB_DIR", str(VAR_DIR / "jobs")))
SPILLWAY_JOB_FILE_DAYS = env_int("SPILLWAY_JOB_FILE_DAYS", 7, minimum=1)
# A consent granted "in the future" by more than this clock skew is refused.
SPILLWAY_CLOCK_SKEW_SECONDS = env_int("SPILLWAY_CLOCK_SKEW_SECONDS", 5, minimum=0)
# Dispatch: probe window, retry schedule (partner-protocol.md), circuit breaker, leases.
SPILLWAY_PROBE_WINDOW_SECONDS = env_int("SPILLWAY_PROBE_WINDOW_SECONDS", 30, minimum=1)
SPILLWAY_RETRY_BACKOFF_SECONDS = [30, 120, 600, 3600, 21600]
SPILLWAY_CIRCUIT_FAILURES = env_int("SPILLWAY_CIRCUIT_FAILURES", 5, minimum=1)
SPILLWAY_CIRCUIT_COOLDOWN_SECONDS = env_int("SPILLWAY_CIRCUIT_COOLDOWN_SECONDS", 30, minimum=1)
SPILLWAY_CIRCUIT_TRIAL_SECONDS = env_int("SPILLWAY_CIRCUIT_TRIAL_SECONDS", 15, minimum=1)
SPILLWAY_DISPATCH_LEASE_MARGIN_SECONDS = env_int("SPILLWAY_DISPATCH_LEASE_MARGIN_SECONDS", 30, minimum=1)
# Reclaims: days between the approval and the date the lender may contact the borrower (told to
# the partner in the notice as effective_date).
SPILLWAY_RECLAIM_EFFECTIVE_DAYS = env_int("SPILLWAY_RECLAIM_EFFECTIVE_DAYS", 0, minimum=0)
SPILLWAY_SWEEP_GRACE_SECONDS = env_int("SPILLWAY_SWEEP_GRACE_SECONDS", 60, minimum=1)
SPILLWAY_CALLBACK_TOLERANCE_SECONDS = env_int("SPILLWAY_CALLBACK_TOLERANCE_SECONDS", 300, minimum=1)
SPILLWAY_MAX_APPLICATIONS_PER_APPLICANT = env_int("SPILLWAY_MAX_APPLICATIONS_PER_APPLICANT", 1, minimum=1)
