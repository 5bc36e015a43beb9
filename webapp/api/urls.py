"""API routes: /api/v1/ (customers), /api/v1/admin/ (operators), /api/schema/ and /api/docs/."""

from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView
from rest_framework.routers import DefaultRouter

from webapp.api import customer, events, metering, operators, webhooks
from webapp.api.docs import ApiDocsView


class OptionalSlashRouter(DefaultRouter):
    """Routes answer with or without the trailing slash (clients differ; no redirect for a POST to lose)."""

    include_root_view = False

    def __init__(self) -> None:
        super().__init__()
        self.trailing_slash = "/?"


router = OptionalSlashRouter()
router.register("server-types", customer.ServerTypeViewSet, basename="server-types")
router.register("images", customer.ImageViewSet, basename="images")
router.register("ssh-keys", customer.SSHKeyViewSet, basename="ssh-keys")
router.register("reservations", customer.ReservationViewSet, basename="reservations")
router.register("servers", customer.ServerViewSet, basename="servers")
router.register("operations", customer.OperationViewSet, basename="operations")
router.register("organizations", customer.OrganizationViewSet, basename="organizations")
router.register("tokens", customer.TokenViewSet, basename="tokens")
router.register("audit-events", customer.AuditEventViewSet, basename="audit-events")
router.register("events", events.EventViewSet, basename="events")
router.register("webhooks", webhooks.WebhookViewSet, basename="webhooks")
router.register("admin/nodes", operators.AdminNodeViewSet, basename="admin-nodes")
router.register("admin/quarantine", operators.QuarantineViewSet, basename="admin-quarantine")
router.register("admin/reservations", operators.AdminReservationViewSet, basename="admin-reservations")
router.register("admin/reimage-rollouts", operators.RolloutViewSet, basename="admin-rollouts")
router.register("admin/events", events.AdminEventViewSet, basename="admin-events")
router.register("admin/prices", metering.AdminPriceViewSet, basename="admin-prices")
router.register("admin/warm-pools", operators.WarmPoolViewSet, basename="admin-warm-pools")

app_name = "api"
urlpatterns = [
    path("v1/", include(router.urls)),
    path("schema/", SpectacularAPIView.as_view(), name="schema"),
    path("docs/", ApiDocsView.as_view(), name="api-docs"),
]
