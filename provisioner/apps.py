from django.apps import AppConfig


class ProvisionerConfig(AppConfig):
    name = "provisioner"
    verbose_name = "Neocloud provisioner"
    default_auto_field = "django.db.models.BigAutoField"
