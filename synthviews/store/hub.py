"""Publishing a dataset folder to the Hugging Face Hub as a dataset repo.

    from synthviews.store.hub import push
    push("shards/toy", "user/toy-views", dry_run=True)   # checks, rewrites the card, lists the files
    push("shards/toy", "user/toy-views")                 # the same, then creates the repo and uploads

Before anything is sent, :func:`push` refuses a folder with unmerged rank progress files or an
incomplete split, one with more files than a Hub folder takes, and one where
:func:`synthviews.store.verify.verify` finds any problem. It then regenerates the dataset card
(``README.md`` and ``preview.png``) from the manifest and uploads exactly the dataset's files: the
shards of every split of the manifest, ``synthviews.json``, ``README.md`` and ``preview.png``; never
hidden or temporary files, rank progress files or anything else in the folder.

The upload is huggingface_hub's resumable one (see :func:`push`): an interrupted push is continued
by running the same command again.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from ..errors import ConfigError
from .card import write_card
from .format import CARD_FILES, IGNORE_PATTERNS, MANIFEST_NAME, dataset_patterns
from .manifest import pending_splits, read_manifest
from .verify import verify

MAX_FILES_PER_FOLDER = 10_000   # Hub limit: keep under 10k files per folder (and 100k per repo)
HUB_OWN_FILES = 1               # .gitattributes, which the Hub adds to the repo's root
SHOWN_PROBLEMS = 5
_NAME = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?"
_REPO_ID_RE = re.compile(rf"^{_NAME}/{_NAME}$")


def check_repo_id(repo_id: str) -> str:
    """``repo_id`` if it is a valid ``user/name`` (or ``org/name``) Hub id, else ConfigError."""
    if (not isinstance(repo_id, str) or not _REPO_ID_RE.match(repo_id) or "--" in repo_id or ".." in repo_id
            or repo_id.endswith(".git")):
        raise ConfigError(f"invalid Hub repo id {repo_id!r}: expected USER/NAME (or ORG/NAME) made of letters, "
                          f"digits, '-', '_' and '.', each part at most 96 characters, not starting or ending "
                          f"with '-' or '.', without '--' or '..'")
    return repo_id


def allow_patterns(manifest: dict) -> list[str]:
    """Patterns selecting the dataset's files (and nothing else) for huggingface_hub's upload."""
    return dataset_patterns(manifest["splits"])


def dataset_url(repo_id: str, endpoint: str | None = None) -> str:
    if endpoint is None:
        from huggingface_hub import constants

        endpoint = constants.ENDPOINT
    return f"{endpoint.rstrip('/')}/datasets/{repo_id}"


def upload_plan(out: str | Path) -> list[tuple[str, int]]:
    """(path relative to ``out``, bytes) of every file the upload would send, exactly as huggingface_hub
    selects them from the folder with :func:`allow_patterns` and ``IGNORE_PATTERNS``."""
    from huggingface_hub.utils import filter_repo_objects

    out = Path(out)
    manifest = _dataset_manifest(out)
    files = {p.relative_to(out).as_posix(): p for p in sorted(out.glob("**/*")) if p.is_file()}
    chosen = filter_repo_objects(files, allow_patterns=allow_patterns(manifest),
                                 ignore_patterns=list(IGNORE_PATTERNS))
    return [(name, files[name].stat().st_size) for name in sorted(chosen)]


def push(out: str | Path, repo_id: str, private: bool = False, dry_run: bool = False, token: str | None = None,
         endpoint: str | None = None, commit_message: str | None = None, *, api=None) -> list[str]:
    """Check ``out``, regenerate its card and upload it to the Hub dataset repo ``repo_id``.

    Returns the uploaded file names (relative to ``out``). With ``dry_run=True`` nothing is sent: the
    checks run and the card is rewritten (so it can be reviewed), and the names are returned; see
    :func:`upload_plan` for their sizes. ``private`` applies when the repo is created (an existing repo
    keeps its visibility). ``token`` defaults to the saved login (``hf auth login``) or ``HF_TOKEN``;
    ``endpoint`` to ``HF_ENDPOINT`` or huggingface.co. ``api`` replaces ``HfApi(endpoint=..., token=...)``.
    """
    check_repo_id(repo_id)
    out = Path(out)
    manifest = _dataset_manifest(out)
    _check_complete(out, manifest)
    _check_file_count(manifest)
    problems = verify(out)
    if problems:
        shown = "; ".join(problems[:SHOWN_PROBLEMS])
        more = f"; and {len(problems) - SHOWN_PROBLEMS} more" if len(problems) > SHOWN_PROBLEMS else ""
        raise ConfigError(f"{out} does not match its manifest ({len(problems)} problem(s): {shown}{more}); "
                          f"fix or regenerate the dataset (`synthviews verify {out}` lists every problem) "
                          f"before pushing")
    write_card(out, manifest)

    names = [name for name, _ in upload_plan(out)]
    expected = sorted([r["name"] for s in manifest["splits"].values() for r in s["shards"]]
                      + [MANIFEST_NAME, *CARD_FILES])
    if names != expected:  # verify() passed, so only a foreign file named like a shard can get here
        extra, missing = sorted(set(names) - set(expected)), sorted(set(expected) - set(names))
        raise ConfigError(f"{out}: the files to upload do not match the manifest (unexpected: {extra[:5]}, "
                          f"missing: {missing[:5]}); move foreign files out of the folder")
    if dry_run:
        return names

    if api is None:
        from huggingface_hub import HfApi

        api = HfApi(endpoint=endpoint, token=token)
    samples = sum(s["config"]["samples"] for s in manifest["splits"].values())
    message = commit_message or (f"synthviews dataset: {', '.join(sorted(manifest['splits']))} "
                                 f"({samples} samples)")
    where = dataset_url(repo_id, getattr(api, "endpoint", endpoint))
    try:
        api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        if hasattr(api, "upload_large_folder"):  # huggingface_hub < 2: the resumable multi-commit upload
            api.upload_large_folder(repo_id=repo_id, folder_path=str(out), repo_type="dataset",
                                    allow_patterns=allow_patterns(manifest), ignore_patterns=list(IGNORE_PATTERNS))
        else:  # huggingface_hub >= 2: upload_folder is resumable and commits in batches (with hf_xet)
            api.upload_folder(repo_id=repo_id, folder_path=str(out), repo_type="dataset",
                              allow_patterns=allow_patterns(manifest), ignore_patterns=list(IGNORE_PATTERNS),
                              commit_message=message)
    except Exception as e:  # the user-fixable failures (login, network) become one-line errors
        error = _user_error(e, where)
        if error is None:
            raise
        raise error from e
    return names


# -- checks --------------------------------------------------------------------------------------------------

def _dataset_manifest(out: Path) -> dict:
    if not out.is_dir():
        raise ConfigError(f"{out} is not a folder; pass the dataset folder written by `synthviews generate`")
    pending = pending_splits(out)
    if pending:
        raise ConfigError(f"{out} holds rank progress files of split(s) {', '.join(pending)} that are not merged; "
                          f"finish every rank, run `synthviews merge {out}`, then push")
    manifest = read_manifest(out)
    if manifest is None or not manifest["splits"]:
        raise ConfigError(f"{out} holds no {MANIFEST_NAME}: it is not a synthviews dataset")
    return manifest


def _check_complete(out: Path, manifest: dict) -> None:
    for split, entry in sorted(manifest["splits"].items()):
        if not entry.get("complete"):
            raise ConfigError(f"split {split!r} of {out} is incomplete ({len(entry['shards'])} of "
                              f"{entry['num_shards']} shards); rerun the same generate command to finish it, "
                              f"then push")


def _check_file_count(manifest: dict) -> None:
    splits = manifest["splits"]
    shards = sum(entry["num_shards"] for entry in splits.values())
    files = shards + 1 + len(CARD_FILES) + HUB_OWN_FILES
    if files < MAX_FILES_PER_FOLDER:
        return
    room = MAX_FILES_PER_FOLDER - 1 - (1 + len(CARD_FILES) + HUB_OWN_FILES)  # shard files that fit
    factor = math.ceil(shards / room)
    counts = ", ".join(f"{s}: {e['num_shards']} shards of {e['config']['shard_size']}"
                       for s, e in sorted(splits.items()))
    biggest = max(splits.values(), key=lambda e: e["num_shards"])["config"]
    raise ConfigError(f"the dataset has {files} files in one folder ({counts}) but a Hub folder takes under "
                      f"{MAX_FILES_PER_FOLDER}; regenerate into a new --out with a larger --shard-size "
                      f"(at least {factor}x, e.g. --shard-size {biggest['shard_size'] * factor})")


def _user_error(error: Exception, where: str) -> ConfigError | None:
    status = getattr(getattr(error, "response", None), "status_code", None)
    names = {cls.__name__ for cls in type(error).__mro__}
    if "LocalTokenNotFoundError" in names:
        return ConfigError(f"no Hub token found for the push to {where}: log in with `hf auth login` or set "
                           f"HF_TOKEN to a token with write access")
    if status in (401, 403):
        return ConfigError(f"the Hub refused the push to {where} (HTTP {status}): log in with `hf auth login` or "
                           f"set HF_TOKEN to a token with write access to that namespace")
    if isinstance(error, (ConnectionError, TimeoutError)) or names & {"TransportError", "ConnectError",
                                                                      "ConnectionError", "Timeout"}:
        return ConfigError(f"could not reach the Hub for {where} ({error}); check the network, HF_ENDPOINT or "
                           f"--endpoint, then rerun the same push (it resumes)")
    return None


__all__ = ["push", "upload_plan", "allow_patterns", "check_repo_id", "dataset_url",
           "IGNORE_PATTERNS", "MAX_FILES_PER_FOLDER"]
