"""Settings for Neocloud's short-lived helper processes: the Ansible modules in playbooks/library.

They use the same database, secrets and Neocloud settings as the worker that started them
(``NEOCLOUD_BASE_SETTINGS`` names the worker's settings module) but load only the apps the engine's
models need. Starting Django with the whole web stack (admin, DRF, drf-spectacular, the portal) cost about
1.1 s of CPU per module run, measured; with these apps it costs a fraction of that, and a deploy runs
three such modules per node.
"""

import importlib
import os

_base = importlib.import_module(os.environ.get("NEOCLOUD_BASE_SETTINGS", "webapp.settings"))
globals().update({name: value for name, value in vars(_base).items() if name.isupper()})

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django_tasks",
    "django_tasks_db",
    "provisioner",
]
MIDDLEWARE: list[str] = []
