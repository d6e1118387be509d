import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _bash_blocks(text: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", text, re.S)


def _opening_commands():
    text = (ROOT / "README.md").read_text()
    block = _bash_blocks(text)[0]
    assert text.index("```bash") < text.index("\n## "), "the commands must open the README"
    return [line for line in block.splitlines() if line.strip()]


def test_readme_opens_with_exactly_two_commands_pinning_torch():
    commands = _opening_commands()
    assert len(commands) == 2
    assert all("pip install torch==2.13.0" in c for c in commands)
    assert "synthviews " in commands[0] and "pytest" in commands[1]


def test_ci_runs_the_readmes_test_command():
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert _opening_commands()[1] in ci


def test_the_own_model_example_runs_as_written():
    text = (ROOT / "README.md").read_text()
    code = text.split("### Your own model")[1].split("```python\n")[1].split("```")[0]
    scope = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert scope["view"].shape == (4, 3, 8, 8)
    assert 0 <= scope["view"].min() and scope["view"].max() <= 1


# --- every python snippet runs ----------------------------------------------------------------------

# Names the README's snippets leave to the reader (the README lists them; _stand_ins gives each a small one).
STAND_INS = ("model", "backbone", "criterion", "opt", "epochs", "trainer", "images")
# On CPU and at test size: the device, and the sizes that only make the snippets slow.
CPU_AND_SMALL = {'"cuda"': '"cpu"', ".cuda()": ".cpu()", "batch_size=256": "batch_size=16",
                 "epoch_samples=50_000": "epoch_samples=64"}


def _python_snippets():
    """(section title, code) of every ```python block, in README order."""
    text = (ROOT / "README.md").read_text()
    out, seen = [], []
    for m in re.finditer(r"```python\n(.*?)```", text, re.S):
        prose = re.sub(r"```.*?```", "", text[:m.start()], flags=re.S)  # a '# comment' in code is no heading
        seen.append(re.findall(r"^#+ (.+)$", prose, re.M)[-1])
        out.append((f"{seen[-1]} #{seen.count(seen[-1])}", m.group(1)))
    return out


def _undefined_names(code: str) -> set[str]:
    """Names a snippet reads that it neither imports nor assigns, and that are not Python builtins."""
    import ast
    import builtins

    defined, used = set(), set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Name):
            (used if isinstance(node.ctx, ast.Load) else defined).add(node.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            defined.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            defined.add(node.name)
        elif isinstance(node, ast.arg):
            defined.add(node.arg)
    return used - defined - set(dir(builtins))


def test_every_snippet_imports_what_it_uses_except_the_names_the_readme_leaves_to_the_reader():
    text = " ".join((ROOT / "README.md").read_text().split())
    sentence = re.search(r"Names these snippets leave to you: (.*?)\.", text).group(1)
    assert set(re.findall(r"`(\w+)`", sentence)) == set(STAND_INS)
    snippets = _python_snippets()
    assert len(snippets) >= 7
    for title, code in snippets:
        assert not _undefined_names(code) - set(STAND_INS), f"README snippet under '{title}' uses undefined names"


def test_the_name_check_catches_a_missing_import():
    assert _undefined_names("ds = ContinuousViews(sv.load_model('digits'))\ndl = loader(ds)\n") == {
        "ContinuousViews", "sv", "loader"}
    assert _undefined_names("import synthviews as sv\nfrom synthviews.data import loader\nloader(sv)\n") == set()


class _Trainer:
    """Lightning's trainer.fit, as far as the README needs: one pass over the loader."""

    def __init__(self):
        self.batches = []

    def fit(self, model, loader):
        for index, views, target in loader:
            assert len(views) == 2 and (target == -1).all() and views[0].shape[0] == index.shape[0]
            self.batches.append(index)


def _stand_ins() -> dict:
    import torch
    from torch import nn

    model = nn.Sequential(nn.Conv2d(1, 8, 3, stride=4), nn.AdaptiveAvgPool2d(1), nn.Flatten())  # digits: 1 channel
    return {"model": model, "backbone": nn.Sequential(nn.Conv2d(1, 512, 3, stride=8), nn.AdaptiveAvgPool2d(1)),
            "criterion": lambda a, b: (a - b).pow(2).mean(), "opt": torch.optim.SGD(model.parameters(), lr=0.01),
            "epochs": 1, "trainer": _Trainer(), "images": torch.rand(4, 3, 64, 64)}


@pytest.fixture(scope="module")
def readme_folder(tmp_path_factory):
    """A working folder with what the snippets read: shards/digits (8 shards) and the README's policy.yaml."""
    from synthviews.store.writer import generate

    folder = tmp_path_factory.mktemp("readme")
    generate(folder / "shards" / "digits", "digits", samples=256, views=2, shard_size=32, device="cpu")
    text = (ROOT / "README.md").read_text()
    (folder / "policy.yaml").write_text(text.split("## A policy file")[1].split("```yaml\n")[1].split("```")[0])
    return folder


@pytest.mark.filterwarnings("ignore:This DataLoader will create")  # the README's 4 and 8 workers on 2 cores
@pytest.mark.parametrize("title, code", _python_snippets(), ids=[t for t, _ in _python_snippets()])
def test_every_python_snippet_runs(readme_folder, monkeypatch, title, code):
    for package in ("lightly", "solo"):
        if re.search(rf"^\s*(from|import) {package}\b", code, re.M):
            pytest.importorskip(package, reason=f"{package} is not installed (pip install the frameworks extra)")
    for old, new in CPU_AND_SMALL.items():
        code = code.replace(old, new)
    monkeypatch.chdir(readme_folder)
    scope = _stand_ins()
    exec(compile(code, f"README.md ({title})", "exec"), scope)
    if "trainer.fit" in code:
        assert len(scope["trainer"].batches) == 16  # 8 workers x 2 batches of 16
    if "ContinuousViews" in code:
        assert (readme_folder / "ckpt.pt").is_file()


# --- the frameworks extra keeps torch ---------------------------------------------------------------

FRAMEWORKS_INSTALL = 'pip install torch==2.13.0 torchvision==0.28.0 -e ".[frameworks]"'


def test_the_readme_gives_the_pinned_frameworks_install():
    text = (ROOT / "README.md").read_text()
    assert FRAMEWORKS_INSTALL in text
    assert not re.search(r'pip install (-e )?"(synthviews|\.)\[frameworks\]"', text)  # no unpinned variant left


@pytest.mark.slow
def test_the_pinned_frameworks_install_keeps_torch_2_13_and_pulls_no_cuda():
    """pip resolves the README's command (metadata only, nothing installed): torch stays 2.13.0, no nvidia-*."""
    import json
    import shlex
    import subprocess
    import sys

    import torch

    assert torch.__version__.split("+")[0] == "2.13.0"  # as CI has it: .ci/run installs torch==2.13.0 first
    args = shlex.split(FRAMEWORKS_INSTALL)
    assert args[:2] == ["pip", "install"]
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--report", "-",
                           *args[2:]], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    resolved = {i["metadata"]["name"].lower(): i["metadata"]["version"] for i in report["install"]}
    assert resolved.get("torch", "2.13.0").split("+")[0] == "2.13.0", resolved
    assert not [name for name in resolved if name.startswith("nvidia-")], resolved
    assert resolved.get("torchvision", "0.28.0") == "0.28.0" and "lightly" in resolved


# --- every shell command parses ---------------------------------------------------------------------------

def _shell_commands():
    """The README's bash lines (continuations joined, comments and ``[optional]`` flags dropped) that run
    synthviews or one of the benchmarks: what a reader copies, checked against the parsers they reach."""
    import shlex

    for block in _bash_blocks((ROOT / "README.md").read_text()):
        for line in block.replace("\\\n", " ").splitlines():
            for command in line.split("&&"):
                words = [w for w in shlex.split(command, comments=True) if not w.startswith("[")]
                if words[:1] == ["synthviews"] or words[:2] and words[0] == "python" and words[1].startswith("benchmarks/"):
                    yield words


def test_every_shell_command_parses():
    import importlib.util

    from synthviews.cli.app import build_parser

    seen = {"synthviews": 0, "benchmarks": 0}
    for words in _shell_commands():
        if words[0] == "synthviews":
            build_parser().parse_args(words[1:])  # SystemExit(2) names a flag the CLI does not have
            seen["synthviews"] += 1
            continue
        spec = importlib.util.spec_from_file_location(Path(words[1]).stem, ROOT / words[1])
        script = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(script)
        if words[2:3] == ["--compare"]:
            assert script.compare([str(ROOT / p) for p in words[4:]], words[3])
        else:
            script.parse(words[2:])
        seen["benchmarks"] += 1
    assert seen["synthviews"] >= 15 and seen["benchmarks"] >= 3
