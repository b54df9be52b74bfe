"""The driver's progress: plain lines off a terminal, the live table on one, driven with Tune's own
Trial objects (no Ray started)."""

import io
import json
import logging
import pickle
import re
import sys
import time

import pytest
from ray import cloudpickle
from ray.tune.experiment import Trial
from rich.console import Console
from rich.logging import RichHandler

from satune.specs import parse_sweep
from satune.sweep import trial_runs
from satune.sweep.rundir import STATE_FILE
from satune.tune import progress
from satune.tune.progress import LiveView, Progress, echo_stderr, live_view, snapshot, wants_live


class Terminal(io.StringIO):
    """stderr as a terminal would be, written into memory."""

    def isatty(self) -> bool:
        return True


@pytest.fixture
def sweep(tmp_path):
    return parse_sweep(
        {
            "name": "t",
            "storage": str(tmp_path / "runs"),
            "trial": {
                "data": {"dataset": "digits"},
                "threat": {"norm": "linf", "eps": 0.1},
                "method": {"kind": "sat", "fraction": 0.5},
                "train": {"epochs": 2},
            },
            "search": {"num_samples": 6, "space": {"method.w_A": {"loguniform": [0.5, 4]}}},
        }
    )


@pytest.fixture
def callback(sweep, tmp_path, monkeypatch):
    state = {"tracking_uri": "http://127.0.0.1:9", "parent_run_id": "p", "experiment_id": "1"}
    (tmp_path / STATE_FILE).write_text(json.dumps(state))
    monkeypatch.setattr(trial_runs.tracking, "runs_of_trial", lambda *a: [])  # no MLflow run to close
    return Progress(sweep, tmp_path)


def trial(tid: str, status: str, *results: dict, w_A: float = 1.5, failures: int = 0) -> Trial:
    """A trial as Tune keeps it on the driver, after these reports (each a second of training)."""
    t = Trial("run", config={"method.w_A": w_A}, trial_id=tid, stub=True)
    if status != Trial.PENDING:
        t.set_status(Trial.RUNNING)
    for i, r in enumerate(results):
        t.update_last_result({"time_total_s": float(i + 1), **r})
    t.run_metadata.num_failures = failures
    t.set_status(status)
    return t


EPOCH_0 = {"epoch": 0, "select/pgd_acc": 0.5, "train/loss": 1.25}
EPOCH_1 = {"epoch": 1, "train/loss": 0.75}  # no proxy this epoch: the table keeps the last one
FINAL = {"epoch": 1, "proxy/pgd_acc": 0.625}


def test_plain_lines_when_stderr_is_not_a_terminal(callback, capsys, monkeypatch):
    monkeypatch.setattr(Trial, "error_file", property(lambda t: f"/runs/{t.trial_id}/error.txt"))  # (needs Ray)
    done = trial("d0", Trial.TERMINATED, EPOCH_0, FINAL, w_A=3.0)  # before a resume: counted, and the best
    a, b = trial("a", Trial.PENDING), trial("b", Trial.RUNNING)
    trials = [done, a, b]
    with live_view():  # pytest's stderr is no terminal
        assert progress._view is None
        callback.on_trial_start(0, trials, a)
        a.set_status(Trial.RUNNING)
        callback.on_trial_result(0, trials, a, EPOCH_0)
        callback.on_step_end(0, trials)
        a.update_last_result(FINAL)
        callback.on_trial_complete(0, trials, a)  # (Tune calls it while the trial is still RUNNING)
        a.set_status(Trial.TERMINATED)
        b.set_status(Trial.ERROR)  # (before on_trial_error)
        callback.on_trial_error(0, trials, b)
    assert capsys.readouterr().err.splitlines() == [
        "[1/6 done] trial a started: method.w_A=1.5",
        "[1/6 done] trial a epoch 1/2: select/pgd_acc=0.5 train/loss=1.25",
        "[2/6 done] trial a done: proxy/pgd_acc=0.625 (best so far: d0)",
        "[3/6 done] trial b failed for good; traceback in /runs/b/error.txt",
    ]


def test_a_trial_stopped_by_the_scheduler(callback, capsys):
    a = trial("a", Trial.RUNNING, EPOCH_0)
    callback.on_trial_complete(0, [a], a)
    assert capsys.readouterr().err == "[1/6 done] trial a stopped early by the scheduler\n"


def test_live_only_on_a_terminal_that_redraws(monkeypatch):
    monkeypatch.setattr(sys, "stderr", Terminal())
    monkeypatch.delenv("SATUNE_PLAIN", raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")
    assert wants_live(Console(stderr=True))
    monkeypatch.setenv("NO_COLOR", "1")  # colours off, the table stays
    assert wants_live(Console(stderr=True))
    monkeypatch.setenv("SATUNE_PLAIN", "1")  # satune sweep --plain
    assert not wants_live(Console(stderr=True))
    monkeypatch.setenv("SATUNE_PLAIN", "0")
    monkeypatch.setenv("TERM", "dumb")
    assert not wants_live(Console(stderr=True))


def test_the_live_table_shows_every_state_and_the_best_so_far(sweep):
    trials = [
        trial("done1", Trial.TERMINATED, EPOCH_0, EPOCH_1, FINAL),
        trial("best2", Trial.TERMINATED, EPOCH_0, EPOCH_1, {**FINAL, "proxy/pgd_acc": 0.75}, w_A=0.625),
        trial("early3", Trial.TERMINATED, EPOCH_0, w_A=3.5),
        trial("fail4", Trial.ERROR, EPOCH_0),
        trial("run5", Trial.RUNNING, EPOCH_0, EPOCH_1, failures=1),
        trial("wait6", Trial.PENDING, w_A=2.25),
    ]
    view = LiveView()
    view.show(snapshot(sweep, trials, {}))
    view.since = time.time() - 75  # started 75 s ago
    console = Console(record=True, force_terminal=True, width=120)
    console.print(view.render(view.since + 75, height=40))
    text = console.export_text()
    assert re.search(r"━+ 4/6 trials done 1:15 elapsed, ETA –", text)  # no progress since this driver began
    table = [re.sub(r"\s+", " ", line).strip() for line in text.splitlines()[1:]]
    assert table[0] == "trial state w_A epoch select/pgd_acc proxy/pgd_acc time"
    assert table[2:] == [
        "done1 done 1.5 2/2 0.5 0.625 0:03",
        "best2 done 0.625 2/2 0.5 0.75 0:03",
        "early3 stopped early 3.5 1/2 0.5 0:01",
        "fail4 failed 1.5 1/2 0.5 0:01",
        "run5 evaluating (retry 1) 1.5 2/2 0.5 " + table[6].rsplit(" ", 1)[1],  # its clock runs
        "wait6 pending 2.25",
        "best so far: best2 proxy/pgd_acc=0.75 (w_A=0.625)",
    ]


def test_a_short_terminal_shows_the_running_the_best_and_the_newest_finished(sweep):
    scores = [0.4, 0.5, 0.4, 0.3]  # t1 is the best
    trials = [trial(f"t{i}", Trial.TERMINATED, EPOCH_0, {**FINAL, "proxy/pgd_acc": v}) for i, v in enumerate(scores)]
    trials += [trial("run", Trial.RUNNING, EPOCH_0), trial("wait", Trial.PENDING)]
    view = LiveView()
    view.show(snapshot(sweep, trials, {}))
    console = Console(record=True, width=120)
    console.print(view.render(time.time(), height=progress.CHROME + 4))  # room for 4 rows
    lines = console.export_text().splitlines()
    assert [line.split()[0] for line in lines[3:-2]] == ["t1", "t2", "t3", "run"]
    assert lines[-2].strip() == "… 2 more trials: 1 done, 1 pending"


def test_the_callback_pickles_while_the_live_table_runs(callback, monkeypatch):
    """Tune pickles the callback with the experiment: the terminal stays out; a resumed sweep's
    copy (unpickled in another process) draws into that process's live table, or prints lines."""
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    monkeypatch.setenv("TERM", "xterm")
    monkeypatch.delenv("SATUNE_PLAIN", raising=False)
    a = trial("a", Trial.PENDING)
    with live_view():
        view = progress._view
        assert view is not None
        callback.on_trial_start(0, [a], a)
        a.set_status(Trial.RUNNING)
        callback.on_step_end(0, [a])
        copies = [pickle.loads(pickle.dumps(callback)), cloudpickle.loads(cloudpickle.dumps(callback))]
        assert all(vars(c).keys() == {"sweep", "run_dir", "echo"} for c in copies)
        a.update_last_result(EPOCH_0)
        copies[0].on_step_end(1, [a])
        assert view.frame is not None and view.frame.rows[0].epoch == 1
    assert progress._view is None and sys.stderr is terminal
    copies[1].on_trial_result(2, [a], a, EPOCH_1)
    assert terminal.getvalue().endswith("0/6 trials done in 0:00\n[0/6 done] trial a epoch 2/2: train/loss=0.75\n")


@pytest.mark.parametrize("ending", [KeyboardInterrupt, RuntimeError])
def test_the_live_table_ends_cleanly_on_ctrl_c_and_errors(monkeypatch, ending):
    """Echo lines and log records print above the table; stderr and the log handlers are given back."""
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    monkeypatch.setenv("TERM", "xterm")
    monkeypatch.delenv("SATUNE_PLAIN", raising=False)
    own = Console(file=io.StringIO())
    handler = RichHandler(console=own, show_time=False, show_path=False)
    logging.getLogger().addHandler(handler)
    try:
        with pytest.raises(ending), live_view():
            assert sys.stderr is not terminal and handler.console is not own  # both through the live console
            echo_stderr("warning: an echo line")
            logging.getLogger("satune.test").warning("a log record")
            raise ending()
    finally:
        logging.getLogger().removeHandler(handler)
    assert progress._view is None and sys.stderr is terminal and handler.console is own
    out = terminal.getvalue()
    assert "warning: an echo line" in out and "a log record" in out and own.file.getvalue() == ""
    assert out.endswith("no trial started in 0:00\n") and "\x1b[?25h" in out  # the cursor shown again
