"""The write-ahead log (journal) of a :class:`~mmmatch.search.SearchIndex` folder.

One change per line: compact JSON whose last member is the CRC-32 of the rest, so a torn
append (a crash in the middle of a write) is told apart from a good record. Also the folder
lock (one writer per folder) and the clean-up after a crash inside
:func:`~mmmatch._io.atomic_dir`. See :mod:`mmmatch.search` for how they fit together.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import shutil
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mmmatch.exceptions import ConfigMismatchError, MmmatchError

__all__ = ["JOURNAL_FILE", "Journal", "JournalScan", "decode_vectors", "encode_record",
           "encode_vectors", "fsync_dir", "lock_folder", "recover_interrupted_save",
           "scan_journal"]

JOURNAL_FILE = "journal.jsonl"
_CRC_SEP = b', "crc32": '

logger = logging.getLogger(__name__)


def encode_record(record: dict[str, Any]) -> bytes:
    """One journal line: compact JSON whose last member is the CRC-32 of the rest."""
    payload = json.dumps(record, separators=(",", ":"), allow_nan=False).encode()
    return payload[:-1] + _CRC_SEP + str(zlib.crc32(payload)).encode() + b"}\n"


def decode_record(line: bytes) -> dict[str, Any] | None:
    """The record of a journal line, or ``None`` when it is torn or corrupt."""
    cut = line.rfind(_CRC_SEP)
    if not line.endswith(b"}\n") or cut < 0:
        return None
    payload = line[:cut] + b"}"
    try:
        crc = int(line[cut + len(_CRC_SEP) : -2])
        if zlib.crc32(payload) != crc:
            return None
        record = json.loads(payload)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def encode_vectors(vectors: np.ndarray) -> str:
    """(n, d) vectors as base64 of little-endian float32."""
    return base64.b64encode(np.ascontiguousarray(vectors, dtype="<f4").tobytes()).decode()


def decode_vectors(record: dict[str, Any], dim: int) -> np.ndarray:
    """The (n, dim) float32 vectors of an ``add`` record (``shape`` and ``vectors``)."""
    n, d = record["shape"]
    if d != dim:
        raise ValueError(f"{d}-d vectors in a {dim}-d index")
    return np.frombuffer(base64.b64decode(record["vectors"]), dtype="<f4").reshape(n, d)


@dataclass
class JournalScan:
    """What :func:`scan_journal` read.

    Attributes:
        records: the intact records, in order.
        end: bytes of the intact records (where the next append goes).
        torn: bytes after them (a torn last append, never acknowledged); 0 when clean.
    """

    records: list[dict[str, Any]]
    end: int
    torn: int


def scan_journal(path: Path) -> JournalScan:
    """Read a journal; a bad tail is torn, a bad record followed by good ones is damage."""
    if not path.exists():
        return JournalScan([], 0, 0)
    data = path.read_bytes()
    records: list[dict[str, Any]] = []
    end = pos = 0
    bad_at: int | None = None
    while pos < len(data):
        newline = data.find(b"\n", pos)
        stop = len(data) if newline < 0 else newline + 1
        record = decode_record(data[pos:stop])
        if record is None:
            bad_at = pos if bad_at is None else bad_at
        elif bad_at is not None:
            raise ConfigMismatchError(
                f"{path}: the record at byte {bad_at} is corrupt but later ones are intact; "
                f"the journal is damaged (restore a backup, or cut the file at byte {bad_at} "
                "to keep the changes before it)"
            )
        else:
            records.append(record)
            end = stop
        pos = stop
    return JournalScan(records, end, len(data) - end)


def fsync_dir(path: Path) -> None:
    """Make renames and new files in a folder durable (where the OS allows it)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def lock_folder(path: Path) -> Any:
    """An exclusive lock on an index folder (``.NAME.lock`` beside it); ``None`` where the OS
    has no ``flock``. Released when the returned file is closed (or the process dies)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        return None
    lock_path = path.parent / f".{path.name}.lock"
    handle = open(lock_path, "a+")  # noqa: SIM115 - held until close()
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise MmmatchError(
            f"{path} is already open for writing (lock {lock_path} is held); one writer per "
            "index folder"
        ) from None
    return handle


def recover_interrupted_save(path: Path) -> None:
    """Clean up after a crash inside :func:`~mmmatch._io.atomic_dir`.

    It moves the old folder aside before moving the new one in: a crash between the two
    renames leaves no folder at ``path``; the old one (whose journal holds every change)
    is put back. Half-written ``.tmp-`` folders and leftover ``.old-`` folders are deleted.
    """
    siblings = sorted(path.parent.glob(f".{path.name}.old-*"), key=lambda p: p.stat().st_mtime)
    if not path.exists() and siblings and (siblings[-1] / "manifest.json").exists():
        os.replace(siblings.pop(), path)
        fsync_dir(path.parent)
        logger.warning("%s: restored the folder an interrupted save had moved aside", path)
    for leftover in [*siblings, *path.parent.glob(f".{path.name}.tmp-*")]:
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)


class Journal:
    """The open write-ahead log of an index folder: appends fsync'd records.

    Args:
        folder: the index folder (the journal is ``folder/journal.jsonl``).
        records: records already in the file.
        size: bytes of intact records in the file (it ends there).
        lock: the folder lock from :func:`lock_folder`, released by :meth:`close`.
    """

    def __init__(self, folder: Path, records: int, size: int, lock: Any) -> None:
        self.folder = folder
        self.path = folder / JOURNAL_FILE
        self.records = records
        self.size = size
        self._lock = lock
        self._fd: int | None = None
        self.reopen()

    def reopen(self) -> None:
        """Open (or create) the journal file for appends."""
        created = not self.path.exists()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        if created:
            fsync_dir(self.folder)

    def append(self, record: dict[str, Any]) -> None:
        """Write one record and fsync it; on failure cut the file back to its last record."""
        if self._fd is None:
            raise MmmatchError(f"{self.path} is closed")
        line = memoryview(encode_record(record))
        try:
            while line:
                line = line[os.write(self._fd, line):]
            os.fsync(self._fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self.size)
            raise
        self.records += 1
        self.size = os.fstat(self._fd).st_size

    def detach(self) -> None:
        """Close the file (the lock stays held)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def reset(self) -> None:
        """After a compaction: a new, empty journal in the new folder."""
        self.detach()
        self.records = self.size = 0
        self.reopen()

    def close(self) -> None:
        """Close the file and release the folder lock."""
        self.detach()
        if self._lock is not None:
            self._lock.close()
            self._lock = None
