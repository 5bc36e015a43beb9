"""Settings for the test suite: the embedded defaults with short leases and backoffs so that crash
recovery is observable in seconds, and a var/ of its own so tests never touch the demo's data."""

import os

os.environ.setdefault(
    "NEOCLOUD_VAR_DIR", os.path.join(os.path.dirname(os.path.dirname(__file__)), "var", "test")
)
os.environ.setdefault("NEOCLOUD_HEARTBEAT_SECONDS", "0.5")
os.environ.setdefault("NEOCLOUD_LEASE_TTL_SECONDS", "3")
os.environ.setdefault("NEOCLOUD_RETRY_BACKOFF_SECONDS", "0.05")
os.environ.setdefault("NEOCLOUD_LOG_LEVEL", "WARNING")
os.environ.setdefault(
    "NEOCLOUD_LAB_POST_SCALE", "0"
)  # lab servers boot at once (tests of POST set their own)

from webapp.settings import *  # noqa: F403

# A test database per test run, so that runs side by side (developers, CI) never share one.
_RUN = os.environ.setdefault("NEOCLOUD_TEST_RUN_ID", str(os.getpid()))
_DB: dict = DATABASES["default"]  # noqa: F405
if str(_DB["ENGINE"]).endswith("sqlite3"):
    _DB["TEST"]["NAME"] = str(VAR_DIR / f"test-neocloud-{_RUN}.sqlite3")  # noqa: F405
else:
    _DB["TEST"]["NAME"] = f"test_neocloud_{_RUN}"

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # fast logins in tests
