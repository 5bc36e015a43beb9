"""Portal forms. Validation that belongs to the domain (SSH keys, windows, capacity, quota) is done by
provisioner code; the forms turn its errors into messages next to the right field."""

from __future__ import annotations

import datetime as dt
import re
import uuid
from typing import Any

from django import forms
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth.forms import AuthenticationForm, UserCreationForm
from django.contrib.auth.models import User
from django.http import QueryDict
from django.utils import timezone

from provisioner.errors import InvalidRequest
from provisioner.models import Event, Image, Node, Organization, ServerType, SSHKey
from provisioner.sshkeys import parse_public_key

# <input type="datetime-local"> sends naive local times; the portal shows and takes times in UTC.
DATETIME_INPUT = forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M")


def model_choices(form: forms.Form, name: str) -> forms.ModelChoiceField:
    """A form's model-choice field, typed, so its queryset can be scoped to the user."""
    field = form.fields[name]
    assert isinstance(field, forms.ModelChoiceField)
    return field


def aware_utc(value: dt.datetime | None) -> dt.datetime | None:
    if value is None or timezone.is_aware(value):
        return value
    return timezone.make_aware(value, dt.UTC)


class ThrottledSignIn(AuthenticationForm):
    """Django's sign-in form, counting wrong passwords (provisioner.services.signin): too many from one
    address are refused before the password is even checked. The portal's form, and the admin's below."""

    def clean(self) -> dict[str, Any]:
        from provisioner.services import signin

        username = self.cleaned_data.get("username") or ""
        address = self.request.META.get("REMOTE_ADDR") if self.request else None
        if username:
            try:
                signin.check_allowed(username, address)
            except signin.SignInThrottled as exc:
                raise forms.ValidationError(str(exc), code="throttled")
        try:
            cleaned = super().clean()
        except forms.ValidationError as exc:
            if username and exc.code == "invalid_login":
                signin.record_failure(username, address)
            raise
        if username:
            signin.record_success(username, address)
        return cleaned


class ThrottledAdminSignIn(ThrottledSignIn, AdminAuthenticationForm):
    """The Django admin's sign-in (staff only), counted like the portal's."""


class SignUpForm(UserCreationForm):
    organization = forms.CharField(
        max_length=100, label="Organization name", help_text="Your team or company; you become its owner."
    )

    class Meta(UserCreationForm.Meta):  # type: ignore[name-defined]
        model = User
        fields = ("username",)

    def clean_organization(self) -> str:
        name = self.cleaned_data["organization"].strip()
        if Organization.objects.filter(name__iexact=name).exists():
            raise forms.ValidationError("An organization with this name already exists; pick another name.")
        return name


class WindowForm(forms.Form):
    """An availability window: start and end in UTC, both optional (empty start = now)."""

    starts_at = forms.DateTimeField(required=False, widget=DATETIME_INPUT, label="From (UTC)")
    ends_at = forms.DateTimeField(required=False, widget=DATETIME_INPUT, label="Until (UTC)")

    def clean(self) -> dict:
        data = super().clean() or {}
        start, end = aware_utc(data.get("starts_at")), aware_utc(data.get("ends_at"))
        if start and end and end <= start:
            raise forms.ValidationError("The window must end after it starts.")
        if end and not start and end <= timezone.now():
            raise forms.ValidationError("The end of the window is in the past.")
        data["starts_at"], data["ends_at"] = start, end
        return data


_TOKEN = re.compile(r"[0-9a-f]{32}")  # uuid4().hex


class ReserveForm(forms.Form):
    WHEN_CHOICES = [("now", "Now"), ("later", "Later (scheduled window)")]

    server_type = forms.ModelChoiceField(queryset=ServerType.objects.all(), empty_label=None)
    count = forms.IntegerField(min_value=1, max_value=256, initial=1, label="Number of servers")
    when = forms.ChoiceField(choices=WHEN_CHOICES, initial="now", widget=forms.RadioSelect, label="Start")
    starts_at = forms.DateTimeField(required=False, widget=DATETIME_INPUT, label="Start (UTC)")
    ends_at = forms.DateTimeField(
        required=False,
        widget=DATETIME_INPUT,
        label="End (UTC)",
        help_text="Leave empty to keep the servers until you release them.",
    )
    image = forms.ModelChoiceField(
        queryset=Image.objects.filter(public=True), empty_label=None, label="OS image"
    )
    name = forms.CharField(
        max_length=100,
        required=False,
        label="Reservation name",
        help_text="Optional, for your own reference.",
    )
    ssh_keys = forms.ModelMultipleChoiceField(
        queryset=SSHKey.objects.none(), required=False, widget=forms.CheckboxSelectMultiple, label="SSH keys"
    )
    new_key_name = forms.CharField(max_length=100, required=False, label="New key name")
    new_key = forms.CharField(
        required=False,
        widget=forms.Textarea(
            attrs={"rows": 3, "placeholder": "ssh-ed25519 AAAAC3Nza... you@laptop", "spellcheck": "false"}
        ),
        label="Or paste a new public key",
    )
    # One-time token, new with each rendering of the form: the same form sent twice (double click, the
    # browser's resend) books once. Empty (a page from before the token existed) books without it.
    token = forms.CharField(required=False, widget=forms.HiddenInput)

    def __init__(self, *args, organization: Organization | None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.organization = organization
        self.initial.setdefault("token", uuid.uuid4().hex)
        if organization is not None:
            model_choices(self, "ssh_keys").queryset = SSHKey.objects.filter(organization=organization)

    @property
    def idempotency_key(self) -> str:
        """book_servers' idempotency key for this form's token ("" without one)."""
        token = self.cleaned_data.get("token", "") if hasattr(self, "cleaned_data") else ""
        return f"portal:{token}" if token else ""

    def renew_token(self) -> None:
        """Give the re-rendered form a fresh token (the one it was sent with is spent or was refused)."""
        if self.is_bound:
            data = self.data.copy() if isinstance(self.data, QueryDict) else dict(self.data)
            data["token"] = uuid.uuid4().hex
            self.data = data

    def clean_new_key(self) -> str:
        text = self.cleaned_data.get("new_key", "").strip()
        if text:
            try:
                self.parsed_key = parse_public_key(text)
            except InvalidRequest as exc:
                raise forms.ValidationError(str(exc))
        return text

    def clean(self) -> dict:
        data = super().clean() or {}
        if not data.get("ssh_keys") and not data.get("new_key") and "new_key" not in self.errors:
            self.add_error(
                "ssh_keys", "Choose at least one SSH key, or paste a new one: it is how you log in."
            )
        start, end = aware_utc(data.get("starts_at")), aware_utc(data.get("ends_at"))
        if data.get("when") == "later":
            if start is None:
                self.add_error("starts_at", "Pick when the window starts.")
            elif start <= timezone.now():
                self.add_error(
                    "starts_at", "A scheduled window must start in the future; choose Now to start at once."
                )
        else:
            start = None
        if end is not None and end <= (start or timezone.now()):
            self.add_error("ends_at", "The end must be after the start.")
        data["starts_at"], data["ends_at"] = start, end
        if data.get("token") and not _TOKEN.fullmatch(data["token"]):
            self.add_error(None, "This form does not come from this page: check it and send it again.")
            self.renew_token()
        elif not data.get("token"):
            self.renew_token()  # shown again, the form is protected from then on
        return data


class ExtendForm(forms.Form):
    ends_at = forms.DateTimeField(widget=DATETIME_INPUT, label="New end (UTC)")

    def clean_ends_at(self) -> dt.datetime | None:
        return aware_utc(self.cleaned_data["ends_at"])


class SSHKeyForm(forms.Form):
    name = forms.CharField(max_length=100, required=False, help_text="Defaults to the key's comment.")
    public_key = forms.CharField(
        widget=forms.Textarea(
            attrs={"rows": 3, "placeholder": "ssh-ed25519 AAAAC3Nza... you@laptop", "spellcheck": "false"}
        ),
        label="Public key",
        help_text="The contents of ~/.ssh/id_ed25519.pub (never the private key).",
    )


class TokenForm(forms.Form):
    name = forms.CharField(
        max_length=100, label="Token name", help_text="Where it will be used, e.g. 'ci-pipeline'."
    )
    expires_in_days = forms.TypedChoiceField(
        label="Expires",
        choices=[
            ("", "Never (until revoked)"),
            ("7", "In 7 days"),
            ("30", "In 30 days"),
            ("90", "In 90 days"),
            ("365", "In a year"),
        ],
        coerce=int,
        empty_value=None,
        required=False,
    )


class InviteForm(forms.Form):
    username = forms.CharField(max_length=150, help_text="They must have signed up already.")
    role = forms.ChoiceField(choices=[("member", "Member"), ("owner", "Owner")], initial="member")


class ReimageForm(forms.Form):
    image = forms.ModelChoiceField(
        queryset=Image.objects.all(), required=False, empty_label="Keep current image"
    )
    force = forms.BooleanField(required=False, label="Force (the server is leased to a customer)")
    reason = forms.CharField(max_length=500, required=False)


class RolloutForm(forms.Form):
    nodes = forms.ModelMultipleChoiceField(
        queryset=Node.objects.all(), error_messages={"required": "Select at least one server."}
    )
    image = forms.ModelChoiceField(
        queryset=Image.objects.all(), required=False, empty_label="Keep current image"
    )
    max_parallel = forms.IntegerField(min_value=1, max_value=1000, initial=2, label="At most in parallel")
    failure_budget = forms.IntegerField(
        min_value=0, max_value=1000, initial=1, label="Failures allowed before halting"
    )
    force = forms.BooleanField(required=False, label="Include servers leased to customers")


class WebhookForm(forms.Form):
    url = forms.CharField(
        max_length=500,
        label="Endpoint URL",
        widget=forms.TextInput(
            attrs={"placeholder": "https://hooks.example.com/neocloud", "spellcheck": "false"}
        ),
        help_text="Events are POSTed here as JSON, signed. https only (http to 127.0.0.1 or localhost for testing).",
    )
    description = forms.CharField(max_length=200, required=False, help_text="What it feeds, e.g. 'billing'.")
    event_types = forms.MultipleChoiceField(
        label="Events",
        choices=Event.Type.choices,
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="None ticked: every event.",
    )
