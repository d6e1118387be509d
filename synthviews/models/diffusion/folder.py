"""Reading a local diffusers model folder safely: fixed class allow-list, safetensors only, sizes checked first.

A diffusers folder (what ``save_pretrained`` writes) holds ``model_index.json``
(optional here), ``unet/config.json`` + ``unet/diffusion_pytorch_model.safetensors``,
``scheduler/scheduler_config.json`` and, for latent diffusion, ``vqvae/`` or ``vae/``
with the same two files. Nothing named in a file is imported: a class name is
only looked up in :data:`UNETS`, :data:`SCHEDULERS` and :data:`DECODERS`.

Why the order of checks: a 1 kB config can ask for a network of many gigabytes.
So the config's sizes are bounded, the network is built on the meta device (no
memory, no random init), its parameter names and shapes are compared with the
safetensors header (read without loading a tensor; only F32/F16/BF16, and all
of it as float32 within the weights size limit), and only then are the tensors
read, made float32 one by one and assigned to the meta network. Loading holds
at most the float32 weights (2x the file for an fp16/bf16 one), never a second
copy of the network.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

from ..._util.checks import MAX_POLICY_BYTES, brief, error, load_json, read_text
from ...errors import ConfigError
from ..weights import check_names_shapes, read_tensors, safetensors_header

UNETS = ("UNet2DModel",)
SCHEDULERS = ("DDPMScheduler", "DDIMScheduler", "EulerAncestralDiscreteScheduler")
DECODERS = ("VQModel", "AutoencoderKL")
DECODER_FOLDERS = ("vqvae", "vae")  # the names diffusers' LDM (vqvae) and Stable Diffusion (vae) pipelines use
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
INSTALL = "pip install 'synthviews[diffusion]'"

# Bounds on config values, far above real pixel/latent UNets (DDPM CIFAR/CelebA-HQ, LDM): they keep the meta build cheap.
MAX_CHANNELS = 4096
MAX_LEVELS = 8
MAX_LAYERS_PER_BLOCK = 16
MAX_SAMPLE_SIZE = 1024
MAX_IMAGE_CHANNELS = 64
MAX_CLASSES = 100_000
MAX_TRAIN_TIMESTEPS = 100_000


def diffusers_module():
    """The diffusers package, imported only when a diffusion model is loaded."""
    try:
        import diffusers
    except ImportError:
        raise ConfigError(f"the diffusion family needs the diffusers package: {INSTALL}") from None
    return diffusers


@dataclass
class Component:
    """One network of the folder: its role, class name, config and (after loading) module."""

    role: str
    folder: Path
    class_name: str
    config: dict
    weights: Path


def read_json_file(path: Path, what: str) -> dict:
    data = load_json(read_text(path, what, MAX_POLICY_BYTES), f"{what} {path}")
    if not isinstance(data, dict):
        raise error(f"{what} {path} holds a JSON {type(data).__name__}, not an object")
    return data


def check_folder(path) -> Path:
    folder = Path(path)
    if not folder.exists():
        raise error(f"diffusion folder {folder} does not exist; give a local diffusers model folder "
                    "(what save_pretrained writes: unet/, scheduler/, model_index.json)")
    if not folder.is_dir():
        raise error(f"diffusion folder {folder} is a file, not a folder; give the diffusers model folder "
                    "that holds unet/ and scheduler/")
    return folder


def read_model_index(folder: Path) -> tuple[dict | None, str | None]:
    """model_index.json's components, checked against the allow-list (None: the file is optional and absent),
    and the licence its ``_synthviews`` entry states (a folder synthviews' trainer exported), if any."""
    index_path = folder / "model_index.json"
    if not index_path.exists():
        return None, None
    index = read_json_file(index_path, "diffusion model index")
    ours = index.get("_synthviews")
    license = ours.get("license") if isinstance(ours, dict) else None
    if not (isinstance(license, str) and 0 < len(license) <= 40 and re.fullmatch(r"[a-z0-9.+-]+", license)):
        license = None
    allowed = {"unet": UNETS, "scheduler": SCHEDULERS, "vqvae": DECODERS, "vae": DECODERS}
    components = {}
    for name, value in index.items():
        if name.startswith("_"):
            continue  # _class_name (the pipeline), _diffusers_version: never imported
        if value is None or (isinstance(value, list) and value in ([None, None], [])):
            continue  # an optional component left out
        if not (isinstance(value, list) and len(value) == 2 and all(isinstance(v, str) for v in value)):
            raise error(f"diffusion model index {index_path}: component {brief(name, 40)} is {brief(value)}, "
                        "not [library, class]")
        if name not in allowed:
            raise error(f"diffusion model index {index_path}: component {brief(name, 40)} ({value[1]}) is not one "
                        "synthviews loads (unet, scheduler and optionally vqvae or vae); remove it or use another folder")
        if value[0] != "diffusers" or value[1] not in allowed[name]:
            raise error(f"diffusion model index {index_path}: {name} is {brief('.'.join(value), 60)}, which "
                        f"synthviews does not load; supported: diffusers {', '.join(allowed[name])}")
        components[name] = value[1]
    return components, license


def decoder_role(folder: Path, index: dict | None) -> str | None:
    """The decoder's folder: what model_index.json lists (a leftover folder it does not list is ignored),
    or without an index the one of vqvae/ and vae/ that has a config; both is ambiguous."""
    if index is not None:
        roles = [r for r in DECODER_FOLDERS if r in index]
        where = f"diffusion model index {folder / 'model_index.json'}"
    else:
        roles = [r for r in DECODER_FOLDERS if (folder / r / "config.json").exists()]
        where = f"diffusion folder {folder}"
    if len(roles) > 1:
        raise error(f"{where}: both vqvae and vae decoders are there; keep the one the UNet was trained with")
    return roles[0] if roles else None


def read_component(folder: Path, role: str, classes: tuple[str, ...], config_name: str = "config.json",
                   weights: bool = True) -> Component:
    sub = folder / role
    config_path = sub / config_name
    what = f"diffusion {role} config"
    if not config_path.exists():
        raise error(f"{what} {config_path} does not exist; a diffusers folder has {role}/{config_name} "
                    "(save_pretrained writes it)")
    config = read_json_file(config_path, what)
    name = config.get("_class_name")
    if name not in classes:
        raise error(f"{what} {config_path}: _class_name is {brief(name, 60)}; synthviews loads only "
                    f"{', '.join(classes)} here and never imports a class a file names")
    path = sub / WEIGHTS_NAME
    if weights and not path.exists():
        others = sorted(p.name for p in sub.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt")) \
            if sub.is_dir() else []
        if others:
            raise error(f"diffusion {role} weights {sub}: only {others[0]} is there; synthviews reads safetensors "
                        f"only (a .bin is a pickle that can run code): save it again with "
                        f"save_pretrained(..., safe_serialization=True)")
        if (sub / f"{WEIGHTS_NAME[:-len('.safetensors')]}.safetensors.index.json").exists():
            raise error(f"diffusion {role} weights {sub}: sharded safetensors are not supported; "
                        "save it again as one file (save_pretrained with a larger max_shard_size)")
        raise error(f"diffusion {role} weights {path} does not exist; save the model with save_pretrained")
    return Component(role, sub, name, config, path)


def check_sizes(comp: Component) -> None:
    """Bound the sizes a config asks for, so even the meta build cannot be made to take long."""
    cfg, where = comp.config, f"diffusion {comp.role} config {comp.folder / 'config.json'}"

    def bounded_int(key, lo, hi, optional=False):
        v = cfg.get(key)
        if v is None and optional:
            return
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise error(f"{where}: {key} must be an integer in [{lo}, {hi:,}], got {brief(v)}")

    channels = cfg.get("block_out_channels")
    if (not isinstance(channels, list) or not 1 <= len(channels) <= MAX_LEVELS
            or any(isinstance(c, bool) or not isinstance(c, int) or not 1 <= c <= MAX_CHANNELS for c in channels)):
        raise error(f"{where}: block_out_channels must be a list of 1 to {MAX_LEVELS} integers in "
                    f"[1, {MAX_CHANNELS}], got {brief(channels)}")
    layers = cfg.get("layers_per_block", 2)
    layer_list = layers if isinstance(layers, list) else [layers]
    if any(isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_LAYERS_PER_BLOCK for v in layer_list):
        raise error(f"{where}: layers_per_block must be integers in [1, {MAX_LAYERS_PER_BLOCK}], got {brief(layers)}")
    for key in ("in_channels", "out_channels", "latent_channels"):
        bounded_int(key, 1, MAX_IMAGE_CHANNELS, optional=True)
    bounded_int("norm_num_groups", 1, MAX_CHANNELS, optional=True)
    bounded_int("num_class_embeds", 1, MAX_CLASSES, optional=True)
    bounded_int("num_vq_embeddings", 1, 1 << 20, optional=True)
    bounded_int("vq_embed_dim", 1, MAX_IMAGE_CHANNELS, optional=True)
    bounded_int("time_embedding_dim", 1, 4 * MAX_CHANNELS, optional=True)
    size = cfg.get("sample_size")
    sizes = size if isinstance(size, list) else [size]
    if size is not None and (len(sizes) != (2 if isinstance(size, list) else 1) or any(
            isinstance(s, bool) or not isinstance(s, int) or not 1 <= s <= MAX_SAMPLE_SIZE for s in sizes)):
        raise error(f"{where}: sample_size must be an integer (or [height, width]) in [1, {MAX_SAMPLE_SIZE}], "
                    f"got {brief(size)}")


def build_meta(comp: Component) -> torch.nn.Module:
    """The component's network on the meta device (no memory, no init): its resolved ``.config`` (diffusers'
    defaults filled in) and parameter shapes, from a config whose sizes are bounded first."""
    check_sizes(comp)
    cls = getattr(diffusers_module(), comp.class_name)  # a name from the fixed allow-list, never from a file alone
    where = f"diffusion {comp.role} config {comp.folder / 'config.json'}"
    config = {k: v for k, v in comp.config.items() if not k.startswith("_")}
    try:
        with torch.device("meta"):
            return cls.from_config(config)
    except Exception as e:  # noqa: BLE001 - diffusers raises many types for a bad config: one line, naming the file
        raise error(f"{where}: diffusers cannot build a {comp.class_name} from it: {e}") from None


def load_weights(comp: Component, net: torch.nn.Module) -> torch.nn.Module:
    """``net`` (from :func:`build_meta`) with the folder's weights, as float32, after the header matches it."""
    expected = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    what = f"diffusion {comp.role} weights"
    check_names_shapes(safetensors_header(comp.weights, what), expected, f"{what} {comp.weights}",
                       str(comp.folder / "config.json"))
    state, _ = read_tensors(comp.weights, what)
    for k in list(state):  # one tensor at a time: at most the float32 weights are alive, never fp16 + fp32 of all
        state[k] = state.pop(k).float()
    net.load_state_dict(state, strict=True, assign=True)
    left = [k for k, t in [*net.named_parameters(), *net.named_buffers()] if t.is_meta]
    if left:  # a tensor the state dict does not hold (a non-persistent buffer): never seen in these classes
        raise error(f"{what} {comp.weights}: {comp.class_name} tensor {left[0]!r} is not in the file")
    return net.eval().requires_grad_(False)


def build(comp: Component) -> torch.nn.Module:
    """The component's network with its weights: sizes bounded, shapes checked against the header, then loaded."""
    return load_weights(comp, build_meta(comp))
