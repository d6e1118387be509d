"""JPEG bytes of a uint8 array through Pillow's own encoder, at less cost a view than ``Image.save``.

Two costs of ``Image.save`` dominate small views, and one holds back the threads:

- Its Python (plugin lookup, option parsing, ``fromarray``) costs ~15-20 us a view, as
  much as libjpeg takes to compress a 32 px view (an eighth of a 128 px one). The
  encoder's settings (Pillow's ``encoderconfig``) depend only on the mode and the
  quality: they are taken from one real ``save`` per (mode, quality) and reused, and each
  thread keeps its last image to copy the pixels into.
- Into a bytes buffer Pillow compresses holding the GIL; into a file descriptor it
  releases it. So each thread compresses into its own in-memory file (memfd), read back
  with ``pread`` up to the offset written (overwritten, never truncated).

The bytes are Pillow's: the first view of each (mode, quality) is encoded both ways and
compared; a Pillow whose encoder API or settings differ (its private parts) gets
``Image.save`` for that pair from then on, as does every view where there is no memfd
(macOS, a sandbox): :func:`encode_jpeg` returns None and ``format.encode_image`` saves it. ``benchmarks/bench_generate.py`` section 3b
measures both paths.
"""

from __future__ import annotations

import io
import os
import threading

import numpy as np
from PIL import Image, ImageFile, JpegImagePlugin

SAVE_OPTIONS = {"optimize": False, "progressive": False}  # the stored format's settings besides quality

# (mode, quality) -> Pillow's encoder settings, checked on a first view; None: Image.save for this pair
_SETTINGS: dict[tuple[str, int], tuple | None] = {}
_local = threading.local()


class _Scratch:
    """A thread's in-memory file and its last image, closed with their owner (the thread, or the
    forked child replacing it)."""

    def __init__(self, file):
        self.file, self.image = file, None

    def __del__(self):
        self.file.close()

    @classmethod
    def open(cls) -> _Scratch:
        """A new one; raises where there is no memfd (before an object exists: none is half made)."""
        return cls(open(os.memfd_create("synthviews-encode", os.MFD_CLOEXEC), "w+b", buffering=0))  # noqa: SIM115

    def image_of(self, array: np.ndarray) -> Image.Image:
        """This thread's image holding ``array``'s pixels ((H, W, 1) grey or (H, W, 3) RGB)."""
        h, w, c = array.shape
        mode = "L" if c == 1 else "RGB"
        if self.image is None or self.image.mode != mode or self.image.size != (w, h):
            self.image = Image.new(mode, (w, h))
        self.image.frombytes(np.ascontiguousarray(array))
        return self.image


def _scratch() -> _Scratch | None:
    """This thread's scratch file, or None where there is none (not Linux)."""
    if getattr(_local, "pid", None) != os.getpid():  # a new thread, or a forked child: never the parent's file
        _local.pid, _local.holder = os.getpid(), None  # a child closes its copy of the parent's descriptor
        try:
            _local.holder = _Scratch.open()
        except (AttributeError, OSError):  # no memfd here (macOS, Windows, a sandbox): Image.save into a buffer
            pass
    return _local.holder


def _saved(image: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality, **SAVE_OPTIONS)
    return buf.getvalue()


def _encoded(image: Image.Image, settings: tuple, file) -> bytes:
    """Pillow's JPEG encoder on ``image`` with ``settings``, compressed into ``file`` (the GIL released)."""
    encoder = Image._getencoder(image.mode, "jpeg", JpegImagePlugin.RAWMODE[image.mode], settings)
    fd = file.fileno()
    try:
        encoder.setimage(image.im, (0, 0, *image.size))
        os.lseek(fd, 0, os.SEEK_SET)
        status = encoder.encode_to_file(fd, max(ImageFile.MAXBLOCK, image.size[0] * 4))  # Image.save's buffer
    finally:
        encoder.cleanup()
    if status < 0:
        raise OSError(f"JPEG encoder error {status}")
    size = os.lseek(fd, 0, os.SEEK_CUR)
    data = os.pread(fd, size, 0)
    if len(data) != size:
        raise OSError(f"read {len(data)} of {size} encoded bytes back from memory")
    return data


def encode_jpeg(array: np.ndarray, quality: int) -> bytes | None:
    """(H, W, 1) or (H, W, 3) uint8 -> the JPEG bytes ``Image.save`` gives at ``quality``; None where
    this encoder does not apply (no memfd, another array, a Pillow whose encoder differs): the caller
    then saves through ``Image.fromarray`` and ``Image.save``, which accept or refuse the array."""
    scratch = _scratch()
    if scratch is None or array.dtype != np.uint8 or array.ndim != 3 or array.shape[-1] not in (1, 3):
        return None
    image = scratch.image_of(array)
    key = (image.mode, quality)
    if key not in _SETTINGS:  # the first view of this pair: Image.save's bytes, and the settings if they match
        reference = _saved(image, quality)
        settings = image.encoderconfig
        try:
            same = _encoded(image, settings, scratch.file) == reference
        except (AttributeError, KeyError, TypeError, ValueError, OSError):  # another Pillow's private parts
            same = False
        _SETTINGS[key] = settings if same else None
        return reference
    settings = _SETTINGS[key]
    return None if settings is None else _encoded(image, settings, scratch.file)
