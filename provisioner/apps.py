from django.apps import AppConfig


class ProvisionerConfig(AppConfig):
    name = "provisioner"
    verbose_name = "Neocloud provisioner"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # The engine announces that an operation ended; the services decide what that means.
        from provisioner.engine import (
            outcomes,
            steps,  # noqa: F401 - registers the step functions (engine.registry)
        )
        from provisioner.services.outcomes import operation_ended

        outcomes.listen(operation_ended)
