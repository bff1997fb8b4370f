"""Field-level encryption at rest: the key file, per-user data keys wrapped by a key
encryption key, and the sealed-value envelope the PostgreSQL store writes.

See docs/security.md, "Field encryption". Only :mod:`donnadb.crypto.errors` and
:mod:`donnadb.crypto.keycache` (the unwrapped keys in memory, which an erasure drops) are
imported without the ``cryptography`` library; the DAL imports the rest when
CRYPTO_ENABLED.
"""
