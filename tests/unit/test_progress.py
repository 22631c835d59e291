"""Progress as a user sees it: in place on a terminal, plain lines in a log file (no carriage returns)."""

from __future__ import annotations

import io

from ops import recording
from ops.progress import Progress


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_log_file_gets_one_line_per_ten_percent_and_no_carriage_return() -> None:
    out = io.StringIO()  # not a terminal: what `powerplane evaluate 2>run.log` writes to
    bar = Progress("simulating", 1000, out, every_s=0)
    for done in range(0, 1001, 7):  # many updates, as a simulation loop makes them
        bar.show(done)
    bar.show(1000)
    bar.done()
    text = out.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    # The first update past each 10% mark, once: 0%, 10%, ... (41% stands for the 40% mark).
    assert [int(ln.split()[1].rstrip("%")) // 10 * 10 for ln in lines[:-1]] == list(range(0, 101, 10))
    assert lines[-1].startswith("simulating done in ")


def test_terminal_gets_the_line_rewritten_in_place() -> None:
    out = Tty()
    bar = Progress("simulating", 100, out, every_s=0)
    bar.show(45)
    bar.show(50)
    bar.done()
    text = out.getvalue()
    assert text.count("\n") == 1 and text.endswith("\n")
    assert text.startswith("\rsimulating  45%  ETA ") and "\rsimulating  50%" in text


def test_replay_progress_in_a_log_file_is_line_by_line() -> None:
    out = io.StringIO()
    bar = recording.Progress(27_000, out, every_s=0)
    for done in range(0, 27_001, 900):
        bar.show(done, 10.0)
    bar.finish("replayed 27,000/27,000 records")
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert len(lines) == 12  # 0%, 10%, ..., 100%, and the final line
    assert lines[3] == " 30% 8,100/27,000 records  ETA 0:10" and lines[-1] == "replayed 27,000/27,000 records"
