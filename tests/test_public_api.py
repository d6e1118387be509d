"""The names the README uses are where it says: ``import synthviews as sv`` and ``synthviews.data``."""

import subprocess
import sys

import synthviews as sv
import synthviews.data

README_NAMES = ["load_model", "register_model", "from_module", "ViewSampler", "generate", "load_policy", "save_policy",
                "TruncatedNormal", "ConfigError"]


def test_the_package_front_door_gives_the_readme_names():
    for name in README_NAMES:
        assert name in sv.__all__ and callable(getattr(sv, name)), name
    assert sv.ViewSampler.__module__ == "synthviews.views"
    assert sv.generate.__module__ == "synthviews.store.writer"
    assert sorted(dir(sv)) == sorted(set(dir(sv)))  # every lazy name is listed once


def test_data_exports_the_readers_the_loader_and_the_augmentations():
    for name in ["ShardViews", "ContinuousViews", "loader", "Augment"]:
        assert name in synthviews.data.__all__ and hasattr(synthviews.data, name), name


def test_unknown_names_raise_attribute_error():
    try:
        sv.no_such_name
    except AttributeError as e:
        assert "no_such_name" in str(e)
    else:
        raise AssertionError("expected AttributeError")


def test_the_version_has_one_source():
    from importlib.metadata import version

    assert version("synthviews") == sv.__version__
    out = subprocess.run([sys.executable, "-m", "synthviews", "--version"], capture_output=True, text=True, timeout=60)
    assert sv.__version__ in out.stdout + out.stderr
