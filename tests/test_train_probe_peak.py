"""The micro-batch probe's eager trials hold more memory than training: the GPU's peak-memory counter is
reset once the probe is done, so a peak read after training (train_throughput's `peak GiB`) is training's."""

from types import SimpleNamespace

import torch

import nanogpt.train
from nanogpt.train import Trainer


def test_the_peak_memory_counter_is_reset_after_the_probe(monkeypatch):
    calls = []
    monkeypatch.setattr(nanogpt.train, "probe_device_batch_size", lambda *a, **k: calls.append("probe") or 8)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device=None: calls.append("reset"))
    trainer = SimpleNamespace(
        model=None,
        runtime=SimpleNamespace(device="cuda:0"),
        gpt_config=SimpleNamespace(vocab_size=300, sequence_len=32),
        sequences_per_rank=16,
        num_params=10,
        gpu_share=1.0,
        _extra_bytes=lambda: 0,
    )
    assert Trainer._probe_batch_size(trainer) == 8
    assert calls == ["probe", "reset"]
