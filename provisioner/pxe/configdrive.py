"""The config drive: the node's configuration, written by the deploy agent onto the node's own disk.

Layout: the last ``CONFIG_DRIVE_SIZE`` bytes of the disk hold ``MAGIC`` (8 bytes), the length of the
document (8 bytes, big-endian) and the document itself (UTF-8 JSON). It lives on the disk, like a
real config-drive partition, so wiping the disk removes it and nothing else has to be cleaned up.

Document keys (all written by the agent, read by the lab's boot-from-disk and by tests):
  hostname: str
  authorized_keys: list[str]            the customer's keys plus, until handover, the provisioning key
  host_keys: {type: {"private": PEM, "public": "ssh-ed25519 AAAA..."}}  fresh per deploy
  network: {"address": "198.18.0.5", "prefix": 15}
  private_network: {"address": "198.19.3.2", "prefix": 24, "gateway": "198.19.3.1"}   optional: the
                                        tenant network, configured by the deployed OS at first boot (static
                                        address on the boot NIC, default route via the gateway; the
                                        provisioning address keeps only its host route)
  image: {"url": ..., "sha256": ...}
  deployed_at: ISO 8601 timestamp
  instance_id: str                      one per deploy: the OS applies the keys, host keys and private network
                                        at the first boot of an instance only (lab.os_firstboot), as cloud-init
"""

from __future__ import annotations

import json
import os
import struct
from typing import Any

MAGIC = b"NEOCFG01"
CONFIG_DRIVE_SIZE = 1024 * 1024
_HEADER = struct.Struct(">8sQ")


class ConfigDriveError(Exception):
    pass


def config_drive_offset(disk_size: int) -> int:
    if disk_size < CONFIG_DRIVE_SIZE * 2:
        raise ConfigDriveError(f"disk of {disk_size} bytes is too small for a config drive")
    return disk_size - CONFIG_DRIVE_SIZE


def write_config_drive(disk_path: str, document: dict[str, Any]) -> None:
    """Write the document into the config-drive area of the disk (file or block device). Idempotent."""
    payload = json.dumps(document, sort_keys=True).encode()
    if len(payload) + _HEADER.size > CONFIG_DRIVE_SIZE:
        raise ConfigDriveError("config drive document is larger than the config-drive area")
    fd = os.open(disk_path, os.O_RDWR)
    try:
        size = os.lseek(fd, 0, os.SEEK_END)
        offset = config_drive_offset(size)
        block = _HEADER.pack(MAGIC, len(payload)) + payload
        block += b"\0" * (CONFIG_DRIVE_SIZE - len(block))
        os.pwrite(fd, block, offset)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_config_drive(disk_path: str) -> dict[str, Any] | None:
    """Return the config-drive document, or None when the disk has none (new or wiped disk)."""
    fd = os.open(disk_path, os.O_RDONLY)
    try:
        size = os.lseek(fd, 0, os.SEEK_END)
        if size < CONFIG_DRIVE_SIZE * 2:
            return None
        header = os.pread(fd, _HEADER.size, config_drive_offset(size))
        magic, length = _HEADER.unpack(header)
        if magic != MAGIC or length > CONFIG_DRIVE_SIZE - _HEADER.size:
            return None
        payload = os.pread(fd, length, config_drive_offset(size) + _HEADER.size)
    finally:
        os.close(fd)
    try:
        doc = json.loads(payload)
    except ValueError as exc:
        raise ConfigDriveError(f"config drive on {disk_path} is corrupt: {exc}") from exc
    if not isinstance(doc, dict):
        raise ConfigDriveError(f"config drive on {disk_path} is not a JSON object")
    return doc
