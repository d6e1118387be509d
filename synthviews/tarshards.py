"""Reading the samples of one shard in order, for checks and previews (training reads through webdataset)."""

from __future__ import annotations

import tarfile
from pathlib import Path
from typing import Iterator


def iter_tar_samples(path: str | Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Yield ``(key, {field: bytes})`` per sample; members of a sample must be contiguous.

    Raises ``tarfile.TarError``/``ValueError`` for a truncated tar or a key seen twice.
    """
    seen: set[str] = set()
    key, fields = None, {}
    with tarfile.open(path, "r:") as tar:
        for member in tar:
            if not member.isfile():
                continue
            base = member.name.rsplit("/", 1)[-1]
            k, _, field = base.partition(".")
            if k != key:
                if key is not None:
                    yield key, fields
                if k in seen:
                    raise ValueError(f"sample {k} is split in non-contiguous parts")
                seen.add(k)
                key, fields = k, {}
            data = tar.extractfile(member).read()
            if len(data) != member.size:
                raise tarfile.ReadError(f"member {member.name} is truncated")
            fields[field] = data
    if key is not None:
        yield key, fields
