"""Progress bars only where someone watches them: a bar redraws itself with carriage returns and escape codes,
which a log file (``nemu-build ... 2> build.log``, CI, ``nohup``) keeps as noise.

Every command decides with :func:`show_progress` once: bars are shown when the user did not ask to hide them
(``--no-progress``) and standard error is a terminal, or when ``NEMU_PROGRESS=1`` forces them (``0`` hides them
everywhere). The libraries take the answer as their ``progress`` flag (``tqdm(disable=not progress)``).
"""

from __future__ import annotations

import os
import sys

#: The environment variable that forces bars on (1) or off (0) whatever standard error is.
FORCE_VARIABLE = "NEMU_PROGRESS"


def bar_disabled(stream=None) -> bool:
    """True when a progress bar should not be drawn on ``stream`` (default: standard error): it is not a terminal
    (a file, a pipe, closed), unless ``NEMU_PROGRESS`` says otherwise."""
    forced = os.environ.get(FORCE_VARIABLE, "").strip().lower()
    if forced in ("1", "true", "yes", "on"):
        return False
    if forced in ("0", "false", "no", "off"):
        return True
    stream = sys.stderr if stream is None else stream
    try:
        return not stream.isatty()
    except (AttributeError, ValueError, OSError):  # no stream, or a closed one
        return True


def show_progress(wanted: bool = True, stream=None) -> bool:
    """The ``progress`` flag for a library call: ``wanted`` (not ``--no-progress``) and a bar can be drawn."""
    return bool(wanted) and not bar_disabled(stream)
