"""ViewSampler: sample index -> anchor latent, K positive latents, and their images."""

from __future__ import annotations

import inspect
import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass

import numpy as np
import torch

from ._util.checks import DECODE_BLOCK, MAX_DECODE_BLOCK, check_int
from ._util.device import amp_context, deterministic_algorithms, one_cpu_thread, resolve_device
from .errors import ConfigError
from .latents import Streams, sample_prior
from .models.base import MLVGM
from .policies import Policy, resolve_policy


@dataclass
class ViewBatch:
    """Anchor + K positives for a batch of sample indices.

    ``images`` is float in [0, 1], (B, 1+K, C, H, W), view 0 the anchor, on
    the sampler's device. ``deltas[b, k-1, g]`` is the L2 distance between
    the anchor's and positive k's code of group g in the space the generator
    consumes (``model.group_code``), float64 on CPU, (B, K, G).
    """

    indices: np.ndarray
    anchor: torch.Tensor
    codes: torch.Tensor
    deltas: torch.Tensor
    images: torch.Tensor | None = None


_WORKER = threading.local()  # per decode-pool thread: its torch thread count is fixed at 1


class ViewSampler:
    """Makes views that are a pure function of (model, policy, seed, index).

    ``views`` is K, the number of positives per anchor (each sample has 1+K
    images). Anchors are drawn from the model's prior, noise from the policy;
    both on the CPU from keyed streams, then moved to ``device``, where the
    model is kept.

    Networks are not batch-invariant: a conv or matmul picks its kernel (and
    so its rounding) by batch shape. The generator therefore only ever sees
    fixed, index-aligned blocks: samples ``[b*block, (b+1)*block)`` with
    their 1+K views, always the same tensors of the same shapes, whatever
    indices were asked for; a request is served by decoding the blocks it
    touches and picking its rows. Batch sizes then only group blocks (use
    multiples of ``block`` to waste nothing), and the bytes depend only on
    what :meth:`describe` records under ``decode``. On CPU each block is
    computed by one thread and ``threads`` blocks (default: torch's thread
    count) run at once, so the core count does not change the bytes either.

    ``compile=True`` runs the model's ``decode`` through ``torch.compile``
    (inductor, default mode, whole graph, static shapes): CUDA graphs are
    off (the blocks of a batch keep their outputs) and so is timing-based
    kernel choice (``max-autotune``, and inductor's benchmarking where it has
    a deterministic mode), so the same settings still give the same bytes;
    they differ from eager decoding in the last bits (float rounding), so
    :meth:`decode_settings` records ``compile``. The decode is compiled when
    the sampler is built, on block 0, once per input shape (one: the block's) and grad mode:
    for ``compile_inference`` (default True: :meth:`sample`'s default; ContinuousViews, which
    samples with ``inference=False``, passes False), the other mode compiles once more on its
    first call; an empty request decodes eagerly. A decode that does not compile
    (no C++ compiler on CPU, no triton on CUDA, a graph break) is a
    ConfigError in one line naming the cause, raised before anything is
    written, never a silent fallback to eager, which would make other bytes
    than the manifest says.
    """

    def __init__(self, model: MLVGM, policy: Policy | dict | str | None = None, views: int = 1, seed: int = 0,
                 device: str | torch.device | None = None, amp: str | None = None, block: int = DECODE_BLOCK,
                 threads: int | None = None, compile: bool = False, compile_inference: bool = True):
        if isinstance(views, bool) or not isinstance(views, int) or views < 1:
            raise ConfigError(f"views (positives per anchor) must be an integer >= 1, got {views!r}")
        check_int(block, "decode block (anchors per generator call)", 1, MAX_DECODE_BLOCK)
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise ConfigError(f"decode threads must be an integer >= 1 or None, got {threads!r}")
        if not isinstance(compile, bool):
            raise ConfigError(f"compile must be true or false, got {compile!r}")
        self.block, self.threads, self._pool = block, threads, None
        self.policy = resolve_policy(policy, model)
        self.streams = Streams(seed)
        self.seed, self.views = seed, views
        self.amp = None if amp in (None, "none") else amp
        self.device = model.device if device is None else resolve_device(device)
        self.model = model.to(self.device).eval()
        amp_context(self.device, amp)  # validate early
        self.compile, self._compiled, self._warm = bool(compile), None, set()
        if self.compile and getattr(model, "compile_refusal", None):
            raise ConfigError(f"compile: the {model.family} decode is not compiled: {model.compile_refusal}")
        if self.compile:  # compile now: a failure surfaces before a caller writes anything
            self._run_blocks([0], decode=True, inference=bool(compile_inference))

    def latents(self, indices) -> ViewBatch:
        """Anchors, composed codes (B, 1+K, ...) and deltas, without decoding."""
        return self._gather(indices, decode=False, inference=False)

    def sample(self, indices, inference: bool = True, out: torch.Tensor | None = None) -> ViewBatch:
        """Latents and images for ``indices``: images (B, 1+K, C, H, W) in [0, 1] on the device.

        Runs under ``torch.inference_mode``; ``inference=False`` uses ``no_grad`` instead,
        for views that later feed a model being trained (inference tensors cannot).
        ``out``: a float32 tensor of that shape on the device to write the images into (and
        return as them), e.g. a reused buffer: whole blocks in order are written by the
        threads that decode them, without a batch-sized copy or allocation. Same values.
        """
        if out is not None:
            shape = (len(np.asarray(indices).reshape(-1)), self.views + 1, *self.model.image_shape)
            device = out.device.type == self.device.type and self.device.index in (None, out.device.index)
            if tuple(out.shape) != shape or out.dtype != torch.float32 or not device:
                raise ValueError(f"out must be a float32 tensor of shape {shape} on {self.device}, got "
                                 f"{out.dtype} {tuple(out.shape)} on {out.device}")
        return self._gather(indices, decode=True, inference=inference, out=out)

    def _gather(self, indices, decode: bool, inference: bool, out: torch.Tensor | None = None) -> ViewBatch:
        """Serve ``indices`` (any order, repeats allowed) from the whole blocks they fall in."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and idx.min() < 0:
            raise ConfigError(f"sample indices must be >= 0, got {int(idx.min())}")
        blocks, slot = np.unique(idx // self.block, return_inverse=True)
        order = slot.reshape(-1) * self.block + idx % self.block
        # whole blocks in order (what generate and ContinuousViews ask for): the blocks as they are, no
        # gather copy (at 128 px a batch's images are ~40 MB: a fresh mapping, page-faulted in, per copy)
        every_row = order.size == len(blocks) * self.block and np.array_equal(order, np.arange(order.size))
        into = out if every_row else None  # each block's images go straight to their rows of out
        parts = self._run_blocks([int(b) for b in blocks], decode, inference, into)
        rows = torch.from_numpy(order)

        def pick(name: str) -> torch.Tensor:
            if name == "images" and into is not None:
                return into  # the blocks wrote their rows
            whole = torch.cat([getattr(p, name) for p in parts]) if len(parts) != 1 else getattr(parts[0], name)
            if name == "images" and out is not None:
                self._check_images(whole, len(whole) * out.shape[1])
                return out.copy_(whole[rows.to(out.device)])
            if not every_row:
                return whole[rows.to(whole.device)]
            # made here, outside inference mode: what a caller gets is never an inference tensor
            return whole.clone() if whole.is_inference() else whole

        if not parts:
            with torch.no_grad():
                return self._block_of(idx, decode, out=out)  # empty request: the right shapes, nothing decoded
        return ViewBatch(indices=idx, anchor=pick("anchor"), codes=pick("codes"), deltas=pick("deltas"),
                         images=pick("images") if decode else None)

    def _run_blocks(self, blocks: list[int], decode: bool, inference: bool,
                    out: torch.Tensor | None = None) -> list[ViewBatch]:
        """Each block on one thread: on CPU, blocks run in parallel on single-threaded workers.

        A multi-threaded CPU kernel may split its work (and so its rounding) by the
        thread count; one thread per block keeps the bytes the same on any machine
        while the blocks of a batch still use every core. torch's intra-op thread
        count is process-wide, so it is 1 while the blocks decode and restored after
        (torch work in other threads meanwhile runs single-threaded too). With ``out``,
        block j of the list writes its images into rows j*block ... of ``out``.
        """
        slots = {b: j for j, b in enumerate(blocks)}

        def run(block: int, first_compiled: bool = False) -> ViewBatch:
            rows = None if out is None else out[slots[block] * self.block:(slots[block] + 1) * self.block]
            # grad mode is thread-local: set it in the thread that computes
            with torch.inference_mode() if inference else torch.no_grad(), deterministic_algorithms(self.device):
                idx = np.arange(block * self.block, (block + 1) * self.block, dtype=np.int64)
                return self._block_of(idx, decode, first_compiled, rows)

        # The first compiled call of a grad mode compiles: alone, so no two threads compile at once.
        cold = decode and self.compile and bool(blocks) and inference not in self._warm
        head: list[ViewBatch] = []
        if self.device.type != "cpu":
            if cold:
                head = [run(blocks[0], True)]
                self._warm.add(inference)
            return head + [run(b) for b in blocks[len(head):]]
        def run_single(block: int, first_compiled: bool = False) -> ViewBatch:
            # torch reads the intra-op count once per thread: each worker fixes its own at 1 on its first
            # block (inside one_cpu_thread, so it never resets the count other threads start with).
            if not getattr(_WORKER, "single", False):
                torch.set_num_threads(1)
                _WORKER.single = True
            return run(block, first_compiled)

        pool = self._cpu_pool()  # sized by torch's thread count before it is lowered
        with one_cpu_thread(self.device):  # compiled CPU kernels are generated for this one thread too
            if cold:
                head = [pool.submit(run_single, blocks[0], True).result()]
                self._warm.add(inference)
            futures = [pool.submit(run_single, b) for b in blocks[len(head):]]
            wait(futures)  # all of them, also when one fails: none may still be writing into ``out`` after
            return head + [f.result() for f in futures]

    def __getstate__(self):  # picklable for spawned DataLoader workers: pool and compiled decode are made again there
        return {**self.__dict__, "_pool": None, "_compiled": None, "_warm": set()}

    def _cpu_pool(self) -> ThreadPoolExecutor:
        threads = self.threads or torch.get_num_threads()
        if self._pool is None or self._pool[0] != (os.getpid(), threads):  # new after a fork or a thread change
            if self._pool is not None and self._pool[0][0] == os.getpid():
                self._pool[1].shutdown(wait=False)
            pool = ThreadPoolExecutor(threads, thread_name_prefix="synthviews-decode")
            self._pool = ((os.getpid(), threads), pool)
        return self._pool[1]

    def _block_of(self, idx: np.ndarray, decode: bool, first_compiled: bool = False,
                  out: torch.Tensor | None = None) -> ViewBatch:
        model = self.model
        anchor = sample_prior(model.prior, self.streams, idx, model.latent_dim)
        codes = [model.compose(anchor.to(self.device), {})]
        for view in range(1, self.views + 1):
            noise = self.policy.noise(model, anchor, self.streams, idx, view)
            codes.append(model.compose(anchor.to(self.device), {g: n.to(self.device) for g, n in noise.items()}))
        codes = torch.stack(codes, dim=1)  # (S, 1+K, ...)
        batch = ViewBatch(indices=idx, anchor=anchor, codes=codes, deltas=self._deltas(codes))
        if decode:
            with amp_context(self.device, self.amp):
                flat = codes.flatten(0, 1)  # (S*(1+K), ...)
                if self.compile and len(idx):
                    images = self._compiled_decode(flat, first_compiled)
                else:  # the model may share work between an anchor and its positives; same bits as decode(flat)
                    views = getattr(model, "decode_views", None)  # duck-typed models without the hook: decode
                    images = views(codes).flatten(0, 1) if views else model.decode(flat)  # (S*(1+K), C, H, W)
            if out is not None:  # clamped straight into the caller's rows: one pass, nothing allocated
                self._check_images(images, out.shape[0] * out.shape[1])
                batch.images = out
                torch.clamp(images.float().reshape(out.shape), 0, 1, out=out)
            else:
                images = images.float().clamp_(0, 1)
                batch.images = images.view(len(idx), self.views + 1, *images.shape[1:])
        return batch

    def _check_images(self, images: torch.Tensor, count: int) -> None:
        """Decoded images must be what the model declares before they are written into a buffer."""
        shape, declared = tuple(images.shape[-3:]), tuple(self.model.image_shape)
        if shape != declared or images.numel() != count * math.prod(declared):
            raise ConfigError(f"the {self.model.family} model decoded {images.numel() // max(1, math.prod(shape))} "
                              f"images of shape {shape} where {count} of its image_shape {declared} were expected")

    def _compiled_decode(self, codes: torch.Tensor, first: bool) -> torch.Tensor:
        if self._compiled is None:
            self._compiled = compile_decode(self.model)
        if not first:
            return self._compiled(codes)
        try:
            return self._compiled(codes)
        except Exception as e:  # noqa: BLE001 - any failure of the compiling call: one line, then the cause
            cause = (str(e).strip().splitlines() or [""])[0][:300]
            raise ConfigError(f"compile: torch.compile of the {self.model.family} decode failed on {self.device.type} "
                              f"({type(e).__name__}: {cause}); run without compile (CLI: drop --compile), or "
                              f"install what it needs (a C++ compiler on CPU, triton on CUDA)") from e

    def _deltas(self, codes: torch.Tensor) -> torch.Tensor:
        out = torch.empty(codes.shape[0], self.views, len(self.model.groups), dtype=torch.float64)
        for g, group in enumerate(self.model.groups):
            per_view = [self.model.group_code(codes[:, v], group.name).detach().to("cpu", torch.float64)
                        for v in range(self.views + 1)]
            for v in range(1, self.views + 1):
                out[:, v - 1, g] = (per_view[v] - per_view[0]).pow(2).sum(dim=1).sqrt()
        return out

    def describe(self) -> dict:
        """What a manifest records about how views were made."""
        return {"model": self.model.describe(), "policy": self.policy.to_dict(), "policy_id": self.policy.policy_id,
                "seed": self.seed, "views": self.views, "amp": self.amp, "decode": self.decode_settings()}

    def decode_settings(self) -> dict:
        """What the bytes still depend on besides (model, policy, seed, index): a resume must match it."""
        cpu = torch.backends.cpu.get_cpu_capability() if self.device.type == "cpu" else None  # SIMD kernels differ
        settings = {"block": self.block, "device": self.device.type, "cpu_kernels": cpu, "amp": self.amp or "none",
                    "dtype": str(next(iter(self.model.parameters()), torch.empty(0)).dtype).replace("torch.", ""),
                    "torch": torch.__version__}
        if self.compile:  # absent when off: eager settings (and manifests written before the option) are unchanged
            settings["compile"] = COMPILE_SETTING
        return settings


COMPILE_SETTING = "inductor"  # what decode_settings records: torch.compile, inductor backend, default mode


def compile_decode(model: MLVGM):
    """``torch.compile(model.decode)`` as ViewSampler uses it: whole graph, static shapes, no CUDA
    graphs, no timing-based kernel choice; recompiles counted per sampler where torch can."""
    kwargs: dict = {"dynamic": False, "fullgraph": True}  # fullgraph: a graph break or recompile limit raises
    import torch._inductor.config as inductor_config

    if hasattr(inductor_config, "deterministic"):  # skip on-device benchmarking that changes numerics
        kwargs["options"] = {"deterministic": True}
    if "isolate_recompiles" in inspect.signature(torch.compile).parameters:
        kwargs["isolate_recompiles"] = True  # several samplers of one model class: separate limits
    return torch.compile(model.decode, **kwargs)

