"""Shared by Neocloud's Ansible modules: start Django on the control plane's database.

The worker that runs the playbook passes NEOCLOUD_ROOT (the project), DATABASE_URL and
DJANGO_SETTINGS_MODULE=webapp.settings_helper (only the engine's apps: about a third of the start-up CPU
of the full web settings), with NEOCLOUD_BASE_SETTINGS naming its own settings module.
"""

from __future__ import annotations

import os
import sys


def setup_django():
    root = os.environ.get("NEOCLOUD_ROOT")
    if root and root not in sys.path:
        sys.path.insert(0, root)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings_helper")
    import django

    django.setup()
