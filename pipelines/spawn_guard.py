"""The entry point of every process a command starts with multiprocessing's *spawn*, in place of
``multiprocessing.spawn.spawn_main`` (``pipelines.cli`` rewrites the child's ``-c`` line while a command runs).

A spawned child first reads its preparation data and its process object from a pipe its parent writes. When the
parent is interrupted (Ctrl-C or SIGTERM reach the whole process group) in the middle of that hand-over, the pipe
closes early and the stock entry point dies with an ``EOFError`` traceback on the terminal the user shares with
the command, after the command's one ``interrupted`` line. Here that case ends the child quietly, with exit
status 1: its parent is gone, nothing was started. Exceptions of the child's own work are untouched: they are
reported by ``BaseProcess._bootstrap`` inside ``spawn_main`` and never reach this frame.

Only the standard library is imported here, so a spawned child starts as fast as before.
"""

from __future__ import annotations

import sys


def spawn_main(*args, **kwargs) -> None:
    from multiprocessing import spawn

    try:
        spawn.spawn_main(*args, **kwargs)
    except (EOFError, BrokenPipeError):  # the parent closed the pipe before the hand-over was complete
        sys.exit(1)
