import hashlib
import subprocess
import sys

import pytest
from PIL import Image

from synthviews.cli import main


def _run(*args):
    return subprocess.run([sys.executable, "-m", "synthviews", *args], capture_output=True, text=True)


def test_preview_writes_a_valid_png_byte_identical_across_runs(tmp_path):
    outs = []
    for name in ("a.png", "b.png"):
        out = tmp_path / name
        assert main(["preview", "--model", "toy", "--samples", "3", "--views", "2", "--seed", "0",
                     "--device", "cpu", "--out", str(out)]) == 0
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]
    with Image.open(tmp_path / "a.png") as im:
        im.verify()
    with Image.open(tmp_path / "a.png") as im:
        assert im.format == "PNG" and im.size == (2 + 3 * 66, 2 + 3 * 66)  # 3 columns (anchor + 2), 3 rows
    main(["preview", "--samples", "3", "--views", "2", "--seed", "1", "--out", str(tmp_path / "c.png")])
    assert hashlib.sha256((tmp_path / "c.png").read_bytes()).digest() != hashlib.sha256(outs[0]).digest()


def test_preview_with_a_policy_file_and_model_option(tmp_path):
    policy = tmp_path / "p.yaml"
    policy.write_text("kind: gaussian\ngroups:\n  color: 1.0\n")
    out = tmp_path / "g.png"
    assert main(["preview", "--model", "toy", "--policy", str(policy), "--model-opt", "resolution=16", "--samples", "2",
                 "--views", "1", "--out", str(out)]) == 0
    with Image.open(out) as im:
        assert im.size == (2 + 2 * 18, 2 + 2 * 18)


@pytest.mark.parametrize("args, message", [
    (["preview", "--model", "nope"], "unknown model 'nope'"),
    (["preview", "--policy", "missing.yaml"], "policy file missing.yaml does not exist"),
    (["preview", "--views", "0"], "views"),
    (["preview", "--out", "grid.jpg"], "must end in .png"),
    (["preview", "--model-opt", "resolution=-3"], "resolution"),
    (["preview", "--device", "cuda:7"], "cuda"),
    (["info", "--model", "toy", "--model-opt", "colour=1"], "no option colour"),
])
def test_user_errors_print_one_line_and_exit_2(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err
    assert len(err.strip().splitlines()) == 1
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_the_module_entry_point_reports_user_errors_without_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "synthviews", "preview", "--policy", "missing.yaml"],
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == "synthviews preview: error: policy file missing.yaml does not exist"


def test_argparse_errors_also_exit_2():
    result = _run("preview", "--samples", "many")
    assert result.returncode == 2 and "invalid int value" in result.stderr
    assert _run("frobnicate").returncode == 2


def test_help_lists_every_verb_and_option():
    top = _run("--help")
    assert top.returncode == 0 and "preview" in top.stdout and "info" in top.stdout
    sub = _run("preview", "--help").stdout
    for option in ("--model", "--policy", "--samples", "--views", "--seed", "--out", "--device", "--model-opt"):
        assert option in sub


def test_info_lists_groups_and_prints_a_loadable_default_policy(capsys):
    assert main(["info", "--model", "toy"]) == 0
    text = capsys.readouterr().out
    for group in ("shape", "pose", "color", "texture", "inert"):
        assert group in text
    assert main(["info"]) == 0 and "toy" in capsys.readouterr().out


def test_preview_and_generate_with_the_real_generators(tmp_path, compat_dir):
    import shutil

    shutil.copy(compat_dir / "stylegan2" / "tiny1_state_dict.pt", tmp_path / "tiny1.pt")
    shutil.copy(compat_dir / "stylegan2" / "tiny1_config.json", tmp_path / "tiny1.json")  # the config beside it
    assert main(["preview", "--model", "stylegan2", "--path", str(tmp_path / "tiny1.pt"), "--samples", "2",
                 "--views", "2", "--out", str(tmp_path / "sg.png")]) == 0
    assert main(["preview", "--model", "bigbigan", "--path", str(compat_dir / "bigbigan" / "tiny_state_dict.pt"),
                 "--samples", "2", "--views", "2", "--out", str(tmp_path / "bb.png")]) == 0
    with Image.open(tmp_path / "sg.png") as a, Image.open(tmp_path / "bb.png") as b:
        assert a.size == (2 + 3 * 34, 2 + 2 * 34) and b.size == (2 + 3 * 130, 2 + 2 * 130)
    assert main(["generate", "--model", "stylegan2", "--path", str(tmp_path / "tiny1.pt"), "--samples", "6",
                 "--views", "1", "--shard-size", "3", "--out", str(tmp_path / "ds"), "--no-progress"]) == 0
    from synthviews.store.verify import verify

    assert verify(tmp_path / "ds") == []


def test_a_bad_model_file_is_one_line_and_exit_2(tmp_path, capsys):
    bad = tmp_path / "model.pt"
    bad.write_bytes(b"not a checkpoint")
    assert main(["preview", "--model", "bigbigan", "--path", str(bad), "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert "model.pt" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_the_workers_help_states_the_default_generate_uses(tmp_path, monkeypatch, capsys, device):
    """The help's formula, evaluated for several CPU counts, is the encoder pool size generate picks."""
    import re

    import torch

    from synthviews.cli.datasets import WORKERS_HELP
    from synthviews.store import writer

    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    assert " ".join(WORKERS_HELP.split()) in " ".join(capsys.readouterr().out.split())
    formulas = re.fullmatch(r".*\(default: (.+) with CUDA, (.+) on CPU, .*", WORKERS_HELP)
    formula = formulas.group(1 if device == "cuda" else 2)

    pools = []
    real_pool, real_sampler = writer.ThreadPoolExecutor, writer.ViewSampler

    def pool(workers, **kw):
        pools.append(workers)
        return real_pool(workers, **kw)

    monkeypatch.setattr(writer, "ThreadPoolExecutor", pool)
    if device == "cuda":  # pretend: generate sees a CUDA device, the sampler decodes on the CPU
        monkeypatch.setattr(writer, "resolve_device", lambda _: torch.device("cuda"))
        monkeypatch.setattr(writer, "ViewSampler", lambda *a, **kw: real_sampler(*a, **{**kw, "device": "cpu"}))
    for n, cpus in enumerate([1, 2, 3, 4, 7, 8, 16]):
        monkeypatch.setattr(writer.os, "cpu_count", lambda cpus=cpus: cpus)
        writer.generate(tmp_path / str(n), "toy", samples=1, device="cpu", model_kwargs={"resolution": 8})
        assert pools[-1] == eval(formula, {"__builtins__": {}, "min": min, "max": max, "CPUs": cpus}), (cpus, formula)


def test_the_quick_analysis_help_gives_measured_times_per_model(capsys):
    with pytest.raises(SystemExit):
        main(["analyze", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    quick = text[text.index("--quick"):].split(" --walkers")[0]
    assert "measured" in quick and "for toy" in quick and "for digits" in quick


def test_the_cli_starts_without_torch_so_ctrl_c_at_start_up_is_handled():
    """Everything heavy loads inside main(), whose handler turns Ctrl-C into one line and exit 130."""
    import subprocess
    import sys

    code = "import sys, synthviews, synthviews.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stderr


def _settings_classes():
    from synthviews.analysis.mi import Settings
    from synthviews.analysis.walkers import WalkerSettings

    return [("analyze", Settings), ("train-walker", WalkerSettings)]


@pytest.mark.parametrize("verb", ["analyze", "train-walker"])
def test_settings_flags_show_the_dataclass_help_and_default(capsys, verb):
    """The flags are built from the settings fields: help and default come from the dataclass."""
    from synthviews._util.settings import described_fields, show_default
    from synthviews.cli._flags import flag_name

    cls = dict(_settings_classes())[verb]
    with pytest.raises(SystemExit):
        main([verb, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    fields = described_fields(cls)
    assert fields
    for field in fields:
        meta = field.metadata["setting"]
        assert f"{meta['help']} (default: {show_default(field.default)})" in text, field.name
        assert flag_name(field) in text


def test_settings_flags_left_out_keep_the_defaults_and_none_is_a_value():
    """``--truncation none`` means no cut: None is passed on, not mistaken for 'not given'."""
    from synthviews import cli
    from synthviews.analysis.mi import Settings
    from synthviews.analysis.walkers import WalkerSettings
    from synthviews.cli._flags import given

    parser = cli.build_parser()
    base = ["--groups", "pose"]
    args = parser.parse_args(["analyze", *base])
    assert given(args, Settings) == {}
    args = parser.parse_args(["analyze", "--truncation", "none", "--critic-resolution", "16", "--stds", "0.5,2"])
    assert given(args, Settings) == {"truncation": None, "resolution": 16, "stds": (0.5, 2.0)}
    assert Settings(**given(args, Settings)).truncation is None
    args = parser.parse_args(["train-walker", *base, "--lr-walker", "0.01", "--critic-resolution", "24"])
    assert given(args, WalkerSettings) == {"lr_walker": 0.01, "resolution": 24}


@pytest.mark.parametrize("argv, message", [
    (["analyze", "--critic", "vgg"], "invalid choice"),
    (["analyze", "--stds", "a,b"], "comma-separated numbers"),
    (["train-walker", "--groups", "pose", "--min-gain", "x"], "invalid float value"),
])
def test_bad_settings_flags_are_one_line_and_exit_2(capsys, argv, message):
    with pytest.raises(SystemExit) as exit:
        main(argv)
    assert exit.value.code == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_every_verb_group_module_adds_its_verbs():
    from synthviews import cli
    from synthviews.cli import analysis, datasets, hub

    verbs = cli.build_parser()._subparsers._group_actions[0].choices
    assert list(verbs) == ["preview", "generate", "verify", "merge", "info", "analyze", "train-walker", "push",
                           "train-gan", "train-ddpm"]
    for module, names in ((datasets, ["preview", "generate", "verify", "merge", "info"]),
                          (analysis, ["analyze", "train-walker"]), (hub, ["push"])):
        parser = cli.app._Parser(prog="synthviews")
        module.add_commands(parser.add_subparsers(dest="verb"))
        assert list(parser._subparsers._group_actions[0].choices) == names
