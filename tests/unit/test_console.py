"""The launcher's console follows each process's log file: new whole lines, prefixed with the process's name."""

from __future__ import annotations

import io
from pathlib import Path

from services.stack.console import Console


def test_new_lines_of_each_file_are_printed_with_their_name(tmp_path: Path) -> None:
    api, worker = tmp_path / "api-1.log", tmp_path / "worker.log"
    api.write_text("from before the start\n")
    out = io.StringIO()
    console = Console({"api-1": api, "worker": worker}, out)
    with api.open("a") as f:
        f.write("GET /health 200\nhalf a li")
    worker.write_text("loaded gemma\n")  # made after the console started
    console.flush()
    lines = [line.split(" ", 1)[1] for line in out.getvalue().splitlines()]  # without the time
    assert lines == ["api-1  | GET /health 200", "worker | loaded gemma"]
    with api.open("a") as f:
        f.write("ne\n")
    console.flush()
    assert out.getvalue().splitlines()[-1].endswith("api-1  | half a line")


def test_a_truncated_file_is_read_again_from_its_start(tmp_path: Path) -> None:
    log = tmp_path / "nginx.log"
    log.write_text("old line one\nold line two\n")
    out = io.StringIO()
    console = Console({"nginx": log}, out)
    log.write_text("new\n")
    console.flush()
    assert out.getvalue().splitlines()[-1].endswith("nginx | new")
