"""The S3 copy of the repository (boto3): same layout under a prefix.

``<prefix><id>/dump/...``, ``<prefix><id>/SHA256SUMS``, then
``<prefix><id>/manifest.json`` LAST, so a backup
whose upload was interrupted has no manifest there and is never taken for whole.
Files go through boto3's transfer manager, the dump's side by side: a file is checked
against the manifest (size, sha256) before it is sent, large ones go up in parallel multipart
uploads whose part size grows with the file (S3 allows 5 MiB..5 GiB parts and at
most 10,000 of them), every request (a small file, or a part) carries a CRC32 which S3
checks, and a failure aborts the multipart upload so no invisible, billed fragments
stay behind (``backup check`` lists any a killed process left). Downloads are parallel ranged
reads into new files, each checked against the manifest before the backup becomes
visible in the local repository.

Credentials come from boto3's usual chain (environment, profile, instance role).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import math
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cached_property
from pathlib import Path
from typing import Any

from donnadb.backup import manifest as mf
from donnadb.backup import signing, storage_local, sums
from donnadb.backup.errors import BackupCorrupt, BackupError, BackupNotFound
from donnadb.config import MIB, Settings
from donnadb.errors import ConfigError, DiskWriteError, UsageError

log = logging.getLogger(__name__)

#: The checksum each upload request (a file, or a part of one) carries, which S3 checks
#: on arrival. It guards the transfer only (what the file must be is the manifest's
#: sha256, compared before the send and after a download), so the cheap CRC32 does:
#: boto3's own default. A SHA-256 per request cost this host and the server one more
#: hash of every byte.
UPLOAD_CHECKSUM = "CRC32"

#: S3's own limits for multipart uploads.
S3_MIN_PART = 5 * MIB
S3_MAX_PART = 5 * 1024 * MIB
S3_MAX_PARTS = 10_000

Progress = Callable[[int], None]


def part_size_for(size: int, min_part: int = S3_MIN_PART) -> int:
    """Part size for a file of ``size`` bytes: at least ``min_part``, a whole number of
    MiB, and big enough that the upload needs at most 10,000 parts.

    :raises BackupError: the file is too large for S3 (over 10,000 x 5 GiB).
    """
    needed = math.ceil(size / S3_MAX_PARTS)
    part = max(min_part, S3_MIN_PART, math.ceil(needed / MIB) * MIB)
    if part > S3_MAX_PART:
        raise BackupError(f"a {size}-byte file exceeds S3's multipart limit (10,000 x 5 GiB)")
    return part


def _check_local(path: Path, entry: mf.FileEntry) -> None:
    """:raises BackupCorrupt: ``path`` differs from ``entry`` (size or sha256)."""
    size = path.stat().st_size
    if size != entry.size:
        raise BackupCorrupt(f"{path}: size {size} != {entry.size} in the manifest")
    digest, _ = mf.sha256_file(path)
    if digest != entry.sha256:
        raise BackupCorrupt(f"{path}: sha256 differs from the manifest; not uploading")


def check_backup_id(backup_id: str) -> str:
    """``backup_id`` if it is of the one backup id format (it becomes a path and a key).

    :raises UsageError: it is not.
    """
    if not mf.BACKUP_ID_RE.match(backup_id):
        raise UsageError(f"{backup_id!r} is not a backup id (YYYYMMDDTHHMMSS[ffffff]Z-xxxx, "
                         "as `donnactl backup list` shows) nor 'latest'")
    return backup_id


@dataclass
class RemoteBackup:
    backup_id: str
    manifest: mf.Manifest | None  # None: upload unfinished or manifest unreadable

    @property
    def good(self) -> bool:
        return self.manifest is not None


class S3Store:
    """One bucket/prefix holding backups.

    :raises ConfigError: S3 is not configured (no BACKUP_S3_BUCKET).
    """

    def __init__(self, settings: Settings, *, client=None, allow_unsigned: bool = False) -> None:
        """``allow_unsigned``: accept manifests without a signature (backups made before
        manifests were signed); a signature present must still hold."""
        if not settings.backup_s3_bucket:
            raise ConfigError("S3 is not configured; set BACKUP_S3_BUCKET")
        self.settings = settings
        self.allow_unsigned = allow_unsigned
        self.bucket = settings.backup_s3_bucket
        prefix = settings.backup_s3_prefix.strip("/")
        self.prefix = f"{prefix}/" if prefix else ""
        self.client = client or self._make_client()

    def _make_client(self):
        import boto3
        from botocore.config import Config

        session = boto3.session.Session(profile_name=self.settings.backup_s3_profile)
        return session.client(
            "s3",
            region_name=self.settings.backup_s3_region,
            endpoint_url=self.settings.backup_s3_endpoint_url,
            verify=str(self.settings.backup_s3_ca_file) if self.settings.backup_s3_ca_file
            else None,
            config=Config(retries={"max_attempts": self.settings.backup_s3_max_attempts,
                                   "mode": "standard"}),
        )

    # -- keys -----------------------------------------------------------------
    def key(self, backup_id: str, rel: str) -> str:
        return f"{self.prefix}{backup_id}/{rel}"

    def _put_args(self) -> dict:
        args: dict = {"StorageClass": self.settings.backup_s3_storage_class}
        if self.settings.backup_s3_sse:
            args["ServerSideEncryption"] = self.settings.backup_s3_sse
            if self.settings.backup_s3_sse == "aws:kms" and self.settings.backup_s3_kms_key_id:
                args["SSEKMSKeyId"] = self.settings.backup_s3_kms_key_id
        return args

    # -- upload ---------------------------------------------------------------
    def put_small(self, key: str, body: bytes) -> None:
        """One small object in one request (its own SHA-256 checked by S3), with the
        bucket's storage class and server-side encryption.

        :raises BackupError: S3 refused or failed.
        """
        digest = base64.b64encode(hashlib.sha256(body).digest()).decode("ascii")
        try:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=body,
                                   ChecksumSHA256=digest, **self._put_args())
        except Exception as exc:
            raise BackupError(f"cannot write s3://{self.bucket}/{key}: {exc}") from None

    def upload_backup(self, backup: storage_local.LocalBackup,
                      progress: Progress | None = None) -> int:
        """Upload every file of ``backup``, then its SHA256SUMS (if it has one), then its
        manifest; return bytes sent.

        :raises BackupCorrupt: a local file no longer matches the manifest, or
            SHA256SUMS disagrees with it.
        :raises BackupError: S3 refused or failed (unfinished uploads are aborted).
        """
        if backup.manifest is None:
            raise BackupCorrupt(f"backup {backup.backup_id} has no manifest; not uploading")
        meta = [mf.MANIFEST_NAME]  # last: it publishes the backup
        sums_path = backup.path / sums.NAME
        if sums_path.is_file():  # else made before SHA256SUMS existed
            sums.require(sums_path.read_text(encoding="utf-8"), backup.manifest,
                         where=str(sums_path))
            meta.insert(0, sums.NAME)
        # The dump's files side by side (pg_dump -Fd writes one per table), then the
        # checksums, then the manifest, each alone, in that order.
        self.upload_files([(backup.path / entry.path, self.key(backup.backup_id, entry.path),
                            entry) for entry in backup.manifest.files], progress)
        sent = sum(entry.size for entry in backup.manifest.files)
        for name in meta:
            path = backup.path / name
            digest, size = mf.sha256_file(path)
            self.upload_file(path, self.key(backup.backup_id, name),
                             mf.FileEntry(name, size, digest), progress)
            sent += size
        return sent

    def upload_file(self, path: Path, key: str, entry: mf.FileEntry,
                    progress: Progress | None = None) -> None:
        """Upload one file that matches ``entry``: :meth:`upload_files` of it alone."""
        self.upload_files([(path, key, entry)], progress)

    def upload_files(self, files: list[tuple[Path, str, mf.FileEntry]],
                     progress: Progress | None = None) -> None:
        """Upload ``(path, key, entry)`` files side by side through boto3's transfer
        manager: ``BACKUP_S3_CONCURRENCY`` requests at a time across all of them (small
        files no longer wait for each other), large files in parallel parts, each
        request with a CRC32 that S3 checks; a failed multipart upload is aborted by the
        manager itself, and a failure cancels what is still queued.

        Each file is checked against its entry (size and sha256) while the ones before
        it are sent: a file sent in one request before it is queued (the object is
        visible at once), a multipart one while its parts go up (nothing of it is
        visible before its last request; a mismatch cancels it, the manager aborts the
        upload, and the object is deleted should it have finished first).

        :raises BackupCorrupt: a file differs from its entry (it is not left in S3).
        :raises BackupError: S3 refused or failed.
        """
        from boto3.s3.transfer import ProgressCallbackInvoker, create_transfer_manager

        subscribers = [ProgressCallbackInvoker(progress)] if progress else None
        checking = None
        try:
            with contextlib.ExitStack() as stack:
                managers: dict[int, Any] = {}
                queued = []
                for path, key, entry in files:
                    part = part_size_for(entry.size, self.settings.backup_s3_min_part_size)
                    multipart = entry.size >= part  # the transfer manager's own rule
                    if not multipart:
                        _check_local(path, entry)
                    if part not in managers:
                        managers[part] = stack.enter_context(create_transfer_manager(
                            self.client, self._transfer_config(entry.size)))
                    extra = {"ChecksumAlgorithm": UPLOAD_CHECKSUM,
                             "Metadata": {"sha256": entry.sha256}, **self._put_args()}
                    queued.append((key, managers[part].upload(
                        str(path), self.bucket, key, extra_args=extra,
                        subscribers=subscribers)))
                    if multipart:
                        checking = key
                        _check_local(path, entry)
                        checking = None
                for key, future in queued:
                    try:
                        future.result()
                    except Exception as exc:  # botocore's ClientError, connection errors
                        raise BackupError(f"upload of s3://{self.bucket}/{key} failed: "
                                          f"{exc}") from exc
        except BackupCorrupt:
            if checking is not None:
                # Leaving the block cancelled it; it may have completed first all the same.
                self.client.delete_object(Bucket=self.bucket, Key=checking)
            raise

    def _transfer_config(self, size: int):
        """Parts of :func:`part_size_for`, ``BACKUP_S3_CONCURRENCY`` of them at a time."""
        from boto3.s3.transfer import TransferConfig

        part = part_size_for(size, self.settings.backup_s3_min_part_size)
        return TransferConfig(multipart_threshold=part, multipart_chunksize=part,
                              max_concurrency=self.settings.backup_s3_concurrency)

    def _abort(self, key: str, upload_id: str) -> None:
        try:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
        except Exception:
            # `backup check` lists what could not be aborted; `backup prune` retries.
            log.warning("could not abort multipart upload %s of %s", upload_id, key,
                        exc_info=True)

    # -- listing --------------------------------------------------------------
    def list_backups(self) -> list[RemoteBackup]:
        """Backups under the prefix, oldest first; unfinished ones have no manifest.

        Only folders named like a backup id: the prefix also holds pgBackRest's
        repository (``pgbackrest/``) and the erasures ledger's copy (``erasures/``),
        which are no backups, unfinished or otherwise (a prune would time them as new
        and a listing call them failed).
        """
        found = []
        paginator = self.client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix,
                                           Delimiter="/"):
                for common in page.get("CommonPrefixes", []):
                    backup_id = common["Prefix"][len(self.prefix):].rstrip("/")
                    if not mf.BACKUP_ID_RE.match(backup_id):
                        continue
                    found.append(RemoteBackup(backup_id, self._read_manifest(backup_id)))
        except Exception as exc:
            raise BackupError(f"cannot list s3://{self.bucket}/{self.prefix}: {exc}") from exc
        return sorted(found, key=lambda b: b.backup_id)

    def _read_manifest(self, backup_id: str) -> mf.Manifest | None:
        """The backup's manifest if it is whole and authentic, else None (for listings)."""
        try:
            return self._fetch_manifest(backup_id)
        except (BackupNotFound, BackupCorrupt, ConfigError):
            return None

    def _fetch_manifest(self, backup_id: str) -> mf.Manifest:
        """Download, parse and authenticate one manifest. Nothing in it is trusted
        before its layout and signature check out (see signing.py).

        :raises BackupNotFound: no manifest (the upload never finished).
        :raises BackupCorrupt: unreadable, a hostile layout, another backup's manifest,
            unsigned or not signed by a key of BACKUP_SIGNING_KEY_FILE.
        :raises ConfigError: the signing key file cannot be read.
        """
        key = self.key(backup_id, mf.MANIFEST_NAME)
        where = f"s3://{self.bucket}/{key}"
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except self.client.exceptions.NoSuchKey:
            raise BackupNotFound(f"no complete backup {backup_id!r} in "
                                 f"s3://{self.bucket}/{self.prefix}") from None
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise BackupCorrupt(f"{where} is not a valid backup manifest") from None
        manifest = mf.Manifest.from_json(text, where=where)
        if manifest.backup_id != backup_id:
            raise BackupCorrupt(f"{where} describes backup {manifest.backup_id}, not "
                                f"{backup_id}; refusing it")
        if manifest.signature or not self.allow_unsigned:
            signing.check(manifest, self._signing_keys, where=where)
        else:
            log.warning("%s has no signature; accepted because --allow-unsigned was given",
                        where)
        return manifest

    @cached_property
    def _signing_keys(self):
        """Read once per store, not once per manifest a listing fetches.

        :raises ConfigError: the signing key file cannot be read (tried again next time).
        """
        return signing.load_keys(self.settings)

    def unfinished_uploads(self) -> list[dict]:
        """Multipart uploads under the prefix that were never completed or aborted."""
        found = []
        paginator = self.client.get_paginator("list_multipart_uploads")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix):
            for up in page.get("Uploads", []):
                initiated = up.get("Initiated")
                found.append({
                    "key": up["Key"], "upload_id": up["UploadId"],
                    "initiated": initiated.isoformat() if isinstance(initiated, datetime)
                    else str(initiated),
                })
        return found

    def abort_unfinished(self, *, older_than_hours: float = 0) -> list[dict]:
        """Abort unfinished multipart uploads under the prefix started more than
        ``older_than_hours`` ago (younger ones may belong to a running upload)."""
        cutoff = datetime.now(UTC) - timedelta(hours=older_than_hours)
        found = [u for u in self.unfinished_uploads()
                 if older_than_hours <= 0 or datetime.fromisoformat(u["initiated"]) < cutoff]
        for up in found:
            self._abort(up["key"], up["upload_id"])
        return found

    # -- download / delete ----------------------------------------------------
    def download_backup(self, backup_id: str, repo: Path,
                        progress: Progress | None = None) -> storage_local.LocalBackup:
        """Fetch a backup into the local repository, verifying every file's sha256
        before it becomes visible there.

        Every path written is ``.partial-<id>/dump/NAME`` (the manifest's layout is
        checked first) or the backup's SHA256SUMS and manifest, each file is created
        new, never through a symlink, and nothing of a failed download stays.

        :raises UsageError: ``backup_id`` is not of the one backup id format.
        :raises BackupNotFound: S3 has no complete backup with that id.
        :raises BackupCorrupt: the manifest is hostile, unsigned or forged, or a
            downloaded file (SHA256SUMS too) differs from it.
        """
        check_backup_id(backup_id)
        manifest = self._fetch_manifest(backup_id)
        storage_local.ensure_repo(repo)
        with storage_local.repo_lock(repo):
            if (repo / backup_id).exists():
                return storage_local.resolve(repo, backup_id)
            partial = storage_local.start_partial(repo, backup_id)
            try:
                os.mkdir(partial / mf.DUMP_DIR, 0o700)
                for entry in manifest.files:
                    self._download_file(self.key(backup_id, entry.path),
                                        partial / entry.path, entry, progress)
                self._download_sums(backup_id, partial, manifest)
                mf.write_private(partial / mf.MANIFEST_NAME, manifest.to_json())
                final = storage_local.commit_partial(partial, backup_id)
            except BaseException:
                shutil.rmtree(partial, ignore_errors=True)
                raise
        return storage_local.LocalBackup(backup_id, final, manifest, None)

    def _download_sums(self, backup_id: str, partial: Path, manifest: mf.Manifest) -> None:
        """Fetch the backup's SHA256SUMS into ``partial`` once it agrees with ``manifest``
        (none for a backup uploaded before SHA256SUMS existed)."""
        key = self.key(backup_id, sums.NAME)
        expected = sums.render(manifest).encode()
        try:
            # No more than the manifest's file list needs: the object may be hostile.
            body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
            data = body.read(len(expected) + 1)
        except self.client.exceptions.NoSuchKey:
            return
        except Exception as exc:
            raise BackupError(f"download of s3://{self.bucket}/{key} failed: {exc}") from exc
        sums.require(data.decode("utf-8", errors="replace"), manifest,
                     where=f"s3://{self.bucket}/{key}")
        sums.write(partial, manifest)

    def _download_file(self, key: str, dest: Path, entry: mf.FileEntry,
                       progress: Progress | None) -> None:
        """Fetch one object through the transfer manager (parallel ranged reads) into a
        new file, then check it against ``entry``."""
        try:
            # A new file only: an existing name, or a symlink planted there, fails.
            fd = os.open(dest, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "w+b") as out:
                self.client.download_fileobj(self.bucket, key, out, Callback=progress,
                                             Config=self._transfer_config(entry.size))
        except Exception as exc:
            # A full repository disk is not a download failure: say where, and what to do
            # (the transfer manager's writes carry no file name).
            disk = DiskWriteError.of(exc, dest) if isinstance(exc, OSError) else None
            raise disk or BackupError(f"download of s3://{self.bucket}/{key} failed: "
                                      f"{exc}") from exc
        digest, size = mf.sha256_file(dest)
        if size != entry.size or digest != entry.sha256:
            raise BackupCorrupt(f"s3://{self.bucket}/{key} does not match its manifest "
                                f"({size} bytes, sha256 {digest[:12]}...)")

    def delete_backup(self, backup_id: str) -> int:
        """Delete every object of a backup, its manifest first; return objects deleted."""
        manifest_key = self.key(backup_id, mf.MANIFEST_NAME)
        self.client.delete_object(Bucket=self.bucket, Key=manifest_key)
        keys = []
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self.key(backup_id, "")):
            keys.extend({"Key": o["Key"]} for o in page.get("Contents", []))
        for start in range(0, len(keys), 1000):
            self.client.delete_objects(Bucket=self.bucket,
                                       Delete={"Objects": keys[start:start + 1000]})
        return len(keys) + 1
