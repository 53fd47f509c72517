"""Team secrets at rest: Fernet (AES-128-CBC + HMAC-SHA256) with a key the admin holds, never in the database.

Each stored value is the encryption of ``[name, value]``, so a ciphertext copied onto another secret's row is
refused when read rather than handed out under the wrong name. ``rundock server init`` makes the key file
(mode 0600); losing it loses the secrets (set them again), and anyone holding it and the database reads them.
"""

from __future__ import annotations

import json
import os

from cryptography.fernet import Fernet, InvalidToken

from rundock.errors import ConfigError


class SecretBox:
    """Encrypts and decrypts secret values with one Fernet key."""

    def __init__(self, key: str) -> None:
        try:
            self._fernet = Fernet(key.encode("ascii"))
        except (ValueError, UnicodeEncodeError):
            raise ConfigError("the secrets key is not a Fernet key (32 bytes, URL-safe base64); "
                              "`rundock server init` makes one", field="secrets_key_file") from None

    def seal(self, name: str, value: str) -> bytes:
        return self._fernet.encrypt(json.dumps([name, value]).encode("utf-8"))

    def open(self, name: str, sealed: bytes) -> str:
        """The value of secret ``name``; ValueError if ``sealed`` was not made for it with this key."""
        try:
            stored_name, value = json.loads(self._fernet.decrypt(sealed))
        except (InvalidToken, ValueError, TypeError):
            raise ValueError(f"secret {name!r} cannot be decrypted with this server's secrets key; "
                             "was the key replaced? Set the secret again") from None
        if stored_name != name:
            raise ValueError(f"the stored value of secret {name!r} belongs to another secret; set it again")
        return str(value)


def write_key_file(path: str) -> bool:
    """Make a new key file at ``path`` (mode 0600) unless one exists; return whether it was made."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w", encoding="ascii") as fh:
        fh.write(Fernet.generate_key().decode("ascii") + "\n")
    return True
