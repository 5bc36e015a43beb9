"""Step functions by name, and the ordered plan of steps for each operation kind."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from provisioner.engine.context import StepContext
from provisioner.states import OperationKind

StepFn = Callable[[StepContext], None]


@dataclasses.dataclass(frozen=True)
class StepSpec:
    name: str
    fn: StepFn
    timeout_seconds: float
    max_attempts: int


STEPS: dict[str, StepSpec] = {}


def step(name: str, *, timeout: float = 300, attempts: int = 3) -> Callable[[StepFn], StepFn]:
    """Register an idempotent step. ``attempts`` counts tries for retryable errors (with backoff)."""

    def register(fn: StepFn) -> StepFn:
        STEPS[name] = StepSpec(name, fn, timeout, attempts)
        return fn

    return register


PLANS: dict[str, list[str]] = {
    OperationKind.PROVISION: [
        "begin_deploy",
        "network_provisioning",
        "deploy",
        "begin_burnin",
        "burnin",
        "handover",
        "network_tenant",
        "finish_provision",
    ],
    OperationKind.REIMAGE: [
        "begin_reimage",
        "network_provisioning",
        "deploy",
        "begin_burnin",
        "burnin",
        "handover",
        "network_tenant",
        "finish_provision",
    ],
    OperationKind.RELEASE: ["begin_clean", "network_cleaning", "wipe", "finish_clean"],
    OperationKind.CLEAN: ["begin_clean", "network_cleaning", "wipe", "finish_clean"],
    OperationKind.BURNIN: ["network_provisioning", "burnin_only", "network_quarantine"],
    OperationKind.POWER: ["power_action"],
    # the warm pool (services/warm_pool.py): deployed with the provisioning key only, burned in, kept on
    OperationKind.WARM_UP: ["begin_warm_up", "network_provisioning", "deploy", "burnin", "finish_warm_up"],
}


def plan_for(kind: str) -> list[StepSpec]:
    return [STEPS[name] for name in PLANS[kind]]
