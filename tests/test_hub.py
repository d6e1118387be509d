import argparse
import inspect
import json
import shutil
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from huggingface_hub import HfApi
from huggingface_hub.utils import filter_repo_objects

from synthviews.cli.hub import add_commands as add_push_command
from synthviews.errors import ConfigError
from synthviews.store import hub
from synthviews.store.card import dataset_card
from synthviews.store.hub import IGNORE_PATTERNS, allow_patterns, check_repo_id, push, upload_plan
from synthviews.store.manifest import read_manifest, write_manifest
from synthviews.store.writer import generate

EXPECTED = ["README.md", "preview.png", "synthviews.json", "train-000000.tar", "train-000001.tar",
            "train-000002.tar"]


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("hub") / "ds"
    generate(out, "toy", samples=10, views=1, shard_size=4, batch_size=8, model_kwargs={"resolution": 16})
    return out


@pytest.fixture
def dataset(generated, tmp_path) -> Path:
    """A fresh copy of the generated dataset, which a test may change."""
    out = tmp_path / "ds"
    shutil.copytree(generated, out)
    return out


class FakeApi:
    """Records the calls push makes, in the form HfApi (huggingface_hub 2.x) takes them."""

    endpoint = "https://hub.example"

    def __init__(self):
        self.calls = []
        self.card_at_upload = None

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", (repo_id,), kwargs))

    def upload_folder(self, **kwargs):
        self.calls.append(("upload_folder", (), kwargs))
        folder = Path(kwargs["folder_path"])
        self.card_at_upload = ((folder / "README.md").read_text(), (folder / "preview.png").exists())


class Exploding:
    def __getattr__(self, name):
        raise AssertionError(f"dry run touched the api: {name}")


def _as_hub_selects(folder: Path, kwargs: dict) -> list[str]:
    """The files huggingface_hub's upload_folder selects (as its _prepare_upload_folder_additions does)."""
    files = [p.relative_to(folder).as_posix() for p in sorted(folder.glob("**/*")) if p.is_file()]
    return sorted(filter_repo_objects(files, allow_patterns=kwargs["allow_patterns"],
                                      ignore_patterns=kwargs["ignore_patterns"]))


def _add_decoys(out: Path) -> None:
    for name in (".train-000001.tar.4242.tmp", ".README.md.1.abcd.tmp", "notes.txt", "train-000000.tar.bak",
                 "sub/train-000000.tar", "sub/.hidden", ".cache/huggingface/upload/train-000000.tar.metadata",
                 "test-000000.tar"):
        path = out / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"not part of the dataset")


def test_push_uploads_exactly_the_dataset_files(dataset):
    _add_decoys(dataset)
    api = FakeApi()
    names = push(dataset, "alice/toy-views", api=api)
    assert names == EXPECTED
    (create, args, create_kwargs), (upload, _, upload_kwargs) = api.calls
    assert create == "create_repo" and args == ("alice/toy-views",)
    assert create_kwargs == {"repo_type": "dataset", "private": False, "exist_ok": True}
    assert upload == "upload_folder"
    assert upload_kwargs["repo_id"] == "alice/toy-views" and upload_kwargs["repo_type"] == "dataset"
    assert Path(upload_kwargs["folder_path"]) == dataset
    assert "train" in upload_kwargs["commit_message"] and "10 samples" in upload_kwargs["commit_message"]
    assert _as_hub_selects(dataset, upload_kwargs) == EXPECTED
    # the calls fit the installed huggingface_hub's signatures
    inspect.signature(HfApi.create_repo).bind(None, *args, **create_kwargs)
    inspect.signature(HfApi.upload_folder).bind(None, **upload_kwargs)


def test_patterns_never_select_progress_hidden_or_temporary_files():
    manifest = {"splits": {"train": {}, "test_a": {}}}
    names = ["train-000000.tar", "test_a-000123.tar", "synthviews.json", "README.md", "preview.png",
             "synthviews.train.rank000-of-002.json", ".train-000001.tar.77.tmp", "train-000001.tar.77.tmp",
             ".synthviews.json.1.ab.tmp", "x/train-000000.tar", "train-0000001.tar", "train-1.tar", "test-000000.tar",
             "train_b-000000.tar", "README.md.tmp", "x/README.md"]
    chosen = list(filter_repo_objects(names, allow_patterns=allow_patterns(manifest),
                                      ignore_patterns=list(IGNORE_PATTERNS)))
    assert chosen == ["train-000000.tar", "test_a-000123.tar", "synthviews.json", "README.md", "preview.png"]


def test_card_is_regenerated_before_upload(dataset):
    (dataset / "README.md").write_text("stale card")
    (dataset / "preview.png").unlink()
    api = FakeApi()
    push(dataset, "alice/toy-views", private=True, api=api)
    card, preview_exists = api.card_at_upload
    assert card == dataset_card(read_manifest(dataset)) and preview_exists
    assert api.calls[0][2]["private"] is True


def test_dry_run_checks_lists_and_sends_nothing(dataset, monkeypatch):
    _add_decoys(dataset)
    (dataset / "README.md").write_text("stale card")
    assert push(dataset, "alice/toy-views", dry_run=True, api=Exploding()) == EXPECTED
    assert (dataset / "README.md").read_text() != "stale card"  # the card was rewritten for review

    def refuse(*args, **kwargs):
        raise AssertionError("network call in a dry run")

    for name in ("__init__", "create_repo", "upload_folder", "create_commit"):
        monkeypatch.setattr(HfApi, name, refuse)
    assert push(dataset, "alice/toy-views", dry_run=True) == EXPECTED
    plan = dict(upload_plan(dataset))
    assert sorted(plan) == EXPECTED
    assert plan["train-000000.tar"] == (dataset / "train-000000.tar").stat().st_size


def test_verify_problems_block_the_push(dataset):
    shard = dataset / "train-000001.tar"
    data = bytearray(shard.read_bytes())
    data[600] ^= 0xFF
    shard.write_bytes(bytes(data))
    api = FakeApi()
    with pytest.raises(ConfigError, match=r"does not match its manifest.*train-000001\.tar.*synthviews verify"):
        push(dataset, "alice/toy-views", api=api)
    with pytest.raises(ConfigError, match="does not match"):
        push(dataset, "alice/toy-views", dry_run=True, api=api)
    assert api.calls == []


def test_many_problems_are_summarised(dataset):
    for shard in sorted(dataset.glob("train-*.tar")):
        shard.write_bytes(b"x" * 10)
    with pytest.raises(ConfigError, match=r"problem\(s\).*and \d+ more") as info:
        push(dataset, "alice/toy-views", api=FakeApi())
    assert "\n" not in str(info.value)


def test_unmerged_ranks_and_incomplete_splits_are_refused(dataset):
    progress = dataset / "synthviews.train.rank001-of-002.json"
    progress.write_text("{}")
    with pytest.raises(ConfigError, match="synthviews merge"):
        push(dataset, "alice/toy-views", api=FakeApi(), dry_run=True)
    progress.unlink()
    manifest = read_manifest(dataset)
    entry = manifest["splits"]["train"]
    entry["shards"] = entry["shards"][:2]
    entry["complete"] = False
    write_manifest(dataset, manifest)
    api = FakeApi()
    with pytest.raises(ConfigError, match=r"incomplete \(2 of 3 shards\).*rerun"):
        push(dataset, "alice/toy-views", api=api)
    assert api.calls == []


def test_too_many_files_for_a_hub_folder(dataset, monkeypatch):
    monkeypatch.setattr(hub, "MAX_FILES_PER_FOLDER", 8)  # 3 shards + 3 files + .gitattributes = 7 fit
    assert push(dataset, "alice/toy-views", dry_run=True) == EXPECTED
    monkeypatch.setattr(hub, "MAX_FILES_PER_FOLDER", 7)
    api = FakeApi()
    with pytest.raises(ConfigError, match=r"under 7.*larger --shard-size.*--shard-size 8"):
        push(dataset, "alice/toy-views", api=api)
    assert api.calls == []


def test_not_a_dataset_folder(tmp_path):
    with pytest.raises(ConfigError, match="not a folder"):
        push(tmp_path / "missing", "alice/x", dry_run=True)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="not a synthviews dataset"):
        push(tmp_path / "empty", "alice/x", dry_run=True)


@pytest.mark.parametrize("repo_id", ["name", "a/b/c", "/b", "a/", "-a/b", "a/b-", "a/.b", "a/b--c", "a/b..c",
                                     "a/b.git", "a b/c", "a/" + "x" * 97, "", None, "https://hf.co/datasets/a/b"])
def test_invalid_repo_ids(repo_id, dataset):
    api = FakeApi()
    with pytest.raises(ConfigError, match="USER/NAME"):
        push(dataset, repo_id, api=api)
    assert api.calls == []


@pytest.mark.parametrize("repo_id", ["alice/toy-views", "Org-1/my_data.v2", "a/b", "a/" + "x" * 96])
def test_valid_repo_ids(repo_id):
    assert check_repo_id(repo_id) == repo_id


def test_upload_large_folder_is_used_where_it_exists(dataset):
    class OldApi(FakeApi):  # huggingface_hub < 2
        def upload_large_folder(self, repo_id, folder_path, *, repo_type, **kwargs):
            self.calls.append(("upload_large_folder", (), {"repo_id": repo_id, "folder_path": folder_path,
                                                            "repo_type": repo_type, **kwargs}))

    api = OldApi()
    push(dataset, "alice/toy-views", api=api)
    name, _, kwargs = api.calls[1]
    assert name == "upload_large_folder" and kwargs["repo_type"] == "dataset"
    assert _as_hub_selects(dataset, kwargs) == EXPECTED


def test_other_upload_errors_propagate(dataset):
    class Failing(FakeApi):
        def upload_folder(self, **kwargs):
            raise RuntimeError("server exploded")

    with pytest.raises(RuntimeError, match="server exploded"):
        push(dataset, "alice/toy-views", api=Failing())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_endpoint_is_a_config_error(dataset):
    endpoint = f"http://127.0.0.1:{_free_port()}"  # nothing listens there: refused at once
    with pytest.raises(ConfigError, match="could not reach the Hub.*--endpoint"):
        push(dataset, "alice/toy-views", endpoint=endpoint, token="hf_not_a_token")


def test_refused_credentials_are_a_config_error(dataset):
    requests = []

    class Deny(BaseHTTPRequestHandler):
        def _deny(self):
            requests.append((self.command, self.path))
            body = json.dumps({"error": "Invalid credentials"}).encode()
            self.send_response(401)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _deny

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Deny)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with pytest.raises(ConfigError, match=r"HTTP 401.*hf auth login"):
            push(dataset, "alice/toy-views", endpoint=f"http://127.0.0.1:{server.server_address[1]}",
                 token="hf_not_a_token")
    finally:
        server.shutdown()
        server.server_close()
    assert ("POST", "/api/repos/create") in requests


def _cli(argv):
    parser = argparse.ArgumentParser(prog="synthviews")
    verbs = parser.add_subparsers(dest="verb", required=True)
    add_push_command(verbs)
    args = parser.parse_args(argv)
    return args.run(args)


def test_cli_dry_run_lists_files_with_sizes(dataset, capsys):
    assert _cli(["push", str(dataset), "alice/toy-views", "--dry-run", "--endpoint", "https://hub.example"]) == 0
    out = capsys.readouterr().out
    size = (dataset / "train-000002.tar").stat().st_size
    assert f"{size:,}  train-000002.tar" in out
    assert "would upload 6 files" in out and "https://hub.example/datasets/alice/toy-views" in out
    args = argparse.ArgumentParser()
    verbs = args.add_subparsers()
    parsed = add_push_command(verbs).parse_args(["o", "a/b", "--private"])
    assert parsed.private and not parsed.dry_run and parsed.endpoint is None


def test_cli_push_with_the_real_main_when_integrated(dataset, capsys):
    from synthviews import cli

    if "push" not in cli.build_parser().format_help():
        pytest.skip("push is not wired into synthviews.cli yet")
    assert cli.main(["push", str(dataset), "alice/toy-views", "--dry-run"]) == 0
    assert cli.main(["push", str(dataset), "not-a-repo-id", "--dry-run"]) == 2
    assert "USER/NAME" in capsys.readouterr().err
