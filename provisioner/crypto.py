"""Encryption of secrets at rest (BMC passwords, the provisioning private key).

Fernet (AES-128-CBC + HMAC-SHA256) with a key list from settings.NEOCLOUD_CREDENTIAL_KEYS: the first key
encrypts, all keys decrypt, so keys can be rotated by prepending a new one.
"""

from __future__ import annotations

from functools import cache, lru_cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured


@cache
def _fernet(keys: str) -> MultiFernet:
    try:
        return MultiFernet([Fernet(k.strip().encode()) for k in keys.split(",") if k.strip()])
    except (ValueError, TypeError):
        raise ImproperlyConfigured(
            "NEOCLOUD_CREDENTIAL_KEYS must be comma-separated Fernet keys (32 url-safe base64-encoded bytes)"
        )


def encrypt(plaintext: str) -> str:
    return _fernet(settings.NEOCLOUD_CREDENTIAL_KEYS).encrypt(plaintext.encode()).decode()


def decryptable(token: str) -> bool:
    """Whether ``token`` decrypts with the configured keys (validation asks this of every bookable node's BMC
    password on each booking). Remembered per token and key list: it cannot change for them, and only the
    answer is kept, never the secret."""
    return _decryptable(settings.NEOCLOUD_CREDENTIAL_KEYS, token)


@lru_cache(maxsize=16384)
def _decryptable(keys: str, token: str) -> bool:
    try:
        _fernet(keys).decrypt(token.encode())
    except (InvalidToken, ImproperlyConfigured):
        return False
    return True


def decrypt(token: str) -> str:
    try:
        return _fernet(settings.NEOCLOUD_CREDENTIAL_KEYS).decrypt(token.encode()).decode()
    except InvalidToken:
        raise ImproperlyConfigured(
            "a stored secret cannot be decrypted with NEOCLOUD_CREDENTIAL_KEYS (was the key changed?)"
        )
