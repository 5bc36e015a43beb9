from django.apps import AppConfig


class PortalConfig(AppConfig):
    name = "webapp.portal"
    label = "portal"
