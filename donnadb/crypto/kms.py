"""The key file sealed by a KMS key (CRYPTO_KMS_KEY_ID): what is on disk is then KMS
ciphertext, and whoever copies the file (a disk image, a stolen escrow copy, a host's
backup) holds nothing without that KMS key's permission to decrypt.

The KMS key wraps the key file, not each user's data key: a process asks KMS once when
it reads the file, never per user or per request, so a KMS outage or its latency never
reaches a sealed read or write of a running application (the layout of Kubernetes'
KMS v2: a local KEK, itself wrapped by KMS, wraps the data keys). Revoking the key's
decrypt permission makes every copy of the file unreadable from then on; KMS logs each
decrypt.

A sealed file is two lines::

    donnadb-kms-sealed-v1 arn:aws:kms:eu-west-1:111122223333:key/...
    AQICAHh...                   base64 of KMS Encrypt's CiphertextBlob

The first names the key (its ARN, as KMS returned it), which Decrypt is told to expect,
so a blob sealed under another key is refused, not opened. The encryption context
:data:`CONTEXT` binds the blob to its purpose: KMS ciphertext made for anything else
does not open here. The endpoint and region are settings (CRYPTO_KMS_ENDPOINT_URL,
CRYPTO_KMS_REGION); credentials come from boto3's usual chain (environment, profile,
instance role), never from a setting.
"""

from __future__ import annotations

import base64
import binascii
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from donnadb.crypto.errors import KeyFileError

if TYPE_CHECKING:
    from donnadb.config import Settings

#: The settings naming the KMS key and where KMS is (their variables: upper case).
SETTINGS = ("crypto_kms_key_id", "crypto_kms_region", "crypto_kms_endpoint_url")
MAGIC = b"donnadb-kms-sealed-v1"
#: KMS binds this to the ciphertext: Decrypt must repeat it exactly.
CONTEXT = {"donnadb-purpose": "field-encryption-key-file"}
#: A dead or unreachable KMS fails a command in seconds, not botocore's minute a try.
CONNECT_TIMEOUT = 5
READ_TIMEOUT = 15
ATTEMPTS = 3


def is_sealed(content: bytes) -> bool:
    return content.startswith(MAGIC + b" ")


def sealed_by(content: bytes) -> str | None:
    """The KMS key a sealed file names (None for a file in clear)."""
    if not is_sealed(content):
        return None
    return content.split(b"\n", 1)[0][len(MAGIC) + 1:].decode("ascii", "replace").strip()


@dataclass
class KmsSeal:
    """Seals and opens a key file's text with one KMS key, through one client."""

    key_id: str
    client: object

    def seal(self, text: bytes) -> bytes:
        """The file content for ``text``, sealed by :attr:`key_id`.

        :raises KeyFileError: KMS refused or could not be reached (nothing is written).
        """
        answer = self._call("seal the key file with", self.key_id, "encrypt",
                            KeyId=self.key_id, Plaintext=text, EncryptionContext=CONTEXT)
        blob = base64.b64encode(answer["CiphertextBlob"])
        return MAGIC + b" " + answer["KeyId"].encode("ascii") + b"\n" + blob + b"\n"

    def open(self, content: bytes, path: Path) -> bytes:
        """The key file's text from the sealed ``content`` read at ``path``.

        :raises KeyFileError: malformed, altered, sealed under another key or context,
            or KMS refused or could not be reached.
        """
        key = sealed_by(content) or ""
        lines = content.split(b"\n")
        try:
            blob = base64.b64decode(lines[1].strip(), validate=True) if len(lines) > 1 else b""
        except (binascii.Error, ValueError):
            blob = b""
        if not key or not blob:
            raise KeyFileError(f"key file {path} is not a KMS-sealed key file (a header "
                               "line naming the key, then the ciphertext in base64): "
                               "restore it from escrow")
        answer = self._call(f"open the key file {path} with", key, "decrypt",
                            KeyId=key, CiphertextBlob=blob, EncryptionContext=CONTEXT)
        return answer["Plaintext"]

    def arn(self) -> str:
        """The ARN of :attr:`key_id` (which may be an id or an alias), as a sealed file's
        header names it.

        :raises KeyFileError: no such key, or KMS could not be reached.
        """
        answer = self._call("look up", self.key_id, "describe_key", KeyId=self.key_id)
        return answer["KeyMetadata"]["Arn"]

    def _call(self, doing: str, key: str, method: str, **kwargs) -> dict:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return getattr(self.client, method)(**kwargs)
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code = error.get("Code", "error")
            hint = ("it was altered, or sealed for something else: restore it from escrow"
                    if code == "InvalidCiphertextException" else
                    "check the key's policy and this host's KMS credentials")
            raise KeyFileError(f"KMS refused to {doing} key {key} ({code}): {hint}") from None
        except BotoCoreError as exc:
            raise KeyFileError(f"cannot {doing} KMS key {key} ({exc}): check "
                               "CRYPTO_KMS_ENDPOINT_URL, CRYPTO_KMS_REGION and this host's "
                               "KMS credentials") from None


def seal_of(settings: Settings) -> KmsSeal | None:
    """The KMS seal CRYPTO_KMS_KEY_ID names (None when it is unset)."""
    return _seal(*(getattr(settings, name) for name in SETTINGS))


def seal_from_env() -> KmsSeal | None:
    """The same from CRYPTO_KMS_* in this process's environment alone (the deploy's
    one-line key file maker, which reads no settings file)."""
    return _seal(*(os.environ.get(name.upper()) or None for name in SETTINGS))


def _seal(key_id: str | None, region: str | None, endpoint_url: str | None
          ) -> KmsSeal | None:
    if not key_id:
        return None
    import boto3
    from botocore.config import Config

    client = boto3.session.Session().client(
        "kms", region_name=region, endpoint_url=endpoint_url,
        config=Config(connect_timeout=CONNECT_TIMEOUT, read_timeout=READ_TIMEOUT,
                      retries={"max_attempts": ATTEMPTS, "mode": "standard"}))
    return KmsSeal(key_id, client)
