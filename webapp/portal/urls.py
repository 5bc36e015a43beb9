"""Portal URLs: customers at the top level, operators under /ops/."""

from django.contrib.auth import views as auth_views
from django.urls import path

from webapp.portal.forms import ThrottledSignIn
from webapp.portal.views import account, auth, catalog, operator, reservations, usage, webhooks

app_name = "portal"
urlpatterns = [
    path("signup/", auth.signup, name="signup"),
    path(
        "login/",
        auth_views.LoginView.as_view(
            template_name="portal/auth/login.html",
            redirect_authenticated_user=True,
            authentication_form=ThrottledSignIn,
        ),
        name="login",
    ),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("org/switch/", auth.switch_organization, name="switch_org"),
    path("", catalog.catalog, name="catalog"),
    path("reserve/", catalog.reserve, name="reserve"),
    path("reservations/", reservations.reservation_list, name="reservations"),
    path("reservations/<int:pk>/", reservations.reservation_detail, name="reservation"),
    path("reservations/<int:pk>/live/", reservations.reservation_live, name="reservation_live"),
    path("reservations/<int:pk>/extend/", reservations.reservation_extend, name="reservation_extend"),
    path("reservations/<int:pk>/release/", reservations.reservation_release, name="reservation_release"),
    path("org/", account.organization, name="organization"),
    path("org/members/<int:user_id>/remove/", account.member_remove, name="member_remove"),
    path("ssh-keys/", account.ssh_keys, name="ssh_keys"),
    path("ssh-keys/<int:pk>/delete/", account.ssh_key_delete, name="ssh_key_delete"),
    path("api-tokens/", account.api_tokens, name="api_tokens"),
    path("api-tokens/<int:pk>/revoke/", account.api_token_revoke, name="api_token_revoke"),
    path("audit/", account.audit_trail, name="audit"),
    path("webhooks/", webhooks.webhooks, name="webhooks"),
    path("webhooks/<int:pk>/", webhooks.webhook_detail, name="webhook"),
    path("webhooks/<int:pk>/test/", webhooks.webhook_test, name="webhook_test"),
    path("webhooks/<int:pk>/toggle/", webhooks.webhook_toggle, name="webhook_toggle"),
    path("webhooks/<int:pk>/delete/", webhooks.webhook_delete, name="webhook_delete"),
    path("usage/", usage.usage, name="usage"),
    path("usage/<str:month>/", usage.usage, name="usage_month"),
    path("usage/<str:month>/csv/", usage.usage_csv, name="usage_csv"),
    path("ops/", operator.fleet, name="ops_fleet"),
    path("ops/nodes/<int:pk>/", operator.node_detail, name="ops_node"),
    path("ops/nodes/<int:pk>/live/", operator.node_live, name="ops_node_live"),
    path("ops/nodes/<int:pk>/action/", operator.node_action, name="ops_node_action"),
    path("ops/rollouts/", operator.rollout_list, name="ops_rollouts"),
    path("ops/rollouts/start/", operator.rollout_start, name="ops_rollout_start"),
    path("ops/rollouts/<int:pk>/", operator.rollout_detail, name="ops_rollout"),
    path("ops/rollouts/<int:pk>/live/", operator.rollout_live, name="ops_rollout_live"),
    path("ops/rollouts/<int:pk>/cancel/", operator.rollout_cancel, name="ops_rollout_cancel"),
]
