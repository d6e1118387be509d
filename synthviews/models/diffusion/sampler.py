"""Stochastic samplers as explicit per-step updates whose fresh noise is an input.

diffusers' schedulers draw their noise inside ``step`` (DDPM, Euler ancestral) and
Euler ancestral keeps a step counter: neither fits a decode that must be a pure,
thread-safe function of the code, nor a trajectory that branches at step s. So the
scheduler is used once, at load, for what it is good at (its timesteps, its
alphas or sigmas, its prediction type and clipping), and each step here is

    x_{i+1} = det_i(x_i, unet(in_scale_i * x_i, t_i)) + noise_coef_i * eps_i

with ``eps_i`` the code's noise for step i. ``det_i`` uses only +, -, * and / of
tensors with Python floats, so every element is rounded the same way whatever
the number of rows it is computed with (this is what makes shared trajectories
exact). tests/test_diffusion.py checks each sampler against the diffusers
scheduler's own ``step`` given the same noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..._util.checks import brief, check_number, error
from ...errors import ConfigError
from .folder import MAX_TRAIN_TIMESTEPS, diffusers_module

SAMPLERS = {"ddpm": "DDPMScheduler", "ddim": "DDIMScheduler", "euler_a": "EulerAncestralDiscreteScheduler"}
DEFAULT_SAMPLER = {v: k for k, v in SAMPLERS.items()}
PREDICTIONS = ("epsilon", "v_prediction", "sample")


@dataclass(frozen=True)
class Step:
    """One update. ``t`` is what the UNet is given; the rest are the update's scalars."""

    t: float
    in_scale: float  # the UNet sees in_scale * x (Euler: 1 / sqrt(sigma^2 + 1); DDPM/DDIM: 1)
    noise_coef: float  # std of the fresh noise added at this step (0: the step adds none)
    a: float  # DDPM/DDIM: alpha_bar_t;  Euler: sigma_from
    b: float  # DDPM/DDIM: alpha_bar_prev; Euler: sigma_down


class Plan:
    """The sampler's steps for ``steps`` inference steps, built from a scheduler config."""

    def __init__(self, scheduler_config: dict, sampler: str, steps: int, eta: float, where: str):
        self.sampler, self.eta = sampler, float(eta)
        cfg = {k: v for k, v in scheduler_config.items() if not k.startswith("_")}
        n_train = cfg.get("num_train_timesteps", 1000)
        if isinstance(n_train, bool) or not isinstance(n_train, int) or not 1 <= n_train <= MAX_TRAIN_TIMESTEPS:
            raise error(f"{where}: num_train_timesteps must be an integer in [1, {MAX_TRAIN_TIMESTEPS:,}], "
                        f"got {brief(n_train)}")
        if not 1 <= steps <= n_train:
            raise error(f"diffusion: steps must be in [1, {n_train}], the num_train_timesteps of {where}, got {steps}")
        try:
            scheduler = getattr(diffusers_module(), SAMPLERS[sampler]).from_config(cfg)
            scheduler.set_timesteps(steps)
        except ConfigError:
            raise
        except Exception as e:  # noqa: BLE001 - diffusers raises many types for a bad config: one line, naming the file
            raise error(f"{where}: diffusers cannot make a {SAMPLERS[sampler]} with {steps} steps from it: {e}") from None
        # what the scheduler class actually used resolves (its defaults for keys the file leaves out, e.g. DDPM's
        # and DDIM's clip_sample=True), not the raw file: the sampler must do what diffusers' step() would
        resolved = scheduler.config
        self.prediction = resolved.get("prediction_type", "epsilon")
        if self.prediction not in PREDICTIONS or (sampler == "euler_a" and self.prediction == "sample"):
            raise error(f"{where}: prediction_type {brief(self.prediction)} is not supported by sampler {sampler}")
        if resolved.get("thresholding"):
            raise error(f"{where}: thresholding (dynamic x0 thresholding) is not supported; set it to false")
        variance = resolved.get("variance_type", "fixed_small")
        if sampler == "ddpm" and variance not in ("fixed_small", "fixed_small_log", "fixed_large"):
            raise error(f"{where}: variance_type {brief(variance)} is not supported by the ddpm sampler "
                        "(fixed_small, fixed_small_log, fixed_large; a learned variance needs its own output)")
        self.clip = None
        if sampler != "euler_a" and resolved.get("clip_sample"):
            self.clip = check_number(resolved.get("clip_sample_range", 1.0), f"{where}: clip_sample_range", 1e-6, 1e6)
        self.init_scale = check_number(float(scheduler.init_noise_sigma), f"{where}: init_noise_sigma", 1e-6, 1e6)
        timesteps = [float(t) for t in scheduler.timesteps.tolist()]
        bad = next((t for t in timesteps if not (0 <= t < n_train and (sampler == "euler_a" or t == int(t)))), None)
        if bad is not None or any(a <= b for a, b in zip(timesteps, timesteps[1:])):
            raise error(f"{where}: the {steps} timesteps diffusers makes from it ({brief(timesteps, 80)}) are not "
                        f"{'' if sampler == 'euler_a' else 'integers '}decreasing in [0, {n_train}); check "
                        "steps_offset and timestep_spacing")
        alpha_bar = scheduler.alphas_cumprod.double()
        if not (torch.isfinite(alpha_bar).all() and (alpha_bar > 0).all() and (alpha_bar < 1).all()
                and (alpha_bar[1:] < alpha_bar[:-1]).all()):
            raise error(f"{where}: its noise schedule is not valid: alphas_cumprod must be finite and strictly "
                        "decreasing in (0, 1) (every beta in (0, 1)); check beta_start, beta_end, beta_schedule, "
                        "trained_betas and rescale_betas_zero_snr")
        if sampler == "euler_a":
            sigmas = [float(v) for v in scheduler.sigmas.double().tolist()]
            if not (all(math.isfinite(v) and v > 0 for v in sigmas[:-1]) and sigmas[-1] == 0
                    and all(a > b for a, b in zip(sigmas, sigmas[1:]))):
                raise error(f"{where}: its Euler sigmas are not finite, positive and decreasing (to 0); check "
                            "the noise schedule")
        self.steps: list[Step] = []
        for i, t in enumerate(timesteps):
            if sampler == "euler_a":
                s_from, s_to = sigmas[i], sigmas[i + 1]
                up = math.sqrt(s_to**2 * (s_from**2 - s_to**2) / s_from**2)
                down = math.sqrt(max(s_to**2 - up**2, 0.0))
                self.steps.append(Step(t, 1.0 / math.sqrt(s_from**2 + 1), up, s_from, down))
                continue
            ti = int(t)
            if sampler == "ddpm":
                prev = int(timesteps[i + 1]) if i + 1 < len(timesteps) else -1
                a_t = float(alpha_bar[ti])
                a_p = float(alpha_bar[prev]) if prev >= 0 else 1.0
                beta = 1 - a_t / a_p
                if ti == 0:
                    coef = 0.0  # diffusers adds noise only for t > 0
                elif variance == "fixed_large":
                    coef = math.sqrt(beta)
                elif prev < 0:
                    # the posterior variance is exactly 0 here (alpha_bar_prev = 1); diffusers clamps it to 1e-20
                    # and adds 1e-10 * eps, which is below float32's resolution for |x| > ~1e-3: no noise, no slot
                    coef = 0.0
                else:
                    coef = math.sqrt(max((1 - a_p) / (1 - a_t) * beta, 1e-20))
            else:  # ddim
                prev = ti - n_train // steps
                a_t = float(alpha_bar[ti])
                a_p = float(alpha_bar[prev]) if prev >= 0 else float(scheduler.final_alpha_cumprod)
                coef = self.eta * math.sqrt(max((1 - a_p) / (1 - a_t) * (1 - a_t / a_p), 0.0))
            self.steps.append(Step(t, 1.0, coef, a_t, a_p))

    @property
    def noisy(self) -> list[int]:
        """Indices of the steps that add fresh noise (the last one usually adds none)."""
        return [i for i, s in enumerate(self.steps) if s.noise_coef > 0]

    def det(self, i: int, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """The noise-free part of step ``i``: state ``x`` and UNet output ``out`` -> the next state's mean."""
        s = self.steps[i]
        if self.sampler == "euler_a":
            sigma = s.a
            if self.prediction == "epsilon":
                x0 = x - out * sigma
            else:  # v_prediction
                x0 = out * (-sigma / (sigma**2 + 1) ** 0.5) + x / (sigma**2 + 1)
            return x + (x - x0) / sigma * (s.b - sigma)
        a_t, a_p = s.a, s.b
        if self.prediction == "epsilon":
            x0 = (x - out * (1 - a_t) ** 0.5) / a_t**0.5
        elif self.prediction == "sample":
            x0 = out
        else:  # v_prediction
            x0 = x * a_t**0.5 - out * (1 - a_t) ** 0.5
        if self.sampler == "ddim":  # the noise direction comes from the unclipped prediction, as diffusers does
            eps = out if self.prediction == "epsilon" else (x - x0 * a_t**0.5) / (1 - a_t) ** 0.5 \
                if self.prediction == "sample" else out * a_t**0.5 + x * (1 - a_t) ** 0.5
            if self.clip is not None:
                x0 = x0.clamp(-self.clip, self.clip)
            return x0 * a_p**0.5 + eps * max(1 - a_p - s.noise_coef**2, 0.0) ** 0.5
        if self.clip is not None:
            x0 = x0.clamp(-self.clip, self.clip)
        beta = 1 - a_t / a_p
        return x0 * (a_p**0.5 * beta / (1 - a_t)) + x * ((1 - beta) ** 0.5 * (1 - a_p) / (1 - a_t))
