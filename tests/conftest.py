from pathlib import Path

import pytest

DATA_DIR = Path(__file__).resolve().parent / "data"


@pytest.fixture(scope="session")
def compat_dir() -> Path:
    """tests/data: the compatibility data of the real generators (see tests/data/README.md).

    The data is part of the repository, so a missing folder is a broken checkout: fail, never skip.
    """
    for family in ("stylegan2", "bigbigan", "vdvae"):
        if not (DATA_DIR / family).is_dir():
            pytest.fail(f"compatibility data missing: {DATA_DIR / family} (it is part of the repository)")
    return DATA_DIR


@pytest.fixture(scope="module")
def toy16():
    """The toy model at 16 px: whole pipelines in a fraction of a second."""
    import synthviews as sv

    return sv.load_model("toy", resolution=16)
