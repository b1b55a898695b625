"""The cell screen's curves, read a poll at a time: each point shown once, whatever the trainer has written so
far. Driven headless (Textual's Pilot) against the demo study of tui_fixtures."""

import asyncio

from test_review_tui_screens import make_app, open_cell, until
from tui_fixtures import demo_study

from store import Executor, claim, ingest, open_store


def test_validation_points_before_the_first_training_point_are_shown_once(tmp_path):
    """A trainer scores the validation set before its first step: while the cell had val points and no train
    point yet, every poll read the curves afresh and appended the val points again."""
    demo = demo_study(tmp_path)
    with open_store(demo.db) as store:
        attempt = claim(store, "d8-c16", executor=Executor.LOCAL, host="here", gpus="1", num_gpus=1)
        ingest(
            store,
            "d8-c16",
            attempt_id=attempt.id,
            val=[{"step": 0, "tokens": 0, "val_loss": 4.5, "val_bpb": 2.5}],
        )

    async def scenario():
        app = make_app(demo.db)
        async with app.run_test(size=(160, 50)) as pilot:
            screen = await open_cell(app, pilot, "d8-c16")
            polls = [0]
            shown = screen.show

            def counting_show(detail):
                polls[0] += 1
                shown(detail)

            screen.show = counting_show
            await until(pilot, lambda: polls[0] >= 4, what="four more polls")
            assert screen.val_steps == [0]
            with open_store(demo.db) as store:
                ingest(
                    store,
                    "d8-c16",
                    attempt_id=attempt.id,
                    train=[{"step": 1, "tokens": 4096, "loss": 4.0}],
                    val=[{"step": 1, "tokens": 4096, "val_loss": 4.4, "val_bpb": 2.4}],
                )
            await until(pilot, lambda: screen.train_steps, what="the first training point")
            start = polls[0]
            await until(pilot, lambda: polls[0] >= start + 3, what="three more polls")
            assert (screen.train_steps, screen.val_steps) == ([1], [0, 1])

    asyncio.run(scenario())
