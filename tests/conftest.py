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
def one_torch_thread():
    """One torch thread for a module (``pytestmark = pytest.mark.usefixtures("one_torch_thread")``): the tests'
    tiny networks and the single-threaded decode blocks run several times faster on a busy 2-core machine
    without OpenMP hand-offs."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def toy16():
    """The toy model at 16 px: whole pipelines in a fraction of a second."""
    import synthviews as sv

    return sv.load_model("toy", resolution=16)
