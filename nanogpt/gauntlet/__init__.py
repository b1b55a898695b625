"""The eval gauntlet: in-context benchmarks scored during and after training (docs/evals.md).

- `tasks.py`: the task table (type, shots, random baseline, category, file) and the presets (no torch).
- `data.py`: reading and validating a task's JSONL rows, few-shot prompts, tokenized items (no torch).
- `scoring.py`: batched log-likelihood scoring and greedy generation on the model (torch).
- `aggregate.py`: accuracy, centered scores, category averages, core_average, standard errors (numpy).
- `bundle.py`: where the eval data lives and how it is fetched (stdlib).
- `evaluate.py`: one gauntlet run over a model, sharded over ranks, as `eval` events (torch).

This package's `__init__` imports nothing, so that `nanogpt.config` can check a preset name through
`nanogpt.gauntlet.tasks` without loading torch.
"""
