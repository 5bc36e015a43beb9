#!/usr/bin/python
"""Ansible module, run on the deployed node: the handover's change to the authorized_keys file, in one task.

It checks that every customer key is in the file sshd reads, removes Neocloud's provisioning key, and
refuses to leave a file with no key in it (which would lock the customer out). Keys are compared by their
base64 blob, so comments and options do not matter. The file is replaced atomically (temporary file in
the same directory, fsync, rename), so sshd never reads half of it. Standard library only: it runs with the
node's Python.
"""

from __future__ import annotations

DOCUMENTATION = r"""
module: neocloud_authorized_keys
short_description: Customer keys present, provisioning key absent, in the authorized_keys sshd reads
options:
  path:
    description: The file; default $NEOCLOUD_AUTHORIZED_KEYS_FILE (the lab sets it) or ~/.ssh/authorized_keys
    type: str
  present: {description: Public key lines that must be in the file, type: list, elements: str, default: []}
  absent: {description: Public key line to remove, type: str, required: true}
"""

import os
import tempfile

from ansible.module_utils.basic import AnsibleModule

KEY_TYPES = ("ssh-ed25519", "ssh-rsa", "ecdsa-sha2-", "sk-ssh-ed25519@", "sk-ecdsa-sha2-")


def key_blob(line):
    """The base64 blob of a public key line (options and comment ignored), or None for other lines:
    a commented-out key ("# ssh-ed25519 AAAA...") logs nobody in, so it is no key."""
    if line.lstrip().startswith("#"):
        return None
    fields = line.strip().split()
    for i, field in enumerate(fields[:-1]):
        if field.startswith(KEY_TYPES):
            return fields[i + 1]
    return None


def describe(line):
    fields = line.split()
    blob = key_blob(line) or ""
    kind = next((f for f in fields if f.startswith(KEY_TYPES)), "key")
    return f"{kind} …{blob[-12:]}"


def replace_atomically(path, text):
    directory = os.path.dirname(path) or "."
    mode = os.stat(path).st_mode & 0o777
    fd, tmp = tempfile.mkstemp(prefix=".authorized_keys.", dir=directory)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def main():
    module = AnsibleModule(
        argument_spec={
            "path": {"type": "str"},
            "present": {"type": "list", "elements": "str", "default": []},
            "absent": {"type": "str", "required": True},
        },
        supports_check_mode=True,
    )
    path = (
        module.params["path"]
        or os.environ.get("NEOCLOUD_AUTHORIZED_KEYS_FILE")
        or os.path.expanduser("~/.ssh/authorized_keys")
    )
    remove = key_blob(module.params["absent"])
    if remove is None:
        module.fail_json(msg="'absent' is not a public key line")
    try:
        with open(path) as handle:
            lines = handle.read().splitlines()
    except OSError as exc:
        module.fail_json(msg=f"cannot read {path}: {exc.strerror}", path=path)
    blobs = {key_blob(line) for line in lines} - {None}
    missing = [describe(k) for k in module.params["present"] if key_blob(k) not in blobs]
    if missing:
        module.fail_json(msg=f"customer key(s) {', '.join(missing)} are not in {path}", path=path)
    kept = [line for line in lines if key_blob(line) != remove]
    removed = len(lines) - len(kept)
    remaining = sum(1 for line in kept if key_blob(line))
    if remaining == 0:
        module.fail_json(msg=f"no key would remain in {path}; refusing to lock the customer out", path=path)
    if removed and not module.check_mode:
        try:
            replace_atomically(path, "".join(f"{line}\n" for line in kept))
        except OSError as exc:
            module.fail_json(msg=f"cannot rewrite {path}: {exc.strerror}", path=path)
    module.exit_json(changed=bool(removed), path=path, removed=removed, remaining=remaining)


if __name__ == "__main__":
    main()
