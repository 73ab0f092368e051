"""An on-disk embedding cache keyed by encoder id and content hash.

Backed by SQLite (one file, safe for concurrent readers and one writer at a time, atomic
commits), so an interrupted job resumes where it stopped and nothing is embedded twice.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

__all__ = ["EmbeddingCache", "content_key", "default_cache_dir"]


def default_cache_dir() -> Path:
    """``$MMMATCH_CACHE_DIR``, else ``$XDG_CACHE_HOME/mmmatch``, else ``~/.cache/mmmatch``."""
    if os.environ.get("MMMATCH_CACHE_DIR"):
        return Path(os.environ["MMMATCH_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "mmmatch"


def content_key(data: bytes | str) -> str:
    """SHA-1 hex digest of the content (text is UTF-8 encoded)."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    return hashlib.sha1(data).hexdigest()


class EmbeddingCache:
    """Embeddings stored by ``(encoder_id, content key)``.

    Args:
        path: a folder (the file ``embeddings.sqlite`` is made inside) or a ``.sqlite`` file.

    Example:
        >>> import tempfile
        >>> cache = EmbeddingCache(tempfile.mkdtemp())
        >>> cache.put("enc", ["k"], np.ones((1, 3), np.float32))
        >>> cache.get("enc", ["k", "missing"], dim=3)[1].tolist()
        [True, False]
    """

    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        if path.suffix != ".sqlite":
            path.mkdir(parents=True, exist_ok=True)
            path = path / "embeddings.sqlite"
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._conn = sqlite3.connect(str(path), timeout=60, check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute(
            "CREATE TABLE IF NOT EXISTS emb (encoder TEXT, key TEXT, vec BLOB, "
            "PRIMARY KEY (encoder, key)) WITHOUT ROWID"
        )
        self._conn.commit()

    def get(self, encoder_id: str, keys: Sequence[str], dim: int) -> tuple[np.ndarray, np.ndarray]:
        """Look keys up.

        Returns:
            ``(vectors, found)``: (n, dim) float32 (zeros where missing) and (n,) bool.
        """
        out = np.zeros((len(keys), dim), dtype=np.float32)
        found = np.zeros(len(keys), dtype=bool)
        position: dict[str, list[int]] = {}
        for i, k in enumerate(keys):
            position.setdefault(k, []).append(i)
        unique = list(position)
        for start in range(0, len(unique), 900):  # SQLite's bound-parameter limit
            chunk = unique[start : start + 900]
            marks = ",".join("?" * len(chunk))
            rows = self._conn.execute(
                f"SELECT key, vec FROM emb WHERE encoder = ? AND key IN ({marks})",
                [encoder_id, *chunk],
            )
            for key, blob in rows:
                vec = np.frombuffer(blob, dtype=np.float32)
                if vec.shape[0] != dim:
                    continue  # a stale entry of another width is a miss, not an error
                for i in position[key]:
                    out[i] = vec
                    found[i] = True
        return out, found

    def put(self, encoder_id: str, keys: Iterable[str], vectors: np.ndarray) -> None:
        """Store vectors (one commit, so a crash stores all or none of them)."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        with self._conn:
            self._conn.executemany(
                "INSERT OR REPLACE INTO emb VALUES (?, ?, ?)",
                [(encoder_id, k, v.tobytes()) for k, v in zip(keys, vectors, strict=True)],
            )

    def __len__(self) -> int:
        return int(self._conn.execute("SELECT COUNT(*) FROM emb").fetchone()[0])

    def close(self) -> None:
        """Close the database."""
        self._conn.close()
