"""GPU burn-in agent: plain Python (standard library, nvidia-ml-py, optionally PyTorch), no Django.

Run ``python -m provisioner.burnin --expect '{"gpu_count": 8, ...}'`` on the node, or call
:func:`run_burnin` with a backend. See BURNIN.md for what is checked and why.
"""

from provisioner.burnin.backend import GpuBackend
from provisioner.burnin.checks import CheckResult, Expectations, parse_expectations
from provisioner.burnin.nvml import NvmlBackend
from provisioner.burnin.runner import run_burnin
from provisioner.burnin.simulated import FAULT_KINDS, PROFILES, SimulatedBackend, parse_faults
from provisioner.burnin.thresholds import DEFAULT_THRESHOLDS, resolve_thresholds

__all__ = [
    "DEFAULT_THRESHOLDS",
    "FAULT_KINDS",
    "PROFILES",
    "CheckResult",
    "Expectations",
    "GpuBackend",
    "NvmlBackend",
    "SimulatedBackend",
    "parse_expectations",
    "parse_faults",
    "resolve_thresholds",
    "run_burnin",
]
