"""benchmarks/eval_throughput.py works: its tiny CPU mode runs the whole measurement on a small bundle (the
GPU numbers come from the same code with a depth-12 model)."""

import json

import pytest
from gauntlet_fixtures import TINY_TASKS, write_bundle

from benchmarks import eval_throughput


def test_the_eval_throughput_benchmark_runs_end_to_end_on_the_cpu(tmp_path, capsys):
    bundle = write_bundle(tmp_path / "bundle", TINY_TASKS)
    out = tmp_path / "eval.json"
    summary = eval_throughput.main(
        ["--tiny", "--eval-bundle", str(bundle), "--reference-examples", "2", "--json", str(out)]
    )
    assert json.loads(out.read_text()) == json.loads(json.dumps(summary))
    assert summary["num_tasks"] == 4 and summary["num_examples"] == 3 + 3 + 3 + 2
    assert [t["task"] for t in summary["tasks"]] == ["copa", "winograd", "lambada_openai", "svamp"]
    assert all(t["sampled"] == 2 and t["agreement"] == 1.0 for t in summary["tasks"])  # same decisions
    assert summary["batched_s"] > 0 and summary["speedup"] > 0
    assert summary["one_at_a_time_s_estimated"] == sum(
        t["one_at_a_time_estimate_s"] for t in summary["tasks"]
    )
    printed = capsys.readouterr().out
    assert "speedup:" in printed and "whole preset:" in printed


def test_no_example_timed_one_at_a_time_is_refused_rather_than_a_speedup_of_zero(tmp_path, capsys):
    bundle = write_bundle(tmp_path / "bundle", TINY_TASKS)
    with pytest.raises(SystemExit) as exit_info:
        eval_throughput.main(["--tiny", "--eval-bundle", str(bundle), "--reference-examples", "0"])
    assert exit_info.value.code == 2
    assert "--reference-examples must be at least 1, got 0" in capsys.readouterr().err


def test_the_examples_timed_one_at_a_time_are_a_seeded_sample_not_the_first(tmp_path, monkeypatch):
    """The first examples of a task stood for all of it: a bundle ordered by length biased the estimate."""
    bundle = write_bundle(tmp_path / "bundle", TINY_TASKS)
    timed, real_score_items = [], eval_throughput.score_items

    def recording_score_items(model, spec, items, tokenizer, **kwargs):
        if kwargs.get("max_batch_tokens") == 1:  # the one-at-a-time timing
            timed.append((spec.name, [repr(item) for item in items]))
        return real_score_items(model, spec, items, tokenizer, **kwargs)

    prepared, real_prepare = [], eval_throughput.prepare

    def recording_prepare(*args, **kwargs):
        prepared.append(real_prepare(*args, **kwargs))
        return prepared[-1]

    monkeypatch.setattr(eval_throughput, "score_items", recording_score_items)
    monkeypatch.setattr(eval_throughput, "prepare", recording_prepare)
    argv = ["--tiny", "--eval-bundle", str(bundle), "--reference-examples", "2"]
    eval_throughput.main(argv)
    first_run = list(timed)
    timed.clear()
    eval_throughput.main(argv)
    assert timed == first_run  # the same sample each run
    firsts = {task.spec.name: [repr(item) for item in task.items[:2]] for task in prepared[-1].tasks}
    assert any(items != firsts[name] for name, items in timed), timed
