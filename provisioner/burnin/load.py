"""Load generators that run while the burn-in samples temperature, power, clocks and PCIe.

In order of preference on a real host: a bf16 matrix-multiply loop with PyTorch on every GPU
("torch-matmul"), NVIDIA's ``dcgmi diag`` ("dcgmi-diag-r1"/"dcgmi-diag-r2"), or nothing ("none"). The
simulated backend gets a simulated load ("simulated"). No generator changes GPU settings.
"""

from __future__ import annotations

import abc
import importlib
import importlib.util
import json
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from provisioner.burnin.backend import GpuBackend
from provisioner.burnin.simulated import SimulatedBackend

# dcgmi diag -r 2 takes about two minutes (BURNIN.md); below that only the quick -r 1 fits.
_DCGM_R2_MIN_SECONDS = 120
_MATMUL_SIZE = 8192
_MATMULS_PER_ROUND = 8


@dataclass
class LoadResult:
    """What a load generator did."""

    kind: str
    requested_seconds: float
    ran_seconds: float = 0.0
    ran: bool = False
    error: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "requested_seconds": self.requested_seconds,
            "ran_seconds": round(self.ran_seconds, 1),
            "ran": self.ran,
            "error": self.error,
            **self.details,
        }


class LoadGenerator(abc.ABC):
    """Runs a load in the background between :meth:`start` and :meth:`stop`."""

    kind = "none"

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.result = LoadResult(kind=self.kind, requested_seconds=seconds)

    def prepare(self) -> None:  # noqa: B027 - optional hook, most generators need no preparation
        """Slow set-up that must not eat into the sampling window (imports, allocation). Optional."""

    @abc.abstractmethod
    def start(self) -> None:
        """Start the load in the background; returns at once. Call once."""

    @abc.abstractmethod
    def running(self) -> bool:
        """Whether the load is still going."""

    @abc.abstractmethod
    def stop(self) -> LoadResult:
        """Stop (or wait for) the load and return what it did. Idempotent; never raises."""


class NoLoad(LoadGenerator):
    """No load generator is installed: the window is sampled at idle."""

    kind = "none"

    def start(self) -> None:
        self._until = time.monotonic() + self.seconds

    def running(self) -> bool:
        return time.monotonic() < self._until

    def stop(self) -> LoadResult:
        return self.result


class SimulatedLoad(LoadGenerator):
    """Tells a :class:`SimulatedBackend` that load runs, so temperatures and power rise."""

    kind = "simulated"

    def __init__(self, seconds: float, backend: SimulatedBackend) -> None:
        super().__init__(seconds)
        self.backend = backend

    def start(self) -> None:
        self._started = time.monotonic()
        self.backend.set_load(True)

    def running(self) -> bool:
        return time.monotonic() < self._started + self.seconds

    def stop(self) -> LoadResult:
        if self.backend.under_load:
            self.backend.set_load(False)
            self.result.ran_seconds = time.monotonic() - self._started
            self.result.ran = True
            self.result.details["gpus"] = self.backend.device_count()
        return self.result


class TorchMatmulLoad(LoadGenerator):
    """bf16 8192x8192 matrix multiplies in a loop on every GPU, from one background thread.

    CUDA launches are asynchronous, so one thread keeps every GPU busy. Each round re-checks one product
    against the first one computed on that GPU: the same inputs must give the same bits, and a GPU that
    disagrees with itself is corrupting data silently.
    """

    kind = "torch-matmul"

    def __init__(self, seconds: float) -> None:
        super().__init__(seconds)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._torch: Any = None

    @staticmethod
    def available() -> bool:
        return importlib.util.find_spec("torch") is not None

    def prepare(self) -> None:
        self._torch = importlib.import_module("torch")
        if not self._torch.cuda.is_available():
            raise RuntimeError("torch is installed but sees no CUDA device")
        self._devices = list(range(self._torch.cuda.device_count()))
        self._operands = []
        for device in self._devices:
            generator = self._torch.Generator(device=f"cuda:{device}").manual_seed(1234 + device)
            a = self._torch.randn(
                _MATMUL_SIZE,
                _MATMUL_SIZE,
                device=f"cuda:{device}",
                dtype=self._torch.bfloat16,
                generator=generator,
            )
            b = self._torch.randn(
                _MATMUL_SIZE,
                _MATMUL_SIZE,
                device=f"cuda:{device}",
                dtype=self._torch.bfloat16,
                generator=generator,
            )
            reference = self._torch.matmul(a, b)
            self._operands.append((a, b, reference))
        for device in self._devices:
            self._torch.cuda.synchronize(device)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="burnin-torch-load", daemon=True)
        self._started = time.monotonic()
        self._thread.start()

    def _run(self) -> None:
        torch = self._torch
        counts = [0] * len(self._devices)
        mismatches = [0] * len(self._devices)
        deadline = self._started + self.seconds
        try:
            while not self._stop.is_set() and time.monotonic() < deadline:
                products = []
                for index, (a, b, _) in enumerate(self._operands):
                    product = None
                    for _ in range(_MATMULS_PER_ROUND):
                        product = torch.matmul(a, b)
                    counts[index] += _MATMULS_PER_ROUND
                    products.append(product)
                for index, product in enumerate(products):
                    if not torch.equal(product, self._operands[index][2]):
                        mismatches[index] += 1
            for device in self._devices:
                torch.cuda.synchronize(device)
            self.result.ran = True
        except Exception as err:  # a CUDA error here usually comes with an XID: report it, do not crash
            self.result.error = f"{type(err).__name__}: {err}"
        elapsed = time.monotonic() - self._started
        self.result.ran_seconds = elapsed
        flops = 2 * _MATMUL_SIZE**3
        self.result.details.update(
            {
                "gpus": len(self._devices),
                "matmul_size": _MATMUL_SIZE,
                "dtype": "bfloat16",
                "tflops_per_gpu": [round(c * flops / max(elapsed, 1e-9) / 1e12, 1) for c in counts],
                "result_mismatches": mismatches,
            }
        )
        if any(mismatches) and self.result.error is None:
            bad = [i for i, m in enumerate(mismatches) if m]
            self.result.error = (
                f"matrix products differed from the first result on GPU(s) {bad} (silent data corruption)"
            )

    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self) -> LoadResult:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
        return self.result


class DcgmDiagLoad(LoadGenerator):
    """``dcgmi diag -r 1|2 -j``: NVIDIA's own diagnostic as the load; a failed diagnostic fails the load."""

    def __init__(self, seconds: float) -> None:
        super().__init__(seconds)
        self.level = 2 if seconds >= _DCGM_R2_MIN_SECONDS else 1
        self.kind = f"dcgmi-diag-r{self.level}"
        self.result.kind = self.kind
        self._process: subprocess.Popen[str] | None = None

    @staticmethod
    def available() -> bool:
        return shutil.which("dcgmi") is not None

    def start(self) -> None:
        self._started = time.monotonic()
        self._process = subprocess.Popen(
            ["dcgmi", "diag", "-r", str(self.level), "-j"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def stop(self) -> LoadResult:
        if self._process is None:
            return self.result
        try:
            # -r 2 takes about two minutes; give it room, then stop it rather than hang the burn-in.
            output, _ = self._process.communicate(timeout=max(self.seconds, 180) + 300)
        except subprocess.TimeoutExpired:
            self._process.kill()
            output, _ = self._process.communicate()
            self.result.error = "dcgmi diag did not finish in time"
        self.result.ran_seconds = time.monotonic() - self._started
        self.result.ran = True
        self.result.details["exit_code"] = self._process.returncode
        try:
            self.result.details["dcgmi"] = json.loads(output)
        except json.JSONDecodeError:
            self.result.details["output_tail"] = output[-2000:]
        if self._process.returncode != 0 and self.result.error is None:
            self.result.error = f"dcgmi diag -r {self.level} exited with {self._process.returncode}"
        self._process = None
        return self.result


def choose_load(backend: GpuBackend, seconds: float, preference: str = "auto") -> LoadGenerator:
    """The load generator for ``backend``: simulated for the simulated backend, else torch, dcgmi or none.

    ``preference`` is "auto", "torch", "dcgmi" or "none". Pure choice, starts nothing.
    """
    if isinstance(backend, SimulatedBackend):
        return SimulatedLoad(seconds, backend) if preference != "none" else NoLoad(seconds)
    if preference in ("auto", "torch") and TorchMatmulLoad.available():
        return TorchMatmulLoad(seconds)
    if preference in ("auto", "dcgmi") and DcgmDiagLoad.available():
        return DcgmDiagLoad(seconds)
    return NoLoad(seconds)
