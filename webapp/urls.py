"""URL map: portal at / (and its /favicon.ico), REST API under /api/v1/, OpenAPI at /api/schema/, boot
service under /boot/, Prometheus metrics at /metrics."""

from django.contrib import admin
from django.urls import include, path

from webapp.metrics import metrics
from webapp.portal.forms import ThrottledAdminSignIn
from webapp.portal.views.favicon import favicon

# the admin's sign-in counts wrong passwords like the portal's (provisioner/services/signin.py)
admin.site.login_form = ThrottledAdminSignIn

# The API and the boot service's agent API answer in the API's error shape, the portal with plain pages.
handler400 = "webapp.error_responses.bad_request"
handler403 = "webapp.error_responses.permission_denied"
handler404 = "webapp.error_responses.page_not_found"
handler500 = "webapp.error_responses.server_error"

urlpatterns = [
    path("favicon.ico", favicon, name="favicon"),
    path("admin/", admin.site.urls),
    path("metrics", metrics, name="metrics"),
    path("boot/", include("provisioner.boot.urls")),
    path("api/", include("webapp.api.urls")),
    path("", include("webapp.portal.urls")),
]
