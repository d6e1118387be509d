"""Code-free loading of StyleGAN2 checkpoints: weights plus constructor config.

Formats:

- stylegan2-ada-pytorch network pickles (``.pkl``): ``G_ema`` is recovered by
  a restricted unpickler. These pickles normally rebuild their classes by
  executing source code stored inside the file; here every global the file
  names is looked up in a short allow-list of inert stand-ins (see
  ``_ALLOWED``) and anything else is refused, so nothing from the file runs.
- legacy TensorFlow StyleGAN2 pickles (``.pkl``, e.g. the LSUN Car model):
  ``Gs`` variables are converted to the PyTorch layout (SPEC section 7).
- state dicts: ``.pt``/``.pth`` via ``torch.load(weights_only=True)`` and
  ``.safetensors``; their config comes from ``config=``, the safetensors
  metadata key ``stylegan2_config`` or a sibling ``.json``/``.yaml``/``.yml``.

Every problem a user can fix raises :class:`ConfigError` naming it.
"""

from __future__ import annotations

import collections
import io
import json
import math
import pickle
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from ..errors import ConfigError
from .stylegan2 import Generator, fir_filter, generator_config


@dataclass
class Checkpoint:
    """What a checkpoint file yields: official-layout weights and generator kwargs."""

    state_dict: dict[str, torch.Tensor]
    config: dict
    kind: str  # "ada-pickle", "tf-pickle", "state-dict" or "safetensors"


# --- configs -------------------------------------------------------------------

def load_config(config) -> dict:
    """Generator kwargs from a dict or a JSON/YAML file, validated and with defaults filled in.

    A compat-style file whose kwargs sit under ``constructor_kwargs`` is accepted as is.
    """
    if isinstance(config, (str, Path)):
        path = Path(config)
        if not path.is_file():
            raise ConfigError(f"StyleGAN2 config file {path} does not exist")
        text = path.read_text()
        if path.suffix.lower() == ".json":
            try:
                config = json.loads(text)
            except json.JSONDecodeError as e:
                raise ConfigError(f"StyleGAN2 config file {path} is not valid JSON: {e}") from None
        elif path.suffix.lower() in (".yaml", ".yml"):
            try:
                import yaml
            except ImportError:
                raise ConfigError(f"reading {path} needs PyYAML: pip install pyyaml (or use a .json config)") from None
            try:
                config = yaml.safe_load(text)
            except yaml.YAMLError as e:
                raise ConfigError(f"StyleGAN2 config file {path} is not valid YAML: {e}") from None
        else:
            raise ConfigError(f"StyleGAN2 config file {path} must end in .json, .yaml or .yml")
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
    if not path.is_file():
        raise ConfigError(f"StyleGAN2 checkpoint {path} does not exist (or is not a file)")
    suffix = path.suffix.lower()
    if suffix == ".pkl":
        ckpt = read_network_pickle(path)
        if config is not None and load_config(config) != ckpt.config:
            raise ConfigError(f"config= does not match the configuration stored in {path}; "
                              "a .pkl carries its own config, so leave config= out")
        return ckpt
    if suffix in (".pt", ".pth"):
        state, meta, kind = _read_torch_state_dict(path), {}, "state-dict"
    elif suffix == ".safetensors":
        (state, meta), kind = _read_safetensors(path), "safetensors"
    else:
        raise ConfigError(f"StyleGAN2 checkpoint {path}: unknown file type {suffix!r}; "
                          "use a .pkl network pickle, a .pt/.pth state dict or a .safetensors file")
    if config is None and "stylegan2_config" in meta:
        try:
            config = json.loads(meta["stylegan2_config"])
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}: the stylegan2_config metadata is not valid JSON: {e}") from None
    if config is None:
        config = _sibling_config(path)
    if config is None:
        raise ConfigError(f"StyleGAN2 checkpoint {path} holds weights only: give config= (generator kwargs, "
                          f"a dict or a JSON/YAML file) or put them in {path.with_suffix('.json')}")
    return Checkpoint(state, load_config(config), kind)


def _read_torch_state_dict(path: Path) -> dict:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"{path} is not a plain state dict that torch.load(weights_only=True) accepts ({first}); "
                          "a network pickle should be named .pkl") from None
    except Exception as e:  # zip/stream errors from torch: truncated or foreign files
        raise ConfigError(f"{path} could not be read as a torch state dict (truncated or not a torch file?): "
                          f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}") from None
    if not isinstance(obj, Mapping) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        raise ConfigError(f"{path} does not hold a flat state dict (names -> tensors) but a {type(obj).__name__}"
                          + (f" with keys {', '.join(map(str, list(obj)[:5]))}" if isinstance(obj, Mapping) else ""))
    return dict(obj)


def _read_safetensors(path: Path) -> tuple[dict, dict]:
    try:
        from safetensors import safe_open
    except ImportError:
        raise ConfigError(f"reading {path} needs the safetensors package: pip install safetensors") from None
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # SafetensorError and friends: header or size wrong
        raise ConfigError(f"{path} is not a readable .safetensors file (truncated or foreign?): {e}") from None
    return state, meta


def save_safetensors(path, state_dict: Mapping[str, torch.Tensor], config: Mapping) -> None:
    """Write weights and their generator kwargs (metadata ``stylegan2_config``) to one file.

    Converting a pickle once (``StyleGAN2(path="x.pkl")`` then
    ``save_safetensors("x.safetensors", model.state_dict(), model.config["config"])``)
    gives a file that loads fast and carries no code at all.
    """
    from safetensors.torch import save_file

    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    save_file(tensors, str(path), metadata={"stylegan2_config": json.dumps(generator_config(config))})


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
    """numpy.core.multiarray.scalar(dtype, raw bytes) -> a Python number (numeric dtypes only)."""
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


class _ArrayStub:
    """Stand-in for numpy.core.multiarray._reconstruct(...): filled by BUILD with
    (version, shape, dtype, fortran_order, raw bytes)."""

    array: np.ndarray | None = None

    def __setstate__(self, state):
        if not (isinstance(state, tuple) and len(state) == 5 and isinstance(state[2], _DType)
                and isinstance(state[4], bytes) and all(isinstance(d, int) for d in state[1])):
            raise ConfigError("network pickle holds a numpy array in an unsupported form (object arrays are not read)")
        _, shape, dtype, fortran, raw = state
        dt = dtype.numpy()
        count = math.prod(shape)
        if len(raw) != count * dt.itemsize:
            raise ConfigError(f"network pickle holds a numpy array of shape {list(shape)} with {len(raw)} bytes of data")
        self.array = np.frombuffer(raw, dt).reshape(shape, order="F" if fortran else "C").astype(dt.newbyteorder("="))


def _reconstruct_array(cls, shape=None, typecode=None):
    if cls is not _NDArrayClass:
        raise ConfigError("network pickle calls numpy's _reconstruct on something other than numpy.ndarray")
    return _ArrayStub()


_STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
}
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


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
        if magic != _LEGACY_MAGIC or version != 1001 or not isinstance(sys_info, dict):
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


# Every global a StyleGAN2 network pickle may name, mapped to an inert stand-in (SPEC section 6/7).
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
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
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

_TF_DEFAULTS = {  # G_main / G_mapping / G_synthesis_stylegan2 defaults of the TF code
    "latent_size": 512, "dlatent_size": 512, "label_size": 0, "resolution": 1024, "num_channels": 3,
    "mapping_layers": 8, "mapping_fmaps": 512, "mapping_lrmul": 0.01, "fmap_base": 16 << 10, "fmap_max": 512,
    "fmap_decay": 1.0, "architecture": "skip", "nonlinearity": "lrelu", "resample_kernel": [1, 3, 3, 1],
    "mapping_nonlinearity": "lrelu",
}


def tf_config(static_kwargs: Mapping) -> dict:
    """Generator kwargs of a TF Gs from its static_kwargs (TF defaults for absent keys)."""
    k = {**_TF_DEFAULTS, **{key: v for key, v in static_kwargs.items() if v is not None}}
    for key, supported in (("label_size", 0), ("fmap_decay", 1.0), ("architecture", "skip"),
                           ("nonlinearity", "lrelu"), ("mapping_nonlinearity", "lrelu")):
        if k[key] != supported:
            raise ConfigError(f"TF StyleGAN2 pickle: {key}={k[key]!r} is not supported (only {supported!r})")
    if list(k["resample_kernel"]) != [1, 3, 3, 1]:
        raise ConfigError(f"TF StyleGAN2 pickle: resample_kernel={k['resample_kernel']!r} is not supported")
    mapping = {"num_layers": k["mapping_layers"], "lr_multiplier": k["mapping_lrmul"]}
    if k["mapping_fmaps"] != k["dlatent_size"]:
        mapping["layer_features"] = k["mapping_fmaps"]
    return generator_config({
        "z_dim": k["latent_size"], "c_dim": 0, "w_dim": k["dlatent_size"], "img_resolution": k["resolution"],
        "img_channels": k["num_channels"], "mapping_kwargs": mapping,
        "synthesis_kwargs": {"channel_base": 2 * k["fmap_base"], "channel_max": k["fmap_max"],
                             "num_fp16_res": 0, "conv_clamp": None},
    })


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


def _tf_generator(gs, path) -> Checkpoint:
    st = gs.state if isinstance(getattr(gs, "state", None), dict) else None
    if st is None or not isinstance(st.get("static_kwargs"), dict) or not isinstance(st.get("components"), dict):
        raise ConfigError(f"{path}: the TF network Gs carries no static_kwargs/components (not a StyleGAN2 pickle?)")
    variables = {}
    for prefix, net in [("", gs)] + [(f"{name}/", comp) for name, comp in st["components"].items()]:
        for entry in (net.state.get("variables") or []) if isinstance(net, _TFNetwork) else []:
            if not (isinstance(entry, tuple) and len(entry) == 2 and isinstance(entry[1], _ArrayStub)):
                raise ConfigError(f"{path}: malformed TF variable entry in Gs")
            variables[prefix + str(entry[0])] = entry[1].array
    kwargs = _plain({k: v for k, v in st["static_kwargs"].items() if k in _TF_DEFAULTS})  # others: training-only
    state, config = convert_tf_variables(variables, kwargs)
    return Checkpoint(state, config, "tf-pickle")
