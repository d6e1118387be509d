import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _opening_commands():
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text, re.S).group(1)
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
