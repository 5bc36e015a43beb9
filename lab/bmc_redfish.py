"""A small Redfish service for lab servers, following the DMTF schema (DSP0266 / DSP8010).

It serves what a provisioner needs and nothing pretends: the service root (readable without
credentials, as the standard requires), ``SessionService/Sessions`` (POST a UserName/Password, get an
``X-Auth-Token`` and a ``Location``; DELETE to log out), HTTP basic auth as the alternative, the
``Systems`` collection and one ``ComputerSystem`` per simulated server with ``PowerState``, ``Boot``
(``BootSourceOverrideTarget/Enabled/Mode`` with their ``@Redfish.AllowableValues``, changed by PATCH)
and ``Actions/#ComputerSystem.Reset`` with ``ResetType@Redfish.AllowableValues``. Power changes are
applied before the response is sent. Errors use the Redfish extended error shape.

We do not use sushy-tools: its fake driver applies power changes after random delays and accepts any
password, which would hide exactly the bugs the contract tests look for.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from lab import post
from lab.machine import SimulatedServer
from provisioner.drivers.base import BootDevice, BootMode, BootSetting, PowerState
from provisioner.httputil import ClosingHandlerMixin

ROOT = "/redfish/v1"
SESSIONS = f"{ROOT}/SessionService/Sessions"
TARGET_BY_DEVICE = {BootDevice.PXE: "Pxe", BootDevice.DISK: "Hdd"}
DEVICE_BY_TARGET = {v: k for k, v in TARGET_BY_DEVICE.items()}
MODE_BY_BOOTMODE = {BootMode.UEFI: "UEFI", BootMode.LEGACY: "Legacy"}
BOOTMODE_BY_MODE = {v: k for k, v in MODE_BY_BOOTMODE.items()}
RESET_TYPES = ["On", "ForceOff", "GracefulShutdown", "ForceRestart", "PushPowerButton"]
DROP_HOLD_SECONDS = 30.0  # a "dropping" BMC holds the connection this long without answering


class RedfishError(Exception):
    def __init__(self, status: HTTPStatus, message_id: str, message: str) -> None:
        super().__init__(message)
        self.status, self.message_id, self.message = status, message_id, message


class RedfishService:
    """The state of one Redfish BMC: its systems, its account, its sessions."""

    def __init__(self, systems: dict[str, SimulatedServer], username: str, password: str) -> None:
        self.systems = systems
        self._username = username
        self._password = password
        self._sessions: dict[str, str] = {}  # token -> session id
        self._lock = threading.Lock()

    def credentials_ok(self, username: str, password: str) -> bool:
        # compare_digest: a lab BMC should not leak the password through timing either
        return hmac.compare_digest(username.encode(), self._username.encode()) and hmac.compare_digest(
            password.encode(), self._password.encode()
        )

    def open_session(self, username: str, password: str) -> tuple[str, str]:
        if not self.credentials_ok(username, password):
            raise RedfishError(HTTPStatus.UNAUTHORIZED, "Base.1.8.NoValidSession", "Invalid credentials.")
        token = secrets.token_hex(16)
        session_id = secrets.token_hex(4)
        with self._lock:
            self._sessions[token] = session_id
        return token, session_id

    def close_session(self, session_id: str) -> bool:
        with self._lock:
            for token, sid in list(self._sessions.items()):
                if sid == session_id:
                    del self._sessions[token]
                    return True
        return False

    def token_ok(self, token: str) -> bool:
        with self._lock:
            return token in self._sessions

    def faults_of(self) -> Any:
        # one BMC, one set of faults: those of its first system's node
        return next(iter(self.systems.values())).faults()


def _error_body(message_id: str, message: str) -> dict[str, Any]:
    return {
        "error": {
            "code": message_id,
            "message": message,
            "@Message.ExtendedInfo": [{"MessageId": message_id, "Message": message, "Severity": "Warning"}],
        }
    }


def system_resource(system_id: str, server: SimulatedServer) -> dict[str, Any]:
    """The ComputerSystem resource of one simulated server."""
    setting = server.boot_setting()
    faults = server.faults()
    targets = [t for d, t in TARGET_BY_DEVICE.items() if d.value not in faults.unsupported_boot]
    modes = [m for b, m in MODE_BY_BOOTMODE.items() if b.value not in faults.unsupported_boot]
    path = f"{ROOT}/Systems/{system_id}"
    return {
        "@odata.type": "#ComputerSystem.v1_20_0.ComputerSystem",
        "@odata.id": path,
        "Id": system_id,
        "Name": server.spec.name,
        "SystemType": "Physical",
        "Manufacturer": "Neocloud Lab",
        "Model": server.spec.server_type,
        "UUID": str(_uuid_for(server.spec.name)),
        "PowerState": "On" if server.reported_power_state() == PowerState.ON else "Off",
        # where the power-on self-test is (lab.post), as the DMTF BootProgress property reports it
        "BootProgress": {
            "LastState": post.boot_progress(server.node_dir, server.power_state() == PowerState.ON)
        },
        "Status": {"State": "Enabled", "Health": "OK"},
        "Boot": {
            "BootSourceOverrideTarget": TARGET_BY_DEVICE[setting.device],
            "BootSourceOverrideTarget@Redfish.AllowableValues": ["None", *targets],
            "BootSourceOverrideEnabled": "Continuous" if setting.persistent else "Once",
            "BootSourceOverrideEnabled@Redfish.AllowableValues": ["Disabled", "Once", "Continuous"],
            "BootSourceOverrideMode": MODE_BY_BOOTMODE[setting.mode],
            "BootSourceOverrideMode@Redfish.AllowableValues": modes,
        },
        "Actions": {
            "#ComputerSystem.Reset": {
                "target": f"{path}/Actions/ComputerSystem.Reset",
                "ResetType@Redfish.AllowableValues": RESET_TYPES,
            }
        },
    }


def _uuid_for(name: str) -> str:
    digest = hashlib.sha256(name.encode()).hexdigest()
    return f"{digest[:8]}-{digest[8:12]}-{digest[12:16]}-{digest[16:20]}-{digest[20:32]}"


def apply_boot_patch(server: SimulatedServer, boot: dict[str, Any]) -> None:
    """Apply a PATCH of ``Boot``; missing properties keep their current value."""
    current = server.boot_setting()
    target = boot.get("BootSourceOverrideTarget", TARGET_BY_DEVICE[current.device])
    enabled = boot.get("BootSourceOverrideEnabled", "Continuous" if current.persistent else "Once")
    mode = boot.get("BootSourceOverrideMode", MODE_BY_BOOTMODE[current.mode])
    if enabled == "Disabled" or target == "None":
        # drop the one-time override: the persistent device applies again
        server.set_boot(server.persistent)
        return
    if target not in DEVICE_BY_TARGET:
        raise RedfishError(
            HTTPStatus.BAD_REQUEST, "Base.1.8.PropertyValueNotInList", f"BootSourceOverrideTarget {target!r}."
        )
    if mode not in BOOTMODE_BY_MODE or enabled not in ("Once", "Continuous"):
        raise RedfishError(
            HTTPStatus.BAD_REQUEST, "Base.1.8.PropertyValueNotInList", "BootSourceOverrideMode/Enabled."
        )
    setting = BootSetting(
        DEVICE_BY_TARGET[target], persistent=enabled == "Continuous", mode=BOOTMODE_BY_MODE[mode]
    )
    try:
        server.set_boot(setting)
    except ValueError as err:
        raise RedfishError(HTTPStatus.BAD_REQUEST, "Base.1.8.PropertyValueNotInList", str(err)) from err


def apply_reset(server: SimulatedServer, reset_type: str) -> None:
    if reset_type == "On":
        server.power_on()
    elif reset_type in ("ForceOff", "GracefulShutdown"):
        server.power_off()
    elif reset_type == "ForceRestart":
        server.reset()
    elif reset_type == "PushPowerButton":
        server.power_off() if server.power_state() == PowerState.ON else server.power_on()
    else:
        raise RedfishError(
            HTTPStatus.BAD_REQUEST, "Base.1.8.ActionParameterNotSupported", f"ResetType {reset_type!r}."
        )


class RedfishHandler(ClosingHandlerMixin, BaseHTTPRequestHandler):
    server: RedfishHttpServer
    protocol_version = "HTTP/1.1"  # keep-alive, as BMC clients expect

    def log_message(self, format: str, *args: Any) -> None:
        return None  # request lines may carry session ids; the lab keeps its logs quiet

    # --- plumbing ---------------------------------------------------------------------------------

    def _send(
        self, status: HTTPStatus, body: dict[str, Any] | None, headers: dict[str, str] | None = None
    ) -> None:
        data = json.dumps(body).encode() if body is not None else b""
        self.send_response(status)
        self.send_header("OData-Version", "4.0")
        if body is not None:
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("ETag", f'W/"{hashlib.sha256(data).hexdigest()[:16]}"')
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> dict[str, Any]:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            data = json.loads(raw or b"{}")
        except json.JSONDecodeError as err:
            raise RedfishError(HTTPStatus.BAD_REQUEST, "Base.1.8.MalformedJSON", "Malformed JSON.") from err
        if not isinstance(data, dict):
            raise RedfishError(HTTPStatus.BAD_REQUEST, "Base.1.8.MalformedJSON", "Expected an object.")
        return data

    def _authorized(self) -> bool:
        service = self.server.service
        token = self.headers.get("X-Auth-Token")
        if token:
            return service.token_ok(token)
        auth = self.headers.get("Authorization", "")
        if auth.startswith("Basic "):
            try:
                user, _, password = base64.b64decode(auth[6:]).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                return False
            return service.credentials_ok(user, password)
        return False

    def _dispatch(self, method: str) -> None:
        faults = self.server.service.faults_of()
        if faults.drop:
            time.sleep(DROP_HOLD_SECONDS)
            self.close_connection = True
            return
        if faults.delay:
            time.sleep(faults.delay)
        path = self.path.split("?", 1)[0].rstrip("/") or "/"
        try:
            status, body, headers = self._route(method, path)
        except RedfishError as err:
            status, body, headers = err.status, _error_body(err.message_id, err.message), {}
        if status == HTTPStatus.UNAUTHORIZED:
            headers = {**headers, "WWW-Authenticate": 'Basic realm="neocloud-lab"'}
        self._send(status, body, headers)

    def _route(self, method: str, path: str) -> tuple[HTTPStatus, dict[str, Any] | None, dict[str, str]]:
        service = self.server.service
        if method == "GET" and path == "/redfish":
            return HTTPStatus.OK, {"v1": f"{ROOT}/"}, {}
        if method == "GET" and path == ROOT:
            return HTTPStatus.OK, self._service_root(), {}
        if method == "POST" and path == SESSIONS:
            body = self._body()
            token, sid = service.open_session(str(body.get("UserName", "")), str(body.get("Password", "")))
            location = f"{SESSIONS}/{sid}"
            resource = {
                "@odata.type": "#Session.v1_6_0.Session",
                "@odata.id": location,
                "Id": sid,
                "Name": "User Session",
                "UserName": body.get("UserName"),
            }
            return HTTPStatus.CREATED, resource, {"X-Auth-Token": token, "Location": location}
        if not self._authorized():
            raise RedfishError(HTTPStatus.UNAUTHORIZED, "Base.1.8.NoValidSession", "Authentication required.")
        if method == "DELETE" and path.startswith(SESSIONS + "/"):
            if service.close_session(path.rsplit("/", 1)[1]):
                return HTTPStatus.NO_CONTENT, None, {}
            raise RedfishError(HTTPStatus.NOT_FOUND, "Base.1.8.ResourceMissingAtURI", "No such session.")
        if method == "GET" and path == f"{ROOT}/SessionService":
            return HTTPStatus.OK, self._session_service(), {}
        if method == "GET" and path == SESSIONS:
            return HTTPStatus.OK, {"@odata.id": SESSIONS, "Members": [], "Members@odata.count": 0}, {}
        if method == "GET" and path == f"{ROOT}/Systems":
            members = [{"@odata.id": f"{ROOT}/Systems/{sid}"} for sid in service.systems]
            return (
                HTTPStatus.OK,
                {
                    "@odata.type": "#ComputerSystemCollection.ComputerSystemCollection",
                    "@odata.id": f"{ROOT}/Systems",
                    "Name": "Computer System Collection",
                    "Members": members,
                    "Members@odata.count": len(members),
                },
                {},
            )
        parts = path.split("/")
        if len(parts) >= 5 and path.startswith(f"{ROOT}/Systems/"):
            system_id = parts[4]
            server = service.systems.get(system_id)
            if server is None:
                raise RedfishError(
                    HTTPStatus.NOT_FOUND, "Base.1.8.ResourceMissingAtURI", f"No system {system_id}."
                )
            rest = "/".join(parts[5:])
            if rest == "" and method == "GET":
                return HTTPStatus.OK, system_resource(system_id, server), {}
            if rest == "" and method == "PATCH":
                body = self._body()
                boot = body.get("Boot")
                if not isinstance(boot, dict) or set(body) - {"Boot"}:
                    raise RedfishError(
                        HTTPStatus.BAD_REQUEST, "Base.1.8.PropertyNotWritable", "Only Boot can be changed."
                    )
                apply_boot_patch(server, boot)
                return HTTPStatus.OK, system_resource(system_id, server), {}
            if rest == "Actions/ComputerSystem.Reset" and method == "POST":
                apply_reset(server, str(self._body().get("ResetType", "")))
                return HTTPStatus.NO_CONTENT, None, {}
        raise RedfishError(HTTPStatus.NOT_FOUND, "Base.1.8.ResourceMissingAtURI", f"{method} {path}.")

    def _service_root(self) -> dict[str, Any]:
        return {
            "@odata.type": "#ServiceRoot.v1_15_0.ServiceRoot",
            "@odata.id": f"{ROOT}/",
            "Id": "RootService",
            "Name": "Neocloud Lab Redfish Service",
            "RedfishVersion": "1.15.0",
            "UUID": _uuid_for(",".join(self.server.service.systems)),
            "Systems": {"@odata.id": f"{ROOT}/Systems"},
            "SessionService": {"@odata.id": f"{ROOT}/SessionService"},
            "Links": {"Sessions": {"@odata.id": SESSIONS}},
        }

    def _session_service(self) -> dict[str, Any]:
        return {
            "@odata.type": "#SessionService.v1_1_8.SessionService",
            "@odata.id": f"{ROOT}/SessionService",
            "Id": "SessionService",
            "Name": "Session Service",
            "ServiceEnabled": True,
            "SessionTimeout": 600,
            "Sessions": {"@odata.id": SESSIONS},
        }

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")


class RedfishHttpServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: str, port: int, service: RedfishService) -> None:
        self.service = service
        super().__init__((address, port), RedfishHandler)
