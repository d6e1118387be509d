"""Tiny random-weight diffusers pipeline folders for the tests (tests/test_diffusion.py, walkers): seconds to
build, saved with ``save_pretrained`` as a user's folder would be."""

import json
from pathlib import Path

import torch

UNET = dict(sample_size=16, block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8,
            down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"))
CODER = dict(down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
             up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), block_out_channels=(8, 16),
             layers_per_block=1, norm_num_groups=4, latent_channels=2, sample_size=16)


def make_folder(root: Path, kind: str = "pixel", scheduler: str = "DDPMScheduler", seed: int = 0,
                train_steps: int = 100, channels: int = 1) -> Path:
    """A diffusers pipeline folder with random weights: pixel (``channels``, 16 px), vq / kl (2-channel 8 px
    latents decoded to 1 x 16 x 16), or cond (pixel, 3 classes)."""
    import diffusers

    torch.manual_seed(seed)
    folder = root / kind
    index = {"_class_name": "DDPMPipeline", "_diffusers_version": diffusers.__version__,
             "scheduler": ["diffusers", scheduler], "unet": ["diffusers", "UNet2DModel"]}
    unet_kwargs = dict(UNET, in_channels=channels, out_channels=channels)
    if kind in ("vq", "kl"):
        unet_kwargs.update(in_channels=2, out_channels=2, sample_size=8)
        if kind == "vq":
            coder = diffusers.VQModel(in_channels=1, out_channels=1, num_vq_embeddings=16, vq_embed_dim=2, **CODER)
            index["vqvae"] = ["diffusers", "VQModel"]
        else:
            coder = diffusers.AutoencoderKL(in_channels=1, out_channels=1, **CODER)
            index["vae"] = ["diffusers", "AutoencoderKL"]
        coder.save_pretrained(folder / ("vqvae" if kind == "vq" else "vae"))
    if kind == "cond":
        unet_kwargs["num_class_embeds"] = 3
    unet = diffusers.UNet2DModel(**unet_kwargs)
    with torch.no_grad():  # random init gives near-zero outputs; make the UNet's output matter
        for p in unet.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    unet.save_pretrained(folder / "unet")
    getattr(diffusers, scheduler)(num_train_timesteps=train_steps).save_pretrained(folder / "scheduler")
    (folder / "model_index.json").write_text(json.dumps(index))
    return folder
