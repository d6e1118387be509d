"""store/format.py is the one home of the on-disk format: its names, patterns and member keys agree
with each other, and no other module spells them again."""

import ast
import fnmatch
import importlib.util
from pathlib import Path

import numpy as np
import pytest

from synthviews._util.files import write_atomic
from synthviews.store import format as fmt
from synthviews.store.tarshards import check_meta, iter_tar_samples

PACKAGE = Path(importlib.util.find_spec("synthviews").origin).parent


def test_shard_names_match_every_pattern_that_selects_shards():
    for split, shard in (("train", 0), ("test_a", 123), ("x1", 999_999)):
        name = fmt.shard_name(split, shard)
        assert fmt.SHARD_RE.match(name) and fmt.is_dataset_file(name)
        assert fmt.shard_number(name) == shard
        assert fnmatch.fnmatchcase(name, fmt.shard_pattern(split))
        assert fnmatch.fnmatchcase(name, fmt.shard_glob(split))
        assert fmt.check_split(split) == split
    assert fmt.shard_braces("train", 3) == "train-{000000..000002}.tar"
    for other in ("train-1.tar", "train-0000001.tar", "Train-000000.tar", "train-000000.tar.bak"):
        assert not fnmatch.fnmatchcase(other, fmt.shard_pattern("train"))


def test_progress_and_lock_names_match_their_patterns():
    name = fmt.progress_name("train", 1, 4)
    m = fmt.PROGRESS_RE.match(name)
    assert m and m.group("split") == "train" and (int(m.group("rank")), int(m.group("world"))) == (1, 4)
    assert fnmatch.fnmatchcase(name, fmt.PROGRESS_GLOB) and fnmatch.fnmatchcase(name, fmt.progress_glob("train"))
    assert fmt.is_dataset_file(name) and not fmt.is_dataset_file(fmt.progress_name("train", 1, 4) + ".bak")
    lock = fmt.rank_lock_name(2, 3)
    m = fmt.LOCK_RE.match(lock)
    assert m and int(m.group("world")) == 3 and fnmatch.fnmatchcase(lock, fmt.RANK_LOCK_GLOB)
    assert fmt.LOCK_RE.match(fmt.LOCK_NAME) and fmt.is_own_hidden_file(fmt.LOCK_NAME)
    assert not fmt.is_dataset_file(fmt.LOCK_NAME)  # never uploaded, never a final name


def test_temporary_names_of_both_writers_are_recognised(tmp_path, monkeypatch):
    shard = fmt.shard_name("train", 3)
    m = fmt.TEMPORARY_RE.match(fmt.temporary_name(shard))
    assert m and m.group("name") == shard and fmt.is_own_hidden_file(fmt.temporary_name(shard))
    seen = []
    real_replace = __import__("os").replace

    def spy(src, dst):  # the temporary write_atomic makes must be one the format recognises
        seen.append(Path(src).name)
        real_replace(src, dst)

    monkeypatch.setattr("synthviews._util.files.os.replace", spy)
    write_atomic(tmp_path / fmt.MANIFEST_NAME, b"{}")
    assert len(seen) == 1 and fnmatch.fnmatchcase(seen[0], fmt.TEMPORARY_GLOB)
    assert fmt.TEMPORARY_RE.match(seen[0]).group("name") == fmt.MANIFEST_NAME and fmt.is_own_hidden_file(seen[0])


def test_hub_patterns_select_exactly_the_dataset_files():
    patterns = fmt.dataset_patterns(["train", "test"])
    names = [fmt.shard_name("train", 0), fmt.shard_name("test", 7), fmt.MANIFEST_NAME, *fmt.CARD_FILES,
             fmt.progress_name("train", 0, 2), fmt.LOCK_NAME, fmt.temporary_name(fmt.shard_name("train", 1)),
             "notes.txt"]
    chosen = [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)
              and not any(fnmatch.fnmatchcase(n, p) for p in fmt.IGNORE_PATTERNS)]
    assert chosen == names[:5]
    assert all(fmt.is_dataset_file(n) for n in chosen)


def test_an_encoded_sample_has_exactly_the_fields_of_its_config(tmp_path):
    views = np.random.default_rng(0).integers(0, 256, (3, 8, 6, 1), dtype=np.uint8)
    config = {"views": 2, "save_latents": True, "image": {"format": "webp", "shape": [1, 8, 6]}}
    sample = fmt.encode_sample(41, views, {"index": 41}, "webp", 90, latents=np.zeros((3, 4), np.float32))
    assert sample["__key__"] == fmt.sample_key(41) == "000000041"
    assert set(sample) - {"__key__"} == fmt.split_fields(config)
    assert [fmt.view_number(f) for f in fmt.view_fields("webp", 2)] == [0, 1, 2]
    assert fmt.view_number(fmt.JSON_FIELD) is None and fmt.view_number(fmt.LATENTS_FIELD) is None
    hwc = fmt.stored_hwc(config)
    assert hwc == (8, 6, 3)  # grey WebP is stored as RGB
    grey = fmt.decode_view(sample["view1.webp"], "view1.webp", hwc, channels=1)
    assert grey.shape == (8, 6, 1)
    with pytest.raises(fmt.ViewMismatch, match="view1.webp is 6x8 with 3 channels, the manifest says 6x9"):
        fmt.decode_view(sample["view1.webp"], "view1.webp", (9, 6, 3))
    with pytest.raises(ValueError, match="view0.webp is not a readable image"):
        fmt.decode_view(b"garbage", "view0.webp")
    assert check_meta(sample["json"], 41) == {"index": 41}
    with pytest.raises(ValueError, match="says index 41, not 40"):
        check_meta(sample["json"], 40)


def test_card_preview_reads_views_in_order(tmp_path):
    import io
    import tarfile

    path = tmp_path / fmt.shard_name("train", 0)
    with tarfile.open(path, "w") as tar:
        for name in ("000000000.json", "000000000.view10.jpg", "000000000.view2.jpg"):
            info = tarfile.TarInfo(name)
            info.size = 1
            tar.addfile(info, io.BytesIO(b"x"))
    (key, fields), = iter_tar_samples(path)
    assert key == fmt.sample_key(0)
    assert sorted((f for f in fields if fmt.view_number(f) is not None), key=fmt.view_number) == \
        ["view2.jpg", "view10.jpg"]


# Literals that only store/format.py may spell (f-string format specs of sample keys and shard numbers,
# and the names of the dataset's own files).
_FACTS = {"synthviews.json", "README.md", "preview.png", "latents.npy", ".synthviews.lock", ".tmp", ".*.tmp"}
_SPECS = {"09d", "06d", "03d"}


def _literals(tree):
    docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                  if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            yield node.lineno, node.value
        if isinstance(node, ast.FormattedValue) and isinstance(node.format_spec, ast.JoinedStr):
            for part in node.format_spec.values:
                if isinstance(part, ast.Constant):
                    yield node.lineno, f"spec:{part.value}"


@pytest.mark.parametrize("package", ["store", "data"])
def test_no_module_spells_the_format_again(package):
    found = []
    for path in sorted((PACKAGE / package).rglob("*.py")):
        if path.name == "format.py" and package == "store":
            continue
        for line, text in _literals(ast.parse(path.read_text())):
            if text in _FACTS or text.removeprefix("spec:") in _SPECS and text.startswith("spec:"):
                found.append(f"{path.relative_to(PACKAGE)}:{line}: {text!r}")
    assert not found, "format facts spelled outside store/format.py:\n" + "\n".join(found)
