"""The parts every trainer of a built-in generator shares: output folder, atomic checkpoints, resume, the loop.

A trainer object (the GAN's and the DDPM's ``Trainer``) has ``step``, ``nimg``,
``elapsed``, ``train_step() -> dict of floats`` and ``save(path)``; :func:`run`
drives it to a number of steps with periodic checkpoints (by wall-clock
minutes), a time limit that stops with a checkpoint (resumed later, exactly),
a progress bar and ``log.jsonl`` lines of the mean statistics every few steps.
Everything here is about files and time, nothing about the model: the step's
maths stays in the trainer, so a resumed run is bit-identical to an
uninterrupted one whatever the checkpoint schedule.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, Callable

import torch

from ..errors import ConfigError
from ..models.weights import read_torch

CHECKPOINT = "checkpoint.pt"
LOG = "log.jsonl"


class RunState:
    """What both trainers keep besides their networks: counters, the run's goal, the seeded RNG and the data order.

    A subclass sets ``opts`` (with ``batch``) and ``reals``, calls
    :meth:`start_run`, builds ``state_dict()`` with :meth:`run_state` and loads
    one with :meth:`load_run_state` after its networks: one copy of the data
    order logic, so both trainers draw their batches the same way.
    """

    def start_run(self, seed: int, target_steps: int) -> None:
        """A new run: the training RNG (seeded ``seed``), zero counters and the first data order (its first draw)."""
        self.rng = torch.Generator().manual_seed(seed)
        self.step, self.nimg, self.elapsed = 0, 0, 0.0
        self.target_steps = target_steps  # the run's goal, kept in checkpoints so --resume needs no --steps
        self.perm = torch.randperm(len(self.reals), generator=self.rng)
        self.pos = 0

    def next_reals(self) -> torch.Tensor:
        """The next batch in the data order; a new order from the training RNG when this one runs out."""
        b = self.opts.batch
        if self.pos + b > len(self.perm):
            self.perm, self.pos = torch.randperm(len(self.reals), generator=self.rng), 0
        idx = self.perm[self.pos:self.pos + b]
        self.pos += b
        return self.reals[idx]

    def run_state(self, fmt: str, networks: dict) -> dict:
        """The checkpoint: format, options, counters, then ``networks`` (name -> state dict), then RNG and order."""
        return {"format": fmt, "options": asdict(self.opts), "step": self.step, "target_steps": self.target_steps,
                "nimg": self.nimg, "elapsed": self.elapsed, **networks, "rng": self.rng.get_state(),
                "perm": self.perm.clone(), "pos": self.pos}

    def load_run_state(self, state: dict, default_steps: int) -> None:
        self.rng.set_state(state["rng"])
        self.perm, self.pos = state["perm"].clone(), int(state["pos"])
        self.step, self.nimg, self.elapsed = int(state["step"]), int(state["nimg"]), float(state["elapsed"])
        self.target_steps = int(state.get("target_steps", default_steps))

    def save(self, path) -> None:
        save_atomic(self.state_dict(), path)


def save_atomic(state: dict, path) -> None:
    """``torch.save`` into a temporary file beside ``path``, then rename: a crash never leaves half a checkpoint."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def read_checkpoint(path, fmt: str, verb: str) -> dict:
    """The state dict of a ``verb`` checkpoint of format ``fmt``, read without running code from the file."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{verb}: checkpoint {path} does not exist; nothing to resume "
                          "(leave out --resume to start a new run)")
    state = read_torch(path, f"{verb} checkpoint")
    if not isinstance(state, dict) or state.get("format") != fmt:
        raise ConfigError(f"{verb}: {path} is not a {verb} checkpoint (format {fmt})")
    return state


def prepare_out(out, verb: str) -> Path:
    """The run directory, created if needed; a ConfigError if it is a file or not writable."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{verb}: output {out} exists and is not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"{verb}: cannot create output directory {out}: {e.strerror or e}") from None
    if not os.access(out, os.W_OK):
        raise ConfigError(f"{verb}: output directory {out} is not writable")
    return out


def check_run_args(verb: str, steps, checkpoint_minutes, log_every=1, max_minutes=None) -> None:
    """The arguments of a ``train`` call that are not the trainer's options."""
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 0):
        raise ConfigError(f"{verb}: steps must be an integer >= 0, got {steps!r}")
    if not checkpoint_minutes > 0:
        raise ConfigError(f"{verb}: checkpoint_minutes must be > 0, got {checkpoint_minutes!r}")
    if isinstance(log_every, bool) or not isinstance(log_every, int) or log_every < 1:
        raise ConfigError(f"{verb}: log_every must be an integer >= 1, got {log_every!r}")
    if max_minutes is not None and (isinstance(max_minutes, bool) or not isinstance(max_minutes, (int, float))
                                    or not math.isfinite(max_minutes) or max_minutes <= 0):
        raise ConfigError(f"{verb}: max_minutes must be a finite number > 0, got {max_minutes!r}")


def preset_options(verb: str, cls, presets: dict, name: str, overrides: dict):
    """``cls`` (a trainer's options) from preset ``name`` with ``overrides``, validated; unknown names refused."""
    if name not in presets:
        raise ConfigError(f"{verb}: unknown preset {name!r}; use one of {', '.join(presets)}")
    unknown = sorted(set(overrides) - {f.name for f in fields(cls)})
    if unknown:
        raise ConfigError(f"{verb}: unknown option(s) {', '.join(unknown)}")
    return cls(**{**presets[name], **overrides}).validate()


def checkpoint_path(out, resume) -> Path:
    """Where ``resume`` (True: ``out/checkpoint.pt``, or a path) points."""
    return Path(out) / CHECKPOINT if resume is True else Path(resume)


def open_run(verb: str, fmt: str, out, options, resume, stored: Callable[[dict, Path], Any],
             check_exports: Callable[[Path], Path | None]) -> tuple[Path, Any, dict | None, Path | None]:
    """What both trainers' ``train()`` does before it builds a trainer, in an order that leaves nothing behind
    on a refusal: read a resumed run (``stored(state, path)``: its options; given ``options`` must equal them),
    then ``check_exports(out)`` (the trainer's own export checks), then the run directory (which a new run
    refuses if it holds a checkpoint). Returns ``(out, options, state, export)``: ``state`` is None for a new
    run, ``options`` None if none were given, ``export`` what ``check_exports`` returned."""
    out, state = Path(out), None
    if resume:
        path = checkpoint_path(out, resume)
        state = read_checkpoint(path, fmt, verb)
        kept = stored(state, path)
        if options is not None and options != kept:
            diff = [f.name for f in fields(kept) if getattr(options, f.name) != getattr(kept, f.name)]
            raise ConfigError(f"{verb}: options differ from the checkpoint's ({', '.join(diff)}); "
                              "a resumed run keeps its options, leave them out")
        options = kept
    export = check_exports(out)
    out = prepare_out(out, verb)
    if not resume and (out / CHECKPOINT).exists():
        raise ConfigError(f"{verb}: {out} already holds a checkpoint; pass --resume to continue it "
                          "or choose another --out")
    return out, options, state, export


def run(trainer, out: Path, steps: int, checkpoint: Callable[[], None], *, verb: str, postfix: dict[str, str],
        checkpoint_minutes: float, max_minutes: float | None, log_every: int, progress: bool) -> None:
    """Train ``trainer`` up to ``steps``; ``checkpoint()`` every ``checkpoint_minutes``, at the end and on timeout.

    ``postfix``: progress-bar label -> statistic shown. A non-finite statistic
    saves the state to ``checkpoint-nonfinite.pt`` and raises.
    """
    from tqdm import tqdm

    start = last_ckpt = time.monotonic()
    base_elapsed = trainer.elapsed
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    window_t, window_step = time.monotonic(), trainer.step
    with tqdm(total=steps, initial=min(trainer.step, steps), disable=not progress, unit="step",
              dynamic_ncols=True, desc=verb) as bar, open(out / LOG, "a") as log:
        if trainer.step >= steps:
            return
        while trainer.step < steps:
            stats = trainer.train_step()
            for k, v in stats.items():
                if not math.isfinite(v):
                    trainer.save(out / "checkpoint-nonfinite.pt")
                    raise RuntimeError(f"{verb}: {k} became {v} at step {trainer.step}; "
                                       f"the state is in {out / 'checkpoint-nonfinite.pt'}")
                sums[k] = sums.get(k, 0.0) + v
                counts[k] = counts.get(k, 0) + 1
            now = time.monotonic()
            trainer.elapsed = base_elapsed + now - start
            bar.update(1)
            if trainer.step % log_every == 0 or trainer.step == steps:
                means = {k: sums[k] / counts[k] for k in sums}
                rate = (trainer.step - window_step) / max(now - window_t, 1e-9)
                log.write(json.dumps({"step": trainer.step, "kimg": trainer.nimg / 1000,
                                      "elapsed_s": round(trainer.elapsed, 1), "steps_per_s": round(rate, 3),
                                      **{k: round(v, 5) for k, v in means.items()}}) + "\n")
                log.flush()
                bar.set_postfix({label: f"{means[key]:.3f}" for label, key in postfix.items() if key in means},
                                refresh=False)
                sums.clear(), counts.clear()
                window_t, window_step = now, trainer.step
            out_of_time = max_minutes is not None and now - start >= max_minutes * 60
            if now - last_ckpt >= checkpoint_minutes * 60 or trainer.step == steps or out_of_time:
                checkpoint()
                last_ckpt = time.monotonic()
            if out_of_time:
                break
