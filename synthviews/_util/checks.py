"""Bounds and checks for everything a user hands in: CLI values and the files synthviews reads.

Why: a broken or hostile input (a YAML alias bomb, a config asking for a 60000-d
latent, a FIFO given as a checkpoint, a manifest saying ``samples: 1e18``) must
fail fast with one short line naming the file and the field: no hang, no
gigabytes allocated, no traceback. The limits are far above any real use (a
config-f StyleGAN2 at 1024 px, the full BigBiGAN) and every message says them.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
import zipfile
from typing import Callable, Mapping

from ..errors import ConfigError

DECODE_BLOCK = 16  # anchors per generator call: fixed, so a sample's bytes never depend on the batch size
MAX_DECODE_BLOCK = 4096

# --- limits -----------------------------------------------------------------------

MAX_LINE = 300               # characters of an error message we build
MAX_SEED = 2**63 - 1         # seeds are integers in [0, 2**63)
MAX_SAMPLES = 10**9          # anchors of one split
MAX_SHARDS = 100_000         # shards of one split (the Hub takes < 10,000 files per folder anyway)
MAX_SHARD_SIZE = 10**6       # samples per shard
MAX_VIEWS = 64               # positives per anchor
MAX_PREVIEW_SAMPLES = 256    # rows of a preview grid
MAX_BATCH_SIZE = 65536       # anchors per generate step
MAX_WORKERS = 256            # encoding threads
MAX_INDEX = 2**62            # first sample index of a preview
MAX_NOISE = 1000.0           # |mean|, std and truncation of policy noise, walker scale
MAX_CODE = 2**26             # values in one latent code row (the diffusion and VDVAE families; a walker's sizes):
                             # digits-ddpm 51,200; VDVAE ffhq1024, the largest release, 32.8 M
MAX_WALKER_HIDDEN = 4096     # a walker's hidden width (real: 64-512)
MAX_IMAGE_SIDE = 8192        # pixels per side of a stored view
MAX_POLICY_BYTES = 1 << 20   # policy and model config files
MAX_JSON_BYTES = 64 << 20    # manifest and progress files (100,000 shard records fit)
MAX_WALKER_BYTES = 256 << 20  # a walker file, and its float32 parameters once built
MAX_WEIGHTS_BYTES = 8 << 30  # a weights file (config-f StyleGAN2 pickles are ~360 MB)


def short(text: str, limit: int = MAX_LINE) -> str:
    """``text`` on one line, cut to ``limit`` characters."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def brief(value, limit: int = 60) -> str:
    """A value's repr, cut short: error messages quote inputs that may be megabytes long."""
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001 - a repr that fails (e.g. too deep) still gets a name
        text = f"<{type(value).__name__}>"
    return short(text, limit)


def error(message: str) -> ConfigError:
    return ConfigError(short(message))


# --- numbers ----------------------------------------------------------------------

def check_int(value, what: str, lo: int, hi: int) -> int:
    """``value`` as an int in [lo, hi], else a ConfigError saying the range."""
    if isinstance(value, bool) or not isinstance(value, int) and not _is_np_int(value):
        raise error(f"{what} must be an integer in [{lo}, {hi:,}], got {brief(value)}")
    if not lo <= value <= hi:
        raise error(f"{what} must be an integer in [{lo}, {hi:,}], got {brief(value)}")
    return int(value)


def _is_np_int(value) -> bool:
    return type(value).__module__ == "numpy" and hasattr(value, "dtype") and value.dtype.kind in "iu"


def finite(value) -> bool:
    """math.isfinite that says False (not OverflowError) for an int beyond float range."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def check_number(value, what: str, lo: float, hi: float) -> float:
    """``value`` as a finite float in [lo, hi]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise error(f"{what} must be a number in [{lo:g}, {hi:g}], got {brief(value)}")
    try:
        f = float(value)
    except OverflowError:  # a Python int beyond float range
        f = math.inf
    if not (math.isfinite(f) and lo <= f <= hi):
        raise error(f"{what} must be a finite number in [{lo:g}, {hi:g}], got {brief(value)}")
    return f


# --- files ------------------------------------------------------------------------

def regular_file(path, what: str, max_bytes: int) -> int:
    """The size of ``path`` if it is a regular file of at most ``max_bytes``.

    A FIFO or a device would make open() or read() block or never end, so only
    regular files are read (the check follows symlinks, as open() does).
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise error(f"{what} {path} does not exist") from None
    except (OSError, ValueError) as e:
        raise error(f"cannot read {what} {path}: {getattr(e, 'strerror', None) or e}") from None
    if stat.S_ISDIR(st.st_mode):
        raise error(f"{what} {path} is a folder, not a file")
    if not stat.S_ISREG(st.st_mode):
        raise error(f"{what} {path} is not a regular file (a FIFO, socket or device?)")
    if st.st_size > max_bytes:
        raise error(f"{what} {path} is {st.st_size:,} bytes; the limit is {max_bytes:,}")
    return st.st_size


def read_limited(path, what: str, max_bytes: int) -> bytes:
    """The bytes of a regular file of at most ``max_bytes`` (opened non-blocking, read capped)."""
    regular_file(path, what, max_bytes)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as e:
        raise error(f"cannot read {what} {path}: {e.strerror or e}") from None
    if len(data) > max_bytes:
        raise error(f"{what} {path} is over {max_bytes:,} bytes")
    return data


def read_text(path, what: str, max_bytes: int) -> str:
    try:
        return read_limited(path, what, max_bytes).decode("utf-8")
    except UnicodeDecodeError as e:
        raise error(f"{what} {path} is not UTF-8 text ({e.reason} at byte {e.start})") from None


def check_torch_file(path, what: str, max_bytes: int) -> None:
    """Before torch.load: a regular file, and (zip format) records that unpack to <= ``max_bytes``.

    torch.load of a compressed record would otherwise inflate it whatever its size.
    """
    regular_file(path, what, max_bytes)
    try:
        if not zipfile.is_zipfile(path):
            return
        with zipfile.ZipFile(path) as z:
            infos = z.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return  # torch.load gives its own error for a damaged archive
    if len(infos) > 1_000_000 or sum(i.file_size for i in infos) > max_bytes:
        raise error(f"{what} {path} unpacks to more than {max_bytes:,} bytes")
    if any(i.compress_type != zipfile.ZIP_STORED for i in infos):
        raise error(f"{what} {path} holds compressed records; torch.save never writes them")


def check_tensors(state: Mapping, what: str) -> None:
    """Every tensor owns the bytes its shape claims, and floats are finite.

    A pickled tensor may have stride 0 and a huge shape over one element: the
    shape would then size a model of any size; NaN weights give NaN images.
    """
    import torch

    for name, t in state.items():
        if not isinstance(t, torch.Tensor):
            continue
        need = t.numel() * t.element_size()
        if t.numel() and t.untyped_storage().nbytes() < need:
            raise error(f"{what}: tensor {short(str(name), 80)} of shape {list(t.shape)[:8]} is not stored densely "
                        f"in the file (expanded or strided); re-save it with torch.save(state_dict)")
        if t.is_floating_point() and t.numel() and not bool(torch.isfinite(t).all()):
            raise error(f"{what}: tensor {short(str(name), 80)} holds NaN or infinite values")


# --- YAML and JSON ------------------------------------------------------------------

MAX_YAML_NODES = 20_000  # PyYAML builds some 30,000 nodes a second: a policy file has a few hundred

try:
    import yaml

    _BASE = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when installed: 10x faster

    class StrictLoader(_BASE):
        """A SafeLoader that refuses duplicate mapping keys (they silently drop the first value).

        Anchors and aliases are refused by :func:`load_yaml` before this loader runs.
        """

        def construct_mapping(self, node, deep=False):
            if isinstance(node, yaml.MappingNode):
                seen = set()
                for key_node, _ in node.value:
                    key = self.construct_object(key_node, deep=True)
                    try:
                        duplicate = key in seen
                    except TypeError:  # an unhashable key: SafeLoader refuses it below
                        continue
                    if duplicate:
                        raise _YamlRefused(f"duplicate key {brief(key, 40)} (line {key_node.start_mark.line + 1})")
                    seen.add(key)
            return super().construct_mapping(node, deep)

    class _YamlRefused(yaml.YAMLError):
        pass
except ImportError:  # PyYAML is a dependency; only load_yaml needs it
    yaml = None


def _check_yaml_events(text: str) -> None:
    """Refuse anchors/aliases (a 1 KB alias bomb expands to gigabytes), deep nesting and huge
    node counts, from the event stream: before any node is composed."""
    depth = count = 0
    for event in yaml.parse(text, Loader=_BASE):
        line = event.start_mark.line + 1 if event.start_mark else "?"
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise _YamlRefused(f"YAML anchors and aliases (&, *) are not allowed (line {line})")
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            depth += 1
            if depth > MAX_DEPTH:
                raise _YamlRefused(f"nested more than {MAX_DEPTH} levels deep (line {line})")
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            depth -= 1
        count += 1
        if count > MAX_YAML_NODES:
            raise _YamlRefused(f"more than {MAX_YAML_NODES:,} YAML nodes")


def load_yaml(text: str, where: str):
    """Parse YAML safely and strictly (see :func:`_check_yaml_events`, :class:`StrictLoader`)."""
    try:
        _check_yaml_events(text)
        data = yaml.load(text, Loader=StrictLoader)  # noqa: S506 - StrictLoader is a SafeLoader
    except yaml.YAMLError as e:
        raise error(f"{where} is not valid YAML: {e}") from None
    except RecursionError:
        raise error(f"{where} is nested too deeply") from None
    check_depth(data, where)
    return data


def _no_constant(name):
    raise ValueError(f"{name} is not a number JSON allows")


def _no_duplicates(pairs):
    d = {}
    for k, v in pairs:
        if k in d:
            raise ValueError(f"duplicate key {brief(k, 40)}")
        d[k] = v
    return d


MAX_DEPTH = 64  # nesting of JSON/YAML values: code that walks them recursively must not overflow the stack


def check_depth(value, where: str, limit: int = MAX_DEPTH) -> None:
    """Refuse values nested deeper than ``limit`` (checked without recursion)."""
    stack = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, (dict, list)):
            if depth > limit:
                raise error(f"{where} is nested more than {limit} levels deep")
            stack.extend((x, depth + 1) for x in (v.values() if isinstance(v, dict) else v))


def load_json(text, where: str):
    """Strict JSON: no NaN/Infinity, no duplicate keys, bounded nesting; errors name ``where``."""
    try:
        data = json.loads(text, parse_constant=_no_constant, object_pairs_hook=_no_duplicates)
    except RecursionError:
        raise error(f"{where} is nested too deeply") from None
    except (ValueError, TypeError) as e:  # JSONDecodeError is a ValueError
        raise error(f"{where} is not valid JSON: {e}") from None
    opened = text.count(b"[") + text.count(b"{") if isinstance(text, (bytes, bytearray)) else \
        text.count("[") + text.count("{")
    if opened > MAX_DEPTH:  # fewer brackets than that cannot nest deeper: skip the walk (the common case)
        check_depth(data, where)
    return data


# --- a small schema validator ---------------------------------------------------------

Check = Callable[[object, str], object]


def Int(lo: int, hi: int) -> Check:
    return lambda v, where: check_int(v, where, lo, hi)


def Num(lo: float, hi: float) -> Check:
    return lambda v, where: check_number(v, where, lo, hi)


def Str(max_len: int = 200, pattern: str | None = None) -> Check:
    rx = re.compile(pattern) if pattern else None

    def check(v, where):
        if not isinstance(v, str) or len(v) > max_len or (rx and not rx.fullmatch(v)):
            rule = f"matching {pattern}" if pattern else f"of at most {max_len} characters"
            raise error(f"{where} must be a string {rule}, got {brief(v)}")
        return v
    return check


def Choice(*values) -> Check:
    def check(v, where):
        if isinstance(v, bool) or v not in values:  # bool: True == 1
            raise error(f"{where} must be one of {', '.join(map(repr, values))}, got {brief(v)}")
        return v
    return check


def Bool(v, where):
    if not isinstance(v, bool):
        raise error(f"{where} must be true or false, got {brief(v)}")
    return v


def Any(v, where):
    return v


def Opt(inner: Check) -> Check:
    return lambda v, where: None if v is None else inner(v, where)


def List(inner: Check, max_len: int, length: int | None = None) -> Check:
    def check(v, where):
        if not isinstance(v, list) or len(v) > max_len or (length is not None and len(v) != length):
            size = f"of {length} items" if length is not None else f"of at most {max_len:,} items"
            raise error(f"{where} must be a list {size}, got {brief(v)}")
        return [inner(x, f"{where}[{i}]") for i, x in enumerate(v)]
    return check


def Map(inner: Check, max_len: int, key: Check = Str()) -> Check:
    def check(v, where):
        if not isinstance(v, dict) or len(v) > max_len:
            raise error(f"{where} must be a mapping of at most {max_len:,} entries, got {brief(v)}")
        for k, x in v.items():
            key(k, f"{where} key")
            inner(x, _join(where, k))
        return v
    return check


def Obj(required: Mapping[str, Check], optional: Mapping[str, Check] | None = None) -> Check:
    """A mapping with these keys (others are kept unchecked: newer files may add fields)."""
    optional = optional or {}

    def check(v, where):
        if not isinstance(v, dict):
            raise error(f"{where} must be a mapping, got {brief(v)}")
        for k, c in required.items():
            if k not in v:
                raise error(f"{_join(where, k)} is missing")
            c(v[k], _join(where, k))
        for k, c in optional.items():
            if k in v:
                c(v[k], _join(where, k))
        return v
    return check


def _join(where: str, key) -> str:
    return f"{where} {key}" if where.endswith(":") else f"{where}.{key}"


def validate(value, schema: Check, where: str):
    """``value`` checked against ``schema``; a ConfigError names ``where`` (a file) and the field."""
    return schema(value, where + ":")

