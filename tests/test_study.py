"""Study files: the shipped studies load; every problem is reported at once as `path:LINE: key: message`."""

import re
import textwrap
from pathlib import Path

import pytest

from runner.study import StudyError, cell_config, load, parse

ROOT = Path(__file__).resolve().parents[1]

GOOD = """\
name: tiny
mode: pretraining
data:
  source: {name: python-source, max_bytes: 1MB}
  tokenizer: bpe:300
grid:
  depth: [1, 2]
  flops: [1e9, 3e9]
  seed: [0, 1]
model:
  aspect_ratio: 16
  head_dim: 16
  sequence_len: 32
train:
  total_batch_tokens: 256
  device: cpu
"""


def problems(text: str, name: str = "s.yaml") -> list[str]:
    with pytest.raises(StudyError) as caught:
        parse(textwrap.dedent(text), path=name)
    return list(caught.value.problems)


def line_of(text: str, needle: str) -> int:
    """1-based line of the first line containing needle."""
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


@pytest.mark.parametrize("name", ["quickstart", "isoflop", "midtrain", "h100-isoflop"])
def test_the_shipped_studies_load(name):
    study = load(ROOT / "studies" / f"{name}.yaml")
    assert study.name == name
    assert study.grid.depth and study.grid.flops
    assert all(isinstance(c, float) for c in study.grid.flops)


def test_isoflop_is_the_classic_sweep():
    study = load(ROOT / "studies" / "isoflop.yaml")
    assert study.grid.depth == (6, 8, 10, 12, 14)
    assert study.grid.flops == (1e18, 2e18, 3e18, 6e18)
    assert study.data.source.name == "fineweb-edu" and study.data.tokenizer == "gpt2"


def test_midtrain_example_is_mode_all_on_the_task_mixture():
    study = load(ROOT / "studies" / "midtrain.yaml")
    assert study.mode == "all" and study.mid_training.data.source.name == "task-mixture"
    assert study.mid_training.horizon == {"target_tokens": 200_000_000}


def test_numbers_with_an_exponent_read_as_numbers():
    study = parse(GOOD.replace("[1e9, 3e9]", "[1e9, 3.5E+9]"))
    assert study.grid.flops == (1e9, 3.5e9)
    assert parse(GOOD + "checkpoint: {every_steps: 1e3}\n").training["checkpoint"]["every_steps"] == 1000


def test_points_are_listed_budget_by_budget():
    points = parse(GOOD).grid.points()
    assert [(p["flops"], p["depth"], p["seed"]) for p in points[:4]] == [
        (1e9, 1, 0),
        (1e9, 1, 1),
        (1e9, 2, 0),
        (1e9, 2, 1),
    ]
    assert len(points) == 8


def test_depths_per_budget_give_each_isoflop_curve_its_own_models():
    study = parse(GOOD.replace("  depth: [1, 2]\n", "  depth:\n    3e9: [3, 2]\n    1e9: [2, 1]\n"))
    assert study.grid.depth == (1, 2, 3)
    points = [(p["flops"], p["depth"]) for p in study.grid.points() if p["seed"] == 0]
    assert points == [(1e9, 1), (1e9, 2), (3e9, 2), (3e9, 3)]  # budget by budget; never (1e9, 3)
    assert len(study.grid.points()) == 8  # × two seeds


def test_depths_per_budget_must_name_each_budget_once_with_valid_depths():
    text = GOOD.replace(
        "  depth: [1, 2]\n", "  depth:\n    1e9: [1, 0]\n    2e9: [1]\n    1.0e9: [2]\n    big: [3]\n"
    )
    found = problems(text, "per.yaml")
    expected = [
        ("  depth:", "grid.depth: no depths for budget 3e9; give each its own"),
        ("1e9: [1, 0]", "grid.depth.1e9[1]: must be positive, got 0"),
        ("2e9: [1]", "grid.depth.2e9: budget 2e9 is not one of grid.flops (1e9, 3e9)"),
        ("1.0e9: [2]", "grid.depth.1.0e9: budget 1e9 is given twice"),
        ("big: [3]", "grid.depth.big: 'big' is not a FLOP budget"),
    ]
    assert len(found) == len(expected), found
    for (needle, message), problem in zip(expected, found, strict=True):
        assert problem.startswith(f"per.yaml:{line_of(text, needle)}: {message}"), problem


def test_every_problem_at_once_with_its_line():
    text = """\
    name: bad
    seed: 3
    data:
      source: python-source
      tokenizer: bpe:512
    grid:
      depth: [2, 4, 4]
      flops: [1e12, -2e12]
      seed: []
    optim:
      matrix_lrr: 0.02
    schedule:
      warmup_frac: 0.6
      cooldown_frac: 0.6
    retry:
      max_attempts: 0
    resources:
      executor: kubernetes
      overlap_startup: sometimes
    """
    found = problems(text, "bad.yaml")
    body = textwrap.dedent(text)
    expected = [
        ("seed: 3", "seed: not a key here; it belongs in grid.seed"),
        ("depth: [2, 4, 4]", "grid.depth: duplicate value 4"),
        ("flops: [1e12", "grid.flops[1]: must be a positive number, got -2e+12"),
        ("seed: []", "grid.seed: empty; give at least one value"),
        ("matrix_lrr", "optim.matrix_lrr: unknown key (did you mean 'matrix_lr'?)"),
        ("warmup_frac: 0.6", "schedule.warmup_frac: warmup_frac + cooldown_frac: must be <= 1"),
        ("max_attempts: 0", "retry.max_attempts: must be positive, got 0"),
        ("executor: kubernetes", "resources.executor: must be one of local, slurm, got 'kubernetes'"),
        ("overlap_startup", "resources.overlap_startup: must be true or false, got 'sometimes'"),
    ]
    assert len(found) == len(expected)
    for (needle, message), problem in zip(expected, found, strict=True):
        assert problem.startswith(f"bad.yaml:{line_of(body, needle)}: {message}"), problem


def test_a_key_given_twice_does_not_hide_the_other_problems():
    retry = "retry:\n  max_attempts: 1\n"
    text = "seed: 3\n" + GOOD.replace("aspect_ratio", "aspect_ratoi") + retry + retry
    first, second = len(text.splitlines()) - 3, len(text.splitlines()) - 1
    typo = line_of(text, "aspect_ratoi")
    assert problems(text) == [
        "s.yaml:1: seed: not a key here; it belongs in grid.seed",
        f"s.yaml:{typo}: model.aspect_ratoi: unknown key (did you mean 'aspect_ratio'?)",
        f"s.yaml:{second}: retry: given twice (first at line {first})",
    ]


def test_local_paths_that_match_no_file_are_problems_of_the_study(tmp_path):
    (tmp_path / "a.txt").write_text("some text")
    source = f"  source: {{name: local, paths: ['{tmp_path}/*.txt', /nonexistent/x.txt]}}\n"
    text = GOOD.replace("  source: {name: python-source, max_bytes: 1MB}\n", source) + "seed: 1\n"
    line = line_of(text, "nonexistent")
    assert problems(text) == [
        f"s.yaml:{line}: data.source.paths[1]: '/nonexistent/x.txt' matches no files; check the path or glob",
        f"s.yaml:{len(text.splitlines())}: seed: not a key here; it belongs in grid.seed",
    ]


def test_a_key_given_twice_is_an_error_naming_both_lines():
    text = GOOD + "model:\n  aspect_ratio: 8\n"
    [problem] = problems(text)
    assert problem == f"s.yaml:{len(text.splitlines()) - 1}: model: given twice (first at line 10)"


def test_yaml_merge_keys_merge_and_a_recursive_alias_is_a_problem():
    """`<<:` as YAML defines it (PyYAML's safe loader takes it): the merged keys, which the mapping's own
    override without a 'given twice'; the same key twice among its own is still a problem; an alias inside
    the mapping it names is one problem, not a RecursionError."""
    own = "model:\n  aspect_ratio: 16\n  head_dim: 16\n"
    merged = "model:\n  <<: {aspect_ratio: 8, head_dim: 16}\n  aspect_ratio: 16\n"
    study = parse(GOOD.replace(own, merged), path="s.yaml")
    assert study.to_dict()["training"]["model"] == {"aspect_ratio": 16, "head_dim": 16, "sequence_len": 32}
    twice = GOOD.replace(own, merged + "  aspect_ratio: 4\n")
    assert problems(twice) == ["s.yaml:13: model.aspect_ratio: given twice (first at line 12)"]
    recursive = GOOD + "wandb: &w\n  project: *w\n"
    alias = "s.yaml:18: wandb.project: an alias to the mapping or list that contains it"
    assert problems(recursive)[0] == alias
    merges_itself = "s.yaml:17: wandb.<<: merges a mapping that contains it"
    assert problems(GOOD + "wandb: &w {<<: *w}\n") == [merges_itself]


def test_a_list_of_merged_mappings_gives_the_earlier_ones_keys_and_an_alias_reads_the_same():
    """YAML's merge: in `<<: [*a, *b]` a key of a wins over b's (PyYAML's own merge lets b win for most
    names); a merging mapping reached again through an alias reads the same, without a 'given twice'."""
    own = "model:\n  aspect_ratio: 16\n  head_dim: 16\n  sequence_len: 32\n"
    listed = "model: &m\n  <<: [{aspect_ratio: 16, sequence_len: 32}, {aspect_ratio: 8, head_dim: 16}]\n"
    study = parse(GOOD.replace(own, listed), path="s.yaml")
    assert study.to_dict()["training"]["model"] == {"aspect_ratio": 16, "head_dim": 16, "sequence_len": 32}
    schedule = "schedule: &s {<<: {warmup_frac: 0.1, cooldown_frac: 0.2}, warmup_frac: 0.0}\n"
    mid = "mid_training:\n  data: {source: {name: task-mixture}}\n  tokens: 1000\n  schedule: *s\n"
    study = parse(GOOD.replace("mode: pretraining", "mode: all") + schedule + mid, path="s.yaml")
    both = {"warmup_frac": 0.0, "cooldown_frac": 0.2}
    assert study.to_dict()["training"]["schedule"] == both == study.mid_training.overrides["schedule"]


@pytest.mark.parametrize(
    ("edit", "needle", "message"),
    [
        (("[1, 2]", "[]"), "depth:", "grid.depth: empty; give at least one value"),
        (("[1e9, 3e9]", "[0]"), "flops:", "grid.flops[0]: must be a positive number, got 0"),
        (("[1e9, 3e9]", "[1e9, big]"), "flops:", "grid.flops[1]: expected a number, got a string ('big')"),
        (("[1, 2]", "[1, 2.5]"), "depth:", "grid.depth[1]: expected an integer, got a number (2.5)"),
        (("mode: pretraining", "mode: finetune"), "mode:", "mode: must be one of pretraining, mid-training"),
        (("bpe:300", "bpe:many"), "tokenizer:", "data.tokenizer: 'bpe:many' should be bpe:<vocab size>"),
        (
            ("python-source, max", "pythn-source, max"),
            "source:",
            "data.source: unknown source 'pythn-source'; choose one of",
        ),
        (("  head_dim: 16", "  head_dim: 16\n  depth: 3"), "depth: 3", "model.depth: not a key here"),
        (
            ("  sequence_len: 32", "  sequence_len: 30"),
            "total_batch_tokens",
            "train.total_batch_tokens: 256 tokens per step is not a multiple of sequence_len × gpus_per_cell",
        ),
    ],
)
def test_single_problems_name_the_line_and_key(edit, needle, message):
    text = GOOD.replace(*edit)
    assert text != GOOD
    found = problems(text)
    assert len(found) == 1, found
    assert found[0].startswith(f"s.yaml:{line_of(text, needle)}: {message}"), found[0]


def test_mode_rules():
    [problem] = problems(GOOD.replace("mode: pretraining", "mode: all"))
    assert problem == "s.yaml:2: mode: mode all needs a mid_training section (its data and horizon)"
    mid = "mid_training:\n  data: {source: {name: local, paths: x.jsonl, format: chat}}\n  tokens: 1000\n"
    [problem] = problems(GOOD + mid)
    assert problem.startswith(
        f"s.yaml:{line_of(GOOD + mid, 'mid_training')}: mid_training: mode is pretraining"
    )
    found = problems(GOOD.replace("mode: pretraining", "mode: mid-training") + mid)
    assert any("mid_training: mode mid-training needs init_from" in p for p in found)
    assert any(
        p.startswith("s.yaml:3: data: mode mid-training trains on mid_training.data only") for p in found
    )
    both = mid.replace("tokens: 1000", "tokens: 1000\n  steps: 10")
    found = problems(GOOD.replace("mode: pretraining", "mode: all") + both)
    assert any(
        "give exactly one horizon: flops, tokens or steps; tokens and steps are given" in p for p in found
    )


def test_mode_all_builds_both_stages_of_each_point(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "x.jsonl").write_text("")  # the chats themselves are read only when the data is prepared
    mid = "mid_training:\n  data: {source: {name: local, paths: x.jsonl, format: chat}}\n  steps: 7\n"
    mid += "  optim: {matrix_lr: 0.01}\n"
    study = parse(GOOD.replace("mode: pretraining", "mode: all") + mid)
    axes = study.grid.points()[0]
    pre = cell_config(study, axes, mode="pretraining", train_dir="d")
    child = cell_config(study, axes, mode="mid-training", train_dir="m")
    assert pre["train"]["target_flops"] == 1e9 and pre["mode"] == "pretraining"
    assert child["train"]["num_steps"] == 7 and child["train"]["target_flops"] is None
    assert child["mode"] == "mid-training" and child["init_from"] is None  # the runner fills it in
    assert child["model"] == pre["model"]  # the same shape as the checkpoint it starts from
    assert (pre["optim"]["matrix_lr"], child["optim"]["matrix_lr"]) == (0.02, 0.01)


def test_lr_multiplier_axis_scales_every_learning_rate():
    study = parse(GOOD.replace("  seed: [0, 1]", "  seed: [0]\n  lr_multiplier: [0.5, 2]"))
    low, high = (
        cell_config(study, axes, mode="pretraining", train_dir="d") for axes in study.grid.points()[:2]
    )
    for key in ("matrix_lr", "embedding_lr", "unembedding_lr", "scalar_lr"):
        assert high["optim"][key] == pytest.approx(4 * low["optim"][key])


def test_a_missing_file_and_bad_yaml_are_reported_with_the_path(tmp_path):
    with pytest.raises(StudyError) as caught:
        load(tmp_path / "nope.yaml")
    assert caught.value.problems == (f"{tmp_path / 'nope.yaml'}: no such study file",)
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: x\ngrid: [1,\n")
    with pytest.raises(StudyError) as caught:
        load(broken)
    assert re.match(rf"{re.escape(str(broken))}:\d+: YAML: ", caught.value.problems[0])


def test_gpus_per_cell_may_be_given_per_depth():
    """One study of one-GPU and four-GPU cells (issue 11): every depth of the grid names its GPUs."""
    study = parse(GOOD + "resources:\n  gpus_per_cell: {1: 1, 2: 4}\n")
    assert study.resources.gpus_per_cell == ((1, 1), (2, 4))
    assert study.resources.overlap_startup is True
    assert parse(GOOD + "resources:\n  overlap_startup: false\n").resources.overlap_startup is False
    assert [study.resources.processes_for(depth) for depth in (1, 2)] == [1, 4]
    with pytest.raises(ValueError, match="per depth"):
        study.resources.processes_per_cell  # noqa: B018
    text = GOOD + "resources:\n  gpus_per_cell: {1: 1, 3: 2}\n"
    line = line_of(text, "gpus_per_cell")
    assert problems(text) == [
        f"s.yaml:{line}: resources.gpus_per_cell: no GPUs for depth 2 of grid.depth; give every depth",
        f"s.yaml:{line}: resources.gpus_per_cell: depth 3 is not in grid.depth",
    ]
    [problem] = problems(GOOD + "resources:\n  gpus_per_cell: {1: 1, 2: 0}\n")
    assert "resources.gpus_per_cell.2: must be positive, got 0" in problem
    # The batch must split over each depth's GPUs: 256 tokens are 8 sequences of 32, not a multiple of 3.
    [problem] = problems(GOOD + "resources:\n  gpus_per_cell: {1: 1, 2: 3}\n")
    assert "256 tokens per step is not a multiple of sequence_len × gpus_per_cell = 32 × 3" in problem
    [problem] = problems(GOOD + "resources:\n  gpus_per_cell: {1: 1, deep: 4}\n")
    assert "resources.gpus_per_cell.deep: 'deep' is not a depth" in problem
