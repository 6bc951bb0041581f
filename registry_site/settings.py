"""Regent settings, read from the environment (see docs/OPERATIONS.md for the table).

With nothing set, Regent runs as the embedded default: SQLite and artifacts under
REGENT_DATA_DIR (./var), tasks run eagerly, emails go to the console.
"""

import secrets
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

import dj_database_url

from apps.approvals.logging import FILTER_CONFIG as REVIEW_LINK_FILTER
from registry_site.env import env_bool, env_int, env_list, env_str, stop_startup

BASE_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = Path(env_str("REGENT_DATA_DIR") or BASE_DIR / "var").resolve()

DEBUG = env_bool("DEBUG", default=False)


def _secret_key() -> str:
    """SECRET_KEY from the environment; in DEBUG, one generated once under DATA_DIR."""
    configured = env_str("SECRET_KEY")
    if configured:
        return configured
    if not DEBUG:
        stop_startup("SECRET_KEY is not set and DEBUG is off (set SECRET_KEY or SECRET_KEY_FILE).")
    key_file = DATA_DIR / "secret_key"
    if not key_file.exists():
        DATA_DIR.mkdir(parents=True, exist_ok=True, mode=0o700)
        key_file.write_text(secrets.token_urlsafe(50))
        key_file.chmod(0o600)
    return key_file.read_text().strip()


SECRET_KEY = _secret_key()
SECRET_KEY_FALLBACKS = env_list("SECRET_KEY_FALLBACKS", [])

PORT = env_int("PORT", 8000)
REGENT_BASE_URL = (env_str("REGENT_BASE_URL") or f"http://127.0.0.1:{PORT}").rstrip("/")
_base_host = urlsplit(REGENT_BASE_URL).hostname or "127.0.0.1"
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", [_base_host, "127.0.0.1", "localhost", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [REGENT_BASE_URL])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "guardian",
    "ninja",
    "apps.accounts",
    "apps.audit",
    "apps.registry",
    "apps.approvals",
    "apps.mlflow_compat",
    "axes",
]

MIDDLEWARE = [
    "registry_site.middleware.MlflowLaneMiddleware",  # MLflow's API: MLFLOW_LANE_MIDDLEWARE
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "csp.middleware.CSPMiddleware",
    "apps.audit.middleware.RequestContextMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "registry_site.middleware.ApiErrorMiddleware",
    "axes.middleware.AxesMiddleware",
]

# The MLflow-compatible JSON API (registry_site/mlflow_urls.py) skips what it never uses —
# static files, sessions, CSRF (Bearer/Basic only), messages, slash redirects — and keeps the
# security headers (with an API's CSP), audit context and error shape (docs/ARCHITECTURE.md).
MLFLOW_LANE_MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "registry_site.middleware.ApiContentSecurityPolicyMiddleware",
    "apps.audit.middleware.RequestContextMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "registry_site.middleware.ApiErrorMiddleware",
]

ROOT_URLCONF = "registry_site.urls"
WSGI_APPLICATION = "registry_site.wsgi.application"

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
                "csp.context_processors.nonce",
            ],
        },
    },
]

# --- Database -------------------------------------------------------------------------------
DATABASES = {
    "default": dj_database_url.parse(
        env_str("DATABASE_URL") or f"sqlite:///{DATA_DIR / 'regent.sqlite3'}",
        conn_max_age=env_int("DATABASE_CONN_MAX_AGE", 60),
        conn_health_checks=env_bool("DATABASE_CONN_HEALTH_CHECKS", default=True),
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    # Django's backend with a health check that costs no round trip (registry_site/db).
    DATABASES["default"]["ENGINE"] = "registry_site.db"
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Take the write lock when a transaction starts, so concurrent uploads wait their turn
    # instead of failing with "database is locked" when a read lock is upgraded.
    DATABASES["default"].setdefault("OPTIONS", {})["transaction_mode"] = "IMMEDIATE"
    DATABASES["default"]["OPTIONS"]["timeout"] = 20
if DATABASES["default"]["ENGINE"] == "registry_site.db" and env_bool(
    "DATABASE_PREPARED_STATEMENTS", default=True
):
    # Server-side binding lets psycopg prepare a statement once a connection has run it
    # twice: PostgreSQL then skips parsing and planning (~1 ms for the visibility-checked model
    # lookup, more than its execution). Off behind a transaction-mode pooler that does not
    # track prepared statements (PgBouncer < 1.21): DATABASE_PREPARED_STATEMENTS=0.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        server_side_binding=True, prepare_threshold=2
    )
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Accounts -------------------------------------------------------------------------------
AUTH_USER_MODEL = "accounts.User"
AUTHENTICATION_BACKENDS = [
    # First: refuses a locked-out sign-in before any password is checked.
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
    "guardian.backends.ObjectPermissionBackend",
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {
        "NAME": "django.contrib.auth.password_validation.MinimumLengthValidator",
        "OPTIONS": {"min_length": 12},
    },
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "accounts:login"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "accounts:login"
GUARDIAN_RAISE_403 = False
ANONYMOUS_USER_NAME = None  # guardian: no anonymous user row; anonymous users get nothing

# --- Sign-in lockout (django-axes) ----------------------------------------------------------
AXES_FAILURE_LIMIT = env_int("REGENT_SIGNIN_FAILURE_LIMIT", 5)
AXES_COOLOFF_TIME = timedelta(minutes=env_int("REGENT_SIGNIN_LOCKOUT_MINUTES", 15))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
# The audit log's rule: X-Forwarded-For is trusted only as far as REGENT_TRUSTED_PROXY_COUNT.
AXES_CLIENT_IP_CALLABLE = "apps.accounts.lockout.lockout_client_ip"
AXES_LOCKOUT_TEMPLATE = "accounts/locked.html"
# Sign-ins and sign-outs are already in the audit log; no second copy of ips and user agents.
AXES_DISABLE_ACCESS_LOG = True
# Regent registers the lockouts' admin itself: lifting one (deleting it there) is audited.
AXES_ENABLE_ADMIN = False

# --- Sessions, cookies, security headers ----------------------------------------------------
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
SESSION_COOKIE_AGE = env_int("SESSION_COOKIE_AGE", 12 * 3600)
CSRF_COOKIE_SAMESITE = "Lax"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
_https = REGENT_BASE_URL.startswith("https://")
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", default=_https)
CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", default=_https)
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", default=_https and not DEBUG)
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31536000 if _https else 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=True)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", default=True)
if env_bool("REGENT_BEHIND_TLS_PROXY", default=False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
# How many reverse proxies append to X-Forwarded-For; 0 means use REMOTE_ADDR only.
REGENT_TRUSTED_PROXY_COUNT = env_int("REGENT_TRUSTED_PROXY_COUNT", 0)

CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'"],
        "img-src": ["'self'", "data:"],
        "object-src": ["'none'"],
        "base-uri": ["'self'"],
        "form-action": ["'self'"],
        "frame-ancestors": ["'none'"],
    }
}

# --- Static files and artifacts -------------------------------------------------------------
STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = DATA_DIR / "static"
WHITENOISE_USE_FINDERS = True


def _artifact_storage() -> dict:
    """STORAGES["artifacts"]: local files by default, S3 for REGENT_ARTIFACTS=s3://bucket/prefix."""
    target = env_str("REGENT_ARTIFACTS") or str(DATA_DIR / "artifacts")
    if target.startswith("s3://"):
        parts = urlsplit(target)
        return {
            "BACKEND": "storages.backends.s3.S3Storage",
            "OPTIONS": {
                "bucket_name": parts.netloc,
                "location": parts.path.strip("/"),
                "file_overwrite": False,
                "default_acl": None,
                "querystring_expire": 300,
                "endpoint_url": env_str("AWS_S3_ENDPOINT_URL"),
                "region_name": env_str("AWS_S3_REGION_NAME"),
            },
        }
    return {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {
            "location": target,
            "file_permissions_mode": 0o600,
            "directory_permissions_mode": 0o700,
        },
    }


STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
    "artifacts": _artifact_storage(),
}
MEDIA_ROOT = DATA_DIR / "media"
FILE_UPLOAD_PERMISSIONS = 0o600
FILE_UPLOAD_DIRECTORY_PERMISSIONS = 0o700
REGENT_MAX_ARTIFACT_BYTES = env_int("REGENT_MAX_ARTIFACT_BYTES", 50 * 1024**3)
# Files an MLflow run logged (mlflow-artifacts) are kept this many days, then deleted; those
# registered as versions live on as the versions' own copies. 0 keeps them forever.
REGENT_MLFLOW_STAGING_DAYS = env_int("REGENT_MLFLOW_STAGING_DAYS", 30)
# JSON bodies and form posts; artifact uploads stream past this limit through their own handler.
DATA_UPLOAD_MAX_MEMORY_SIZE = env_int("REGENT_MAX_JSON_BODY", 1024 * 1024)

# --- Background work ------------------------------------------------------------------------
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL") or None
CELERY_TASK_ALWAYS_EAGER = CELERY_BROKER_URL is None
# One queue per deployment sharing a broker (and per test worker): tasks a worker publishes
# itself, such as verification after an MLflow file copy, stay on that queue.
CELERY_TASK_DEFAULT_QUEUE = env_str("CELERY_DEFAULT_QUEUE") or "celery"
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_IGNORE_RESULT = True
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BROKER_TRANSPORT_OPTIONS = {
    # Longer than the longest checksum task, so a slow hash is not redelivered mid-way.
    "visibility_timeout": env_int("REGENT_TASK_VISIBILITY_TIMEOUT", 6 * 3600),
    # A dead or frozen broker must not hang a web request (celery#4556).
    "socket_connect_timeout": 3,
    "socket_timeout": 5,
    "max_retries": 2,
}
CELERY_TASK_PUBLISH_RETRY_POLICY = {"max_retries": 2, "interval_start": 0, "interval_step": 0.5}
CELERY_BEAT_SCHEDULE = {
    "verify-audit-chain": {"task": "apps.audit.tasks.audit_verify_task", "schedule": 24 * 3600},
    "scrub-artifacts": {"task": "apps.registry.tasks.scrub_artifacts_task", "schedule": 3600},
    "sweep-unverified": {"task": "apps.registry.tasks.sweep_unverified_task", "schedule": 300},
    "sweep-orphan-objects": {
        "task": "apps.registry.tasks.sweep_orphan_objects_task",
        "schedule": 24 * 3600,
    },
    "sweep-webhooks": {"task": "apps.audit.tasks.webhook_sweep_task", "schedule": 60},
    "expire-requests": {"task": "apps.approvals.tasks.expire_requests_task", "schedule": 300},
    "expire-mlflow-staging": {
        "task": "apps.mlflow_compat.tasks.staging_expire_task",
        "schedule": 3600,
    },
}

# Local development and tests only: http:// and private/loopback webhook receivers allowed.
REGENT_WEBHOOK_ALLOW_PRIVATE = env_bool("REGENT_WEBHOOK_ALLOW_PRIVATE", default=False)

# --- Email ----------------------------------------------------------------------------------
EMAIL_HOST = env_str("EMAIL_HOST") or ""
EMAIL_PORT = env_int("EMAIL_PORT", 25)
EMAIL_HOST_USER = env_str("EMAIL_HOST_USER") or ""
EMAIL_HOST_PASSWORD = env_str("EMAIL_HOST_PASSWORD") or ""
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", default=False)
EMAIL_TIMEOUT = env_int("EMAIL_TIMEOUT", 30)
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL") or "Regent <regent@localhost>"
SERVER_EMAIL = DEFAULT_FROM_EMAIL
EMAIL_BACKEND = (
    "django.core.mail.backends.smtp.EmailBackend"
    if EMAIL_HOST
    else "django.core.mail.backends.console.EmailBackend"
)

# --- Internationalisation -------------------------------------------------------------------
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

# --- Logging --------------------------------------------------------------------------------
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    # Email approval links carry a token in their path: never let it reach a log line.
    "filters": REVIEW_LINK_FILTER,
    "handlers": {"console": {"class": "logging.StreamHandler", "filters": ["redact_review_links"]}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL") or "INFO"},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}
