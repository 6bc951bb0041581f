"""Test settings: the real settings with a cheaper password hash.

PBKDF2 at Django's default iterations costs ~0.3 s per user created; the suite creates
hundreds. The algorithm and its stored prefix stay the same.
"""

from registry_site.settings import *  # noqa: F403

PASSWORD_HASHERS = ["tests.hashers.FastPBKDF2PasswordHasher"]
