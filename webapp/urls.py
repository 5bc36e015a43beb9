"""URL map: portal at /, REST API under /api/v1/, OpenAPI at /api/schema/, boot service under /boot/."""

from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("boot/", include("provisioner.boot.urls")),
    path("api/", include("webapp.api.urls")),
    path("", include("webapp.portal.urls")),
]
