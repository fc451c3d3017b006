"""A zip written front to back into chunks the caller takes as it goes, so that a large
archive never sits in memory: stdlib ``zipfile`` over an unseekable sink (entries carry
data descriptors; ZIP64 where needed)."""

from __future__ import annotations

import shutil
import zipfile
from collections.abc import Iterator
from typing import IO

COPY_BLOCK = 1 << 20


class _Chunks:
    """The file ``zipfile`` writes to: it keeps what was written until taken."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self.parts.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass

    def take(self) -> bytes:
        data = b"".join(self.parts)
        self.parts.clear()
        return data


class ZipOut:
    """Entries in, zip bytes out: call :meth:`take` after each entry (or block)."""

    def __init__(self) -> None:
        self._out = _Chunks()
        self._zip = zipfile.ZipFile(self._out, "w", allowZip64=True)

    def add(self, name: str, data: bytes, *, compress: bool = True) -> None:
        method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
        self._zip.writestr(name, data, compress_type=method)

    def copy(self, name: str, source: IO[bytes], *, compress: bool = True) -> Iterator[bytes]:
        """Write ``source`` (read from its start) as entry ``name``, yielding the zip bytes
        after each block."""
        source.seek(0)
        info = zipfile.ZipInfo(name)
        info.compress_type = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
        with self._zip.open(info, "w", force_zip64=True) as entry:
            while block := source.read(COPY_BLOCK):
                entry.write(block)
                yield self.take()
        yield self.take()

    def take(self) -> bytes:
        return self._out.take()

    def close(self) -> bytes:
        """Write the central directory; the last bytes."""
        self._zip.close()
        return self.take()


def copy_into(target: IO[bytes], source: IO[bytes]) -> None:
    """Append all of ``source`` (from its start) to ``target``."""
    source.seek(0)
    shutil.copyfileobj(source, target, COPY_BLOCK)
