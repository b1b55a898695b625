"""Where the chat model runs beside runners on one machine: never on a GPU that a runner claims (its trainer
may not show in NVML yet), and its own GPU claimed while the chat runs, so that runners skip it."""

import asyncio

from runner_fixtures import FakeNvml
from test_tui import make_app, until
from tui_fixtures import TelemetryNvml, demo_study

import runner.gpus
from runner.gpus import GpuPool
from tui.chat_process import choose_placement
from tui.chat_screen import ChatScreen
from tui.study_screen import StudyScreen


def test_the_chat_skips_a_gpu_a_runner_claims_and_claims_its_own(tmp_path):
    """A runner had just started a cell on GPU 2, whose trainer was still importing torch: NVML showed the GPU
    free, and the chat loaded its model there."""
    nvml = FakeNvml(3)
    runner_a = GpuPool(nvml=nvml, claim_dir=tmp_path)
    assert runner_a.claim([2]) == [2]
    placement = choose_placement(nvml, claim_dir=tmp_path)
    assert (placement.device, placement.label) == ("cuda", "GPU 1; GPU 2 is claimed by a runner")
    assert placement.env["CUDA_VISIBLE_DEVICES"] == "1"
    runner_b = GpuPool(nvml=nvml, claim_dir=tmp_path)
    assert runner_b.claim([0, 1, 2]) == [0]  # the chat's GPU too, while its model loads
    placement.release()
    placement.release()  # again: nothing more to give back
    assert runner_b.claim([1]) == [1]
    everything = choose_placement(nvml, claim_dir=tmp_path)
    assert (everything.device, everything.env) == ("cpu", {})
    assert everything.label == (
        "CPU; GPU 2 is claimed by a runner; GPU 1 is claimed by a runner; GPU 0 is claimed by a runner"
    )


def test_the_chat_screen_gives_its_gpu_back_when_it_closes(tmp_path, monkeypatch):
    demo = demo_study(tmp_path)
    claims = tmp_path / "claims"
    monkeypatch.setattr(runner.gpus, "default_claim_dir", lambda: claims)
    nvml = TelemetryNvml(2)
    nvml.__name__ = "pynvml"  # as the real module: runners and the chat claim GPUs in the user's folder

    async def scenario():
        app = make_app(demo.db, nvml_loader=lambda: nvml)
        async with app.run_test(size=(160, 50)) as pilot:
            await until(pilot, lambda: isinstance(app.screen, StudyScreen) and app.screen.status)
            await pilot.press("t")
            screen = await until(
                pilot, lambda: isinstance(app.screen, ChatScreen) and app.screen.ready and app.screen
            )
            assert screen.placement.label == "GPU 1"
            other_runner = GpuPool(nvml=nvml)
            assert other_runner.claim([0, 1]) == [0]
            other_runner.keep_claims(())
            await pilot.press("escape")
            await until(pilot, lambda: isinstance(app.screen, StudyScreen) and not screen.is_attached)
            assert other_runner.claim([0, 1]) == [0, 1]
            other_runner.keep_claims(())

    asyncio.run(scenario())
