import numpy as np
import pytest
import torch

import synthviews as sv
from synthviews.policies import (
    GaussianPolicy,
    GroupNoise,
    RandomSubsetPolicy,
    load_policy,
    policy_from_dict,
    resolve_policy,
    save_policy,
)


@pytest.fixture(scope="module")
def toy():
    return sv.load_model("toy")


def _noise(policy, model, n=4000, view=1, seed=0):
    idx = np.arange(n)
    anchor = torch.zeros(n, model.latent_dim)
    return policy.noise(model, anchor, sv.Streams(seed), idx, view)


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
@pytest.mark.parametrize("policy", [
    GaussianPolicy({"shape": None, "pose": GroupNoise(0.5, truncation=2.0), "color": GroupNoise(0.3, mean=0.1)}),
    GaussianPolicy.all_groups(0.2),
    RandomSubsetPolicy(0.5, (0.2, 1.0), truncation=2.0, groups=["pose", "color"]),
])
def test_policies_round_trip_through_files(tmp_path, toy, policy, suffix):
    path = tmp_path / f"policy{suffix}"
    save_policy(policy, path)
    loaded = load_policy(path)
    assert loaded.to_dict() == policy.to_dict()
    assert loaded.policy_id == policy.policy_id
    a, b = _noise(policy, toy, 50), _noise(loaded, toy, 50)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_hand_written_shorthand_equals_canonical_form(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("kind: gaussian\ngroups:\n  pose: 0.5\n  shape: fixed\n")
    assert load_policy(path).to_dict() == {"kind": "gaussian", "default": "fixed",
                                           "groups": {"pose": {"std": 0.5}, "shape": "fixed"}}


def test_gaussian_policy_perturbs_listed_groups_with_given_std(toy):
    policy = GaussianPolicy({"pose": GroupNoise(0.5), "texture": GroupNoise(1.0, truncation=1.0)})
    noise = _noise(policy, toy)
    assert set(noise) == {"pose", "texture"}
    assert abs(noise["pose"].std().item() - 0.5) < 0.02
    assert noise["texture"].abs().max() <= 1.0


def test_group_noises_are_independent(toy):
    noise = _noise(GaussianPolicy.all_groups(1.0), toy, n=20000)
    a, b = noise["pose"][:, 0].numpy(), noise["color"][:, 0].numpy()
    assert abs(np.corrcoef(a, b)[0, 1]) < 0.03
    # ... and so are the views of one sample.
    other_view = _noise(GaussianPolicy.all_groups(1.0), toy, n=20000, view=2)["pose"][:, 0].numpy()
    assert abs(np.corrcoef(a, other_view)[0, 1]) < 0.03


def test_random_subset_probability_and_std_range(toy):
    policy = RandomSubsetPolicy(0.3, (0.2, 1.0))
    noise = _noise(policy, toy, n=20000)
    assert set(noise) == set(toy.group_names)
    perturbed = (noise["pose"] != 0).any(1).float().mean().item()
    assert abs(perturbed - 0.3) < 0.02
    # coins of different groups are independent
    both = ((noise["pose"] != 0).any(1) & (noise["color"] != 0).any(1)).float().mean().item()
    assert abs(both - 0.09) < 0.015


def test_genrep_baseline_is_a_gaussian_special_case(toy):
    policy = policy_from_dict({"kind": "gaussian", "default": {"std": 0.2}})
    assert set(_noise(policy, toy, 10)) == set(toy.group_names)


@pytest.mark.parametrize("text, message", [
    ("kind: gaussian\ngroups:\n  shap: 0.5\n", "unknown latent group\\(s\\) 'shap'.*shape, pose"),
    ("kind: gaussian\ngroups:\n  pose: -0.5\n", "group 'pose'.*std must be >= 0"),
    ("kind: gaussian\ngroups:\n  pose: {std: 0.5, truncation: 0}\n", "truncation must be a positive"),
    ("kind: gaussian\ngroups:\n  pose: {sdt: 0.5}\n", "unknown key\\(s\\) sdt"),
    ("kind: gaussian\ngroups:\n  pose: lots\n", "expected 'fixed', a std number"),
    ("kind: walk\n", "unknown policy kind 'walk'"),
    ("- just a list\n", "must be a mapping"),
    ("kind: gaussian\n  bad: [indent\n", "not valid YAML"),
    ("kind: random_subset\np: 1.5\nstd: [0.1, 0.2]\n", "p must be a probability"),
    ("kind: random_subset\np: 0.5\nstd: [1.0, 0.2]\n", "lo > hi"),
    ("kind: random_subset\np: 0.5\n", "missing 'std'"),
    ("kind: gaussian\nextra: 1\n", "unknown key\\(s\\) extra"),
])
def test_bad_policy_files_are_rejected_with_a_clear_message(tmp_path, toy, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(sv.ConfigError, match=message) as info:
        resolve_policy(path, toy)
    assert "\n" not in str(info.value)


def test_missing_policy_file(tmp_path, toy):
    with pytest.raises(sv.ConfigError, match="does not exist"):
        resolve_policy(tmp_path / "nope.yaml", toy)


def test_default_policy_is_the_models(toy):
    assert resolve_policy(None, toy).to_dict()["groups"]["shape"] == "fixed"


def test_save_policy_writes_comments_and_reads_the_file_back(tmp_path):
    policy = GaussianPolicy({"0_2": None, "pose": GroupNoise(0.5, truncation=2.0)})
    path = tmp_path / "p.yaml"
    loaded = save_policy(policy, path, comments={"": "why this policy\nsecond line",
                                                 "groups": {"pose": "pose: tolerated 0.5", "0_2": "kept fixed"}})
    assert loaded.to_dict() == policy.to_dict()
    text = path.read_text()
    assert text.startswith("# why this policy\n# second line\nkind: gaussian\n")
    assert "  # pose: tolerated 0.5\n  pose: {std: 0.5, truncation: 2.0}\n" in text
    assert "  # kept fixed\n  '0_2': fixed\n" in text  # quoted: unquoted 0_2 reads back as the number 2
    assert save_policy(policy, tmp_path / "plain.yaml", comments="one line").to_dict() == policy.to_dict()
    assert (tmp_path / "plain.yaml").read_text().startswith("# one line\nkind: gaussian\n")


@pytest.mark.parametrize("path, comments, message", [
    ("p.json", "a note", "JSON policy file cannot hold comments"),
    ("p.yaml", {"groups": {"shap": "typo"}}, "comments name key\\(s\\) \\['shap'\\]"),
    ("p.yaml", {"kind": {"x": "note"}}, "not a mapping"),
])
def test_save_policy_refuses_comments_it_cannot_place(tmp_path, path, comments, message):
    with pytest.raises(sv.ConfigError, match=message):
        save_policy(GaussianPolicy({"pose": GroupNoise(0.5)}), tmp_path / path, comments=comments)
    assert not (tmp_path / path).exists()


def test_the_walker_kind_needs_nothing_from_the_analysis():
    import subprocess
    import sys

    code = ("import sys, synthviews.policies as p; from synthviews.policies.walker import WalkerPolicy; "
            "assert 'walker' in p._KINDS and p._KINDS['walker'] == WalkerPolicy.from_dict; "
            "assert not any(m.startswith('synthviews.analysis') for m in sys.modules), 'analysis imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_every_policy_kind_checks_group_names_the_same_way(toy):
    from synthviews.policies import check_groups

    with pytest.raises(sv.ConfigError, match="^my policy: unknown latent group\\(s\\) 'nope' for model 'toy'"):
        check_groups(["pose", "nope"], toy, "my policy")
    with pytest.raises(sv.ConfigError, match="^random_subset policy: unknown latent group\\(s\\) 'nope'"):
        resolve_policy(RandomSubsetPolicy(0.5, (0.1, 0.2), groups=["nope"]), toy)
