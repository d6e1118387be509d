"""A bad RANK/WORLD_SIZE is one clear line (ConfigError) in the loaders and in generate: never another
rank's data, a traceback or a hang."""

import socket
import subprocess
import sys

import pytest

import synthviews as sv
from synthviews._util.distributed import detect_ranks, training_ranks
from synthviews.data import ContinuousViews, ShardViews, loader
from synthviews.store.writer import generate

ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "WORKER", "NUM_WORKERS")
MASTER = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
BAD = {
    "rank >= world size": ({"RANK": "2", "WORLD_SIZE": "2", **MASTER}, r"RANK must be in \[0, 1\] .* got 2"),
    "negative rank": ({"RANK": "-1", "WORLD_SIZE": "2", **MASTER}, r"RANK must be in \[0, 1\] .* got -1"),
    "world size 0": ({"RANK": "0", "WORLD_SIZE": "0", **MASTER}, "WORLD_SIZE must be >= 1, got 0"),
    "non-numeric": ({"RANK": "one", "WORLD_SIZE": "2", **MASTER}, "RANK='one' is not an integer"),
    "world size without rank": ({"WORLD_SIZE": "2", **MASTER}, "WORLD_SIZE is set but RANK is not"),
    "rank without world size": ({"RANK": "1"}, "RANK is set but WORLD_SIZE is not"),
    "no master address": ({"RANK": "1", "WORLD_SIZE": "2", "MASTER_PORT": "29500"}, "MASTER_ADDR is not set"),
}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("env") / "ds"
    generate(out, "toy", None, samples=40, views=1, shard_size=10, model_kwargs={"resolution": 8})
    return out


@pytest.fixture
def env(monkeypatch):
    for name in ENV:
        monkeypatch.delenv(name, raising=False)

    def set_env(values):
        for name, value in values.items():
            monkeypatch.setenv(name, value)
    return set_env


@pytest.mark.parametrize("case", list(BAD))
def test_bad_rank_environments_are_one_line_everywhere(case, env, dataset, tmp_path):
    values, message = BAD[case]
    env(values)
    makers = {
        "ShardViews": lambda: ShardViews(dataset),
        "loader": lambda: loader(dataset, batch_size=4),
        "ContinuousViews": lambda: ContinuousViews(sv.load_model("toy", resolution=8), epoch_samples=8, batch_size=4),
        "detect_ranks": detect_ranks,
        "generate": lambda: generate(tmp_path / "out", "toy", samples=4, model_kwargs={"resolution": 8}),
    }
    for name, make in makers.items():
        with pytest.raises(sv.ConfigError, match=message) as info:
            make()
        assert "\n" not in str(info.value), name
    assert not (tmp_path / "out").exists()


def test_good_rank_environments_and_explicit_ranks(env, dataset):
    assert training_ranks() == (0, 1)
    env({"RANK": "0", "WORLD_SIZE": "1"})  # a single process needs no master address
    assert training_ranks() == (0, 1) and len(ShardViews(dataset)) == 40
    env({"RANK": "1", "WORLD_SIZE": "2", **MASTER})
    assert training_ranks() == (1, 2) and len(ShardViews(dataset)) == 20
    assert detect_ranks().use_torch_distributed
    assert training_ranks(0, 4) == (0, 4) and len(ShardViews(dataset, rank=3, world_size=4)) == 10
    with pytest.raises(sv.ConfigError, match="rank must be in \\[0, 3\\] for world_size=4, got 4"):
        ShardViews(dataset, rank=4, world_size=4)
    with pytest.raises(sv.ConfigError, match="give both rank and world_size"):
        ShardViews(dataset, rank=0)


def test_generate_with_a_rank_outside_the_world_exits_with_one_line_instead_of_hanging(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in __import__("os").environ.items() if k not in ENV}
    env.update(RANK="5", WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    result = subprocess.run([sys.executable, "-m", "synthviews", "generate", "--model", "toy", "--model-opt",
                             "resolution=8", "--samples", "4", "--out", str(tmp_path / "out"), "--no-progress"],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "RANK must be in [0, 1] for WORLD_SIZE=2, got 5" in lines[0], result.stderr
