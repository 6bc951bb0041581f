"""The API token format: `rgt_<prefix>_<secret>`, looked up by prefix, compared by digest."""

import hashlib
import hmac
import secrets
from dataclasses import dataclass

TOKEN_TAG = "rgt"
PREFIX_BYTES = 6
SECRET_BYTES = 32


@dataclass(frozen=True)
class NewToken:
    plaintext: str
    prefix: str
    digest: str


def token_digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def generate_token() -> NewToken:
    prefix = secrets.token_hex(PREFIX_BYTES)
    secret = secrets.token_urlsafe(SECRET_BYTES)
    return NewToken(f"{TOKEN_TAG}_{prefix}_{secret}", prefix, token_digest(secret))


def split_token(plaintext: str) -> tuple[str, str] | None:
    """(prefix, secret) of a well-formed token, or None for anything else."""
    parts = plaintext.split("_", 2)
    if len(parts) != 3 or parts[0] != TOKEN_TAG or len(parts[1]) != PREFIX_BYTES * 2:
        return None
    return parts[1], parts[2]


def digest_matches(secret: str, digest: str) -> bool:
    return hmac.compare_digest(token_digest(secret), digest)
