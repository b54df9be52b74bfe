import threading
import time

from satune.watchdog import watched


def test_a_server_away_for_patience_is_lost_once_and_one_that_comes_back_is_not():
    answers = iter([None, "refused", "refused", None] + ["refused"] * 1000)  # away briefly, then for good
    lost: list[tuple[str, float]] = []
    called = threading.Event()

    def on_lost(why: str) -> None:
        lost.append((why, time.monotonic()))
        called.set()

    start = time.monotonic()
    with watched(lambda: next(answers), patience=0.2, on_lost=on_lost, every=0.05):
        assert called.wait(5)
        time.sleep(0.2)  # (it is told once)
    assert [why for why, _ in lost] == ["refused"]
    assert lost[0][1] - start >= 0.2 + 4 * 0.05  # counted from when it went away for good


def test_the_watchdog_ends_with_its_block():
    with watched(lambda: "refused", patience=60, on_lost=lambda why: None, every=0.01):
        pass
    assert not [t for t in threading.enumerate() if t.name == "watchdog"]
