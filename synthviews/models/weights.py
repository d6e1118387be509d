"""The one safe reader of weights and checkpoint files: nothing from a file is ever run.

Every model family and every other reader of ``torch.save`` or safetensors files
goes through :func:`read_tensors` (weights: a flat name -> tensor dict) or
:func:`read_torch` (a plain nested checkpoint: dicts, lists, numbers, strings,
tensors), so one set of rules holds everywhere:

- only a regular file within ``max_bytes`` is opened (a FIFO would hang the
  reader), and a zip whose records would inflate past it is refused;
- the suffix decides the format, in any case: ``.safetensors``, else a torch file;
- torch files are read with ``torch.load(weights_only=True)``, which refuses
  pickled classes and functions;
- tensors must be densely stored and finite (:func:`check_tensors`).

A file that cannot be read gives one ConfigError line that names it, says what
is wrong with it and, where there is one, what to do.
"""

from __future__ import annotations

import json
import math
import pickle
import warnings
import zipfile
from pathlib import Path
from typing import Callable, Mapping

import torch

from .._util.checks import MAX_WEIGHTS_BYTES, brief, check_tensors, check_torch_file, error, regular_file
from ..errors import ConfigError

SAFETENSORS, TORCH_SUFFIXES = ".safetensors", (".pt", ".pth")
WEIGHTS_SUFFIXES = (SAFETENSORS, *TORCH_SUFFIXES)
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # the legacy (non-zip) torch.save format opens with a pickle of this int


def read_tensors(path, what: str, *, max_bytes: int = MAX_WEIGHTS_BYTES) -> tuple[dict[str, torch.Tensor], dict]:
    """The tensors of a ``.safetensors`` file or a torch state dict, and the file's metadata.

    Any other suffix is read as a torch file (``.pt``, ``.pth``, but also the ``.bin`` and
    ``.ckpt`` of converted releases): the content is sniffed, and refused with its reason.

    ``what`` names the file in errors (``"StyleGAN2 checkpoint"``). The metadata is
    the safetensors header's ``__metadata__`` (strings to strings); a torch file has none.
    """
    path = Path(path)
    if path.suffix.lower() == SAFETENSORS:
        regular_file(path, what, max_bytes)
        state, meta = _read_safetensors(path, what)
    else:
        state, meta = _torch_load(path, what, max_bytes, "state dict",
                                  "save model.state_dict() instead"), {}
    state = flat_tensors(state, f"{what} {path}")
    check_tensors(state, f"{what} {path}")
    return state, meta


def read_torch(path, what: str, *, max_bytes: int = MAX_WEIGHTS_BYTES):
    """The object a ``torch.save`` file holds (a training or walker checkpoint), read with weights_only=True.

    The caller checks what the object is (its ``format`` key); this only guarantees
    that reading it ran no code and allocated no more than the file says.
    """
    return _torch_load(Path(path), what, max_bytes, "tensor checkpoint",
                       "save only tensors, numbers and strings in dicts/lists")


def flat_tensors(state, what: str) -> dict[str, torch.Tensor]:
    """``state`` as a dict of name -> tensor, or a ConfigError saying what it is instead."""
    if not isinstance(state, Mapping):
        raise ConfigError(f"{what} holds a {type(state).__name__}, not a state dict (a dict of name -> tensor)")
    others = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if others:
        shown = ", ".join(repr(k) for k in others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
        raise error(f"{what} is not a flat state dict: entries {shown} are not tensors; if the weights sit "
                    "under one of these keys, use that inner dict on its own")
    return dict(state)


def first_names(names, n: int = 3, limit: int = 80) -> str:
    """The first ``n`` of ``names`` for an error message, each repr cut to ``limit`` characters, then
    "and K more": the names come from files, so neither their count nor their length may size the line."""
    names = list(names)
    shown = ", ".join(brief(k, limit) for k in names[:n])
    return shown + (f" and {len(names) - n} more" if len(names) > n else "")


def check_names_shapes(found: Mapping[str, torch.Tensor | tuple[int, ...]], expected: Mapping[str, tuple[int, ...]],
                       what: str, against: str, *, noun: str = "tensor", optional: tuple[str, ...] = (),
                       hint: Callable[[], str] | None = None, missing_first: bool = False) -> None:
    """ConfigError unless ``found`` (a state dict, or names -> shapes from a header) has exactly the names and
    shapes of ``expected`` (a name ending in ``optional`` may be absent), and its tensors are float.

    One line, every family's: ``{what} does not match {against}: <problems>[; hint()]``, each part bounded
    (the names come from files); ``hint`` is only called on a mismatch. ``missing_first`` words the missing names
    "missing 3 tensor(s)" instead of "3 missing tensor(s)" (the StyleGAN2 messages' wording).
    """
    shapes = {k: tuple(v.shape) if isinstance(v, torch.Tensor) else tuple(v) for k, v in found.items()}
    missing = [k for k in expected if k not in shapes and not k.endswith(optional)]
    unexpected = [k for k in shapes if k not in expected]
    problems = []
    if missing:
        count = f"missing {len(missing)}" if missing_first else f"{len(missing)} missing"
        problems.append(f"{count} {noun}(s): {first_names(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected {noun}(s): {first_names(unexpected)}")
    if not problems:  # names first; shapes and dtypes once they match (another config's shapes say no more)
        wrong = [f"{k} is {list(shapes[k])} in the file, the config expects {list(s)}"  # k: the model's name
                 for k, s in expected.items() if k in shapes and shapes[k] != tuple(s)]
        if wrong:
            problems.append(f"{len(wrong)} shape mismatch(es), e.g. {wrong[0]}")
        not_float = [k for k in expected if isinstance(found.get(k), torch.Tensor) and not found[k].is_floating_point()]
        if not_float:
            problems.append(f"{len(not_float)} non-float tensor(s): {first_names(not_float)} "
                            f"(dtype {found[not_float[0]].dtype})")
    if problems:
        raise ConfigError(f"{what} does not match {against}: " + "; ".join(problems)
                          + (f"; {hint()}" if hint else ""))


# --- torch files ------------------------------------------------------------------

def _unreadable(what: str, path: Path, problem: str, kind: str, detail: str | None = None) -> ConfigError:
    tail = f" ({detail})" if detail else ""
    return error(f"{what} {path}{problem}: not a readable {kind}, so it cannot be read{tail}")


def _torch_load(path: Path, what: str, max_bytes: int, kind: str, advice: str):
    check_torch_file(path, what, max_bytes)  # regular file, size, no inflating records
    problem = _torch_file_problem(path, network_pickle_hint=kind == "state dict")
    if problem:
        raise _unreadable(what, path, f" {problem}", kind)
    try:
        with warnings.catch_warnings():  # torch's warnings about foreign pickles: the error says enough
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - refusals and damaged records: type and text vary between torch versions
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()] or [type(e).__name__]
        refused = next((ln for ln in lines if "Unsupported" in ln), None)
        read = ": torch.load(weights_only=True) could not read it"
        if isinstance(e, pickle.UnpicklingError) and refused is not None:
            detail = refused.split("error: ", 1)[-1].split(" was not", 1)[0]
            raise error(f"{what} {path}{read}: it is not a plain {kind}: it holds Python objects, and synthviews "
                        f"never runs code; {advice} (torch: {detail})") from None
        raise _unreadable(what, path, f"{read}: it is truncated or damaged", kind, f"torch: {lines[0]}") from None


class _NoGlobalsUnpickler(pickle.Unpickler):
    """Reads plain data only: used to peek at the first pickle of a legacy torch file."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"global {module}.{name}")

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("persistent id")


def _torch_file_problem(path: Path, network_pickle_hint: bool) -> str | None:
    """What is wrong with a torch file, found without torch, so that the message does not
    depend on which exception (and text) a torch version raises."""
    with open(path, "rb") as f:
        head = f.read(2)
    if head == b"PK":  # torch.save's default: a zip archive with <name>/data.pkl
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError, EOFError, ValueError):
            return ("is truncated or damaged: its zip directory cannot be read "
                    "(download or copy it again if it was truncated)")
        if not any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
            return "is a zip archive but not one that torch.save writes (no data.pkl inside)"
        return None
    if head[:1] == b"\x80":  # legacy torch.save: a pickle of the magic number comes first
        try:
            with open(path, "rb") as f:
                first = _NoGlobalsUnpickler(f).load()
        except Exception:  # noqa: BLE001 - anything at all: it is not the legacy header
            first = None
        if not (type(first) is int and first == LEGACY_MAGIC):
            hint = " (a network pickle should be named .pkl)" if network_pickle_hint else ""
            return f"is a plain pickle, not a file written by torch.save{hint}"
        return None
    return "is not a torch file (neither a zip archive nor a legacy torch.save stream)"


# --- safetensors --------------------------------------------------------------------

FLOAT_DTYPES = ("F32", "F16", "BF16")  # safetensors' names of the dtypes a network's weights are read in


def safetensors_header(path, what: str, *, max_bytes: int = MAX_WEIGHTS_BYTES,
                       dtypes: tuple[str, ...] = FLOAT_DTYPES) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes from a ``.safetensors`` header, read without loading a tensor.

    Every tensor must have one of ``dtypes``, and all of them as float32 must fit in
    ``max_bytes``: a half-precision file becomes twice its size once loaded, so
    the bound is on what loading allocates, not on the file.
    """
    path = Path(path)
    regular_file(path, what, max_bytes)
    try:
        from safetensors import safe_open
    except ImportError:
        raise ConfigError(f"reading {what} {path} needs the safetensors package: pip install safetensors") from None
    try:
        with safe_open(str(path), framework="pt") as f:
            slices = {k: f.get_slice(k) for k in f.keys()}
            header = {k: (s.get_dtype(), tuple(s.get_shape())) for k, s in slices.items()}
    except Exception as e:  # noqa: BLE001 - SafetensorError and friends: header damaged
        raise _unreadable(what, path, " is not a valid .safetensors file (truncated or foreign?)", "state dict",
                          f"safetensors: {e}") from None
    others = [k for k, (dtype, _) in header.items() if dtype not in dtypes]
    if others:
        raise error(f"{what} {path}: tensor {brief(others[0], 80)} is {header[others[0]][0]}; only "
                    f"{', '.join(dtypes)} tensors are read here")
    values = sum(math.prod(shape) for _, shape in header.values())
    if values * 4 > max_bytes:
        raise error(f"{what} {path}: its {values:,} values take {values * 4:,} bytes as float32, over the limit "
                    f"of {max_bytes:,}")
    return {k: shape for k, (_, shape) in header.items()}


def safetensors_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> bytes:
    """A ``.safetensors`` file's bytes (``safetensors.torch.save``) with the metadata in sorted key order.

    The library writes its metadata map in a per-process order, so the same weights and
    metadata gave other bytes from run to run; the header is written again here (tensor
    entries and data as the library laid them out, the header padded to 8 bytes as it does).
    """
    from safetensors.torch import save

    raw = save(tensors, metadata=metadata)
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    if "__metadata__" in header:
        header = {"__metadata__": dict(sorted(header.pop("__metadata__").items())), **header}
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + raw[8 + n:]


def _read_safetensors(path: Path, what: str) -> tuple[dict[str, torch.Tensor], dict]:
    try:
        from safetensors import safe_open
    except ImportError:
        raise ConfigError(f"reading {what} {path} needs the safetensors package: pip install safetensors") from None
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # noqa: BLE001 - SafetensorError and friends: header or sizes wrong
        raise _unreadable(what, path, " is not a valid .safetensors file (truncated or foreign?)", "state dict",
                          f"safetensors: {e}") from None
    return state, meta
