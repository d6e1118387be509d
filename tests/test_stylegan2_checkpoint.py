"""Code-free StyleGAN2 checkpoint loading: network pickles (ADA and TF), state dicts, bad files.

The test pickles are written here with the structure SPEC section 6/7 documents.
Their globals (torch_utils..., dnnlib...) are emitted verbatim by a small
pickler, so nothing of the original code is needed, imported or executed.
"""

import collections
import contextlib
import io
import json
import pickle
import pickletools
import re
import struct
import sys
import types
import zipfile

import numpy as np
import pytest
import torch

from synthviews.errors import ConfigError
from synthviews.models import load_model
from synthviews.models.stylegan2.checkpoint import (
    RestrictedUnpickler,
    convert_tf_variables,
    load_checkpoint,
    read_network_pickle,
    save_safetensors,
)
from synthviews.models.stylegan2.model import PostProcess
from synthviews.models.stylegan2.networks import Generator, generator_config

# --- a pickler that writes arbitrary globals ---------------------------------------


class Global:
    """A reference to module.name, written into the stream as is (never imported)."""

    def __init__(self, module, name):
        self.module, self.name = module, name

    def __call__(self, *args):  # pickle insists that a reduce function be callable
        raise AssertionError("test stand-in, never called")


class Call:
    """Pickled as ``func(*args)``, then BUILD with ``state`` if given."""

    def __init__(self, func, *args, state=None):
        self.func, self.args, self.state = func, args, state


class NewObj:
    """Pickled as ``cls.__new__(cls)`` (NEWOBJ), then dict items, then BUILD with ``state``."""

    def __init__(self, cls, items=None, state=None):
        self.cls, self.items, self.state = cls, items or {}, state


class StreamPickler(pickle._Pickler):
    """The pure-Python pickler plus the three stand-ins above (GLOBAL for protocol < 4, else STACK_GLOBAL)."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_global_ref(self, obj):
        if self.proto >= 4:
            self.save(obj.module)
            self.save(obj.name)
            self.write(pickle.STACK_GLOBAL)
        else:
            self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
        self.memoize(obj)

    def save_call(self, obj):
        self.save(obj.func)
        self.save(tuple(obj.args))
        self.write(pickle.REDUCE)
        self.memoize(obj)
        if obj.state is not None:
            self.save(obj.state)
            self.write(pickle.BUILD)

    def save_newobj(self, obj):
        self.save(obj.cls)
        self.save(())
        self.write(pickle.NEWOBJ)
        self.memoize(obj)
        if obj.items:
            self.write(pickle.MARK)
            for k, v in obj.items.items():
                self.save(k)
                self.save(v)
            self.write(pickle.SETITEMS)
        if obj.state is not None:
            self.save(obj.state)
            self.write(pickle.BUILD)

    dispatch[Global] = save_global_ref
    dispatch[Call] = save_call
    dispatch[NewObj] = save_newobj


def dumps(obj, protocol):
    f = io.BytesIO()
    StreamPickler(f, protocol=protocol).dump(obj)
    return f.getvalue()


# --- the documented snapshot structure ----------------------------------------------

RECONSTRUCT = Global("torch_utils.persistence", "_reconstruct_persistent_obj")
REBUILD_TENSOR = Global("torch._utils", "_rebuild_tensor_v2")
REBUILD_PARAM = Global("torch._utils", "_rebuild_parameter")
LOAD_BYTES = Global("torch.storage", "_load_from_bytes")
EASYDICT = Global("dnnlib.util", "EasyDict")
FLOAT_STORAGE = Global("torch", "FloatStorage")
OFFICIAL_CLASS = {"Generator": "Generator", "MappingNetwork": "MappingNetwork", "FullyConnected": "FullyConnectedLayer",
                  "SynthesisNetwork": "SynthesisNetwork", "SynthesisBlock": "SynthesisBlock",
                  "SynthesisLayer": "SynthesisLayer", "ToRGB": "ToRGBLayer"}
MAGIC = 0x1950A86A20F9469CFC6C


class PidPickler(StreamPickler):
    def __init__(self, f, pid):
        super().__init__(f, protocol=2)
        self.pid = pid

    def persistent_id(self, obj):
        return self.pid if obj == "<storage>" else None


def legacy_blob(flat: torch.Tensor, storage_global=FLOAT_STORAGE) -> bytes:
    """A legacy (non-zip) torch.save stream of one float32 storage, written by hand."""
    f = io.BytesIO()
    for obj in (MAGIC, 1001, {"protocol_version": 1001, "little_endian": True,
                              "type_sizes": {"short": 2, "int": 4, "long": 4}}):
        StreamPickler(f, protocol=2).dump(obj)
    PidPickler(f, ("storage", storage_global, "k0", "cpu", flat.numel(), None)).dump("<storage>")
    StreamPickler(f, protocol=2).dump(["k0"])
    f.write(struct.pack("<q", flat.numel()) + flat.contiguous().numpy().astype("<f4").tobytes())
    return f.getvalue()


def tensor_record(t: torch.Tensor, style: str, param: bool):
    """A tensor (or Parameter) the way a pickle of the given style stores it."""
    if style == "native":  # whatever this torch writes for a real tensor
        t = t.clone()
        return torch.nn.Parameter(t, requires_grad=False) if param else t
    # Hand-made: stored transposed (non-contiguous strides) after 3 junk elements (offset).
    view = t.transpose(-1, -2) if t.ndim >= 2 else t
    flat = torch.cat([torch.full([3], 7.0), view.contiguous().flatten()])
    stride = view.contiguous().transpose(-1, -2).stride() if t.ndim >= 2 else t.stride()
    args = [Call(LOAD_BYTES, legacy_blob(flat)), 3, tuple(t.shape), tuple(stride), False, collections.OrderedDict()]
    if style == "v2_7":
        args.append({})
    rec = Call(REBUILD_TENSOR, *args)
    return Call(REBUILD_PARAM, rec, False, collections.OrderedDict()) if param else rec


def numpy_scalar(value, path):
    dtype = Call(Global("numpy", "dtype"), "f8", False, True, state=(3, "<", None, None, None, -1, -1, 0))
    return Call(Global(path, "scalar"), dtype, struct.pack("<d", value))


MODULE_SRC_TEMPLATE = "import os\nopen({marker!r}, 'w').write('module_src was executed')\n"


def persistent_module(module, prefix, tensors, opts, src, init_kwargs=None):
    """The _reconstruct_persistent_obj(meta) call for one module, children included."""
    dict_type = collections.OrderedDict if opts["torch1"] else dict
    state = {"training": False}
    state["_parameters"] = dict_type(
        (n, tensor_record(tensors[prefix + n], opts["tensors"], True)) for n in module._parameters)
    state["_buffers"] = dict_type(
        (n, tensor_record(tensors[prefix + n], opts["tensors"], False)) for n in module._buffers)
    state["_non_persistent_buffers_set"] = set()
    hooks = ["_backward_hooks", "_forward_hooks", "_forward_pre_hooks", "_state_dict_hooks", "_load_state_dict_pre_hooks"]
    if not opts["torch1"]:
        hooks += ["_backward_pre_hooks", "_forward_hooks_with_kwargs", "_forward_pre_hooks_with_kwargs",
                  "_forward_hooks_always_called", "_state_dict_pre_hooks", "_load_state_dict_post_hooks"]
    state.update({h: collections.OrderedDict() for h in hooks})
    state["_modules"] = dict_type(
        (n, persistent_module(child, f"{prefix}{n}.", tensors, opts, src)) for n, child in module._modules.items())
    state["_init_args"] = ()
    state["_init_kwargs"] = init_kwargs if init_kwargs is not None else NewObj(EASYDICT)
    if hasattr(module, "weight_gain"):
        state["weight_gain"] = numpy_scalar(float(module.weight_gain), opts["numpy"])
        state["activation"] = "lrelu" if getattr(module, "lrelu", False) else "linear"
    if hasattr(module, "resolution"):
        state["resolution"] = module.resolution
        state["act_gain"] = numpy_scalar(2 ** 0.5, opts["numpy"])
    meta = {"type": "class", "version": 6, "module_src": src,
            "class_name": OFFICIAL_CLASS[type(module).__name__], "state": state}
    return Call(RECONSTRUCT, meta)


def ada_snapshot(kwargs, tensors, opts, marker) -> bytes:
    """A stylegan2-ada-pytorch snapshot pickle with G, D, G_ema, augment_pipe."""
    with torch.device("meta"):
        template = Generator(**kwargs)
    src = MODULE_SRC_TEMPLATE.format(marker=str(marker))  # one str object: later uses are memo lookups
    ek = NewObj(EASYDICT, items={
        "z_dim": kwargs["z_dim"], "w_dim": kwargs["w_dim"],
        "mapping_kwargs": NewObj(EASYDICT, items=kwargs["mapping_kwargs"]),
        "synthesis_kwargs": NewObj(EASYDICT, items=kwargs["synthesis_kwargs"]),
        "c_dim": kwargs["c_dim"], "img_resolution": kwargs["img_resolution"], "img_channels": kwargs["img_channels"]})
    g_ema = persistent_module(template, "", tensors, opts, src, init_kwargs=ek)
    g = persistent_module(template, "", {k: v + 1 for k, v in tensors.items()}, opts, src, init_kwargs=ek)
    d_meta = {"type": "class", "version": 6, "module_src": src, "class_name": "Discriminator",
              "state": {"_parameters": {"w": tensor_record(torch.ones(2, 2), opts["tensors"], True)},
                        "_buffers": {}, "_modules": {}, "_init_args": (), "_init_kwargs": NewObj(EASYDICT)}}
    snapshot = {"training_set_kwargs": {"path": "cars.zip", "resolution": kwargs["img_resolution"]},
                "G": g, "D": Call(RECONSTRUCT, d_meta), "G_ema": g_ema, "augment_pipe": None}
    return dumps(snapshot, opts["protocol"])


VARIANTS = {
    # The official pickles: Python 3.7, torch 1.x, numpy 1.x.
    "official-torch1": dict(protocol=3, torch1=True, tensors="v2_6", numpy="numpy.core.multiarray"),
    "torch2-native": dict(protocol=4, torch1=False, tensors="native", numpy="numpy._core.multiarray"),
    "torch2-7arg": dict(protocol=4, torch1=False, tensors="v2_7", numpy="numpy.core.multiarray"),
    "protocol3-native": dict(protocol=3, torch1=True, tensors="native", numpy="numpy._core.multiarray"),
    "protocol4-torch1": dict(protocol=4, torch1=True, tensors="v2_6", numpy="numpy._core.multiarray"),
}


@pytest.fixture(scope="module")
def tiny1(compat_dir):
    sg = compat_dir / "stylegan2"
    return {
        "dir": sg,
        "kwargs": generator_config(json.loads((sg / "tiny1_config.json").read_text())["constructor_kwargs"]),
        "state": torch.load(sg / "tiny1_state_dict.pt", weights_only=True),
        "golden": torch.load(sg / "tiny1_golden.pt", weights_only=True),
    }


def assert_same_state(a, b):
    assert list(a) == list(b)
    for k in b:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


# --- ADA snapshot pickles ----------------------------------------------------------

@pytest.mark.parametrize("variant", list(VARIANTS))
def test_ada_snapshot_pickle(variant, tiny1, tmp_path):
    marker = tmp_path / "module_src_ran"
    path = tmp_path / "snapshot.pkl"
    path.write_bytes(ada_snapshot(tiny1["kwargs"], tiny1["state"], VARIANTS[variant], marker))
    ckpt = read_network_pickle(path)
    assert ckpt.kind == "ada-pickle"
    assert_same_state(ckpt.state_dict, tiny1["state"])  # G_ema, not G (G's weights are +1)
    assert ckpt.config == tiny1["kwargs"]
    assert not marker.exists()
    assert "torch_utils" not in sys.modules and "dnnlib" not in sys.modules


def test_ada_pickle_protocols_really_differ(tiny1, tmp_path):
    """The variants exercise different opcodes and global paths (not one stream five times)."""
    p3 = ada_snapshot(tiny1["kwargs"], tiny1["state"], VARIANTS["official-torch1"], tmp_path / "m")
    p4 = ada_snapshot(tiny1["kwargs"], tiny1["state"], VARIANTS["torch2-native"], tmp_path / "m")
    assert p3[:2] == b"\x80\x03" and p4[:2] == b"\x80\x04"
    assert b"ctorch_utils.persistence\n_reconstruct_persistent_obj\n" in p3
    assert b"numpy.core.multiarray" in p3 and b"numpy._core.multiarray" in p4
    assert b"builtins\nset" in p3 and b"builtins\nset" not in p4
    for path in ("numpy.core.multiarray", "numpy._core.multiarray"):  # numpy 1 and 2 scalar paths
        assert RestrictedUnpickler(io.BytesIO(dumps(numpy_scalar(0.125, path), 3))).load() == 0.125


def test_cyclic_and_oversized_records_are_refused(tmp_path):
    # BUILD after the call lets a module's own meta point back at the module.
    meta = {"type": "class", "version": 6, "module_src": "", "class_name": "Generator"}
    g = Call(RECONSTRUCT, {}, state={"meta": meta})
    meta["state"] = {"_init_kwargs": {"z_dim": 4, "w_dim": 4, "img_resolution": 4}, "_modules": {"self": g}}
    path = tmp_path / "cyclic.pkl"
    path.write_bytes(dumps({"G_ema": g}, 4))
    with pytest.raises(ConfigError, match="cyclic"):
        read_network_pickle(path)
    bomb = Call(REBUILD_TENSOR, Call(LOAD_BYTES, legacy_blob(torch.ones(1))), 0, (10 ** 12,), (0,), False,
                collections.OrderedDict())
    path.write_bytes(dumps({"G_ema": bomb}, 4))
    with pytest.raises(ConfigError, match="outside its storage"):
        read_network_pickle(path)


def test_load_model_from_pickle_matches_golden(tiny1, tmp_path):
    path = tmp_path / "network-snapshot-000000.pkl"
    path.write_bytes(ada_snapshot(tiny1["kwargs"], tiny1["state"], VARIANTS["official-torch1"], tmp_path / "m"))
    model = load_model("stylegan2", path=str(path))
    gold = tiny1["golden"]
    with torch.no_grad():
        img = model.decode(model.compose(gold["z"], {}))
    assert (img - PostProcess()(gold["img_psi1_const"])).abs().max() <= 1e-4
    assert model.source["path"] == str(path)
    # A .pkl carries its own config: a matching config= is fine, a different one is refused.
    load_model("stylegan2", path=path, config=tiny1["dir"] / "tiny1_config.json")
    with pytest.raises(ConfigError, match="does not match"):
        load_model("stylegan2", path=path, config=tiny1["dir"] / "tiny2_config.json")


def test_ada_pickle_with_fp16_config(compat_dir, tmp_path):
    """ADA-trained pickles carry num_fp16_res/conv_clamp; the config is read from _init_kwargs."""
    sg = compat_dir / "stylegan2"
    kwargs = generator_config(json.loads((sg / "tiny2_config.json").read_text())["constructor_kwargs"])
    state = torch.load(sg / "tiny2_state_dict.pt", weights_only=True)
    path = tmp_path / "ada.pkl"
    path.write_bytes(ada_snapshot(kwargs, state, VARIANTS["torch2-native"], tmp_path / "m"))
    model = load_model("stylegan2", path=path)
    assert model.config["config"]["synthesis_kwargs"]["num_fp16_res"] == 2
    assert model.force_fp32 and [b.use_fp16 for b in model.synthesis.blocks()] == [False, False, True, True]


# --- malicious and broken pickles --------------------------------------------------

@pytest.mark.parametrize("module, name", [
    ("os", "system"), ("posix", "system"), ("subprocess", "check_call"), ("builtins", "eval"),
    ("builtins", "exec"), ("builtins", "getattr"), ("torch", "load"), ("numpy", "load"),
])
@pytest.mark.parametrize("protocol", [3, 4])
def test_malicious_global_is_refused_not_run(module, name, protocol, tiny1, tmp_path):
    marker = tmp_path / "pwned"
    command = {"system": f"touch {marker}", "check_call": ["touch", str(marker)],
               "eval": f"open({str(marker)!r}, 'w')", "exec": f"open({str(marker)!r}, 'w')"}.get(name, str(marker))
    payload = Call(Global(module, name), command)
    path = tmp_path / "evil.pkl"
    path.write_bytes(dumps({"G_ema": payload, "D": None}, protocol))
    with pytest.raises(ConfigError, match=rf"{module}\.{name}.*nothing from the file was executed"):
        load_model("stylegan2", path=path)
    assert not marker.exists()


def test_module_src_is_never_executed_even_with_a_payload_inside(tiny1, tmp_path):
    """A valid snapshot whose module_src would write a marker, plus a storage blob naming os.system."""
    marker = tmp_path / "src_ran"
    path = tmp_path / "snap.pkl"
    path.write_bytes(ada_snapshot(tiny1["kwargs"], tiny1["state"], VARIANTS["torch2-7arg"], marker))
    load_model("stylegan2", path=path)
    assert not marker.exists()
    evil_blob = legacy_blob(torch.ones(4), storage_global=Global("os", "system"))
    rec = Call(REBUILD_TENSOR, Call(LOAD_BYTES, evil_blob), 0, (4,), (1,), False, collections.OrderedDict())
    path.write_bytes(dumps({"G_ema": rec}, 4))
    with pytest.raises(ConfigError, match=r"os\.system"):
        read_network_pickle(path)


def test_sneaky_opcodes_are_refused(tmp_path):
    """INST/OBJ-style references and persistent ids go through the same gate."""
    path = tmp_path / "inst.pkl"
    path.write_bytes(b"\x80\x02(S'touch /tmp/x'\nios\nsystem\n.")
    with pytest.raises(ConfigError, match=r"os\.system"):
        read_network_pickle(path)
    path.write_bytes(b"\x80\x02X\x03\x00\x00\x00abcQ.")  # BINPERSID
    with pytest.raises(ConfigError, match="persistent ids"):
        read_network_pickle(path)


def test_truncated_pickle(tiny1, tmp_path):
    data = ada_snapshot(tiny1["kwargs"], tiny1["state"], VARIANTS["official-torch1"], tmp_path / "m")
    path = tmp_path / "cut.pkl"
    for cut in (len(data) // 2, len(data) - 1, 10):
        path.write_bytes(data[:cut])
        with pytest.raises(ConfigError, match="truncated"):
            load_model("stylegan2", path=path)


@pytest.mark.parametrize("content, match", [
    (b"", "not a network pickle"),
    (bytes(range(256)) * 8, "not a network pickle"),
    (None, "zip archive"),
    (pickle.dumps({"hello": 1}, protocol=4), "without 'G_ema'"),
    (pickle.dumps([1, 2, 3], protocol=4), "holds a pickled list"),
    (pickle.dumps({"G_ema": {"a": 1}}, protocol=4), "not a persistence-wrapped"),
])
def test_foreign_pickles(content, match, tmp_path):
    path = tmp_path / "foreign.pkl"
    if content is None:
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("a.txt", "hello")
    else:
        path.write_bytes(content)
    with pytest.raises(ConfigError, match=match):
        load_model("stylegan2", path=path)


def test_wrong_class_and_foreign_generator_config(tiny1, tmp_path):
    opts = VARIANTS["torch2-7arg"]
    disc = {"type": "class", "version": 6, "module_src": "", "class_name": "Discriminator",
            "state": {"_parameters": {}, "_buffers": {}, "_modules": {}}}
    path = tmp_path / "d.pkl"
    path.write_bytes(dumps({"G_ema": Call(RECONSTRUCT, disc)}, 4))
    with pytest.raises(ConfigError, match="'Discriminator'"):
        read_network_pickle(path)
    # A StyleGAN3-like generator: top-level channel_base is not a StyleGAN2 option.
    with torch.device("meta"):
        template = Generator(**tiny1["kwargs"])
    ek = NewObj(EASYDICT, items={"z_dim": 64, "w_dim": 64, "img_resolution": 32, "img_channels": 3, "c_dim": 0,
                                 "channel_base": 512, "mapping_kwargs": NewObj(EASYDICT, items={"num_layers": 2})})
    path.write_bytes(dumps({"G_ema": persistent_module(template, "", tiny1["state"], opts, "", init_kwargs=ek)}, 4))
    with pytest.raises(ConfigError, match="channel_base.*StyleGAN3"):
        read_network_pickle(path)


# --- TensorFlow pickles --------------------------------------------------------------

TF_NETWORK = Global("dnnlib.tflib.network", "Network")


def tf_array(a: np.ndarray, style: str):
    if style == "native":  # numpy's own pickling (numpy 2 module path)
        return a
    dtype = Call(Global("numpy", "dtype"), "f4", False, True, state=(3, "<", None, None, None, -1, -1, 0))
    return Call(Global("numpy.core.multiarray", "_reconstruct"), Global("numpy", "ndarray"), (0,), b"b",
                state=(1, a.shape, dtype, False, a.astype("<f4").tobytes()))


def tf_network(name, static_kwargs, variables, components, style, src):
    state = {"version": 4, "name": name, "static_kwargs": static_kwargs, "components": components,
             "build_module_src": src, "build_func_name": "G_main",
             "variables": [(k, tf_array(v, style)) for k, v in variables.items()]}
    return NewObj(TF_NETWORK, state=state)


def tf_pickle(variables, static_kwargs, style, protocol, marker) -> bytes:
    """(G, D, Gs) as the TF StyleGAN2 code pickles them; G and D are decoys."""
    src = MODULE_SRC_TEMPLATE.format(marker=str(marker))
    own = {k: v for k, v in variables.items() if "/" not in k}
    comps = {c: tf_network(c, {}, {k.split("/", 1)[1]: v for k, v in variables.items() if k.startswith(c + "/")},
                           {}, style, src) for c in ("mapping", "synthesis")}
    gs = tf_network("Gs", static_kwargs, own, comps, style, src)
    decoy = tf_network("G", static_kwargs, {"dlatent_avg": np.zeros(3, np.float32)}, {}, style, src)
    return dumps((decoy, tf_network("D", {}, {}, {}, style, src), gs), protocol)


@pytest.fixture(scope="module")
def tf_tiny(compat_dir):
    sg = compat_dir / "stylegan2"
    variables = {k: v.numpy() for k, v in torch.load(sg / "tiny1_tf_layout_variables.pt", weights_only=True).items()}
    return variables, json.loads((sg / "tiny1_tf_static_kwargs.json").read_text())["static_kwargs"]


def test_tf_conversion_is_exact(tf_tiny, tiny1):
    state, config = convert_tf_variables(*tf_tiny)
    assert_same_state(state, tiny1["state"])
    assert config == tiny1["kwargs"]


@pytest.mark.parametrize("style, protocol", [("native", 3), ("native", 4), ("numpy1", 3), ("numpy1", 4)])
def test_tf_pickle(style, protocol, tf_tiny, tiny1, tmp_path):
    marker = tmp_path / "tf_src_ran"
    path = tmp_path / "stylegan2-car-config-f.pkl"
    path.write_bytes(tf_pickle(*tf_tiny, style, protocol, marker))
    ckpt = read_network_pickle(path)
    assert ckpt.kind == "tf-pickle"
    assert_same_state(ckpt.state_dict, tiny1["state"])
    model = load_model("stylegan2", path=path)
    gold = tiny1["golden"]
    with torch.no_grad():
        assert (model.mapping(gold["z"]) - gold["ws_psi1"]).abs().max() <= 1e-4
        assert (model.synthesis(gold["ws_psi1"]) - gold["img_psi1_const"]).abs().max() <= 1e-4
    assert not marker.exists() and "dnnlib" not in sys.modules


def test_tf_pickle_missing_variable_and_bad_kwargs(tf_tiny, tmp_path):
    variables, kwargs = tf_tiny
    path = tmp_path / "tf.pkl"
    broken = {k: v for k, v in variables.items() if k != "synthesis/16x16/Conv1/weight"}
    path.write_bytes(tf_pickle(broken, kwargs, "native", 4, tmp_path / "m"))
    with pytest.raises(ConfigError, match="synthesis/16x16/Conv1/weight.*missing"):
        read_network_pickle(path)
    path.write_bytes(tf_pickle(variables, {**kwargs, "fmap_max": 16}, "native", 4, tmp_path / "m"))
    with pytest.raises(ConfigError, match="wrong shape"):
        read_network_pickle(path)
    path.write_bytes(tf_pickle(variables, {**kwargs, "architecture": "resnet"}, "native", 4, tmp_path / "m"))
    with pytest.raises(ConfigError, match="architecture"):
        read_network_pickle(path)


# --- TF pickles written the way TF writes them -------------------------------------------
#
# TF1's Network.__getstate__ stores Session.run results: arrays for tensors, numpy *scalars* for 0-d
# variables (lod, noise_strength). Here real numpy objects and a throw-away dnnlib.tflib.network.Network
# class (registered in sys.modules only while pickling) go through a real pickler, so the stream names
# the real globals. "numpy1" renames numpy's callables to the numpy 1.x module paths the official files
# use (numpy.core.*); "native" is this numpy's own pickling, as a re-save with the C pickler gives.


@contextlib.contextmanager
def stand_in_dnnlib():
    """Yields a Network class that pickles as dnnlib.tflib.network.Network (NEWOBJ + BUILD, as TF's does)."""
    names = ("dnnlib", "dnnlib.tflib", "dnnlib.tflib.network")
    assert not any(n in sys.modules for n in names)
    mods = {n: types.ModuleType(n) for n in names}

    class Network:
        def __init__(self, state):
            self._state = state

        def __getstate__(self):
            return self._state

    Network.__module__, Network.__qualname__ = "dnnlib.tflib.network", "Network"
    mods["dnnlib.tflib.network"].Network = Network
    mods["dnnlib"].tflib, mods["dnnlib.tflib"].network = mods["dnnlib.tflib"], mods["dnnlib.tflib.network"]
    sys.modules.update(mods)
    try:
        yield Network
    finally:
        for n in names:
            sys.modules.pop(n, None)


class Numpy1Pickler(pickle._Pickler):
    """The pure-Python pickler, writing numpy objects with numpy 1.x global names (numpy.core.*)."""

    def __init__(self, f, protocol):
        super().__init__(f, protocol=protocol)
        self.globals = {}

    def reducer_override(self, obj):
        if not isinstance(obj, (np.ndarray, np.generic, np.dtype)):
            return NotImplemented
        func, *rest = obj.__reduce_ex__(self.proto)
        module = func.__module__.replace("numpy._core", "numpy.core")
        ref = self.globals.setdefault((module, func.__name__), Global(module, func.__name__))
        return (ref, *rest)

    dispatch = dict(pickle._Pickler.dispatch)
    dispatch[Global] = StreamPickler.save_global_ref


def tf_value(t):
    """What Session.run gives for a variable: an np.float32 scalar for 0-d, else a float32 array."""
    a = t.numpy() if isinstance(t, torch.Tensor) else np.asarray(t)
    return np.float32(a) if a.ndim == 0 else a.astype(np.float32)


def tf_network_pickle(variables, static_kwargs, protocol, numpy_names, src="", edit=None, buffer_callback=None):
    """(G, D, Gs) as TF pickles it. ``variables``: flattened Gs variables; the synthesis network gets a
    ``lod`` of its own. ``edit(net_name, entries)`` may tamper with a network's variables list."""
    own = {"lod": 0.0}
    parts = {"": own, "mapping": {}, "synthesis": {"lod": 0.0}}
    for name, value in variables.items():
        head, _, rest = name.partition("/")
        (parts[head] if rest else own)[rest or name] = value
    with stand_in_dnnlib() as Network:
        def net(name, kwargs, values, components, func):
            entries = [(k, tf_value(v) if isinstance(v, (torch.Tensor, np.ndarray, float)) else v)
                       for k, v in values.items()]
            entries = edit(name, entries) if edit else entries
            return Network({"version": 4, "name": name, "static_kwargs": kwargs, "components": components,
                            "build_module_src": src, "build_func_name": func, "variables": entries})

        def generator(name, shift):
            comps = {"mapping": net("G_mapping", {**static_kwargs, "dlatent_broadcast": 8},
                                    {k: v + shift for k, v in parts["mapping"].items()}, {}, "G_mapping"),
                     "synthesis": net("G_synthesis", dict(static_kwargs),
                                      {k: v + shift for k, v in parts["synthesis"].items()}, {}, "G_synthesis")}
            return net(name, dict(static_kwargs), {k: v + shift for k, v in own.items()}, comps, "G_main")

        d = net("D", {}, {"4x4/Dense0/weight": torch.ones(4, 2)}, {}, "D_main")
        nets = (generator("G", 1.0), d, generator("Gs", 0.0))  # G's weights are off by one: must not be read
        if numpy_names == "native":
            return pickle.dumps(nets, protocol=protocol, buffer_callback=buffer_callback)
        f = io.BytesIO()
        Numpy1Pickler(f, protocol).dump(nets)
        return f.getvalue()


class GlobalRecorder(RestrictedUnpickler):
    def find_class(self, module, name):
        self.seen.add(f"{module}.{name}")
        return super().find_class(module, name)


def stream_globals(data: bytes) -> set:
    u = GlobalRecorder(io.BytesIO(data))
    u.seen = set()
    u.load()
    return u.seen


def to_tf_layout(state):
    """PyTorch-layout generator weights -> flattened TF Gs variables: SPEC section 7's table run backwards."""
    out = {"lod": torch.tensor(0.0)}
    for name, t in state.items():
        if name.endswith("resample_filter"):
            continue
        if name == "mapping.w_avg":
            out["dlatent_avg"] = t
            continue
        m = re.fullmatch(r"mapping\.fc(\d+)\.(weight|bias)", name)
        if m:
            out[f"mapping/Dense{m[1]}/{m[2]}"] = t.t() if m[2] == "weight" else t
            continue
        if name == "synthesis.b4.const":
            out["synthesis/4x4/Const/const"] = t[None]
            continue
        res, layer, leaf = re.fullmatch(r"synthesis\.b(\d+)\.(conv0|conv1|torgb)\.(.+)", name).groups()
        res, k = int(res), int(res).bit_length() - 1
        if leaf == "noise_const":
            index = 0 if res == 4 else 2 * k - (5 if layer == "conv0" else 4)
            out[f"synthesis/noise{index}"] = t[None, None]
            continue
        base = f"synthesis/{res}x{res}/" + {"conv0": "Conv0_up", "conv1": "Conv" if res == 4 else "Conv1",
                                             "torgb": "ToRGB"}[layer]
        if leaf == "weight":  # [out, in, kh, kw] -> [kh, kw, in, out]; the up-conv kernel is stored flipped
            w = t.permute(2, 3, 1, 0)
            out[f"{base}/weight"] = w.flip([0, 1]) if layer == "conv0" else w
        elif leaf == "affine.weight":
            out[f"{base}/mod_weight"] = t.t()
        elif leaf == "affine.bias":
            out[f"{base}/mod_bias"] = t - 1
        else:  # bias, noise_strength
            out[f"{base}/{leaf}"] = t
    return {k: v.contiguous() for k, v in out.items()}


@pytest.fixture(scope="module")
def tiny(compat_dir):
    """tinyN -> config, state dict, golden, and its TF static kwargs and variables."""
    sg = compat_dir / "stylegan2"
    base_kwargs = json.loads((sg / "tiny1_tf_static_kwargs.json").read_text())["static_kwargs"]
    out = {}
    for n in (1, 2, 3):
        config = generator_config(json.loads((sg / f"tiny{n}_config.json").read_text())["constructor_kwargs"])
        state = torch.load(sg / f"tiny{n}_state_dict.pt", weights_only=True)
        extra = {k: config["synthesis_kwargs"][k] for k in ("conv_clamp", "num_fp16_res")
                 if config["synthesis_kwargs"][k]}
        out[n] = {"config": config, "state": state, "golden": torch.load(sg / f"tiny{n}_golden.pt", weights_only=True),
                  "static_kwargs": {**base_kwargs, **extra}, "variables": to_tf_layout(state)}
    return out


def test_inverse_tf_layout_matches_the_spec_file(tiny, compat_dir):
    """The test's own PyTorch -> TF converter reproduces tiny1_tf_layout_variables.pt exactly."""
    given = torch.load(compat_dir / "stylegan2" / "tiny1_tf_layout_variables.pt", weights_only=True)
    mine = tiny[1]["variables"]
    assert sorted(mine) == sorted(given)
    for k in given:
        assert mine[k].shape == given[k].shape and torch.equal(mine[k], given[k]), k


def golden_errors(model, gold) -> dict:
    with torch.no_grad():
        return {"ws_psi1": (model.mapping(gold["z"]) - gold["ws_psi1"]).abs().max().item(),
                "ws_psi07": (model.mapping(gold["z"], 0.7) - gold["ws_psi07"]).abs().max().item(),
                "img_psi1_const": (model.synthesis(gold["ws_psi1"]) - gold["img_psi1_const"]).abs().max().item(),
                "img_psi1_none": (model.synthesis(gold["ws_psi1"], noise_mode="none")
                                  - gold["img_psi1_none"]).abs().max().item()}


TF_OFFICIAL_GLOBALS = {"dnnlib.tflib.network.Network", "numpy.core.multiarray._reconstruct", "numpy.ndarray",
                       "numpy.dtype", "numpy.core.multiarray.scalar"}


@pytest.mark.parametrize("n, protocol, numpy_names, expected_globals", [
    # As TF writes them: protocol 4, numpy 1.x names, 0-d variables as numpy scalars.
    (1, 4, "numpy1", TF_OFFICIAL_GLOBALS),
    (3, 4, "numpy1", TF_OFFICIAL_GLOBALS),  # conv_clamp=0.5 in static_kwargs: the clamp really acts
    # Re-saved with protocol 5: numpy then pickles arrays through _frombuffer with in-band buffers.
    (1, 5, "native", {"dnnlib.tflib.network.Network", "numpy._core.numeric._frombuffer", "numpy.dtype",
                      "numpy._core.multiarray.scalar"}),
    (3, 5, "numpy1", {"dnnlib.tflib.network.Network", "numpy.core.numeric._frombuffer", "numpy.dtype",
                      "numpy.core.multiarray.scalar"}),
])
def test_tf_pickle_as_written_by_tf(n, protocol, numpy_names, expected_globals, tiny, tmp_path):
    t = tiny[n]
    marker = tmp_path / "tf_src_ran"
    data = tf_network_pickle(t["variables"], t["static_kwargs"], protocol, numpy_names,
                             src=MODULE_SRC_TEMPLATE.format(marker=str(marker)))
    assert data[:2] == bytes([0x80, protocol])
    assert stream_globals(data) == expected_globals
    opcodes = {op.name for op, _, _ in pickletools.genops(data)}
    assert "NEWOBJ" in opcodes and "BUILD" in opcodes
    if protocol == 5:
        assert "BYTEARRAY8" in opcodes and "NEXT_BUFFER" not in opcodes
    path = tmp_path / "stylegan2-car-config-f.pkl"
    path.write_bytes(data)
    ckpt = read_network_pickle(path)
    assert ckpt.kind == "tf-pickle" and ckpt.config == t["config"]
    assert_same_state(ckpt.state_dict, t["state"])
    errors = golden_errors(load_model("stylegan2", path=path), t["golden"])
    print(f"tiny{n} protocol {protocol} {numpy_names}: max abs errors {errors}")
    assert max(errors.values()) <= 1e-4, errors
    assert not marker.exists() and "dnnlib" not in sys.modules


def test_tf_clamp_test_data_really_clamps(tiny):
    """tiny3 (clamp 0.5) differs from tiny1 (no clamp): dropping conv_clamp could not pass for it."""
    assert (tiny[3]["golden"]["img_psi1_const"] - tiny[1]["golden"]["img_psi1_const"]).abs().max() > 0.1


def test_tf_pickle_out_of_band_buffers_are_refused(tiny, tmp_path):
    t = tiny[1]
    buffers = []
    data = tf_network_pickle(t["variables"], t["static_kwargs"], 5, "native", buffer_callback=buffers.append)
    assert buffers and b"\x97" in data  # NEXT_BUFFER: the array data went elsewhere
    path = tmp_path / "oob.pkl"
    path.write_bytes(data)
    with pytest.raises(ConfigError, match=r"oob\.pkl refers to out-of-band buffers.*not in the file"):
        read_network_pickle(path)


def test_tf_pickle_static_kwargs(tiny, tmp_path):
    t = tiny[1]
    path = tmp_path / "kw.pkl"

    def load(**extra):
        path.write_bytes(tf_network_pickle(t["variables"], {**t["static_kwargs"], **extra}, 4, "numpy1"))
        return read_network_pickle(path)

    # Run-time and training options do not change what mapping/synthesis compute: accepted.
    ckpt = load(truncation_psi=0.5, truncation_cutoff=None, randomize_noise=True, style_mixing_prob=0.9,
                dlatent_avg_beta=0.995, structure="auto", fused_modconv=True, is_template_graph=False,
                dtype="float32", synthesis_func="G_synthesis_stylegan2", fmap_min=1, fmap_const=None)
    assert ckpt.config == t["config"]
    # An unknown one is refused, naming it and the file (one line).
    with pytest.raises(ConfigError, match=r"kw\.pkl: .*unknown static kwarg.*'use_wavelets'") as err:
        load(use_wavelets=True)
    assert "\n" not in str(err.value)
    for extra, match in [({"dtype": "float16"}, "dtype='float16'"), ({"normalize_latents": False}, "normalize_latents"),
                         ({"synthesis_func": "G_synthesis_stylegan_revised"}, "synthesis_func"),
                         ({"fmap_const": 8}, "fmap_const=8"), ({"fmap_min": 64}, "fmap_min=64"),
                         ({"label_size": 10}, "label_size=10")]:
        with pytest.raises(ConfigError, match=rf"kw\.pkl: .*{match}"):
            load(**extra)


def test_tf_pickle_num_fp16_res_is_honoured(tiny, compat_dir, tmp_path):
    """An ADA-era TF pickle (conv_clamp 256, num_fp16_res 2) gives the same generator as tiny2's explicit config."""
    t = tiny[2]
    assert t["static_kwargs"]["num_fp16_res"] == 2 and t["static_kwargs"]["conv_clamp"] == 256
    path = tmp_path / "ada-tf.pkl"
    path.write_bytes(tf_network_pickle(t["variables"], t["static_kwargs"], 4, "numpy1"))
    model = load_model("stylegan2", path=path)
    explicit = load_model("stylegan2", path=compat_dir / "stylegan2" / "tiny2_state_dict.pt",
                          config=compat_dir / "stylegan2" / "tiny2_config.json")
    assert model.config["config"] == explicit.config["config"] == t["config"]
    assert [b.use_fp16 for b in model.synthesis.blocks()] == [False, False, True, True]
    ws = t["golden"]["ws_psi1"]
    with torch.no_grad():
        fp16 = model.synthesis(ws, force_fp32=False)
        assert torch.equal(fp16, explicit.synthesis(ws, force_fp32=False))
        assert (fp16 - model.synthesis(ws)).abs().max() > 1e-4  # the fp16 blocks really run in fp16
    errors = golden_errors(model, t["golden"])  # the fp32 reference
    print(f"tiny2 (fp16 config) protocol 4: max abs errors {errors}")
    assert max(errors.values()) <= 1e-4, errors


@pytest.mark.parametrize("case, match", [
    ("string", r"synthesis/4x4/Conv/noise_strength in Gs: it holds a str"),
    ("non-numeric scalar", r"synthesis/4x4/Conv/noise_strength in Gs: it holds a numpy scalar of a non-numeric"),
    ("triple", r"\d+ of component synthesis: expected a \(name, value\) pair, got a tuple"),
])
def test_tf_pickle_malformed_variable_entry(case, match, tiny, tmp_path):
    t = tiny[1]

    def edit(net_name, entries):
        if net_name != "G_synthesis":
            return entries
        out = []
        for name, value in entries:
            if name == "4x4/Conv/noise_strength":
                out.append({"string": (name, "0.1"), "non-numeric scalar": (name, np.str_("x")),
                            "triple": (name, value, value)}[case])
            else:
                out.append((name, value))
        return out

    path = tmp_path / "bad-entry.pkl"
    path.write_bytes(tf_network_pickle(t["variables"], t["static_kwargs"], 4, "numpy1", edit=edit))
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}: malformed TF variable entry {match}") as err:
        load_model("stylegan2", path=path)
    assert "\n" not in str(err.value)


# --- state dict files ------------------------------------------------------------------

def test_pt_and_safetensors_files(tiny1, tmp_path):
    gold = tiny1["golden"]
    expected = PostProcess()(gold["img_psi1_const"][:2])

    def check(model):
        with torch.no_grad():
            assert (model.decode(model.compose(gold["z"][:2], {})) - expected).abs().max() <= 1e-4

    pt = tmp_path / "tiny.pt"
    torch.save(tiny1["state"], pt)
    check(load_model("stylegan2", path=pt, config=tiny1["kwargs"]))
    with pytest.raises(ConfigError, match="holds weights only: give config="):
        load_model("stylegan2", path=pt)
    (tmp_path / "tiny.yaml").write_text("z_dim: 64\nw_dim: 64\nimg_resolution: 32\nmapping_kwargs: {num_layers: 2}\n"
                                        "synthesis_kwargs: {channel_base: 512, channel_max: 32}\n")
    check(load_model("stylegan2", path=pt))  # sibling tiny.yaml

    st = tmp_path / "tiny.safetensors"
    save_safetensors(st, tiny1["state"], tiny1["kwargs"])  # config in the metadata
    model = load_model("stylegan2", path=st)
    check(model)
    assert load_checkpoint(st).kind == "safetensors"
    assert model.source["sha256"] != load_model("stylegan2", path=pt).source["sha256"]

    from safetensors.torch import save_file
    bare = tmp_path / "bare.safetensors"
    save_file(tiny1["state"], str(bare))
    (tmp_path / "bare.json").write_text((tiny1["dir"] / "tiny1_config.json").read_text())  # compat-style file
    check(load_model("stylegan2", path=bare))


def test_pickle_to_safetensors_round_trip(tiny1, tmp_path):
    pkl = tmp_path / "snap.pkl"
    pkl.write_bytes(ada_snapshot(tiny1["kwargs"], tiny1["state"], VARIANTS["torch2-native"], tmp_path / "m"))
    a = load_model("stylegan2", path=pkl)
    st = tmp_path / "snap.safetensors"
    save_safetensors(st, a.state_dict(), a.config["config"])
    b = load_model("stylegan2", path=st)
    assert a.model_id == b.model_id


def test_bad_state_dict_files(tiny1, compat_dir, tmp_path):
    cfg = tiny1["kwargs"]
    bigbigan = compat_dir / "bigbigan" / "tiny_state_dict.pt"
    if bigbigan.is_file():
        with pytest.raises(ConfigError, match="not a StyleGAN2 generator.*shared"):
            load_model("stylegan2", path=bigbigan, config=cfg)
    state = dict(tiny1["state"])
    pt = tmp_path / "x.pt"
    torch.save({k: v for k, v in state.items() if k != "mapping.fc1.bias"}, pt)
    with pytest.raises(ConfigError, match="missing 1 tensor.*mapping.fc1.bias"):
        load_model("stylegan2", path=pt, config=cfg)
    torch.save({**state, "extra.weight": torch.zeros(1)}, pt)
    with pytest.raises(ConfigError, match="unexpected tensor.*extra.weight"):
        load_model("stylegan2", path=pt, config=cfg)
    small = {**cfg, "synthesis_kwargs": {**cfg["synthesis_kwargs"], "channel_max": 16}}
    torch.save(state, pt)
    with pytest.raises(ConfigError, match="shape .* config expects"):
        load_model("stylegan2", path=pt, config=small)
    torch.save({**state, "mapping.w_avg": torch.zeros(64, dtype=torch.int64)}, pt)
    with pytest.raises(ConfigError, match="dtype"):
        load_model("stylegan2", path=pt, config=cfg)
    torch.save({"G_ema": state}, pt)
    with pytest.raises(ConfigError, match="flat state dict"):
        load_model("stylegan2", path=pt, config=cfg)
    # The messages below are ours (found before or around torch.load), whatever text this torch version has.
    pt.write_bytes(pickle.dumps({"x": Exception("y")}, protocol=2))
    with pytest.raises(ConfigError, match=r"x\.pt is a plain pickle, not a file written by torch\.save"):
        load_model("stylegan2", path=pt, config=cfg)
    torch.save({"x": Exception("y")}, pt)  # a real torch.save file that weights_only refuses
    with pytest.raises(ConfigError, match=r"x\.pt: torch\.load\(weights_only=True\) could not read it: "
                                          r"it is not a plain state dict"):
        load_model("stylegan2", path=pt, config=cfg)
    torch.save(state, pt, _use_new_zipfile_serialization=False)  # legacy format, cut short
    pt.write_bytes(pt.read_bytes()[:5000])
    with pytest.raises(ConfigError, match=r"x\.pt: torch\.load\(weights_only=True\) could not read it: .* damaged"):
        load_model("stylegan2", path=pt, config=cfg)
    torch.save(state, pt)
    pt.write_bytes(pt.read_bytes()[:5000])
    with pytest.raises(ConfigError, match=r"x\.pt is truncated or damaged: its zip directory cannot be read"):
        load_model("stylegan2", path=pt, config=cfg)
    with zipfile.ZipFile(pt, "w") as z:
        z.writestr("a.txt", "hello")
    with pytest.raises(ConfigError, match=r"x\.pt is a zip archive but not one that torch\.save writes"):
        load_model("stylegan2", path=pt, config=cfg)
    pt.write_bytes(b"hello world")
    with pytest.raises(ConfigError, match=r"x\.pt is not a torch file \(neither a zip archive nor"):
        load_model("stylegan2", path=pt, config=cfg)
    st = tmp_path / "x.safetensors"
    save_safetensors(st, state, cfg)
    st.write_bytes(st.read_bytes()[:3000])
    with pytest.raises(ConfigError, match="truncated"):
        load_model("stylegan2", path=st)
    st.write_bytes(bytes(range(256)))
    with pytest.raises(ConfigError, match="safetensors"):
        load_model("stylegan2", path=st)


def test_bad_paths_and_configs(tiny1, tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_model("stylegan2", path=tmp_path / "missing.pkl")
    other = tmp_path / "weights.bin"
    other.write_bytes(b"x")
    with pytest.raises(ConfigError, match="unknown file type"):
        load_model("stylegan2", path=other)
    with pytest.raises(ConfigError, match="does not exist"):
        load_model("stylegan2", config=tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_model("stylegan2", config=bad)
    with pytest.raises(ConfigError, match="missing 'z_dim'"):
        load_model("stylegan2", config={"w_dim": 4, "img_resolution": 8})
    with pytest.raises(ConfigError, match="either path= or weights="):
        load_model("stylegan2", path=tmp_path / "a.pt", weights={}, config=tiny1["kwargs"])
