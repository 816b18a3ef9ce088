"""File storage behind an interface: a local directory by default."""

from __future__ import annotations

import asyncio
import hashlib
import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

CHUNK_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class StoredFile:
    """Where a file went, how big it is and its digest."""

    key: str
    size: int
    sha256: str


class FileStorage(Protocol):
    """Stores bytes under server-chosen keys (never under client file names)."""

    async def save(self, source: BinaryIO) -> StoredFile:
        """Copy `source` into storage under a new key."""
        ...

    def open(self, key: str) -> AsyncIterator[bytes]:
        """Stream the stored bytes."""
        ...

    async def delete(self, key: str) -> None:
        """Remove the file; a missing file is not an error."""
        ...


class LocalFileStorage:
    """Files in one directory, named by random hex keys."""

    def __init__(self, directory: str | Path) -> None:
        """Use (and create on first write) `directory`."""
        self.directory = Path(directory)

    def _path(self, key: str) -> Path:
        if not key.isalnum():  # keys are uuid hex; anything else is an attack
            raise ValueError("invalid storage key")
        return self.directory / key

    def _write(self, source: BinaryIO) -> StoredFile:
        self.directory.mkdir(parents=True, exist_ok=True)
        key = uuid.uuid4().hex
        digest = hashlib.sha256()
        size = 0
        temporary = self.directory / f".{key}.part"
        with temporary.open("wb") as target:
            while chunk := source.read(CHUNK_BYTES):
                digest.update(chunk)
                size += len(chunk)
                target.write(chunk)
        os.replace(temporary, self._path(key))
        return StoredFile(key=key, size=size, sha256=digest.hexdigest())

    async def save(self, source: BinaryIO) -> StoredFile:
        """Copy `source` to a new file (in a thread: disk I/O blocks)."""
        return await asyncio.to_thread(self._write, source)

    async def open(self, key: str) -> AsyncIterator[bytes]:
        """Stream the file in chunks."""
        handle = await asyncio.to_thread(self._path(key).open, "rb")
        try:
            while chunk := await asyncio.to_thread(handle.read, CHUNK_BYTES):
                yield chunk
        finally:
            handle.close()

    async def delete(self, key: str) -> None:
        """Remove the file if it exists."""
        await asyncio.to_thread(self._path(key).unlink, missing_ok=True)
