"""Provider credentials encrypted at rest (Fernet, key derived from the hub's secret) and
API keys stored only as hashes."""

from __future__ import annotations

import base64
import hashlib
import secrets

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

API_KEY_PREFIX = "sbk_"


def _fernet_key(secret: str) -> bytes:
    raw = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=b"switchboard", info=b"provider-secrets"
    ).derive(secret.encode())
    return base64.urlsafe_b64encode(raw)


class SecretBox:
    """Encrypts with the current key; decrypts with it or any retired one (key rotation)."""

    def __init__(self, secret: str, old_secrets: list[str] | None = None) -> None:
        keys = [Fernet(_fernet_key(s)) for s in [secret, *(old_secrets or [])]]
        self._fernet = MultiFernet(keys)

    def encrypt(self, plaintext: str) -> bytes:
        return self._fernet.encrypt(plaintext.encode())

    def decrypt(self, token: bytes) -> str:
        try:
            return self._fernet.decrypt(bytes(token)).decode()
        except InvalidToken as exc:
            raise ValueError(
                "a stored credential cannot be decrypted: HUB_SECRET_KEY changed without "
                "keeping the old key in HUB_OLD_SECRET_KEYS"
            ) from exc


def new_api_key() -> tuple[str, str, bytes]:
    """A fresh key: (the key shown once, its display prefix, the hash stored)."""
    key = API_KEY_PREFIX + secrets.token_urlsafe(32)
    return key, key[:12], hash_api_key(key)


def hash_api_key(key: str) -> bytes:
    # The key carries 256 bits of entropy, so a fast hash is enough (no password stretching).
    return hashlib.sha256(key.encode()).digest()
