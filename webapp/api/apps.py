from django.apps import AppConfig
from django.conf import settings


class ApiConfig(AppConfig):
    name = "webapp.api"
    label = "api"

    def ready(self) -> None:
        from webapp.api import schema

        # The schema's enum names; settings may set their own (SPECTACULAR_SETTINGS["ENUM_NAME_OVERRIDES"]).
        settings.SPECTACULAR_SETTINGS.setdefault("ENUM_NAME_OVERRIDES", schema.ENUM_NAME_OVERRIDES)
