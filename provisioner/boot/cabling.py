"""The LLDP cabling check: is the server's boot NIC cabled to the switch port its record names?

The deploy agent listens for LLDP on its boot NIC and reports what the switch announced (switch name,
port); ``cabling_problem`` compares that with the node's recorded cabling (``Node.switch_name`` and
``switch_port``, from the inventory YAML or NetBox). A node with nothing recorded is not checked. A node with
cabling recorded must be heard on that switch and port: a mis-cabled server would otherwise follow another
server's port onto another tenant's VLAN. Names compare without regard to case, and a switch announcing its
FQDN (``leaf1.ams1.example.net``) matches the record ``leaf1``.
"""

from __future__ import annotations

from typing import Any, Protocol

MISMATCH = "cabling_mismatch"
UNCONFIRMED = "cabling_unconfirmed"


class CabledNode(Protocol):
    name: str
    switch_name: str
    switch_port: str


def cabling_recorded(node: CabledNode) -> bool:
    """Whether the node's cabling is recorded, so that its deploy waits for the LLDP check. Pure."""
    return bool(node.switch_name and node.switch_port)


def _same_switch(heard: str, recorded: str) -> bool:
    heard, recorded = heard.strip().lower(), recorded.strip().lower()
    return heard == recorded or heard.split(".", 1)[0] == recorded


def describe_heard(lldp: dict[str, Any] | None) -> str:
    """A sentence for the operation log: what LLDP heard on the boot NIC. Pure."""
    if not lldp:
        return "the deploy agent reported nothing about LLDP"
    where = f" on {lldp['interface']}" if lldp.get("interface") else ""
    if lldp.get("heard"):
        problem = f" (the frame was damaged: {lldp['problem']})" if lldp.get("problem") else ""
        return f"LLDP{where}: switch {lldp.get('switch') or '(unnamed)'} port {lldp.get('port') or '(unnamed)'}{problem}"
    return f"LLDP{where}: nothing heard ({lldp.get('reason') or 'no announcement'})"


def cabling_problem(node: CabledNode, lldp: dict[str, Any] | None) -> tuple[str, str] | None:
    """``(error code, sentence)`` when LLDP contradicts the node's recorded cabling or did not confirm it,
    None when they agree or nothing is recorded. Pure.

    ``lldp`` is the agent's report as ``reports.clean_lldp`` keeps it (None: no report).
    """
    if not cabling_recorded(node):
        return None
    recorded = f"recorded at {node.switch_name} port {node.switch_port}"
    if not lldp or not lldp.get("heard"):
        reason = (lldp or {}).get("reason") or "the deploy agent reported no LLDP"
        where = f" on {lldp['interface']}" if lldp and lldp.get("interface") else ""
        return (
            UNCONFIRMED,
            f"{node.name}'s boot NIC heard no LLDP announcement{where} ({reason}) but is {recorded}: "
            "deploy stopped; check the cable and the switch's LLDP, or clear the recorded cabling",
        )
    switch, port = lldp.get("switch") or "", lldp.get("port") or ""
    if _same_switch(switch, node.switch_name) and port.strip().lower() == node.switch_port.strip().lower():
        return None
    return (
        MISMATCH,
        f"{node.name}'s boot NIC is cabled to {switch or '(an unnamed switch)'} port {port or '(unnamed)'} "
        f"(heard by LLDP) but {recorded}: deploy stopped; fix the cabling or the inventory",
    )
