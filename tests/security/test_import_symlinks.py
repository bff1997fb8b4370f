"""The importer reads nothing from outside DATA_DIR, even when it runs as root over a
directory others can write and files are swapped for symlinks after the scan."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import pytest

from donnadb.legacy.fixtures import generate
from donnadb.legacy.reader import LegacyReader


@pytest.fixture
def data(tmp_path):
    root = tmp_path / "data"
    generate(root, users=3, chats=4, messages_per_chat=2, logs=4,
             large_message_bytes=1024, long_chat_messages=10)
    return root


@pytest.fixture
def secret(tmp_path):
    """Files outside DATA_DIR holding a marker, in each of the formats the import reads."""
    marker = f"outside-{uuid.uuid4().hex}"
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "memory.json").write_text(f'{{"user_id": "x", "note": "{marker}"}}')
    (outside / "log.jsonl").write_text(f'{{"level": "info", "message": "{marker}"}}\n')
    return marker, outside


def _everything(reader: LegacyReader) -> str:
    return repr([*reader.users(), *reader.chats(), *reader.logs()])


def _reasons(reader: LegacyReader) -> set[tuple[str, str]]:
    return {(q["path"], q["reason"]) for q in reader.report.quarantined}


def _swap_for_symlink(path: Path, target: Path) -> None:
    path.unlink()
    path.symlink_to(target)


def test_files_swapped_for_symlinks_after_the_scan_are_not_followed(data, secret):
    marker, outside = secret
    reader = LegacyReader.open(data)
    memory, log = reader.inventory.memory[0], reader.inventory.logs[0]  # accepted by the scan
    _swap_for_symlink(memory, outside / "memory.json")
    _swap_for_symlink(log, outside / "log.jsonl")
    assert marker not in _everything(reader)
    reasons = _reasons(reader)
    assert (f"memory/{memory.name}", "unreadable") in reasons
    assert (f"logs/{log.name}", "unreadable") in reasons


def test_a_folder_swapped_for_a_symlink_after_the_scan_is_not_followed(data, secret):
    marker, outside = secret
    reader = LegacyReader.open(data)
    (outside / "memory").mkdir()
    for path in (data / "memory").glob("*.json"):
        (outside / "memory" / path.name).write_text(f'{{"note": "{marker}"}}')
    shutil.rmtree(data / "memory")
    (data / "memory").symlink_to(outside / "memory")
    assert marker not in _everything(reader)


@pytest.mark.parametrize("folder", ["memory", "logs"])
def test_a_symlinked_folder_is_not_read(data, secret, folder):
    marker, outside = secret
    shutil.rmtree(data / folder)
    (outside / folder).mkdir()
    name = "u.json" if folder == "memory" else "app.jsonl"
    source = outside / ("memory.json" if folder == "memory" else "log.jsonl")
    shutil.copy(source, outside / folder / name)
    (data / folder).symlink_to(outside / folder)
    reader = LegacyReader.open(data)
    assert marker not in _everything(reader)
    assert (folder, "not a regular folder") in _reasons(reader)


def test_a_symlinked_user_folder_is_not_read(data, secret):
    marker, outside = secret
    (outside / "user_evil").mkdir()
    chat = next((data / "conversations").glob("*/*.json"))
    (outside / "user_evil" / "c_evil_outside.json").write_text(chat.read_text().replace(
        '"messages"', f'"x": "{marker}", "messages"', 1))
    (data / "conversations" / "user_evil").symlink_to(outside / "user_evil")
    assert marker not in _everything(LegacyReader.open(data))


def test_a_fifo_planted_after_the_scan_does_not_hang_the_import(data):
    reader = LegacyReader.open(data)
    log = reader.inventory.logs[0]
    log.unlink()
    os.mkfifo(log)
    list(reader.logs())  # returns: the FIFO is refused, not opened for reading
    assert (f"logs/{log.name}", "unreadable") in _reasons(reader)
