from pathlib import Path

import pytest

COMPAT_DIR = Path(__file__).resolve().parents[2] / "shared" / "compat"


@pytest.fixture(scope="session")
def compat_dir() -> Path:
    """../shared/compat beside the checkout (CI has it there); skip where it is absent."""
    if not COMPAT_DIR.is_dir():
        pytest.skip(f"compatibility data not found at {COMPAT_DIR} (it lives in ../shared/compat beside the checkout)")
    return COMPAT_DIR


@pytest.fixture(scope="module")
def toy16():
    """The toy model at 16 px: whole pipelines in a fraction of a second."""
    import synthviews as sv

    return sv.load_model("toy", resolution=16)
