"""A deployment's stored variables (secrets encrypted) as one type, and the one way secret values are masked."""

from __future__ import annotations

from backend.app.core.logging import MASK, SecretMask, redact
from backend.app.core.security import ENCRYPTED, EncryptedValues
from backend.tests.conftest import make_settings

SETTINGS = make_settings("sqlite+aiosqlite:///:memory:")


def test_encrypt_decrypt_mask_and_secret_values_walk_one_shape():
    values = {"port": 8080, "pw": "pa$word-1", "db": {"user": "app", "password": "s3cret-two"}, "empty": None}
    stored = EncryptedValues.encrypt(SETTINGS, values, {"pw", "db.password", "empty", "missing.path"})
    assert set(stored.stored["pw"]) == {ENCRYPTED} and set(stored.stored["db"]["password"]) == {ENCRYPTED}
    assert stored.stored["port"] == 8080 and stored.stored["empty"] is None  # nothing to encrypt
    assert "pa$word-1" not in repr(stored.stored) and values["pw"] == "pa$word-1"  # the input is left alone

    reread = EncryptedValues(stored.stored)  # as read back from the database
    assert reread.decrypt(SETTINGS) == values
    assert reread.masked() == {"port": 8080, "pw": MASK, "db": {"user": "app", "password": MASK}, "empty": None}
    assert sorted(reread.secret_values(SETTINGS)) == ["pa$word-1", "s3cret-two"]
    # every secret decrypted is masked in the server log from then on
    assert redact("connecting with s3cret-two") == f"connecting with {MASK}"
    assert EncryptedValues(None).masked() == {}


def test_secret_mask_masks_every_form_longest_first():
    mask = SecretMask(["abc$def", "abc$def-and-more", "ab"])
    # the longer secret is masked whole, the compose-escaped form too; a short value masks with min_length 1
    assert mask("x abc$def-and-more y abc$$def z ab") == f"x {MASK} y {MASK} z {MASK}"
    assert SecretMask(["ab"], min_length=4)("ab") == "ab"
    pem = "-----BEGIN KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END KEY-----\n"
    assert SecretMask([pem])("echo: MIIEvQIBADANBgkqhkiG9w0BAQEFAASC") == f"echo: {MASK}"
    assert not SecretMask([None, ""]) and SecretMask([None, ""])("text") == "text"
