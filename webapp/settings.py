"""Neocloud settings. Every knob comes from the environment (see webapp/env.py); the defaults are the
embedded mode: SQLite under var/, one web process, one worker, the lab. Nothing to start by hand."""

from __future__ import annotations

import importlib.util
import secrets
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

from provisioner.drivers.registry import BURNIN_DRIVERS, DEPLOY_DRIVERS
from webapp.env import database_from_url, env_bool, env_choice, env_float, env_int, env_networks, env_str

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(env_str("NEOCLOUD_VAR_DIR", str(BASE_DIR / "var")))
VAR_DIR.mkdir(parents=True, exist_ok=True)

PRODUCTION = env_bool("NEOCLOUD_PRODUCTION", False)
# Only when asked for by name: Django's debug mode is for a developer at the console. Even then no error page
# shows settings or the environment (webapp/error_responses.py).
DEBUG = env_bool("NEOCLOUD_DEBUG", False)


def _embedded_secret(name: str, filename: str, make: str = "token") -> str:
    """A secret from the environment, or in embedded mode one generated once under var/ (mode 0600)."""
    value = env_str(name)
    if value:
        return value
    if PRODUCTION:
        raise ImproperlyConfigured(f"{name} (or {name}_FILE) must be set when NEOCLOUD_PRODUCTION is true")
    path = VAR_DIR / filename
    if not path.exists():
        if make == "fernet":
            from cryptography.fernet import Fernet

            new = Fernet.generate_key().decode()
        else:
            new = secrets.token_urlsafe(50)
        path.touch(mode=0o600)
        path.write_text(new)
    return path.read_text().strip()


SECRET_KEY = _embedded_secret("NEOCLOUD_SECRET_KEY", "secret_key")
# Fernet keys (comma-separated, newest first) that encrypt BMC credentials at rest.
NEOCLOUD_CREDENTIAL_KEYS = _embedded_secret("NEOCLOUD_CREDENTIAL_KEYS", "credential_keys", make="fernet")

ALLOWED_HOSTS = [h for h in env_str("NEOCLOUD_ALLOWED_HOSTS", "*" if not PRODUCTION else "").split(",") if h]
if PRODUCTION and not ALLOWED_HOSTS:
    raise ImproperlyConfigured(
        "NEOCLOUD_ALLOWED_HOSTS must be set when NEOCLOUD_PRODUCTION is true (the names clients reach the site by)"
    )
CSRF_TRUSTED_ORIGINS = [o for o in env_str("NEOCLOUD_CSRF_TRUSTED_ORIGINS", "").split(",") if o]

# HTTPS in production (manage.py check --deploy is clean): the portal and the API redirect to HTTPS, cookies
# are sent over HTTPS only, browsers are told to keep to HTTPS (HSTS). The boot service stays on plain HTTP:
# PXE firmware and iPXE fetch it so and follow no redirect to HTTPS. Behind a proxy that terminates TLS,
# NEOCLOUD_TLS_PROXY=1 trusts its X-Forwarded-Proto header (the proxy must set it; else every request
# looks like plain HTTP and is redirected forever).
SECURE_SSL_REDIRECT = env_bool("NEOCLOUD_SSL_REDIRECT", PRODUCTION)
SECURE_REDIRECT_EXEMPT = [r"^boot/"]
if env_bool("NEOCLOUD_TLS_PROXY", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = PRODUCTION
# HSTS starts short (an hour), as cookiecutter-django's settings advise: raise NEOCLOUD_HSTS_SECONDS to a year
# (31536000) once HTTPS is known to work on every name, since browsers keep to HTTPS that long whatever happens.
SECURE_HSTS_SECONDS = env_int("NEOCLOUD_HSTS_SECONDS", 3600 if PRODUCTION else 0, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("NEOCLOUD_HSTS_INCLUDE_SUBDOMAINS", PRODUCTION)
SECURE_HSTS_PRELOAD = env_bool("NEOCLOUD_HSTS_PRELOAD", PRODUCTION)

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    # runserver leaves static files to WhiteNoise too, so that it serves them as gunicorn does
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "django_filters",
    "drf_spectacular",
    "django_tasks",
    "django_tasks_db",
    "provisioner",
    "webapp.portal",
    "webapp.api",
]
# The lab (top-level package lab/, development only) owns `manage.py lab` and `manage.py demo`. A checkout
# has it; an installed wheel does not, and production never loads it.
if not PRODUCTION and importlib.util.find_spec("lab") is not None:
    INSTALLED_APPS.append("lab")

MIDDLEWARE = [
    # First, so that every response carries the request id, errors from the other middleware included.
    "webapp.request_id.RequestIdMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "webapp.error_responses.SafeErrorMiddleware",
]
DEFAULT_EXCEPTION_REPORTER_FILTER = "webapp.error_responses.NoSettingsReporterFilter"

ROOT_URLCONF = "webapp.urls"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "webapp" / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]
WSGI_APPLICATION = "webapp.wsgi.application"

DATABASES = {
    "default": database_from_url(env_str("DATABASE_URL", f"sqlite:///{VAR_DIR / 'neocloud.sqlite3'}"))
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # The test database is a file, not :memory:, so real worker processes started by tests can share it.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / "test-neocloud.sqlite3")}
else:
    DATABASES["default"]["TEST"] = {"NAME": env_str("NEOCLOUD_TEST_DATABASE_NAME", "test_neocloud")}
    # Seconds a web process keeps its PostgreSQL connection between requests (0: a new one per request).
    # Long-lived workers of a WSGI server (gunicorn) should set it: a new connection costs a backend fork
    # and about as much CPU as a small request. The embedded runserver starts a thread per request, which
    # would only leave idle connections behind, so the default stays 0. Reused connections are checked
    # at the start of each request, so a restarted database costs no failed request.
    _conn_max_age = env_int("NEOCLOUD_DB_CONN_MAX_AGE", 0, minimum=0)
    DATABASES["default"]["CONN_MAX_AGE"] = _conn_max_age
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = _conn_max_age > 0

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
# Largest request body read (Django's default, stated here because the README promises it): larger ones get
# 413 from the API and the boot service. The boot service's reports have a lower limit of their own.
DATA_UPLOAD_MAX_MEMORY_SIZE = 2_621_440
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 10}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True
STATIC_URL = "static/"
# Static files (the portal's CSS and htmx, the admin's) are served by the web process itself through
# WhiteNoise, with DEBUG off and under any WSGI server. It finds them where the apps keep them (the finders),
# so no collectstatic step is needed; files collected into STATIC_ROOT (for a CDN) are served too.
STATIC_ROOT = VAR_DIR / "static"
STATIC_ROOT.mkdir(exist_ok=True)
WHITENOISE_USE_FINDERS = True
LOGIN_URL = "portal:login"
LOGIN_REDIRECT_URL = "portal:catalog"
LOGOUT_REDIRECT_URL = "portal:login"

# Tasks: Django's Tasks API (django-tasks backport) on the same database (django-tasks-db).
TASKS = {
    "default": {
        "BACKEND": env_choice(
            "NEOCLOUD_TASK_BACKEND",
            "django_tasks_db.DatabaseBackend",
            {"django_tasks_db.DatabaseBackend", "django_tasks.backends.immediate.ImmediateBackend"},
        ),
        # any queue: operations go to their site's queue, site-<slug> (provisioner.engine.queue)
        "QUEUES": [],
    }
}

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "webapp.api.authentication.ApiTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    # DRF's default parsers, with a nesting limit on JSON (provisioner/json_input.py)
    "DEFAULT_PARSER_CLASSES": [
        "webapp.api.parsers.LimitedDepthJSONParser",
        "rest_framework.parsers.FormParser",
        "rest_framework.parsers.MultiPartParser",
    ],
    "DEFAULT_PAGINATION_CLASS": "webapp.api.pagination.NeocloudPagination",
    "PAGE_SIZE": 50,
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    # drf-spectacular's, with the error answers every operation can give (401, 404, 406, ...)
    "DEFAULT_SCHEMA_CLASS": "webapp.api.schema.NeocloudAutoSchema",
    "EXCEPTION_HANDLER": "webapp.api.errors.exception_handler",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Neocloud API",
    # Plain sentences (shown as they are by /api/docs/, and fine as markdown): where a new user looks first.
    "DESCRIPTION": (
        "Reserve whole bare-metal GPU servers; operators reimage and manage the fleet.\n\n"
        "Every call carries an API token: 'Authorization: Bearer nck_...'. Your first token: sign in to the "
        "portal and create one on its API tokens page (/api-tokens/); it is shown once. Or, signed in to "
        "the portal, POST /api/v1/tokens with your session cookie and the CSRF token (the csrftoken cookie, "
        "sent back as the X-CSRFToken header). With a token, POST /api/v1/tokens makes more."
    ),
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    # Choice lists as sentences ("One of: on, off, unknown."), not markdown bullets: see webapp/api/schema.py.
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "webapp.api.schema.describe_choices_in_words",
    ],
}

# --- Neocloud engine ------------------------------------------------------------------------------
# Lease of a node by an operation: renewed every HEARTBEAT seconds, lost after LEASE_TTL without one.
NEOCLOUD_HEARTBEAT_SECONDS = env_float("NEOCLOUD_HEARTBEAT_SECONDS", 2.0, minimum=0.1)
NEOCLOUD_LEASE_TTL_SECONDS = env_float("NEOCLOUD_LEASE_TTL_SECONDS", 15.0, minimum=0.5)
if NEOCLOUD_LEASE_TTL_SECONDS <= NEOCLOUD_HEARTBEAT_SECONDS * 2:
    raise ImproperlyConfigured(
        "NEOCLOUD_LEASE_TTL_SECONDS must be more than twice NEOCLOUD_HEARTBEAT_SECONDS"
    )
# How often an interrupted operation is resumed before it is failed for good.
NEOCLOUD_MAX_RECOVERIES = env_int("NEOCLOUD_MAX_RECOVERIES", 3, minimum=0)
NEOCLOUD_RETRY_BACKOFF_SECONDS = env_float("NEOCLOUD_RETRY_BACKOFF_SECONDS", 1.0, minimum=0)
# Which implementations do the hardware work: "fake" simulates in files; "ansible" is the real path. The
# installation's default: a server type may choose its own (ServerType.deploy_driver, burnin_driver).
NEOCLOUD_DEPLOY_DRIVER = env_choice("NEOCLOUD_DEPLOY_DRIVER", "fake", set(DEPLOY_DRIVERS))
NEOCLOUD_BURNIN_DRIVER = env_choice("NEOCLOUD_BURNIN_DRIVER", "fake", set(BURNIN_DRIVERS))
NEOCLOUD_FAKE_HW_DIR = Path(env_str("NEOCLOUD_FAKE_HW_DIR", str(VAR_DIR / "fake-hw")))
# The fake deploy driver's agent: seconds it takes to stream or erase (0: at once, in the step). With a value, fake
# deploys and wipes wait for it as real ones do (the operation parked, no worker held): bench/fleet.py.
NEOCLOUD_FAKE_AGENT_SECONDS = env_float("NEOCLOUD_FAKE_AGENT_SECONDS", 0.0, minimum=0)
# Threads of one `manage.py worker` process: operations it runs at once (their waits hold none).
NEOCLOUD_WORKER_THREADS = env_int("NEOCLOUD_WORKER_THREADS", 8, minimum=1)
NEOCLOUD_LAB_DIR = Path(env_str("NEOCLOUD_LAB_DIR", str(VAR_DIR / "lab")))
# Where lab servers and the deploy agent reach the boot service and image server.
NEOCLOUD_BOOT_URL = env_str("NEOCLOUD_BOOT_URL", "http://127.0.0.1:8000")
NEOCLOUD_BOOT_DIR = Path(env_str("NEOCLOUD_BOOT_DIR", str(VAR_DIR / "boot")))
# Who may use the boot service (/boot/: iPXE scripts with their one-time tokens, the deploy agents' API):
# the provisioning networks, comma-separated. The default is this host and the lab's networks; a site lists
# its provisioning subnets (behind a reverse proxy, the proxy's address, and the proxy restricts).
NEOCLOUD_BOOT_NETWORKS = env_networks("NEOCLOUD_BOOT_NETWORKS", "127.0.0.0/8,::1/128,198.18.0.0/15")
NEOCLOUD_IMAGE_DIR = Path(env_str("NEOCLOUD_IMAGE_DIR", str(VAR_DIR / "images")))
# Seconds of GPU load during burn-in on real servers (lab servers use a short simulated load).
NEOCLOUD_BURNIN_LOAD_SECONDS = env_float("NEOCLOUD_BURNIN_LOAD_SECONDS", 60.0, minimum=1)
# A burn-in whose load and Xid wait last longer than this runs detached on the server (Ansible async) while its
# operation waits, holding no worker; a shorter one (the lab's) runs in one playbook, which costs less.
NEOCLOUD_BURNIN_DETACH_AFTER_SECONDS = env_float("NEOCLOUD_BURNIN_DETACH_AFTER_SECONDS", 30.0, minimum=0)
# NetBox, where the inventory comes from (manage.py nodes sync-netbox takes these as defaults). With
# NEOCLOUD_NETBOX_SYNC_SECONDS > 0 the scheduler queues a sync that often; BMC logins for new nodes come from
# the NEOCLOUD_NETBOX_CREDENTIALS file (inventory/netbox-credentials.example.yaml), never from NetBox.
NEOCLOUD_NETBOX_URL = env_str("NEOCLOUD_NETBOX_URL")
NEOCLOUD_NETBOX_TOKEN = env_str("NEOCLOUD_NETBOX_TOKEN")
NEOCLOUD_NETBOX_CREDENTIALS = env_str("NEOCLOUD_NETBOX_CREDENTIALS")
NEOCLOUD_NETBOX_ROLE = env_str("NEOCLOUD_NETBOX_ROLE", "gpu-server")
NEOCLOUD_NETBOX_SYNC_SECONDS = env_float("NEOCLOUD_NETBOX_SYNC_SECONDS", 0.0, minimum=0)
if NEOCLOUD_NETBOX_SYNC_SECONDS and not (NEOCLOUD_NETBOX_URL and NEOCLOUD_NETBOX_TOKEN):
    raise ImproperlyConfigured(
        "NEOCLOUD_NETBOX_SYNC_SECONDS needs NEOCLOUD_NETBOX_URL and NEOCLOUD_NETBOX_TOKEN (or _FILE)"
    )
# Bearer token a Prometheus scrape of /metrics sends (or NEOCLOUD_METRICS_TOKEN_FILE); unset: /metrics
# answers loopback clients only (webapp/metrics.py).
NEOCLOUD_METRICS_TOKEN = env_str("NEOCLOUD_METRICS_TOKEN")
# Sign-in: wrong passwords for one account from one address within the window before attempts are refused
# (five times as many from one address over all accounts); see provisioner/services/signin.py.
NEOCLOUD_SIGNIN_MAX_FAILURES = env_int("NEOCLOUD_SIGNIN_MAX_FAILURES", 10, minimum=1)
NEOCLOUD_SIGNIN_WINDOW_MINUTES = env_int("NEOCLOUD_SIGNIN_WINDOW_MINUTES", 15, minimum=1)
# How far ahead a reservation window may start or end (an open-ended one lasts until released). At most a
# century: now plus millions of days lies past the year 9999, and every booking would fail on the date.
NEOCLOUD_MAX_BOOKING_DAYS = env_int("NEOCLOUD_MAX_BOOKING_DAYS", 365, minimum=1, maximum=36500)
# The currency every price and bill is in (ISO 4217, three capital letters): one per installation, so that
# amounts on one statement always add up (docs/metering.md).
NEOCLOUD_CURRENCY = env_str("NEOCLOUD_CURRENCY", "USD")
if not (len(NEOCLOUD_CURRENCY) == 3 and NEOCLOUD_CURRENCY.isascii() and NEOCLOUD_CURRENCY.isupper()):
    raise ImproperlyConfigured(
        f"NEOCLOUD_CURRENCY must be an ISO 4217 code such as USD, not {NEOCLOUD_CURRENCY!r}"
    )
NEOCLOUD_POWER_SYNC_SECONDS = env_float("NEOCLOUD_POWER_SYNC_SECONDS", 60.0, minimum=1)
# How often the scheduler queues the network drift check (every managed switch port read back; issue 18),
# once some site's network is managed; 0 never.
NEOCLOUD_NETWORK_DRIFT_SECONDS = env_float("NEOCLOUD_NETWORK_DRIFT_SECONDS", 300.0, minimum=0)
# A network step that finds servers of its reservation on the same switch still running the steps before it
# waits for them at most this long, so that one switch session moves them all (engine/switch_batch.py); 0 never.
# Off by default: the wait holds a worker thread, and steps that find the switch busy already park and join
# the next batch (bench/network_handover.py, 32 servers on 8 threads: +4.3 s with 0, +7.4 s with 2).
NEOCLOUD_SWITCH_BATCH_WAIT_SECONDS = env_float("NEOCLOUD_SWITCH_BATCH_WAIT_SECONDS", 0.0, minimum=0)

# Fast-track (Ironic's [deploy]fast_track, off by default there too): after a wipe the deploy agent stays up in
# the ramdisk, heartbeating every HEARTBEAT seconds, and a deploy to that server streams at once instead of
# power cycling it through a firmware self-test into the ramdisk. An agent that missed MISSED heartbeats is
# powered off through the BMC by the scheduler (the cold path again).
# A server's power-on self-test as the catalog estimates it before any deploy of its type was measured
# (services/warm_pool.expected_ready_seconds; 8-GPU servers take 3-5 minutes).
NEOCLOUD_POST_SECONDS_ESTIMATE = env_float("NEOCLOUD_POST_SECONDS_ESTIMATE", 180.0, minimum=0)
NEOCLOUD_FAST_TRACK = env_bool("NEOCLOUD_FAST_TRACK", False)
NEOCLOUD_FAST_TRACK_HEARTBEAT_SECONDS = env_float("NEOCLOUD_FAST_TRACK_HEARTBEAT_SECONDS", 10.0, minimum=0.2)
NEOCLOUD_FAST_TRACK_MISSED_HEARTBEATS = env_int("NEOCLOUD_FAST_TRACK_MISSED_HEARTBEATS", 3, minimum=1)
NEOCLOUD_BMC_TIMEOUT_SECONDS = env_float("NEOCLOUD_BMC_TIMEOUT_SECONDS", 5.0, minimum=0.1)
# Playbook runs for several nodes that start together share one ansible-playbook process (one play, many
# hosts). A run waits until no other node joined for QUIET seconds, at most MAX_WAIT seconds; 0 disables.
NEOCLOUD_ANSIBLE_BATCH_QUIET_SECONDS = env_float("NEOCLOUD_ANSIBLE_BATCH_QUIET_SECONDS", 0.4, minimum=0)
NEOCLOUD_ANSIBLE_BATCH_MAX_WAIT_SECONDS = env_float("NEOCLOUD_ANSIBLE_BATCH_MAX_WAIT_SECONDS", 2.0, minimum=0)
NEOCLOUD_ANSIBLE_BATCH_MAX_HOSTS = env_int("NEOCLOUD_ANSIBLE_BATCH_MAX_HOSTS", 50, minimum=1)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "filters": {"request_id": {"()": "webapp.error_responses.RequestIdLogFilter"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("NEOCLOUD_LOG_LEVEL", "INFO")},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        "paramiko": {"level": "WARNING"},
        "django.request": {"filters": ["request_id"]},
    },
}
# Webhooks (provisioner/services/webhooks.py): seconds a customer's endpoint gets to answer one delivery;
# the first retry's delay, doubled at each failure up to the longest; and how long a delivery is retried
# before it is given up (a day).
# Webhook deliveries to loopback (tests, the demo, local tools): never in production, where a customer's URL
# must not reach the control plane's own services.
NEOCLOUD_WEBHOOK_ALLOW_LOOPBACK = env_bool("NEOCLOUD_WEBHOOK_ALLOW_LOOPBACK", not PRODUCTION)
NEOCLOUD_WEBHOOK_TIMEOUT_SECONDS = env_float("NEOCLOUD_WEBHOOK_TIMEOUT_SECONDS", 5.0, minimum=0.1)
NEOCLOUD_WEBHOOK_RETRY_SECONDS = env_float("NEOCLOUD_WEBHOOK_RETRY_SECONDS", 10.0, minimum=0.01)
NEOCLOUD_WEBHOOK_RETRY_MAX_SECONDS = env_float("NEOCLOUD_WEBHOOK_RETRY_MAX_SECONDS", 3600.0, minimum=0.01)
NEOCLOUD_WEBHOOK_GIVE_UP_SECONDS = env_float("NEOCLOUD_WEBHOOK_GIVE_UP_SECONDS", 86400.0, minimum=1)
