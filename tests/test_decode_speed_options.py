"""Decode speed options: bf16 autocast against the fp32 compat goldens, and ViewSampler(compile=True).

Stated tolerances (images in [0, 1]; 1/255 = 0.0039):

- bf16 autocast on CPU vs the fp32 goldens: StyleGAN2 mean |d| <= 0.005 (about 1.3/255),
  max |d| <= 0.05; BigBiGAN (tanh output, 41 spectral-norm layers) mean |d| <= 0.01,
  max |d| <= 0.2. Measured on the tiny goldens: StyleGAN2 mean 0.0021 / max 0.024,
  BigBiGAN mean 0.0060 / max 0.12.
- compile=True vs eager on CPU: max |d| <= 1e-5 (measured: below 1e-6); the bytes may
  still differ by one level where a value sits on a rounding edge, which is why the
  manifest records ``decode.compile``.

Real inductor compiles take 25 s to minutes on a small CPU, so those tests are slow;
the fast ones check the plumbing with a stand-in for ``compile_decode`` and that every
built-in family traces as one graph (dynamo with the ``eager`` backend: no code generation).
"""

import pickle

import numpy as np
import pytest
import torch

import synthviews as sv
import synthviews.views as views_module
from synthviews._util.device import amp_context
from synthviews.errors import ConfigError
from synthviews.latents import Streams, sample_prior
from synthviews.models.stylegan2.model import PostProcess
from synthviews.views import ViewSampler

CPU = torch.device("cpu")
COMPILE_TOL = 1e-5
BF16_TOL = {"stylegan2": (0.005, 0.05), "bigbigan": (0.01, 0.2)}  # (mean |d|, max |d|)


def _errors(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    d = (a.float() - b.float()).abs()
    return d.mean().item(), d.max().item()


# --- bf16 autocast against the compat goldens ----------------------------------------

@pytest.mark.parametrize("n", [1, 3])  # tiny2 decodes as tiny1 with force_fp32 (the default)
def test_bf16_stylegan2_within_tolerance_of_the_fp32_golden(compat_dir, n):
    d = compat_dir / "stylegan2"
    model = sv.load_model("stylegan2", path=d / f"tiny{n}_state_dict.pt", config=d / f"tiny{n}_config.json")
    gold = torch.load(d / f"tiny{n}_golden.pt", weights_only=True)
    ref = PostProcess()(gold["img_psi1_const"])
    with torch.no_grad():
        ws = model.compose(gold["z"], {})
        assert _errors(model.decode(ws), ref)[1] <= 1e-4  # fp32 is the golden
        with amp_context(CPU, "bf16"):  # what ViewSampler(amp="bf16") wraps decode in
            fast = model.decode(ws)
    mean, worst = _errors(fast, ref)
    assert fast.dtype == torch.float32
    assert mean <= BF16_TOL["stylegan2"][0] and worst <= BF16_TOL["stylegan2"][1], (mean, worst)
    assert worst > 1e-3  # it really ran in bf16


def test_bf16_bigbigan_within_tolerance_of_the_fp32_golden(compat_dir):
    d = compat_dir / "bigbigan"
    model = sv.load_model("bigbigan", path=d / "tiny_state_dict.pt")
    gold = torch.load(d / "tiny_golden.pt", weights_only=True)
    ref = ((gold["img"] + 1) / 2).clamp(0, 1)
    with torch.no_grad(), amp_context(CPU, "bf16"):
        fast = model.decode(gold["z"])
    mean, worst = _errors(fast, ref)
    assert mean <= BF16_TOL["bigbigan"][0] and worst <= BF16_TOL["bigbigan"][1], (mean, worst)
    assert worst > 1e-3


def test_bf16_sampler_views_within_tolerance_of_fp32():
    model = sv.load_model("digits")
    fp32 = ViewSampler(model, views=2, seed=3).sample(range(32)).images
    bf16 = ViewSampler(model, views=2, seed=3, amp="bf16").sample(range(32)).images
    mean, worst = _errors(bf16, fp32)
    assert mean <= BF16_TOL["stylegan2"][0] and worst <= BF16_TOL["stylegan2"][1], (mean, worst)
    assert 1e-3 < worst


# --- compile: plumbing, with a stand-in compiler ----------------------------------------

class FakeCompiler:
    """Stands in for compile_decode: eager decode, counting compiles and calls."""

    def __init__(self, fail: BaseException | None = None):
        self.compiles, self.calls, self.fail = 0, [], fail

    def __call__(self, model):
        self.compiles += 1

        def decode(codes):
            self.calls.append((tuple(codes.shape), torch.is_inference_mode_enabled()))
            if self.fail is not None:
                raise self.fail
            return model.decode(codes)

        return decode


def test_compile_plumbing_same_views_recorded_and_compiled_up_front(monkeypatch, toy16):
    fake = FakeCompiler()
    monkeypatch.setattr(views_module, "compile_decode", fake)
    sampler = ViewSampler(toy16, views=2, seed=1, block=4, compile=True)
    assert fake.compiles == 1 and fake.calls == [((12, 20), True)]  # block 0 decoded at construction
    eager = ViewSampler(toy16, views=2, seed=1, block=4)
    assert torch.equal(sampler.sample(range(3, 13)).images, eager.sample(range(3, 13)).images)
    assert {shape for shape, _ in fake.calls} == {(12, 20)}  # only ever the block's shape
    assert sampler.decode_settings() == {**eager.decode_settings(), "compile": "inductor"}
    assert "compile" not in eager.decode_settings()  # eager manifests are as before
    assert sampler.describe()["decode"]["compile"] == "inductor"
    n = len(fake.calls)
    assert sampler.sample([]).images.shape == (0, 3, 3, 16, 16) and len(fake.calls) == n  # empty: eager
    sampler.sample(range(8), inference=False)  # the other grad mode: compiled on a first block alone
    assert fake.calls[n] == ((12, 20), False) and fake.compiles == 1


def test_continuous_views_warm_the_grad_mode_they_decode_in(monkeypatch, toy16):
    """ContinuousViews samples with inference=False (its views feed training): that graph is the one
    compiled up front, and iterating compiles nothing more (the inference-mode one was built for nothing)."""
    from synthviews.data import ContinuousViews

    fake = FakeCompiler()
    monkeypatch.setattr(views_module, "compile_decode", fake)
    ds = ContinuousViews(toy16, crops=2, batch_size=4, epoch_samples=8, t_x=None, compile=True, prefetch=0)
    assert ds.sampler._warm == {False} and [mode for _, mode in fake.calls] == [False]
    list(ds)
    assert ds.sampler._warm == {False} and {mode for _, mode in fake.calls} == {False}


def test_compile_sampler_pickles_without_its_compiled_decode(monkeypatch, toy16):
    fake = FakeCompiler()
    monkeypatch.setattr(views_module, "compile_decode", fake)
    sampler = ViewSampler(toy16, views=1, block=4, compile=True)
    clone = pickle.loads(pickle.dumps(sampler))  # a spawned DataLoader worker
    assert clone._compiled is None and clone._warm == set()
    assert torch.equal(clone.sample(range(5)).images, sampler.sample(range(5)).images)
    assert fake.compiles == 2  # compiled again in the copy


def test_a_decode_that_does_not_compile_is_one_config_error(monkeypatch, toy16):
    monkeypatch.setattr(views_module, "compile_decode",
                        FakeCompiler(RuntimeError("InductorError: no working C++ compiler found\nlong trace")))
    with pytest.raises(ConfigError, match=r"compile: torch.compile of the toy decode failed on cpu \(RuntimeError: "
                                          r"InductorError: no working C\+\+ compiler found\); run without") as e:
        ViewSampler(toy16, views=1, block=4, compile=True)
    assert "\n" not in str(e.value)


def test_compile_argument_is_checked(toy16):
    for bad in ("yes", 1, None):
        with pytest.raises(ConfigError, match="compile must be true or false"):
            ViewSampler(toy16, compile=bad)


def test_compile_options(monkeypatch, toy16):
    seen = {}
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: seen.update(kwargs) or fn)
    views_module.compile_decode(toy16)
    assert seen["dynamic"] is False and seen["fullgraph"] is True
    assert "mode" not in seen  # default mode: no CUDA graphs, no max-autotune


@pytest.mark.parametrize("family", ["toy", "digits", "stylegan2", "bigbigan"])
def test_every_builtin_decode_traces_as_one_graph(family, compat_dir):
    """What compile=True needs from a model: no graph break (fullgraph=True would raise)."""
    torch._dynamo.reset()
    if family == "stylegan2":
        d = compat_dir / "stylegan2"
        model = sv.load_model("stylegan2", path=d / "tiny1_state_dict.pt", config=d / "tiny1_config.json")
    elif family == "bigbigan":
        model = sv.load_model("bigbigan", path=compat_dir / "bigbigan" / "tiny_state_dict.pt")
    else:
        model = sv.load_model(family, **({"resolution": 16} if family == "toy" else {}))
    traced = torch.compile(model.decode, backend="eager", fullgraph=True, dynamic=False)
    z = sample_prior(model.prior, Streams(0), np.arange(2), model.latent_dim)
    with torch.inference_mode():
        code = model.compose(z, {})
        a, b = traced(code), model.decode(code)
    assert _errors(a, b)[1] <= COMPILE_TOL
    torch._dynamo.reset()


# --- compile: real inductor (slow) -----------------------------------------------------

@pytest.mark.slow
def test_compiled_views_match_eager_toy(toy16):
    compiled = ViewSampler(toy16, views=2, seed=5, block=4, compile=True).sample(range(10)).images
    eager = ViewSampler(toy16, views=2, seed=5, block=4).sample(range(10)).images
    assert _errors(compiled, eager)[1] <= COMPILE_TOL


@pytest.mark.slow
def test_compiled_views_match_the_stylegan2_golden(compat_dir):
    d = compat_dir / "stylegan2"
    model = sv.load_model("stylegan2", path=d / "tiny1_state_dict.pt", config=d / "tiny1_config.json")
    gold = torch.load(d / "tiny1_golden.pt", weights_only=True)
    sampler = ViewSampler(model, views=1, block=4, compile=True)  # blocks of 4 x 2 views: the golden's 8 rows
    with torch.inference_mode():
        img = sampler._compiled(model.compose(gold["z"], {}))  # the compiled decode on the golden codes
    assert _errors(img, PostProcess()(gold["img_psi1_const"]))[1] <= 1e-4
    eager = ViewSampler(model, views=1, block=4)
    assert _errors(sampler.sample(range(6)).images, eager.sample(range(6)).images)[1] <= COMPILE_TOL


# --- CLI -------------------------------------------------------------------------------

def test_cli_preview_compile_and_its_failure_line(monkeypatch, tmp_path, capsys):
    from synthviews.cli import main

    fake = FakeCompiler()
    monkeypatch.setattr(views_module, "compile_decode", fake)
    args = ["preview", "--model", "toy", "--model-opt", "resolution=16", "--samples", "2", "--views", "1",
            "--device", "cpu", "--compile"]
    assert main(args + ["--out", str(tmp_path / "a.png")]) == 0 and fake.compiles == 1
    monkeypatch.setattr(views_module, "compile_decode", FakeCompiler(RuntimeError("no C++ compiler")))
    assert main(args + ["--out", str(tmp_path / "b.png")]) != 0
    err = capsys.readouterr().err.strip()
    assert "compile: torch.compile of the toy decode failed" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "b.png").exists()


def test_cli_generate_passes_compile_only_when_asked(monkeypatch, tmp_path):
    import synthviews.store.writer as writer
    from synthviews.cli import main

    seen = []
    monkeypatch.setattr(writer, "generate", lambda *a, **kw: seen.append(kw))
    common = ["generate", "--model", "toy", "--samples", "1", "--device", "cpu", "--out", str(tmp_path / "ds")]
    main(common + ["--compile"])
    main(common)
    assert seen[0]["compile"] is True and "compile" not in seen[1]


@pytest.mark.slow
def test_compiled_views_match_the_bigbigan_golden(compat_dir):
    d = compat_dir / "bigbigan"
    model = sv.load_model("bigbigan", path=d / "tiny_state_dict.pt")
    gold = torch.load(d / "tiny_golden.pt", weights_only=True)
    sampler = ViewSampler(model, views=1, block=4, compile=True)  # 4 x 2 views: the golden's 8 codes
    with torch.inference_mode():
        img = sampler._compiled(gold["z"])
    assert _errors(img, ((gold["img"] + 1) / 2).clamp(0, 1))[1] <= 1e-4
