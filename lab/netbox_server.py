"""A real NetBox for the tests, the bench and the demo: the official package from PyPI, served by gunicorn on
loopback, on PostgreSQL and Redis (development only, as all of ``lab/``).

What it takes, and what is cached between runs:
- Python 3.12 (NetBox 4.7 needs >= 3.12; the project runs on 3.11): ``NEOCLOUD_NETBOX_PYTHON``, else
  ``python3.12`` on PATH, else pyenv's ``~/.pyenv/versions/3.12.*``. A machine without one needs it installed
  (Debian 13's ``python3.12``, pyenv, or uv's managed Pythons) and named by ``NEOCLOUD_NETBOX_PYTHON``;
- a virtual environment with ``netbox==NETBOX_VERSION`` and gunicorn, made once under
  ``~/.cache/neocloud/netbox/<version>`` (``NEOCLOUD_CACHE`` moves it): about a minute to make;
- a template database ``neocloud_netbox_<version>`` on the PostgreSQL server, migrated once (``netbox
  migrate`` on an empty database takes minutes); each run copies it into a database of its own
  (``CREATE DATABASE ... TEMPLATE``, a second) and drops that database when it stops;
- Redis at 127.0.0.1:6379 (NetBox's caches and task queue), databases 14 and 15.

Nothing here is skipped quietly: a part that is missing or fails raises :class:`NetboxLabError` with what
failed and NetBox's own output, so the tests that need NetBox fail loudly.

:class:`NetboxClient` populates NetBox through its own REST API the way a datacenter team models GPU servers
(sites, racks, device types and roles, devices with an out-of-band IP on a management interface, interfaces
with MAC address objects, GPU inventory items, custom fields, tags, cables to switch ports).
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import requests
from psycopg import sql

NETBOX_VERSION = "4.7.3"
_TEMPLATE_DB = "neocloud_netbox_" + NETBOX_VERSION.replace(".", "_")
_REDIS = {"HOST": "127.0.0.1", "PORT": 6379}
_START_TIMEOUT = 120.0


class NetboxLabError(RuntimeError):
    """The lab NetBox cannot be prepared or started; the message says which part and why."""


def cache_root() -> Path:
    return Path(os.environ.get("NEOCLOUD_CACHE") or Path.home() / ".cache" / "neocloud") / "netbox"


def venv_dir() -> Path:
    return cache_root() / NETBOX_VERSION


def _is_312(python: str) -> bool:
    try:
        done = subprocess.run(
            [python, "-c", "import sys; sys.exit(sys.version_info[:2] != (3, 12))"],
            capture_output=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def find_python() -> str:
    """A Python 3.12 for NetBox's virtual environment (see the module docstring)."""
    named = os.environ.get("NEOCLOUD_NETBOX_PYTHON")
    if named:
        if not _is_312(named):
            raise NetboxLabError(f"NEOCLOUD_NETBOX_PYTHON={named} is not a working Python 3.12")
        return named
    pyenv = sorted(glob.glob(str(Path.home() / ".pyenv" / "versions" / "3.12.*" / "bin" / "python3.12")))
    for candidate in [*reversed(pyenv), shutil.which("python3.12") or ""]:
        if candidate and _is_312(candidate):
            return candidate
    raise NetboxLabError(
        f"NetBox {NETBOX_VERSION} needs Python 3.12 and none was found (python3.12 on PATH, "
        "~/.pyenv/versions/3.12.*): install one and name it with NEOCLOUD_NETBOX_PYTHON"
    )


def _run(cmd: list[str], what: str, *, env: dict[str, str] | None = None, timeout: float = 1800) -> str:
    try:
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NetboxLabError(f"{what} failed: {exc}") from None
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-25:])
        raise NetboxLabError(f"{what} failed (exit {done.returncode}):\n{tail}")
    return done.stdout


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure_venv() -> Path:
    """NetBox's virtual environment, made once (a marker file says it is complete)."""
    venv = venv_dir()
    ready = venv / ".neocloud-ready"
    if ready.exists():
        return venv
    with _file_lock(cache_root() / f".{NETBOX_VERSION}.lock"):
        if ready.exists():
            return venv
        shutil.rmtree(venv, ignore_errors=True)
        python = find_python()
        _run([python, "-m", "venv", str(venv)], f"making NetBox's virtual environment with {python}")
        _run(
            [str(venv / "bin" / "pip"), "install", "-q", f"netbox=={NETBOX_VERSION}", "gunicorn"],
            f"pip install netbox=={NETBOX_VERSION}",
        )
        ready.write_text(NETBOX_VERSION + "\n")
    return venv


def postgres_url() -> str:
    """The PostgreSQL server NetBox's databases go on: NEOCLOUD_NETBOX_POSTGRES_URL, else the tests' server."""
    return (
        os.environ.get("NEOCLOUD_NETBOX_POSTGRES_URL")
        or os.environ.get("NEOCLOUD_TEST_POSTGRES_URL")
        or "postgres://postgres@127.0.0.1:5432/postgres"
    )


def _admin(pg_url: str) -> psycopg.Connection[Any]:
    try:
        return psycopg.connect(pg_url, autocommit=True, connect_timeout=5)
    except psycopg.Error as exc:
        raise NetboxLabError(f"NetBox needs PostgreSQL: cannot connect to {_where(pg_url)}: {exc}") from None


def _where(pg_url: str) -> str:
    parts = urlsplit(pg_url)
    return f"{parts.hostname or 'localhost'}:{parts.port or 5432}"


def database_exists(name: str, pg_url: str | None = None) -> bool:
    with _admin(pg_url or postgres_url()) as conn:
        return _db_exists(conn, name)


def _db_exists(conn: psycopg.Connection[Any], name: str) -> bool:
    return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is not None


def _drop(conn: psycopg.Connection[Any], name: str) -> None:
    conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def _config(root: Path, pg_url: str, database: str, *, secret_key: str, pepper: str) -> dict[str, str]:
    """NetBox's configuration.py for one instance under ``root``; returns the environment that selects it."""
    parts = urlsplit(pg_url)
    db = {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": database,
        "USER": parts.username or "postgres",
        "PASSWORD": parts.password or "",
        "HOST": parts.hostname or "127.0.0.1",
        "PORT": str(parts.port or 5432),
        "CONN_MAX_AGE": 300,
    }
    conf = root / "conf"
    conf.mkdir(parents=True, exist_ok=True)
    (root / "media").mkdir(exist_ok=True)
    (conf / "configuration.py").write_text(
        "ALLOWED_HOSTS = ['127.0.0.1', 'localhost']\n"
        f"DATABASES = {{'default': {db!r}}}\n"
        f"REDIS = {{'tasks': {{**{_REDIS!r}, 'DATABASE': 14, 'SSL': False}}, "
        f"'caching': {{**{_REDIS!r}, 'DATABASE': 15, 'SSL': False}}}}\n"
        f"SECRET_KEY = {secret_key!r}\n"
        f"API_TOKEN_PEPPERS = {{1: {pepper!r}}}\n"
        "CENSUS_REPORTING_ENABLED = False\n"
        "ISOLATED_DEPLOYMENT = True\n"
        "RELEASE_CHECK_URL = None\n"
        "LOGIN_REQUIRED = True\n"
        f"MEDIA_ROOT = {str(root / 'media')!r}\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "DATABASE_URL"))}
    env["NETBOX_ROOT"] = str(root)
    return env


def ensure_template(pg_url: str | None = None) -> str:
    """The migrated template database (made once per PostgreSQL server and NetBox version); its name."""
    pg_url = pg_url or postgres_url()
    venv = ensure_venv()
    with _admin(pg_url) as conn:
        if _db_exists(conn, _TEMPLATE_DB):
            return _TEMPLATE_DB
        # one builder at a time per server; the finished template appears under its name only when complete
        conn.execute("SELECT pg_advisory_lock(hashtext(%s))", (_TEMPLATE_DB,))
        try:
            if _db_exists(conn, _TEMPLATE_DB):
                return _TEMPLATE_DB
            building = _TEMPLATE_DB + "_building"
            _drop(conn, building)
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(building)))
            with tempfile.TemporaryDirectory(prefix="netbox-migrate-") as root:
                env = _config(
                    Path(root), pg_url, building, secret_key=_random_secret(), pepper=_random_secret()
                )
                _run([str(venv / "bin" / "netbox"), "migrate", "--no-input"], "netbox migrate", env=env)
            conn.execute(
                sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                    sql.Identifier(building), sql.Identifier(_TEMPLATE_DB)
                )
            )
        finally:
            conn.execute("SELECT pg_advisory_unlock(hashtext(%s))", (_TEMPLATE_DB,))
    return _TEMPLATE_DB


def _random_secret() -> str:
    """A SECRET_KEY or API token pepper (NetBox wants at least 50 characters)."""
    return secrets.token_urlsafe(48)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


_BOOTSTRAP = """
from users.models import Token, User
user = User.objects.filter(username='{user}').first()
user = user or User.objects.create_superuser('{user}', '{user}@lab.invalid', '{password}')
Token.objects.filter(user=user).delete()  # a database copied from a saved one keeps none of its tokens
v1 = Token(user=user, version=1, token='{v1}')
v1.save()
v2 = Token(user=user, version=2)
v2.save()
print('V2', v2.key, v2.token)
"""


class NetboxServer:
    """One running NetBox: its own database (a copy of the template), gunicorn on a free loopback port.

    ``url``: the web root; ``token_v1`` (``Authorization: Token <it>``) and ``token_v2`` (the whole
    ``nbt_<key>.<secret>``, sent as ``Authorization: Bearer <it>``) belong to a superuser.
    """

    def __init__(self, pg_url: str | None = None, *, workers: int = 2, template: str = "") -> None:
        """``template``: a database saved by :meth:`save_as_template` to start from (default: the migrated,
        empty one)."""
        self.pg_url = pg_url or postgres_url()
        self.template = template
        self.workers = workers
        self.database = f"neocloud_netbox_run_{os.getpid()}_{secrets.token_hex(3)}"
        self.root = Path(tempfile.mkdtemp(prefix="netbox-lab-"))
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.token_v1 = secrets.token_hex(20)
        self.token_v2 = ""
        self.process: subprocess.Popen[bytes] | None = None
        self.env: dict[str, str] = {}
        self.log_path = self.root / "gunicorn.log"

    def start(self) -> NetboxServer:
        template = self.template or ensure_template(self.pg_url)
        venv = venv_dir()
        with _admin(self.pg_url) as conn:
            conn.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                    sql.Identifier(self.database), sql.Identifier(template)
                )
            )
        try:
            env = _config(
                self.root, self.pg_url, self.database, secret_key=_random_secret(), pepper=_random_secret()
            )
            out = _run(
                [
                    str(venv / "bin" / "netbox"),
                    "shell",
                    "-c",
                    _BOOTSTRAP.format(user="neocloud", password=secrets.token_urlsafe(16), v1=self.token_v1),
                ],
                "creating NetBox's superuser and API tokens",
                env=env,
            )
            for line in out.splitlines():
                if line.startswith("V2 "):
                    _, key, plain = line.split()
                    self.token_v2 = f"nbt_{key}.{plain}"
            if not self.token_v2:
                raise NetboxLabError(f"NetBox made no v2 token: {out[-500:]}")
            self.env = env
            self.start_serving()
        except BaseException:
            self.stop()
            raise
        return self

    def start_serving(self) -> None:
        """Start gunicorn on this NetBox's database and wait until it answers."""
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [
                    str(venv_dir() / "bin" / "gunicorn"),
                    "netbox.wsgi",
                    "--bind",
                    f"127.0.0.1:{self.port}",
                    "--workers",
                    str(self.workers),
                    "--threads",
                    "4",
                    "--timeout",
                    "120",
                ],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise NetboxLabError(f"NetBox's gunicorn exited at start:\n{self.log_tail()}")
            with contextlib.suppress(requests.RequestException):
                r = requests.get(
                    f"{self.url}/api/status/", headers={"Authorization": f"Token {self.token_v1}"}, timeout=5
                )
                if r.status_code == 200:
                    return
            time.sleep(0.5)
        raise NetboxLabError(f"NetBox did not answer within {_START_TIMEOUT:.0f} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def stop(self) -> None:
        self.stop_serving()
        with contextlib.suppress(NetboxLabError, psycopg.Error), _admin(self.pg_url) as conn:
            _drop(conn, self.database)
        shutil.rmtree(self.root, ignore_errors=True)

    def stop_serving(self) -> None:
        """Stop gunicorn (its database stays)."""
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGINT)  # gunicorn's quick shutdown
            try:
                self.process.wait(timeout=3)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.process = None

    def save_as_template(self, name: str) -> None:
        """Stop serving and keep this NetBox's data as database ``name`` (replacing one of that name), for a
        later ``NetboxServer(template=name)``: what took long to populate is populated once."""
        self.stop_serving()
        with _admin(self.pg_url) as conn:
            _drop(conn, name)
            conn.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                    sql.Identifier(name), sql.Identifier(self.database)
                )
            )

    def reset(self, keep_sites: Iterable[str] = (), keep_racks: Iterable[str] = ()) -> None:
        """Remove what tests add (devices with their interfaces, inventory items and cables; IP and MAC
        addresses; sites and racks but those named), keeping users, tokens, types, roles and custom fields."""
        with psycopg.connect(self._db_url(), autocommit=True) as conn:
            conn.execute(
                "TRUNCATE dcim_device, ipam_ipaddress, dcim_macaddress, dcim_cable, dcim_cabletermination, "
                "dcim_cablepath, extras_taggeditem, extras_cachedvalue, core_objectchange CASCADE"
            )
            sites = list(keep_sites)
            conn.execute(
                "DELETE FROM dcim_rack WHERE NOT (name = ANY(%s) AND site_id IN "
                "(SELECT id FROM dcim_site WHERE slug = ANY(%s)))",
                (list(keep_racks), sites),
            )
            conn.execute("DELETE FROM dcim_site WHERE NOT slug = ANY(%s)", (sites,))

    def _db_url(self) -> str:
        parts = urlsplit(self.pg_url)
        return parts._replace(path="/" + self.database).geturl()

    def __enter__(self) -> NetboxServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class NetboxRequestError(RuntimeError):
    pass


class NetboxClient:
    """Writes to NetBox through its REST API as a datacenter team would (with a superuser's token).

    Object types (device types, roles, custom fields, tags, choice sets) are made on first use and reused.
    """

    def __init__(self, url: str, token: str, *, timeout: float = 60.0) -> None:
        self.api = url.rstrip("/") + "/api"
        self.timeout = timeout
        self.session = requests.Session()
        auth = f"Bearer {token}" if token.startswith("nbt_") else f"Token {token}"
        self.session.headers.update({"Authorization": auth, "Accept": "application/json"})
        self._ids: dict[tuple[str, str], int] = {}

    # raw REST
    def request(self, method: str, path: str, **kw: Any) -> Any:
        r = self.session.request(method, f"{self.api}/{path.strip('/')}/", timeout=self.timeout, **kw)
        if r.status_code >= 400:
            raise NetboxRequestError(f"{method} {path}: HTTP {r.status_code}: {r.text[:800]}")
        return r.json() if r.content else None

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params=params)

    def post(self, path: str, data: Any) -> Any:
        return self.request("POST", path, json=data)

    def patch(self, path: str, pk: int, data: dict[str, Any]) -> Any:
        return self.request("PATCH", f"{path}/{pk}", json=data)

    def delete(self, path: str, pk: int) -> None:
        self.request("DELETE", f"{path}/{pk}")

    def _slugged(self, path: str, slug: str, data: dict[str, Any]) -> int:
        key = (path, slug)
        if key not in self._ids:
            found = self.get(path, slug=slug)["results"]
            self._ids[key] = found[0]["id"] if found else self.post(path, {"slug": slug, **data})["id"]
        return self._ids[key]

    def forget(self) -> None:
        """Forget cached ids of objects a reset may have removed (sites, tags)."""
        self._ids = {k: v for k, v in self._ids.items() if k[0] not in ("extras/tags", "dcim/sites")}

    # object types
    def manufacturer(self, slug: str = "generic") -> int:
        return self._slugged("dcim/manufacturers", slug, {"name": slug.title()})

    def device_type(self, slug: str) -> int:
        return self._slugged("dcim/device-types", slug, {"model": slug, "manufacturer": self.manufacturer()})

    def device_role(self, slug: str) -> int:
        return self._slugged("dcim/device-roles", slug, {"name": slug, "color": "9e9e9e"})

    def item_role(self, slug: str) -> int:
        return self._slugged("dcim/inventory-item-roles", slug, {"name": slug, "color": "4caf50"})

    def tag(self, slug: str) -> int:
        return self._slugged("extras/tags", slug, {"name": slug})

    def choice_set(self, name: str, choices: list[tuple[str, str]]) -> int:
        key = ("extras/custom-field-choice-sets", name)
        if key not in self._ids:
            found = self.get("extras/custom-field-choice-sets", name=name)["results"]
            self._ids[key] = (
                found[0]["id"]
                if found
                else self.post(
                    "extras/custom-field-choice-sets",
                    {"name": name, "extra_choices": [list(c) for c in choices]},
                )["id"]
            )
        return self._ids[key]

    def custom_field(self, name: str, type_: str, **extra: Any) -> int:
        """A device custom field ``name`` of ``type_`` (text, integer, select, multiselect, object); one of
        another type is deleted and made again (its values go with it)."""
        found = self.get("extras/custom-fields", name=name)["results"]
        if found and found[0]["type"]["value"] == type_:
            return int(found[0]["id"])
        if found:
            self.delete("extras/custom-fields", found[0]["id"])
        return int(
            self.post(
                "extras/custom-fields",
                {"name": name, "type": type_, "object_types": ["dcim.device"], **extra},
            )["id"]
        )

    # the fleet
    def site(self, slug: str, name: str = "") -> int:
        """The site ``slug``, made if NetBox has none."""
        return self._slugged("dcim/sites", slug, {"name": name or slug, "status": "active"})

    def rack(self, site_id: int, name: str) -> int:
        """The rack ``name`` of the site, made if NetBox has none."""
        found = self.get("dcim/racks", site_id=site_id, name=name)["results"]
        return int(found[0]["id"]) if found else self.add_rack(site_id, name)

    def add_site(self, slug: str, name: str = "", status: str = "active") -> int:
        return int(self.post("dcim/sites", {"slug": slug, "name": name or slug, "status": status})["id"])

    def add_rack(self, site_id: int, name: str) -> int:
        return int(self.post("dcim/racks", {"site": site_id, "name": name, "status": "active"})["id"])

    def add_device(
        self,
        name: str | None,
        *,
        site_id: int,
        rack_id: int | None = None,
        device_type: str = "h100-8x",
        role: str = "gpu-server",
        serial: str = "",
        status: str = "active",
        custom_fields: dict[str, Any] | None = None,
        oob_ip: str | None = None,
        bmc_mac: str | None = None,
    ) -> int:
        """A device; with ``oob_ip``, a management-only interface ``bmc`` holding that address as its OOB IP."""
        data: dict[str, Any] = {
            "name": name,
            "site": site_id,
            "rack": rack_id,
            "device_type": self.device_type(device_type),
            "role": self.device_role(role),
            "serial": serial,
            "status": status,
        }
        if custom_fields:
            data["custom_fields"] = custom_fields
        pk = int(self.post("dcim/devices", data)["id"])
        if oob_ip is not None or bmc_mac is not None:
            bmc = self.add_interface(pk, "bmc", bmc_mac, mgmt_only=True)
            if oob_ip is not None:
                self.set_oob_ip(pk, bmc, oob_ip)
        return pk

    def set_oob_ip(self, device_id: int, interface_id: int, address: str | None) -> None:
        if address is None:
            self.patch("dcim/devices", device_id, {"oob_ip": None})
            return
        ip = self.post(
            "ipam/ip-addresses",
            {
                "address": address,
                "assigned_object_type": "dcim.interface",
                "assigned_object_id": interface_id,
            },
        )
        self.patch("dcim/devices", device_id, {"oob_ip": ip["id"]})

    def add_interface(
        self,
        device_id: int,
        name: str,
        mac: str | None,
        *,
        mgmt_only: bool = False,
        tags: tuple[str, ...] = (),
        type_: str = "1000base-t",
    ) -> int:
        data: dict[str, Any] = {"device": device_id, "name": name, "type": type_, "mgmt_only": mgmt_only}
        if tags:
            data["tags"] = [self.tag(t) for t in tags]
        pk = int(self.post("dcim/interfaces", data)["id"])
        if mac:
            self.set_mac(pk, mac)
        return pk

    def set_mac(self, interface_id: int, mac: str) -> None:
        """The interface's primary MAC: a MAC address object (NetBox >= 4.2) assigned to it."""
        obj = self.post(
            "dcim/mac-addresses",
            {
                "mac_address": mac,
                "assigned_object_type": "dcim.interface",
                "assigned_object_id": interface_id,
            },
        )
        self.patch("dcim/interfaces", interface_id, {"primary_mac_address": obj["id"]})

    def add_inventory_item(self, device_id: int, name: str, *, role: str = "gpu", part_id: str = "") -> int:
        return int(
            self.post(
                "dcim/inventory-items",
                {"device": device_id, "name": name, "role": self.item_role(role), "part_id": part_id},
            )["id"]
        )

    def add_cable(self, a_interface: int, b_interface: int) -> int:
        return int(
            self.post(
                "dcim/cables",
                {
                    "a_terminations": [{"object_type": "dcim.interface", "object_id": a_interface}],
                    "b_terminations": [{"object_type": "dcim.interface", "object_id": b_interface}],
                    "status": "connected",
                },
            )["id"]
        )


def main() -> None:  # pragma: no cover - a developer's entry point
    """``python -m lab.netbox_server``: prepare (venv and template), or serve until interrupted."""
    if sys.argv[1:] == ["prepare"]:
        print(f"NetBox {NETBOX_VERSION}: venv {ensure_venv()}, template database {ensure_template()}")
        return
    with NetboxServer() as server:
        token_file = server.root / "token"
        token_file.touch(mode=0o600)
        token_file.write_text(server.token_v1 + "\n")
        print(f"NetBox {NETBOX_VERSION} at {server.url}; its API token is in {token_file}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()


if __name__ == "__main__":  # pragma: no cover
    main()
