"""Backups: logical snapshots (pg_dump) with signed manifests in a local repository and
an optional S3 copy, verification, restore, retention and pruning, and physical backups
with point-in-time recovery through pgBackRest."""
