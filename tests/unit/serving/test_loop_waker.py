"""The engine's deliveries wake the event loop once for all the streams one step reached."""

from __future__ import annotations

import asyncio
import threading

import pytest

from ml_playground.serving.app import LoopWaker, loop_waker

pytestmark = pytest.mark.unit


def test_deliveries_that_come_together_share_one_wake_up() -> None:
    async def scenario() -> LoopWaker:
        waker = loop_waker(asyncio.get_running_loop())
        assert loop_waker(asyncio.get_running_loop()) is waker  # one per loop
        events = [asyncio.Event() for _ in range(8)]
        for event in events:  # a batch step delivering to eight streams before the loop runs again
            waker.wake(event)
        assert waker.wakeups == 1
        await asyncio.wait_for(asyncio.gather(*(event.wait() for event in events)), 5)
        later = asyncio.Event()
        done = threading.Thread(target=waker.wake, args=(later,))  # from another thread, as the engine does
        done.start()
        await asyncio.wait_for(later.wait(), 5)
        done.join()
        assert waker.wakeups == 2
        return waker

    asyncio.run(scenario())


def test_a_closed_loop_refuses_and_leaves_nothing_pending() -> None:
    loop = asyncio.new_event_loop()
    waker = LoopWaker(loop)
    loop.close()
    with pytest.raises(RuntimeError):
        waker.wake(asyncio.Event())
    assert waker.due == []
    assert not waker.signalled
