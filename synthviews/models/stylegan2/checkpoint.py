"""Code-free loading of StyleGAN2 checkpoints: weights plus constructor config.

Formats:

- stylegan2-ada-pytorch network pickles (``.pkl``): ``G_ema`` is recovered by
  a restricted unpickler. These pickles normally rebuild their classes by
  executing source code stored inside the file; here every global the file
  names is looked up in a short allow-list of inert stand-ins (see
  ``_ALLOWED``) and anything else is refused, so nothing from the file runs.
- legacy TensorFlow StyleGAN2 pickles (``.pkl``, e.g. the LSUN Car model):
  ``Gs`` variables (arrays, and numpy scalars for TF's 0-d values) are
  converted to the PyTorch layout (transposed dense and conv kernels, the
  up-conv kernel flipped, style biases + 1, noise inputs renamed; see
  ``_tf_source``); every ``static_kwargs``
  entry is either mapped to our config, checked, known to be harmless, or
  refused. Protocol 4 as TF writes them, and in-band protocol 5 re-saves.
- state dicts: ``.pt``/``.pth`` and ``.safetensors``, read by
  :func:`synthviews.models.weights.read_tensors`; their config comes from ``config=``, the safetensors
  metadata key ``stylegan2_config`` or a sibling ``.json``/``.yaml``/``.yml``.

Every problem a user can fix raises :class:`ConfigError` naming it.
"""

from __future__ import annotations

import collections
import io
import json
import math
import os
import pickle
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from ..._util.checks import (
    MAX_POLICY_BYTES,
    MAX_WEIGHTS_BYTES,
    error,
    load_json,
    load_yaml,
    read_text,
    regular_file,
)
from ...errors import ConfigError
from ..weights import LEGACY_MAGIC, WEIGHTS_SUFFIXES, read_tensors, safetensors_bytes
from .networks import Generator, fir_filter, generator_config

WHAT = "StyleGAN2 checkpoint"  # how errors name the file


@dataclass
class Checkpoint:
    """What a checkpoint file yields: official-layout weights and generator kwargs."""

    state_dict: dict[str, torch.Tensor]
    config: dict
    kind: str  # "ada-pickle", "tf-pickle", "state-dict" or "safetensors"
    # From a .safetensors written by synthviews (train-gan, analyze --embed-policy): what the
    # file says of itself, so a model the user trained is not labelled with NVIDIA's licence.
    license: str | None = None
    license_link: str | None = None
    policy: dict | None = None


# --- configs -------------------------------------------------------------------

def load_config(config) -> dict:
    """Generator kwargs from a dict or a JSON/YAML file, validated and with defaults filled in.

    A compat-style file whose kwargs sit under ``constructor_kwargs`` is accepted as is.
    """
    if isinstance(config, (str, Path)):
        path = Path(config)
        suffix = path.suffix.lower()
        if suffix not in (".json", ".yaml", ".yml"):
            raise ConfigError(f"StyleGAN2 config file {path} must end in .json, .yaml or .yml")
        text = read_text(path, "StyleGAN2 config file", MAX_POLICY_BYTES)
        where = f"StyleGAN2 config file {path}"
        config = load_json(text, where) if suffix == ".json" else load_yaml(text, where)
        try:
            return _config_from(config)
        except ConfigError as e:
            raise error(f"{path}: {e}") from None
    return _config_from(config)


def _config_from(config) -> dict:
    if isinstance(config, Mapping) and "constructor_kwargs" in config:
        config = config["constructor_kwargs"]
    return generator_config(config)


def _sibling_config(path: Path):
    for suffix in (".json", ".yaml", ".yml"):
        candidate = path.with_suffix(suffix)
        if candidate.is_file():
            return candidate
    return None


# --- entry point ---------------------------------------------------------------

def load_checkpoint(path, config=None) -> Checkpoint:
    """Read weights and generator kwargs from a .pkl, .pt/.pth or .safetensors file."""
    path = Path(path)
    regular_file(path, WHAT, MAX_WEIGHTS_BYTES)  # a FIFO or device would hang the reader
    suffix = path.suffix.lower()
    if suffix == ".pkl":
        ckpt = read_network_pickle(path)
        if config is not None and load_config(config) != ckpt.config:
            raise ConfigError(f"config= does not match the configuration stored in {path}; "
                              "a .pkl carries its own config, so leave config= out")
        return ckpt
    if suffix not in WEIGHTS_SUFFIXES:
        raise ConfigError(f"{WHAT} {path}: unknown file type {suffix!r}; "
                          "use a .pkl network pickle, a .pt/.pth state dict or a .safetensors file")
    state, meta = read_tensors(path, WHAT)
    kind = "safetensors" if suffix == ".safetensors" else "state-dict"
    if config is None and "stylegan2_config" in meta:
        config = load_json(meta["stylegan2_config"], f"{path}: the stylegan2_config metadata")
    if config is None:
        config = _sibling_config(path)
    if config is None:
        raise ConfigError(f"{WHAT} {path} holds weights only: give config= (generator kwargs, "
                          f"a dict or a JSON/YAML file) or put them in {path.with_suffix('.json')}")
    try:
        config = load_config(config)
    except ConfigError as e:
        raise error(f"{path}: {e}") from None
    return Checkpoint(state, config, kind, **_own_metadata(meta, path))


LICENSE_KEY, LICENSE_LINK_KEY, POLICY_KEY = "synthviews_license", "synthviews_license_link", "synthviews_policy"


def _own_metadata(meta: Mapping[str, str], path: Path) -> dict:
    """The licence and default policy a synthviews-written file declares (absent: None)."""
    out = {"license": meta.get(LICENSE_KEY), "license_link": meta.get(LICENSE_LINK_KEY), "policy": None}
    for key in ("license", "license_link"):
        value = out[key]
        if value is not None and (not value or len(value) > 200 or not value.isprintable()):
            raise ConfigError(f"{path}: metadata {key} must be a short printable string, got {value[:40]!r}")
    if POLICY_KEY in meta:
        out["policy"] = load_json(meta[POLICY_KEY], f"{path}: the {POLICY_KEY} metadata")
        if not isinstance(out["policy"], dict):
            raise ConfigError(f"{path}: the {POLICY_KEY} metadata must be a policy mapping")
    return out


def save_safetensors(path, state_dict: Mapping[str, torch.Tensor], config: Mapping, *, license: str | None = None,
                     license_link: str | None = None, policy: Mapping | None = None) -> None:
    """Write weights and their generator kwargs (metadata ``stylegan2_config``) to one file.

    ``license`` (a Hugging Face licence id) and ``policy`` (a policy mapping, as in a
    policy file) travel with the weights: loading the file gives them as the model's
    licence and default policy.

    Converting a pickle once (``StyleGAN2(path="x.pkl")`` then
    ``save_safetensors("x.safetensors", model.state_dict(), model.config["config"])``)
    gives a file that loads fast and carries no code at all.
    """
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    metadata = {"stylegan2_config": json.dumps(generator_config(config))}
    for key, value in ((LICENSE_KEY, license), (LICENSE_LINK_KEY, license_link)):
        if value is not None:
            metadata[key] = value
    if policy is not None:
        metadata[POLICY_KEY] = json.dumps(dict(policy))
    Path(path).write_bytes(safetensors_bytes(tensors, metadata))  # same weights, same bytes


def embed_policy(path, policy: Mapping) -> None:
    """Store ``policy`` as the default policy of the .safetensors file ``path`` (atomic rewrite).

    Weights, config and licence stay as they are; only synthviews-style files (with
    ``stylegan2_config`` metadata) can be rewritten this way.
    """
    path = Path(path)
    if path.suffix.lower() != ".safetensors" or not path.is_file():
        raise ConfigError(f"{path}: only a .safetensors file can carry a policy (convert it with save_safetensors)")
    state, meta = read_tensors(path, WHAT)
    if "stylegan2_config" not in meta:
        raise ConfigError(f"{path} has no stylegan2_config metadata; write it with save_safetensors first")
    own = _own_metadata(meta, path)
    tmp = path.with_name(f".{path.name}.tmp")
    save_safetensors(tmp, state, json.loads(meta["stylegan2_config"]), license=own["license"],
                     license_link=own["license_link"], policy=policy)
    os.replace(tmp, path)


# --- the restricted unpickler --------------------------------------------------

class _PersistentObj:
    """Stand-in for a persistence-wrapped module: keeps ``meta`` (never runs ``module_src``)."""

    def __init__(self, meta):
        self.meta = meta


class _EasyDict(dict):
    """Stand-in for dnnlib.util.EasyDict (a dict with attribute access)."""


class _TFNetwork:
    """Stand-in for dnnlib.tflib.network.Network: keeps the pickled state dict."""

    def __setstate__(self, state):
        self.state = state


class _DType:
    """Stand-in for numpy.dtype: records the type code; only numeric ones become real dtypes."""

    _NUMERIC = re.compile(r"^[<>=|]?[fiucb]\d{1,2}$")

    def __init__(self, spec, align=False, copy=False):
        self.spec, self.byteorder = spec, None

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) > 1 and state[1] in ("<", ">", "|", "="):
            self.byteorder = state[1]

    def numpy(self) -> np.dtype:
        if not isinstance(self.spec, str) or not self._NUMERIC.match(self.spec):
            raise ConfigError(f"network pickle holds a numpy value of dtype {self.spec!r}; only numeric dtypes are read")
        dt = np.dtype(self.spec)
        return dt.newbyteorder(self.byteorder) if self.byteorder in ("<", ">") else dt


class _Inert:
    """What a value we do not need becomes (e.g. an unreadable numpy scalar)."""


def _numpy_scalar(dtype, data=None):
    """numpy.core.multiarray.scalar(dtype, raw bytes) -> a Python number (numeric dtypes only).

    ADA pickles store gains this way, and TF pickles every 0-d variable (Session.run returns numpy scalars).
    """
    if isinstance(dtype, _DType) and isinstance(data, bytes):
        try:
            dt = dtype.numpy()
        except ConfigError:
            return _Inert()
        if len(data) == dt.itemsize:
            return np.frombuffer(data, dt)[0].item()
    return _Inert()


class _NDArrayClass:
    """Stand-in for the numpy.ndarray class (only valid as _reconstruct's first argument)."""


def _array_from_bytes(raw, shape, dtype, fortran: bool) -> np.ndarray:
    """A native-byte-order copy of a numeric array pickled as raw bytes (never an object array)."""
    if not (isinstance(raw, (bytes, bytearray)) and isinstance(dtype, _DType) and isinstance(shape, tuple)
            and all(type(d) is int and d >= 0 for d in shape)):
        raise ConfigError("network pickle holds a numpy array in an unsupported form (object arrays are not read)")
    dt = dtype.numpy()
    if len(raw) != math.prod(shape) * dt.itemsize:
        raise ConfigError(f"network pickle holds a numpy array of shape {list(shape)} with {len(raw)} bytes of data")
    return np.frombuffer(bytes(raw), dt).reshape(shape, order="F" if fortran else "C").astype(dt.newbyteorder("="))


class _ArrayStub:
    """Stand-in for a numpy array; ``array`` is set once its data has been read."""

    array: np.ndarray | None = None

    def __setstate__(self, state):
        """BUILD after numpy.core.multiarray._reconstruct: (version, shape, dtype, fortran_order, raw bytes)."""
        if not (isinstance(state, tuple) and len(state) == 5):
            raise ConfigError("network pickle holds a numpy array in an unsupported form (object arrays are not read)")
        _, shape, dtype, fortran, raw = state
        self.array = _array_from_bytes(raw, tuple(shape) if isinstance(shape, list) else shape, dtype, bool(fortran))


def _reconstruct_array(cls, shape=None, typecode=None):
    if cls is not _NDArrayClass:
        raise ConfigError("network pickle calls numpy's _reconstruct on something other than numpy.ndarray")
    return _ArrayStub()


def _frombuffer_array(buffer, dtype, shape, order="C") -> _ArrayStub:
    """numpy.core.numeric._frombuffer: how numpy pickles a contiguous array with protocol 5.

    Read from a file, the buffer is in-band (BYTEARRAY8 or BYTES); out-of-band
    buffers are not in the file at all and are refused when unpickling.
    """
    if order not in ("C", "F"):
        raise ConfigError("network pickle holds a numpy array in an unsupported form (order must be 'C' or 'F')")
    stub = _ArrayStub()
    stub.array = _array_from_bytes(buffer, shape, dtype, order == "F")
    return stub


_STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
}


class _BlobUnpickler(pickle.Unpickler):
    """Reads the pickles inside one legacy torch.save blob: only torch.<Type>Storage globals,
    and persistent ids that describe the storage."""

    def find_class(self, module, name):
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        raise ConfigError(f"refusing to load: a tensor storage in the network pickle references {module}.{name}, "
                          "which is not a torch storage type; nothing from the file was executed")

    def persistent_load(self, pid):
        return pid


def _load_storage_blob(blob) -> torch.Tensor:
    """torch.storage._load_from_bytes: parse a legacy (non-zip) torch.save stream of one storage
    into a flat tensor, without torch.load."""
    if not isinstance(blob, bytes):
        raise ConfigError("network pickle: a tensor storage is not stored as bytes")
    f = io.BytesIO(blob)
    try:
        magic, version, sys_info = (_BlobUnpickler(f).load() for _ in range(3))
        if magic != LEGACY_MAGIC or version != 1001 or not isinstance(sys_info, dict):
            raise ConfigError("network pickle: a tensor storage blob is not a legacy torch.save stream")
        if not sys_info.get("little_endian", False):
            raise ConfigError("network pickle: big-endian tensor storages are not supported")
        pid = _BlobUnpickler(f).load()
        keys = _BlobUnpickler(f).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as e:
        raise ConfigError(f"network pickle: a tensor storage blob is damaged ({e})") from None
    if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage" and isinstance(pid[1], torch.dtype)
            and isinstance(pid[4], int) and (len(pid) < 6 or pid[5] is None)):
        raise ConfigError(f"network pickle: unsupported tensor storage record {pid!r:.80}")
    if keys != [pid[2]]:
        raise ConfigError("network pickle: a tensor storage blob does not hold exactly one storage")
    dtype, numel = pid[1], pid[4]
    header = f.read(8)
    if len(header) != 8 or struct.unpack("<q", header)[0] != numel:
        raise ConfigError("network pickle: a tensor storage blob is truncated or inconsistent")
    itemsize = torch.empty(0, dtype=dtype).element_size()
    data = f.read(numel * itemsize)
    if len(data) != numel * itemsize:
        raise ConfigError("network pickle: a tensor storage blob is truncated")
    return torch.frombuffer(bytearray(data), dtype=dtype) if numel else torch.empty(0, dtype=dtype)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    """torch._utils._rebuild_tensor_v2 (6 args in torch 1.x, 7 in newer): a strided view, copied."""
    if not isinstance(storage, torch.Tensor) or not isinstance(storage_offset, int) \
            or not all(isinstance(v, int) for v in (*size, *stride)) or len(size) != len(stride):
        raise ConfigError("network pickle: malformed tensor record")
    needed = storage_offset + sum((n - 1) * s for n, s in zip(size, stride)) + 1 if all(size) else 0
    if storage_offset < 0 or any(s < 0 for s in stride) or needed > storage.numel() \
            or math.prod(size) > storage.numel():  # the last check: no stride-0 memory bombs
        raise ConfigError("network pickle: a tensor reaches outside its storage (damaged file?)")
    return torch.as_strided(storage, tuple(size), tuple(stride), storage_offset).clone()


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    return data


# Every global a StyleGAN2 network pickle may name, mapped to an inert stand-in: the persistence wrapper of
# stylegan2-ada-pytorch modules, torch's tensor and storage rebuilders, dnnlib's EasyDict and TF Network, and
# the numpy array/scalar/dtype constructors that TF pickles use.
_ALLOWED = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _PersistentObj,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _load_storage_blob,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("dnnlib.util", "EasyDict"): _EasyDict,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("numpy", "dtype"): _DType,
    ("builtins", "set"): set,
    ("dnnlib.tflib.network", "Network"): _TFNetwork,
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct_array,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct_array,
    ("numpy", "ndarray"): _NDArrayClass,
    ("numpy.core.numeric", "_frombuffer"): _frombuffer_array,  # arrays re-saved with protocol 5
    ("numpy._core.numeric", "_frombuffer"): _frombuffer_array,
}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the allow-listed globals, to stand-ins; refuses the rest."""

    def find_class(self, module, name):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise ConfigError(f"refusing to load the network pickle: it references {module}.{name}, which a "
                              "StyleGAN2 network pickle never needs; nothing from the file was executed. "
                              "If you trust the file, convert it to a state dict (.pt/.safetensors) with its own "
                              "code and load that") from None

    def persistent_load(self, pid):
        raise ConfigError("refusing to load the network pickle: it uses persistent ids, which StyleGAN2 "
                          "network pickles do not (is it a torch.save file? name it .pt)")


# --- network pickles -----------------------------------------------------------

def read_network_pickle(path) -> Checkpoint:
    """G_ema of a stylegan2-ada-pytorch snapshot, or Gs of a TF StyleGAN2 pickle."""
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(2)
        f.seek(0)
        if len(head) < 2 or head[0] != 0x80 or not 2 <= head[1] <= 5:
            what = "a zip archive" if head == b"PK" else "not a pickle"
            raise ConfigError(f"{path} is not a network pickle ({what}: it does not start with a pickle "
                              "protocol 2-5 header); state dicts should be named .pt or .safetensors")
        try:
            obj = RestrictedUnpickler(f).load()
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None
        except pickle.UnpicklingError as e:
            if "out-of-band" in str(e):
                raise ConfigError(f"{path} refers to out-of-band buffers (pickle protocol 5 with a buffer_callback): "
                                  "their data is not in the file; re-save it without buffer_callback") from None
            raise ConfigError(f"{path} is truncated or damaged: unpickling failed with {type(e).__name__}: {e}") from None
        except (EOFError, ValueError, TypeError, AttributeError, IndexError,
                KeyError, struct.error, MemoryError, RecursionError, RuntimeError) as e:
            raise ConfigError(f"{path} is truncated or damaged: unpickling failed with {type(e).__name__}: {e}") from None
    try:
        if isinstance(obj, dict) and "G_ema" in obj:
            return _ada_generator(obj["G_ema"], path)
        if isinstance(obj, tuple) and len(obj) == 3 and all(isinstance(o, _TFNetwork) for o in obj):
            return _tf_generator(obj[2], path)
    except RecursionError:  # a pickle can make cyclic containers
        raise ConfigError(f"{path}: the network structure is cyclic or absurdly deep (damaged file?)") from None
    if isinstance(obj, dict):
        raise ConfigError(f"{path} is a pickled dict without 'G_ema' (keys: {', '.join(map(str, list(obj)[:6]))}); "
                          "expected a stylegan2-ada-pytorch snapshot")
    raise ConfigError(f"{path} holds a pickled {type(obj).__name__}, not a StyleGAN2 network pickle "
                      "(a snapshot dict with G_ema, or a TF (G, D, Gs) tuple)")


_GENERATOR_ARGS = ("z_dim", "c_dim", "w_dim", "img_resolution", "img_channels", "mapping_kwargs", "synthesis_kwargs")


def _plain(obj):
    """Stand-in containers -> plain JSON-able values."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    raise ConfigError(f"the generator's constructor arguments hold an unreadable value of type {type(obj).__name__}")


def _ada_generator(g, path) -> Checkpoint:
    if not isinstance(g, _PersistentObj) or not isinstance(g.meta, dict):
        raise ConfigError(f"{path}: G_ema is not a persistence-wrapped network (not a stylegan2-ada-pytorch pickle?)")
    if g.meta.get("class_name") != "Generator":
        raise ConfigError(f"{path}: G_ema is a {g.meta.get('class_name')!r}, expected a 'Generator'")
    state = g.meta.get("state")
    if not isinstance(state, dict):
        raise ConfigError(f"{path}: G_ema carries no module state")
    args, kwargs = state.get("_init_args", ()), state.get("_init_kwargs", {})
    if not isinstance(args, tuple) or not isinstance(kwargs, dict) or len(args) > len(_GENERATOR_ARGS):
        raise ConfigError(f"{path}: G_ema's constructor arguments are malformed")
    config = generator_config(_plain({**dict(zip(_GENERATOR_ARGS, args)), **kwargs}))
    tensors: dict[str, torch.Tensor] = {}
    _collect_tensors(g, "", tensors, path)
    return Checkpoint(tensors, config, "ada-pickle")


def _collect_tensors(module, prefix: str, out: dict, path) -> None:
    """Own parameters, own persistent buffers, then children: the official state-dict order."""
    if not isinstance(module, _PersistentObj) or not isinstance(module.meta, dict) \
            or not isinstance(module.meta.get("state"), dict):
        raise ConfigError(f"{path}: module {prefix.rstrip('.') or 'G_ema'} is not a persistence-wrapped network")
    state = module.meta["state"]
    skip = state.get("_non_persistent_buffers_set") or set()
    for group in ("_parameters", "_buffers"):
        for name, t in (state.get(group) or {}).items():
            if t is None or (group == "_buffers" and name in skip):
                continue
            if not isinstance(t, torch.Tensor):
                raise ConfigError(f"{path}: {prefix}{name} is not a tensor")
            out[prefix + name] = t
    for name, child in (state.get("_modules") or {}).items():
        if child is not None:
            _collect_tensors(child, f"{prefix}{name}.", out, path)


# --- TensorFlow pickles --------------------------------------------------------

# Every static kwarg a TF StyleGAN2 / StyleGAN2-ADA Gs may carry (G_main plus the mapping and
# synthesis functions it builds), sorted by what it does to the output. Anything else is refused:
# an unknown build option may change the images, and silently dropping it would hide that.

_TF_MAPPED = {  # TF name: (TF default, our generator option); these set the architecture
    "latent_size": (512, "z_dim"),
    "dlatent_size": (512, "w_dim"),
    "resolution": (1024, "img_resolution"),
    "num_channels": (3, "img_channels"),
    "mapping_layers": (8, "mapping_kwargs.num_layers"),
    "mapping_fmaps": (512, "mapping_kwargs.layer_features"),  # None: as wide as dlatent_size
    "mapping_lrmul": (0.01, "mapping_kwargs.lr_multiplier"),
    "fmap_base": (16 << 10, "synthesis_kwargs.channel_base"),  # doubled: TF halves it at 4x4, we divide by 4
    "fmap_max": (512, "synthesis_kwargs.channel_max"),
    "conv_clamp": (None, "synthesis_kwargs.conv_clamp"),  # ADA-era files: 256
    "num_fp16_res": (0, "synthesis_kwargs.num_fp16_res"),  # ADA-era files: fp16 in the top blocks
}

_TF_FIXED = {  # change the output too, but only these values (config-f) are implemented
    "label_size": (0,),
    "fmap_decay": (1.0,),
    "architecture": ("skip",),
    "nonlinearity": ("lrelu",),
    "mapping_nonlinearity": ("lrelu",),
    "resample_kernel": ([1, 3, 3, 1],),
    "normalize_latents": (True,),
    "dtype": ("float32",),  # ADA's fp16 blocks come from num_fp16_res, not from dtype
    "mapping_func": ("G_mapping",),
    "synthesis_func": ("G_synthesis_stylegan2", "G_synthesis"),  # NVlabs/stylegan2, stylegan2-ada (TF)
}

_TF_CHECKED = {  # change the channel counts only if they bind; checked against the mapped values
    "fmap_min": "lower bound on the channels of a block",
    "fmap_const": "channels of the 4x4 constant (None: those of the 4x4 block)",
}

_TF_HARMLESS = {  # do not change what mapping(z) and synthesis(ws, noise_mode) compute
    "truncation_psi": "default of Gs.run; synthviews takes truncation_psi from its own arguments",
    "truncation_cutoff": "default of Gs.run; synthviews takes truncation_cutoff from its own arguments",
    "truncation_psi_val": "Gs.run default during validation runs",
    "truncation_cutoff_val": "Gs.run default during validation runs",
    "randomize_noise": "default noise mode of Gs.run; synthviews' noise_mode chooses",
    "dlatent_avg_beta": "training: update rate of dlatent_avg (the stored average is used as is)",
    "w_avg_beta": "training: update rate of the average w",
    "style_mixing_prob": "training-time regulariser",
    "is_training": "TF graph-building flag",
    "is_validation": "TF graph-building flag",
    "is_template_graph": "TF graph-building flag",
    "return_dlatents": "extra graph output",
    "components": "the sub-networks; read from the pickle's own components",
    "fused_modconv": "grouped or unfused TF ops for the same modulated convolution",
    "structure": "progressive-growing wiring; the StyleGAN2 synthesis does not read it",
    "label_fmaps": "label embedding width; unused since label_size must be 0",
}


def _tf_kwarg(static_kwargs: Mapping, name: str):
    try:
        return _plain(static_kwargs[name])
    except ConfigError:
        raise ConfigError(f"TF StyleGAN2 pickle: static kwarg {name} holds an unreadable value "
                          f"of type {type(static_kwargs[name]).__name__}") from None


def tf_config(static_kwargs: Mapping) -> dict:
    """Generator kwargs of a TF Gs from its static_kwargs (TF defaults for absent keys).

    Every kwarg must be in one of the tables above, so nothing that shapes the
    images is dropped unseen.
    """
    known = set(_TF_MAPPED) | set(_TF_FIXED) | set(_TF_CHECKED) | set(_TF_HARMLESS)
    unknown = sorted(str(k) for k in static_kwargs if k not in known)
    if unknown:
        raise ConfigError(f"TF StyleGAN2 pickle: unknown static kwarg(s) {', '.join(map(repr, unknown))} in Gs; "
                          "they may change the images, so the file is refused (known: "
                          f"{', '.join(sorted(set(_TF_MAPPED) | set(_TF_FIXED) | set(_TF_CHECKED)))} "
                          "and training/run-time options)")
    for name, accepted in _TF_FIXED.items():
        value = _tf_kwarg(static_kwargs, name) if static_kwargs.get(name) is not None else accepted[0]
        if value not in accepted:
            raise ConfigError(f"TF StyleGAN2 pickle: {name}={value!r} is not supported "
                              f"(only {' or '.join(map(repr, accepted))})")
    k = {name: default for name, (default, _) in _TF_MAPPED.items()}
    for name in _TF_MAPPED:
        if name in static_kwargs:
            k[name] = _tf_kwarg(static_kwargs, name)
            if k[name] is None and name not in ("conv_clamp", "mapping_fmaps"):
                k[name] = _TF_MAPPED[name][0]  # None means "the default" for the others
    mapping = {"num_layers": k["mapping_layers"], "lr_multiplier": k["mapping_lrmul"]}
    if k["mapping_fmaps"] is not None and k["mapping_fmaps"] != k["dlatent_size"]:
        mapping["layer_features"] = k["mapping_fmaps"]
    config = generator_config({
        "z_dim": k["latent_size"], "c_dim": 0, "w_dim": k["dlatent_size"], "img_resolution": k["resolution"],
        "img_channels": k["num_channels"], "mapping_kwargs": mapping,
        "synthesis_kwargs": {"channel_base": 2 * k["fmap_base"], "channel_max": k["fmap_max"],
                             "num_fp16_res": k["num_fp16_res"], "conv_clamp": k["conv_clamp"]},
    })
    s = config["synthesis_kwargs"]
    resolutions = [2 ** i for i in range(2, config["img_resolution"].bit_length())]
    channels = [min(s["channel_base"] // res, s["channel_max"]) for res in resolutions]
    fmap_min = _tf_kwarg(static_kwargs, "fmap_min") if static_kwargs.get("fmap_min") is not None else 1
    if not isinstance(fmap_min, (int, float)) or fmap_min > min(channels):
        raise ConfigError(f"TF StyleGAN2 pickle: fmap_min={fmap_min!r} raises the channels of some blocks "
                          f"(here {channels}), which is not supported")
    fmap_const = _tf_kwarg(static_kwargs, "fmap_const") if static_kwargs.get("fmap_const") is not None else None
    if fmap_const is not None and fmap_const != channels[0]:
        raise ConfigError(f"TF StyleGAN2 pickle: fmap_const={fmap_const!r} differs from the 4x4 block's "
                          f"{channels[0]} channels, which is not supported")
    return config


def _tf_source(name: str):
    """(TF variable name, transform) for one PyTorch tensor name; None for resample filters."""
    if name.endswith("resample_filter"):
        return None
    if name == "mapping.w_avg":
        return "dlatent_avg", lambda t: t
    m = re.fullmatch(r"mapping\.fc(\d+)\.(weight|bias)", name)
    if m:
        return f"mapping/Dense{m[1]}/{m[2]}", (lambda t: t.t()) if m[2] == "weight" else (lambda t: t)
    if name == "synthesis.b4.const":
        return "synthesis/4x4/Const/const", lambda t: t[0]
    m = re.fullmatch(r"synthesis\.b(\d+)\.(conv0|conv1|torgb)\.(.+)", name)
    if not m:
        raise ConfigError(f"no TF equivalent known for {name}")
    res, layer, leaf = int(m[1]), m[2], m[3]
    k = res.bit_length() - 1  # log2(res)
    if leaf == "noise_const":
        index = 0 if res == 4 else (2 * k - 5 if layer == "conv0" else 2 * k - 4)
        return f"synthesis/noise{index}", lambda t: t[0, 0]
    tf_layer = {"conv0": "Conv0_up", "conv1": "Conv" if res == 4 else "Conv1", "torgb": "ToRGB"}[layer]
    base = f"synthesis/{res}x{res}/{tf_layer}"
    if leaf == "weight":  # TF [kh, kw, in, out] -> [out, in, kh, kw]; the up-conv kernel is also flipped
        flip = layer == "conv0"
        return f"{base}/weight", lambda t: (t.flip([0, 1]) if flip else t).permute(3, 2, 0, 1)
    if leaf == "affine.weight":
        return f"{base}/mod_weight", lambda t: t.t()
    if leaf == "affine.bias":  # TF stores the style bias minus its initial value 1
        return f"{base}/mod_bias", lambda t: t + 1
    return f"{base}/{leaf}", lambda t: t  # bias, noise_strength


def convert_tf_variables(variables: Mapping, static_kwargs: Mapping) -> tuple[dict, dict]:
    """Flattened TF Gs variables ({"mapping/Dense0/weight": array, ...}) -> (state dict, kwargs)."""
    config = tf_config(static_kwargs)
    with torch.device("meta"):  # names and shapes only, nothing allocated
        template = Generator(**config).state_dict()
    state = {}
    for name, like in template.items():
        source = _tf_source(name)
        if source is None:
            state[name] = fir_filter()
            continue
        tf_name, transform = source
        if tf_name not in variables:
            raise ConfigError(f"TF StyleGAN2 pickle: variable {tf_name} (for {name}) is missing; "
                              "is this a StyleGAN2 config-f generator with these static_kwargs?")
        t = transform(torch.as_tensor(np.asarray(variables[tf_name]), dtype=torch.float32))
        if tuple(t.shape) != tuple(like.shape):
            raise ConfigError(f"TF StyleGAN2 pickle: {tf_name} has the wrong shape for {name} "
                              f"({list(t.shape)} after conversion, expected {list(like.shape)})")
        state[name] = t.contiguous()
    return state, config


def _tf_value(value, name: str, path):
    """A TF variable's value: an array, or a number (TF1's Session.run returns 0-d values as numpy scalars)."""
    if isinstance(value, _ArrayStub) and value.array is not None:
        return value.array
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return np.float64(value)  # from a numeric numpy scalar: exact
    what = ("a numpy scalar of a non-numeric dtype" if isinstance(value, _Inert)
            else "a numpy array without data" if isinstance(value, _ArrayStub) else f"a {type(value).__name__}")
    raise ConfigError(f"{path}: malformed TF variable entry {name} in Gs: it holds {what}, "
                      "not a numpy array or number")


def _tf_variables(gs, path) -> dict:
    """Variables of Gs and its components, flattened as name, mapping/name, synthesis/name."""
    components = gs.state["components"]
    out = {}
    for prefix, net in [("", gs)] + [(f"{name}/", comp) for name, comp in components.items()]:
        where = f"component {prefix.rstrip('/')}" if prefix else "Gs"
        if not isinstance(net, _TFNetwork) or not isinstance(getattr(net, "state", None), dict):
            raise ConfigError(f"{path}: {where} of the TF network Gs is not a TF network")
        entries = net.state.get("variables")
        if not isinstance(entries, (list, tuple)):
            raise ConfigError(f"{path}: {where} of the TF network Gs has no variables list")
        for i, entry in enumerate(entries):
            if not (isinstance(entry, tuple) and len(entry) == 2 and isinstance(entry[0], str)):
                raise ConfigError(f"{path}: malformed TF variable entry {i} of {where}: expected a (name, value) "
                                  f"pair, got a {type(entry).__name__}")
            out[prefix + entry[0]] = _tf_value(entry[1], prefix + entry[0], path)
    return out


def _tf_generator(gs, path) -> Checkpoint:
    st = gs.state if isinstance(getattr(gs, "state", None), dict) else None
    if st is None or not isinstance(st.get("static_kwargs"), dict) or not isinstance(st.get("components"), dict):
        raise ConfigError(f"{path}: the TF network Gs carries no static_kwargs/components (not a StyleGAN2 pickle?)")
    variables = _tf_variables(gs, path)  # unused ones (lod of Gs and of synthesis) are ignored
    try:
        state, config = convert_tf_variables(variables, st["static_kwargs"])
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    return Checkpoint(state, config, "tf-pickle")
