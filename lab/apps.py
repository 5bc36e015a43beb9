from django.apps import AppConfig


class LabConfig(AppConfig):
    """The lab as a Django app, only so that ``manage.py lab`` and ``manage.py demo`` exist in a checkout:
    it has no models. webapp/settings.py installs it when the package is importable and not in production."""

    name = "lab"
    verbose_name = "Neocloud lab (development only)"
