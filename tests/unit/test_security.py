"""Password hashing: argon2id with OWASP parameters; bcrypt still verifies."""

from __future__ import annotations

from pwdlib.hashers.bcrypt import BcryptHasher

from app.core.security import PasswordHasher
from tests.conftest import make_settings

hasher = PasswordHasher(make_settings())


async def test_hash_is_argon2id_with_configured_cost() -> None:
    hashed = await hasher.hash("Correct-Horse-9")
    assert hashed.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    assert await hasher.verify_and_update("Correct-Horse-9", hashed) == (True, None)


async def test_wrong_password_does_not_verify() -> None:
    hashed = hasher.hash_sync("Correct-Horse-9")
    valid, _ = await hasher.verify_and_update("correct-horse-9", hashed)
    assert valid is False


async def test_legacy_bcrypt_hash_verifies_and_is_upgraded() -> None:
    legacy = BcryptHasher().hash("Legacy-Pass-1")
    valid, upgraded = await hasher.verify_and_update("Legacy-Pass-1", legacy)
    assert valid is True
    assert upgraded is not None
    assert upgraded.startswith("$argon2id$")


async def test_same_password_hashes_differently() -> None:
    assert hasher.hash_sync("Same-Pass-1") != hasher.hash_sync("Same-Pass-1")
