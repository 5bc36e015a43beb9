"""Organizations, their members, SSH keys and API tokens: every change checked and audited here.

Role rules: any member may manage the organization's SSH keys; only owners add or remove members; the
last owner cannot leave (the organization would be orphaned). Tokens belong to a user, not an organization.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.contrib.auth.models import User
from django.db import IntegrityError, transaction
from django.utils import timezone
from django.utils.text import slugify

from provisioner import events
from provisioner.errors import InvalidRequest, NeocloudError
from provisioner.lifecycle import Actor, record
from provisioner.models import ApiToken, Membership, Organization, Reservation, SSHKey
from provisioner.sshkeys import parse_public_key
from provisioner.states import OPEN_RESERVATION_STATES


class NotPermitted(NeocloudError):
    """The actor may see the object but their role does not allow this change (the API answers 403)."""

    code = "permission_denied"


def role_in(org: Organization, user: Any) -> str | None:
    """The user's role in ``org`` ("owner" / "member"), or None when they are not a member."""
    if not getattr(user, "is_authenticated", False):
        return None
    return Membership.objects.filter(organization=org, user=user).values_list("role", flat=True).first()


def require_owner(org: Organization, actor: Actor) -> None:
    """:raises NotPermitted: the actor is not an owner of ``org``. Staff included: being an operator makes
    no one an owner of a customer's organization."""
    if role_in(org, actor.user) != Membership.Role.OWNER:
        raise NotPermitted(f"only an owner of {org.name} can change its members")


def _name_taken(name: str) -> bool:
    return Organization.objects.filter(name__iexact=name).exists()


def _free_slug(base: str) -> str:
    slug, n = base, 1
    while Organization.objects.filter(slug=slug).exists():
        n += 1
        slug = f"{base}-{n}"
    return slug


@transaction.atomic
def create_organization(user: User, name: str, *, actor: Actor) -> Organization:
    """Create an organization with ``user`` as its owner. Not idempotent: a taken name is refused.

    :raises InvalidRequest: empty or taken name.
    """
    name = name.strip()
    if not name:
        raise InvalidRequest("give the organization a name")
    taken = InvalidRequest(f"an organization called {name!r} already exists; pick another name")
    if _name_taken(name):
        raise taken
    base = slugify(name)[:90] or "org"
    # Two sign-ups may pick the same name (or names with one slug: "Acme", "ACME") at the same instant:
    # both pass the checks above and the second insert hits a unique index. Names that differ only in
    # case share a slug, so the slug index also keeps names unique regardless of case. Then the name is
    # either taken now (refused, as above) or only the slug was: take the next free one.
    for _ in range(5):
        try:
            with transaction.atomic():
                org = Organization.objects.create(name=name, slug=_free_slug(base))
            break
        except IntegrityError:
            if _name_taken(name):
                raise taken from None
    else:
        raise InvalidRequest(f"could not find a free short name for {name!r}; try again")
    Membership.objects.create(organization=org, user=user, role=Membership.Role.OWNER)
    record(actor, "org_create", organization=org, reason=name)
    return org


@transaction.atomic
def add_member(org: Organization, username: str, *, role: str, actor: Actor) -> Membership:
    """Add an existing user to ``org``, or change the role of one already in it. Idempotent.

    :raises NotPermitted: the actor is not an owner.
    :raises InvalidRequest: unknown user or role, or demoting the last owner.
    """
    # Lock the organization's memberships first, as remove_member does: the actor's role and the owner
    # count below are then read after any concurrent change commits, so two owners demoting each other at
    # once cannot leave the organization without an owner.
    _lock_memberships(org)
    require_owner(org, actor)
    if role not in Membership.Role.values:
        raise InvalidRequest("role must be 'owner' or 'member'")
    user = User.objects.filter(username=username.strip()).first()
    if user is None:
        raise InvalidRequest(f"there is no user called {username.strip()!r}; ask them to sign up first")
    membership, created = Membership.objects.get_or_create(
        organization=org, user=user, defaults={"role": role}
    )
    if created:
        record(actor, "member_add", organization=org, reason=f"{user.username} as {role}")
    elif membership.role != role:
        if membership.role == Membership.Role.OWNER and _owner_count(org) == 1:
            raise InvalidRequest("the last owner cannot be made a member: make someone else an owner first")
        membership.role = role
        membership.save(update_fields=["role"])
        record(actor, "member_role", organization=org, reason=f"{user.username} is now {role}")
    return membership


def _owner_count(org: Organization) -> int:
    return Membership.objects.filter(organization=org, role=Membership.Role.OWNER).count()


def _lock_memberships(org: Organization) -> list[Membership]:
    """Lock (until the transaction ends) and return ``org``'s memberships, users loaded, in id order so
    that concurrent changes take the locks in the same order."""
    return list(
        Membership.objects.select_for_update(of=("self",))
        .filter(organization=org)
        .select_related("user")
        .order_by("pk")
    )


@transaction.atomic
def remove_member(org: Organization, user_id: int, *, actor: Actor) -> None:
    """Remove a member. Not idempotent: removing someone not in ``org`` is refused.

    :raises NotPermitted: the actor is not an owner.
    :raises InvalidRequest: not a member, or the last owner.
    """
    # Lock the organization's memberships so two owners removing each other cannot orphan it.
    rows = _lock_memberships(org)
    require_owner(org, actor)
    membership = next((m for m in rows if m.user_id == user_id), None)
    if membership is None:
        raise InvalidRequest("that user is not a member of this organization")
    if membership.role == Membership.Role.OWNER and sum(m.role == Membership.Role.OWNER for m in rows) == 1:
        raise InvalidRequest("the last owner cannot be removed: make someone else an owner first")
    membership.delete()
    record(actor, "member_remove", organization=org, reason=membership.user.username)


def create_ssh_key(org: Organization, name: str, text: str, *, actor: Actor) -> SSHKey:
    """Validate and store a public key for ``org``. Not idempotent: a repeated key or name is refused.

    :raises InvalidRequest: not one acceptable public key (the sentence says why), or the name or the key
        is already stored for this organization.
    """
    parsed = parse_public_key(text)
    # Cut to the column's length before the checks: a long comment is checked under the name it is stored as.
    name = ((name or "").strip() or parsed.comment or parsed.fingerprint[:20])[:100].rstrip()
    if SSHKey.objects.filter(organization=org, fingerprint=parsed.fingerprint).exists():
        raise InvalidRequest(f"this key ({parsed.fingerprint}) is already saved for {org.name}")
    if SSHKey.objects.filter(organization=org, name=name).exists():
        raise InvalidRequest(f"a key called {name!r} already exists in {org.name}; pick another name")
    try:
        with transaction.atomic():
            key = SSHKey.objects.create(
                organization=org,
                created_by=actor.user,
                name=name,
                public_key=parsed.line,
                fingerprint=parsed.fingerprint,
            )
            record(actor, "ssh_key_add", organization=org, reason=f"{key.name} {key.fingerprint}")
    except IntegrityError:
        raise InvalidRequest("this key or its name was just saved by someone else") from None
    return key


def _key_blob(line: str) -> list[str]:
    """An authorized_keys line's type and base64 (its comment is no part of the key)."""
    return line.split()[:2]


@transaction.atomic
def delete_ssh_key(key: SSHKey, *, actor: Actor) -> None:
    """Forget a key, and take it out of the keys the organization's open reservations (scheduled, waiting,
    provisioning, active) install: no server provisioned from now on gets it, spares included. Servers
    already handed over keep it until they are released (nothing logs in to remove it). Released and
    failed reservations keep their record of it.

    :raises InvalidRequest: the key is the only one of an open reservation, whose next server could then
        not be reached (nothing is changed).
    """
    # Locked in id order: two members deleting a reservation's two keys at once see each other's change.
    rows = list(
        Reservation.objects.select_for_update()
        .filter(organization_id=key.organization_id, state__in=OPEN_RESERVATION_STATES)
        .order_by("pk")
    )
    blob = _key_blob(key.public_key)
    changed = [r for r in rows if any(_key_blob(line) == blob for line in r.authorized_keys)]
    emptied = [r.pk for r in changed if all(_key_blob(line) == blob for line in r.authorized_keys)]
    if emptied:
        many = len(emptied) > 1
        them, have = ("them", "they have") if many else ("it", "it has")
        raise InvalidRequest(
            f"SSH key {key.name!r} is the only key of open reservation{'s' if many else ''} "
            f"{', '.join(map(str, emptied))}: servers provisioned for {them} from now on could not be "
            f"reached; release {them} first, or delete the key once {have} ended"
        )
    for reservation in changed:
        reservation.authorized_keys = [
            line for line in reservation.authorized_keys if _key_blob(line) != blob
        ]
        reservation.save(update_fields=["authorized_keys"])
    removed = f" (removed from open reservations {', '.join(str(r.pk) for r in changed)})" if changed else ""
    record(
        actor,
        "ssh_key_delete",
        organization=key.organization,
        reason=f"{key.name} {key.fingerprint}{removed}",
    )
    key.delete()


TOKEN_MAX_DAYS = 365


@transaction.atomic
def issue_token(
    user: User,
    name: str,
    *,
    actor: Actor,
    expires_in_days: int | None = None,
    issued_with: ApiToken | None = None,
) -> tuple[ApiToken, str]:
    """Create an API token for ``user``, valid until revoked or, with ``expires_in_days``, until then.
    Returns (row, plaintext); the plaintext exists only here.

    ``issued_with``: the API token the request came with, if any. A token that expires issues only tokens
    that expire too, and last no longer than it was issued for: a leaked short-lived token must not mint a
    permanent one (rotation, a new token for the same lifetime, still works).

    :raises InvalidRequest: empty name, a lifetime outside 1..TOKEN_MAX_DAYS days, or longer than the
        issuing token's.
    """
    name = (name or "").strip()
    if not name:
        raise InvalidRequest("give the token a name, e.g. 'ci' or 'laptop'")
    expires_at = None
    if expires_in_days is not None:
        if isinstance(expires_in_days, bool) or not 1 <= expires_in_days <= TOKEN_MAX_DAYS:
            raise InvalidRequest(f"a token lasts 1 to {TOKEN_MAX_DAYS} days, or until revoked")
        expires_at = timezone.now() + dt.timedelta(days=expires_in_days)
    if issued_with is not None and issued_with.expires_at is not None:
        lifetime = issued_with.expires_at - issued_with.created_at
        days = max(1, -(-lifetime // dt.timedelta(days=1)))  # rounded up: a 7-day token issues 7-day ones
        if expires_in_days is None or expires_in_days > days:
            raise InvalidRequest(
                f"this request's API token expires, so the new token must expire too, within {days} "
                f"day(s) (the lifetime it was issued with); sign in to the portal for a longer-lived one"
            )
    row, plaintext = ApiToken.issue(user, name[:100], expires_at=expires_at)
    until = f", expires {expires_at:%Y-%m-%d %H:%M} UTC" if expires_at else ""
    record(actor, "token_issue", reason=f"{row.name} ({row.hint}…) for {user.username}{until}")
    events.api_token_changed(row, created=True, actor_label=str(actor))
    return row, plaintext


@transaction.atomic
def revoke_token(token: ApiToken, *, actor: Actor) -> ApiToken:
    """Revoke a token. Idempotent: revoking a revoked token changes nothing."""
    updated = ApiToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())
    if updated:
        record(actor, "token_revoke", reason=f"{token.name} ({token.hint}…)")
    token.refresh_from_db()
    if updated:
        events.api_token_changed(token, created=False, actor_label=str(actor))
    return token
