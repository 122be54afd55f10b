"""One vocabulary for every command line of the toolkit.

The same thing has the same flag, type and help wording in every command:

=================  ==============================================================================================
``--raw RAW``      a raw folder a command reads (NEMu records, or the MOSEI source files)
``--data DATA``    a built dataset folder (manifest.json + shards), the input of training and evaluation
``--out DIR``      an output folder the command creates or fills
``--run RUN``      a run folder written by hhmpn-train (model.pt, run.json, metrics.json)
``--output FILE``  one output file
``--fold K``       a cross-validation rotation, checked against 0..9
``--split SPLIT``  train, validation (also: valid) or test
``--seed S``       one seed; ``--seeds`` several
``--workers N``    parallel processes (build, predict, benchmark; the benchmark's old ``--jobs`` is an alias)
``--ablation A``   ``no-f2f``, ``no-f2l``, ``no-l2l``, ``no-m2l`` (as ``--models hhmpn-no-f2f`` and run folders)
numbers            checked by their types before any work (:func:`number`: ``positive_int``, ``positive_float``,
                   ``unit_interval``, ...): no inf, nan, or value out of range reaches a command
lists              comma-separated everywhere: ``--models A,B``, ``--modalities lyrics,audio``, ``--seeds 0,1,2``
=================  ==============================================================================================

``prog`` is the console script a user types (``COMMANDS``, the same names as pyproject.toml's
``[project.scripts]``); ``python -m MODULE`` runs the same command. Every flag's default is stated once in its
help. Old spellings keep working for one release through :class:`DeprecatedAlias`, which prints a deprecation
message naming the new flag. Every message starts with ``prog`` (:func:`error`), however the command was started.

Every command's ``main`` is decorated with :func:`command`: Ctrl-C and SIGTERM end it with one line
(``PROG: interrupted``, plus "; run the same command again to resume" where it resumes) and exit status 130 or 143,
never a traceback (:func:`run_command`). Only argparse and light modules are imported before the arguments are
parsed, so ``--help`` answers at once (tests/test_cli.py).
"""

from __future__ import annotations

import argparse
import functools
import math
import multiprocessing
import re
import shutil
import signal
import sys
import textwrap
import threading
from pathlib import Path

from nemu.splits import N_FOLDS, SPLIT_ALIASES, SPLIT_CHOICES, split_key

# console script -> module whose main(argv) it runs (pyproject.toml [project.scripts]; tests/test_cli.py)
COMMANDS = {
    "nemu-sample": "pipelines.make_sample",
    "nemu-build": "pipelines.build_nemu",
    "nemu-build-mosei": "pipelines.build_mosei",
    "nemu-crawl": "pipelines.crawl_nemu",
    "hhmpn-train": "pipelines.train",
    "hhmpn-predict": "pipelines.predict",
    "nemu-benchmark": "pipelines.benchmark",
    "nemu-verify": "pipelines.verify",
}
SCRIPTS = {module: script for script, module in COMMANDS.items()}
# the documented ``python -m`` spellings kept for these commands (each module's ``__main__`` block runs the command)
MODULE_ALIASES = {"pipelines.train": "hhmpn.train", "pipelines.predict": "hhmpn.predict",
                  "pipelines.benchmark": "baselines.run_all"}

# The shared flags' help, word for word the same in every command
HELP = {
    "raw": "raw NEMu folder: records.jsonl and the audio and image files it names (format in README.md)",
    "data": "built dataset folder (the OUT of nemu-build or nemu-build-mosei, holding manifest.json)",
    "run": "run folder written by hhmpn-train or a nemu-benchmark cell (model.pt, run.json, metrics.json)",
    "fold": f"cross-validation rotation k in 0..{N_FOLDS - 1} (test = fold k, valid = fold k+1, train = the rest)",
    "seed": "random seed",
    "seeds": "comma-separated seeds, one run per seed, e.g. 0,1,2",
    "models": "comma-separated model names (see --list)",
    "modalities": "comma-separated subset of the dataset's modalities, e.g. lyrics,audio",
    "split": f"split to read: {', '.join(SPLIT_CHOICES)} ('valid' is accepted for validation)",
    "progress": "hide progress bars",
}

_STATES_DEFAULT = re.compile(r"\bdefault\b", re.IGNORECASE)


def reflow(text: str, width: int) -> str:
    """Prose lines re-flowed as paragraphs (a docstring's own line breaks do not survive a narrower terminal);
    blank lines, list items ("1. ", "- ") and indented lines (commands, tables) are kept."""
    out: list[str] = []
    paragraph: list[str] = []

    def flush():
        if paragraph:
            marker = re.match(r"(\d+\.|[-*]) ", paragraph[0])
            hang = " " * len(marker.group(0)) if marker else ""
            out.append(textwrap.fill(" ".join(paragraph), width, subsequent_indent=hang))
            paragraph.clear()

    for line in text.splitlines():
        if paragraph and re.match(r"(\d+\.|[-*]) ", paragraph[0]) and re.match(r" {2,3}\S", line):
            paragraph.append(line.strip())  # the continuation of a list item
        elif not line.strip() or line[:1].isspace():
            flush()
            out.append(line if line.strip() else "")
        else:
            if re.match(r"(\d+\.|[-*]) ", line):
                flush()
            paragraph.append(line.strip())
    flush()
    return "\n".join(out)


def help_with_default(action: argparse.Action) -> str | None:
    """``action``'s help with "(default: X)" appended, unless it already says what the default is or the flag
    has none (None, False, positionals)."""
    text = action.help
    if text is None or text is argparse.SUPPRESS or "%(default)" in text or _STATES_DEFAULT.search(text):
        return text
    default = action.default
    if default is None or default is False or default is argparse.SUPPRESS or not action.option_strings:
        return text
    if isinstance(default, (list, tuple)):
        default = ",".join(str(v) for v in default)
    return f"{text} (default: {str(default).replace('%', '%%')})"


class CommandParser(argparse.ArgumentParser):
    """The toolkit's argument parser: no abbreviated flags (``--data`` is never taken for ``--datasets``),
    every default stated once in its flag's help (:func:`help_with_default`), the description re-flowed to
    the terminal (:func:`reflow`), and flags that are required once their deprecated aliases are counted."""

    def __init__(self, *args, description: str | None = None, epilog: str | None = None, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        width = max(shutil.get_terminal_size().columns - 2, 20)  # argparse's own choice of width
        super().__init__(*args, description=reflow(description, width) if description else None,
                         epilog=reflow(epilog, width) if epilog else None, **kwargs)
        self._required_after_aliases: list[tuple[str, str]] = []
        self._aliases: list[DeprecatedAlias] = []

    def _noted(self, action: argparse.Action) -> argparse.Action:
        action.help = help_with_default(action)
        if isinstance(action, DeprecatedAlias):
            self._aliases.append(action)
        return action

    def add_argument(self, *args, **kwargs) -> argparse.Action:
        return self._noted(super().add_argument(*args, **kwargs))

    def add_argument_group(self, *args, **kwargs):
        group = super().add_argument_group(*args, **kwargs)
        add = group.add_argument
        group.add_argument = lambda *a, **k: self._noted(add(*a, **k))  # the group's flags get the same notes
        return group

    def require(self, dest: str, flag: str) -> None:
        """``flag`` (dest ``dest``) must be given, by its own name or a deprecated alias."""
        self._required_after_aliases.append((dest, flag))

    def _formatting_required(self):
        """The flags that :meth:`require` names, marked required while usage and help are formatted (argparse
        itself must not refuse them at parse time: a deprecated alias may stand for them)."""
        flags = {flag for _, flag in self._required_after_aliases}
        return [a for a in self._actions if set(a.option_strings) & flags and not a.required]

    def format_usage(self) -> str:
        marked = self._formatting_required()
        for action in marked:
            action.required = True
        try:
            return super().format_usage()
        finally:
            for action in marked:
                action.required = False

    def format_help(self) -> str:
        marked = self._formatting_required()
        for action in marked:
            action.required = True
        try:
            return super().format_help()
        finally:
            for action in marked:
                action.required = False

    def parse_known_args(self, args=None, namespace=None):
        namespace, extras = super().parse_known_args(args, namespace)
        for alias in self._aliases:  # deprecated aliases hand their value to the flag they stand for
            if getattr(namespace, alias.dest, None) is None:
                if hasattr(namespace, alias.dest):
                    delattr(namespace, alias.dest)
                continue
            current = getattr(namespace, alias.target, None)
            if current is not None and current != self.get_default(alias.target):
                self.error(f"{alias.given} and {alias.new} both given; use {alias.new} only")
            setattr(namespace, alias.target, getattr(namespace, alias.dest))
            delattr(namespace, alias.dest)
        missing = [flag for dest, flag in self._required_after_aliases if getattr(namespace, dest, None) is None]
        if missing:
            self.error(f"the following arguments are required: {', '.join(missing)}")
        return namespace, extras


def command_parser(module: str, description: str | None = None, **kwargs) -> CommandParser:
    """The parser of the command run by ``module``: ``prog`` is its console script (``python -m module``
    for commands without one, such as the benchmarks), and the help says both ways to run it."""
    script = SCRIPTS.get(module)
    prog = script or f"python -m {module}"
    epilog = kwargs.pop("epilog", None)
    alias = f" (or python -m {MODULE_ALIASES[module]})" if module in MODULE_ALIASES else ""
    also = f"Also run as: python -m {module}{alias}" if script else None
    return CommandParser(prog=prog, description=description,
                         epilog="\n\n".join(part for part in (epilog, also) if part) or None, **kwargs)


# ----------------------------------------------------------------------------------------------
# Types


def fold_index(text: str) -> int:
    """argparse type: a cross-validation rotation in 0..N_FOLDS-1 (never wrapped around)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"fold must be an integer in 0..{N_FOLDS - 1}, got {text!r}") from None
    if not 0 <= value < N_FOLDS:
        raise argparse.ArgumentTypeError(f"fold must be in 0..{N_FOLDS - 1} ({N_FOLDS} folds), got {value}")
    return value


def number(kind: type, *, low: float | None = None, high: float | None = None, low_open: bool = False,
           high_open: bool = False, what: str | None = None):
    """argparse type: a finite ``kind`` (int or float) within ``low``..``high`` (either end open or closed, either
    absent); ``inf``, ``nan`` and values out of range are one-line usage errors naming the range."""
    if what is None:
        left = "" if low is None else ("(" if low_open else "[") + f"{low:g}"
        right = "" if high is None else f"{high:g}" + (")" if high_open else "]")
        what = f"a finite {'integer' if kind is int else 'number'}" + (
            f" in {left or '(-inf'}, {right or 'inf)'}" if low is not None or high is not None else "")

    def parse(text: str):
        try:
            value = kind(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if isinstance(value, float) and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        if low is not None and (value <= low if low_open else value < low) or \
                high is not None and (value >= high if high_open else value > high):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    parse.__name__ = what  # argparse names the type in "invalid ... value" messages
    return parse


#: The checked numeric types of every command's numeric flags (no flag takes a bare int or float).
positive_int = number(int, low=1, what="a positive integer")
nonnegative_int = number(int, low=0, what="a non-negative integer")
positive_float = number(float, low=0, low_open=True, what="a finite positive number")
nonnegative_float = number(float, low=0, what="a finite non-negative number")
finite_float = number(float, what="a finite number")
unit_interval = number(float, low=0, high=1, what="a number in [0, 1]")
dropout_rate = number(float, low=0, high=1, high_open=True, what="a rate in [0, 1)")


def comma_list(item=str):
    """argparse type: ``a,b,c`` -> [item(a), item(b), item(c)]; empty items and repeats are refused."""

    def parse(text: str) -> list:
        parts = [part.strip() for part in text.replace("，", ",").split(",")]
        if not text.strip() or any(not part for part in parts):
            raise argparse.ArgumentTypeError(f"expected a comma-separated list without empty items, got {text!r}")
        try:
            values = [item(part) for part in parts]
        except (ValueError, argparse.ArgumentTypeError) as exc:
            raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None
        repeated = sorted({str(v) for v in values if values.count(v) > 1})
        if repeated:
            raise argparse.ArgumentTypeError(f"{text!r} names {', '.join(repeated)} more than once")
        return values

    parse.__name__ = f"comma-separated {getattr(item, '__name__', 'value')} list"
    return parse


def split_name(text: str) -> str:
    """argparse type: a split name as users write it ('validation' or 'valid', 'train', 'test'), returned as
    the folder/manifest key (nemu.splits.split_key), so every consumer sees one name."""
    if text not in SPLIT_ALIASES:
        raise argparse.ArgumentTypeError(f"invalid split {text!r} (choose from {', '.join(SPLIT_CHOICES)})")
    return split_key(text)


# ----------------------------------------------------------------------------------------------
# Actions


def warn_deprecated(prog: str, old: str, new: str) -> None:
    print(f"{prog}: warning: {old} is deprecated and will be removed in the next release; use {new}",
          file=sys.stderr)


class DeprecatedAlias(argparse.Action):
    """An old spelling of a flag: prints a deprecation message naming the new flag, and its value goes to the
    new flag's dest (``target``) once parsing is done (CommandParser); giving both is an error.

    ``add_argument("--checkpoint", action=DeprecatedAlias, target="run", new="--run", type=Path)``; a
    positional alias: ``add_argument("raw_positional", nargs="?", action=DeprecatedAlias, target="raw", ...)``.
    ``convert`` (optional) maps the parsed values to the new flag's value."""

    def __init__(self, option_strings, dest, new: str, target: str, convert=None, **kwargs):
        self.new, self.target, self.convert = new, target, convert
        self.given = option_strings[0] if option_strings else None
        kwargs.setdefault("default", None)
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        if values is None or values == []:  # an optional positional alias not given
            return
        self.given = option_string or f"the positional {self.metavar or self.dest.upper()}"
        warn_deprecated(parser.prog, self.given, self.new)
        setattr(namespace, self.dest, self.convert(values) if self.convert else values)


class CommaListAction(argparse.Action):
    """A comma-separated list flag that still takes the old space-separated form (``--seeds 0 1 2``) with a
    deprecation message; use with ``nargs="+"`` and ``type=comma_list(...)``."""

    def __call__(self, parser, namespace, values, option_string=None):
        if len(values) > 1:
            warn_deprecated(parser.prog, f"space-separated {option_string} values",
                            f"commas: {option_string} {','.join(str(v) for part in values for v in part)}")
        setattr(namespace, self.dest, [v for part in values for v in part])


# ----------------------------------------------------------------------------------------------
# The shared flags


def add_raw(parser: CommandParser, *, positional_alias: bool = True, help: str | None = None,
            metavar: str = "RAW") -> None:
    """``--raw RAW`` (required): the raw input of a build; the old positional stays a deprecated alias."""
    parser.add_argument("--raw", type=Path, metavar=metavar, default=None,
                        help=(help or HELP["raw"]) + " (required)")
    if positional_alias:
        parser.add_argument("raw_positional", nargs="?", type=Path, metavar=metavar, action=DeprecatedAlias,
                            new=f"--raw {metavar}", target="raw", help=argparse.SUPPRESS)
    parser.require("raw", "--raw")


def add_data(parser: CommandParser, *, required: bool = True, more: str = "", **kwargs) -> None:
    """``--data DATA``: a built dataset folder; ``more`` adds what this command does with it or its default."""
    kwargs.setdefault("type", Path)
    parser.add_argument("--data", metavar="DATA", required=required,
                        help=HELP["data"] + (f"; {more}" if more else ""), **kwargs)


def dataset_entry(text: str) -> tuple[str, Path]:
    """A built dataset for a command that reads several: ``PATH`` (named by its manifest's dataset, lower-case:
    nemu, mosei; by the folder's name when it has no readable manifest yet) or ``NAME=PATH``."""
    if "=" in text and not Path(text).exists():
        name, path = text.split("=", 1)
        if not name or not path:
            raise argparse.ArgumentTypeError(f"expected PATH or NAME=PATH, got {text!r}")
        return name, Path(path)
    path = Path(text)
    try:
        import json

        name = str(json.loads((path / "manifest.json").read_text(encoding="utf-8"))["dataset"]).lower()
    except (OSError, ValueError, KeyError, TypeError):
        name = path.resolve().name.lower() or "data"
    return name, path


def add_out(parser: CommandParser, what: str, *, required: bool = True, positional_alias: bool = False,
            **kwargs) -> None:
    """``--out DIR``: an output folder; ``what`` says what goes in it."""
    parser.add_argument("--out", type=Path, metavar="DIR", required=required and not positional_alias,
                        help=f"output folder: {what}" + (" (required)" if positional_alias else ""), **kwargs)
    if positional_alias:
        parser.add_argument("out_positional", nargs="?", type=Path, metavar="DIR", action=DeprecatedAlias,
                            new="--out DIR", target="out", help=argparse.SUPPRESS)
        parser.require("out", "--out")


def add_run(parser: CommandParser, *, required: bool = True, aliases: tuple[str, ...] = ()) -> None:
    """``--run RUN``: a run folder of hhmpn-train; ``aliases`` are deprecated old names (``--checkpoint``)."""
    parser.add_argument("--run", type=Path, metavar="RUN", default=None,
                        help=HELP["run"] + (" (required)" if required else ""))
    for alias in aliases:
        parser.add_argument(alias, type=Path, metavar="RUN", dest=f"deprecated_{alias.lstrip('-')}",
                            action=DeprecatedAlias, new="--run", target="run",
                            help="deprecated alias of --run")
    if required:
        parser.require("run", "--run")


def add_output(parser: CommandParser, what: str, **kwargs) -> None:
    """``--output FILE``: one output file."""
    parser.add_argument("--output", type=Path, metavar="FILE", help=f"output file: {what}", **kwargs)


def add_fold(parser: CommandParser, *, help_default: str) -> None:
    parser.add_argument("--fold", type=fold_index, metavar="K", help=f"{HELP['fold']}; default: {help_default}")


def add_seed(parser: CommandParser, *, what: str = "", default: int = 0) -> None:
    parser.add_argument("--seed", type=nonnegative_int, default=default, metavar="S",
                        help=HELP["seed"] + (f" ({what})" if what else ""))


def add_seeds(parser: CommandParser, *, default: list[int]) -> None:
    parser.add_argument("--seeds", type=comma_list(nonnegative_int), nargs="+", action=CommaListAction, default=default,
                        metavar="S,S", help=HELP["seeds"])


def perturbation(text: str):
    """argparse type: one ``--corrupt`` value (``mmer.perturb.parse``: shuffle:M, noise:LEVEL, noise:LEVEL:M)."""
    from mmer.perturb import parse  # numpy only; the rest of the command's imports wait for the work

    try:
        value = parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if value.kind == "drop":
        raise argparse.ArgumentTypeError(f"{text!r}: a removed modality is --drop-modality {value.modality}")
    return value


perturbation.__name__ = "perturbation"


def add_perturbations(parser: CommandParser) -> None:
    """``--drop-modality M`` and ``--corrupt KIND:ARG`` (both repeatable) and ``--perturb-seed S``: inputs broken
    at prediction time, after the run's normalisation (``mmer.perturb``; Table 5 asks the same of every run)."""
    group = parser.add_argument_group("inputs broken on purpose (robustness at prediction time, Table 5)")
    group.add_argument("--drop-modality", action="extend", type=comma_list(), metavar="M,M", default=None,
                       help="remove these modalities from every song's input (all their nodes absent, as a song "
                            "without comments has none); comma-separated, or the flag repeated; a song left with no "
                            "node is predicted from empty input, not skipped")
    group.add_argument("--corrupt", action="append", type=perturbation, metavar="KIND:ARG", default=None,
                       help="shuffle:M (each song gets another predicted song's M nodes, a random cycle through the "
                            "songs), noise:LEVEL (Gaussian noise of std LEVEL added to every standardised feature: "
                            "0 is clean, 1 as large as the features' own spread) or noise:LEVEL:M (modality M "
                            "only); repeat for several, applied in order after --drop-modality")
    group.add_argument("--perturb-seed", type=nonnegative_int, default=0, metavar="S",
                       help="seed of --corrupt's random draws (the same seed gives the same broken inputs)")


def perturbations_of(args) -> list:
    """The perturbations ``add_perturbations``' flags ask for, in order: drops first, then ``--corrupt``."""
    from mmer.perturb import Perturbation

    return [Perturbation("drop", m) for m in getattr(args, "drop_modality", None) or []] + \
        list(getattr(args, "corrupt", None) or [])


def add_models(parser: CommandParser, *, help_default: str) -> None:
    parser.add_argument("--models", type=comma_list(), metavar="A,B", help=f"{HELP['models']}; default: {help_default}")


def add_modalities(parser: CommandParser) -> None:
    parser.add_argument("--modalities", type=comma_list(), metavar="M,M",
                        help=f"{HELP['modalities']}; default: all of them")


def add_split(parser: CommandParser, *, default: str = "test") -> None:
    parser.add_argument("--split", type=split_name, default=default, metavar="SPLIT", help=HELP["split"])


def add_progress(parser: CommandParser) -> None:
    parser.add_argument("--no-progress", action="store_true", help=HELP["progress"])


def dataset_list(text: str) -> list[tuple[str, Path]]:
    """argparse type: comma-separated built datasets (``dataset_entry``), each name once."""
    entries = comma_list(dataset_entry)(text)
    names = [name for name, _ in entries]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise argparse.ArgumentTypeError(f"{text!r}: two datasets named {', '.join(twice)}; name them NAME=PATH")
    return entries


dataset_list.__name__ = "comma-separated dataset list"


# ----------------------------------------------------------------------------------------------
# Names, messages and interrupts


def available_cores() -> int:
    """The CPU cores this process may use (the default of every --workers)."""
    import os

    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def prog_of(module: str) -> str:
    """What a user types to run ``module``'s command: its console script, else ``python -m module``; every
    message of the command starts with it, whichever way it was started."""
    return SCRIPTS.get(module) or f"python -m {module}"


def error(prog: str, message: object) -> int:
    """Print ``PROG: error: MESSAGE`` (its first line) on stderr; returns exit status 2."""
    text = str(message).strip()
    print(f"{prog}: error: {text.splitlines()[0] if text else type(message).__name__}", file=sys.stderr)
    return 2


def out_folder_problem(flag: str, path: Path) -> str | None:
    """Why ``path`` cannot be an output folder (it, or the nearest of its parents that exists, is not a folder),
    else None: checked before any work, so the command refuses in one line and changes nothing."""
    for existing in (path, *path.parents):
        if existing.exists():
            if not existing.is_dir():
                return (f"{flag} {path} exists and is not a folder" if existing == path else
                        f"{flag} {path}: {existing} exists and is not a folder")
            return None
    return None


#: The one spelling family of the ablations on every command line (hhmpn-train --ablation, --models
#: hhmpn-no-f2f, run folders hhmpn-no-f2f); the configuration keeps hhmpn.model's names (no_f2f).
ABLATION_NAMES = {"no-f2f": "no_f2f", "no-f2l": "no_f2l", "no-l2l": "no_l2l", "no-m2l": "no_m2l"}


def ablation_key(text: str) -> str:
    """An ablation as written (``no-f2f``, or the old ``no_f2f``, ``w-o-f2f``, ``w/o F2F``, ``hhmpn-no-f2f``) as its
    one spelling (``no-f2f``); ValueError for anything else."""
    key = re.sub(r"\bw/o\b|\bwithout\b|\bw-o\b|\bw_o\b", "no", text.strip().lower())
    key = re.sub(r"[^a-z0-9]+", "-", key).strip("-")
    key = key[len("hhmpn-"):] if key.startswith("hhmpn-") else key
    if key not in ABLATION_NAMES:
        raise ValueError(f"unknown ablation {text!r} (choose from {', '.join(ABLATION_NAMES)})")
    return key


class AblationAction(argparse.Action):
    """``--ablation NAME``: stores the configuration's name (``no_f2f``) of ``no-f2f``; an old spelling is taken
    with a deprecation message naming the new one."""

    def __call__(self, parser, namespace, values, option_string=None):
        try:
            key = ablation_key(values)
        except ValueError as exc:
            parser.error(f"argument {option_string}: {exc}")
        if values != key:
            warn_deprecated(parser.prog, f"{option_string} {values}", f"{option_string} {key}")
        setattr(namespace, self.dest, ABLATION_NAMES[key])


class Terminated(KeyboardInterrupt):
    """SIGTERM (kill, timeout, docker stop) raised as an interrupt: it unwinds exactly like Ctrl-C (staged files,
    temporary files, worker processes are cleaned by the same ``finally`` and ``except BaseException`` code)."""

    signum = signal.SIGTERM


_signals_received: list[int] = []  # the interrupts seen by the running command, in order (interrupted() reads them)


def _stop_fork_server() -> None:
    """Terminate multiprocessing's fork server, if this process started one: it holds no work (it is the warm
    template workers are forked from, nemu.workers), ignores SIGINT like every child (_ChildrenIgnoreInterrupts),
    and a start waiting for its warm-up would otherwise hold up the interrupted command's clean-up."""
    forkserver = sys.modules.get("multiprocessing.forkserver")
    pid = getattr(getattr(forkserver, "_forkserver", None), "_forkserver_pid", None)
    if pid:
        try:
            import os

            os.kill(pid, signal.SIGTERM)
        except OSError:
            pass


def _interrupt_handler(raise_, stop_children: bool):
    """The commands' SIGINT/SIGTERM handler: stops the fork server, and with ``stop_children`` this process'
    multiprocessing children (pool workers, which ignore SIGINT and leave on SIGTERM, cleaning their temporary
    files), then raises ``raise_`` here, so the command unwinds as for Ctrl-C."""

    def handler(signum, frame):
        _signals_received.append(signum)
        if len(_signals_received) > 1:  # a second one during the first one's clean-up: stop now
            raise raise_()
        _stop_fork_server()
        if stop_children:
            for child in multiprocessing.active_children():
                try:
                    child.terminate()
                except (OSError, AttributeError, ValueError):
                    pass
        raise raise_()

    return handler


_SPAWN_MAIN = "from multiprocessing.spawn import spawn_main; spawn_main("
#: A spawned child's ``-c`` line with pipelines.spawn_guard's entry point (the stock one where it is not importable).
_GUARDED_SPAWN_MAIN = ("try:\n from pipelines.spawn_guard import spawn_main\n"
                       "except ImportError:\n from multiprocessing.spawn import spawn_main\nspawn_main(")


def _guarded_spawn(arg):
    """A spawned child's ``-c`` argument with the quiet entry point of ``pipelines.spawn_guard``; any other
    argument as it is (the fork server's and the resource tracker's lines are not spawn_main's)."""
    if isinstance(arg, str) and arg.startswith(_SPAWN_MAIN):
        return _GUARDED_SPAWN_MAIN + arg[len(_SPAWN_MAIN):]
    return arg


class _ChildrenIgnoreInterrupts:
    """While a command runs, every process multiprocessing starts by exec (spawn workers, the fork server and so
    every fork of it) starts with SIGINT blocked: the calling thread blocks SIGINT while it starts the child, and a
    signal mask survives fork and exec, so a Ctrl-C (sent to the whole process group) during a worker's start-up
    prints no traceback from it. The command's own process handles the interrupt (a SIGINT that arrives meanwhile
    is delivered to another of its threads, or once the mask is restored: never lost) and stops its workers.
    A spawned child runs ``pipelines.spawn_guard``'s entry point, which ends quietly when the interrupted command
    closed the pipe before the child had read its process object (the stock one prints an EOFError traceback)."""

    def __enter__(self):
        from multiprocessing import util

        self.util, self.original = util, getattr(util, "spawnv_passfds", None)
        if self.original is None or not hasattr(signal, "pthread_sigmask"):  # not POSIX: nothing to do
            self.util = None
            return self
        original = self.original

        def spawnv_passfds(path, args, passfds):
            previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
            try:
                return original(path, [_guarded_spawn(arg) for arg in args], passfds)
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, previous)

        util.spawnv_passfds = spawnv_passfds
        return self

    def __exit__(self, *exc):
        if self.util is not None:
            self.util.spawnv_passfds = self.original
        return False


def interrupted_message(prog: str, resumes: bool) -> str:
    return f"{prog}: interrupted" + ("; run the same command again to resume" if resumes else "")


def interrupted(prog: str, *, resumes: bool) -> int:
    """For a command that caught the interrupt itself (to save its work) and returns: the one line, and the exit
    status, 143 after SIGTERM, else 130."""
    print(interrupted_message(prog, resumes), file=sys.stderr, flush=True)
    return 143 if _signals_received and _signals_received[-1] == signal.SIGTERM else 130


def run_command(main, argv: list[str] | None, *, prog: str, resumes: bool = False,
                stop_children: bool = False) -> int:
    """Run a command's ``main(argv)`` under the toolkit's one interrupt handling: Ctrl-C (SIGINT) and SIGTERM end
    the command with one line on stderr, ``PROG: interrupted`` (plus "; run the same command again to resume"
    where the command resumes), exit status 130 (SIGINT) or 143 (SIGTERM), and no traceback. SIGTERM is raised as
    :class:`Terminated`, a KeyboardInterrupt, so the command cleans up as it does for Ctrl-C.
    ``stop_children``: the command's multiprocessing workers (which ignore SIGINT) are terminated first."""
    handlers = {}
    _signals_received.clear()
    if threading.current_thread() is threading.main_thread():
        handlers[signal.SIGTERM] = signal.signal(signal.SIGTERM, _interrupt_handler(Terminated, stop_children))
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not where Ctrl-C is ignored
            handlers[signal.SIGINT] = signal.signal(signal.SIGINT, _interrupt_handler(KeyboardInterrupt,
                                                                                      stop_children))
    status = None
    try:
        try:
            with _ChildrenIgnoreInterrupts():
                return main(argv)
        except KeyboardInterrupt as exc:  # Terminated included
            status = 143 if isinstance(exc, Terminated) else 130
    except KeyboardInterrupt as exc:  # a second interrupt during the first one's clean-up
        status = 143 if isinstance(exc, Terminated) else 130
    finally:
        for signum, previous in handlers.items():
            try:
                signal.signal(signum, previous)
            except (TypeError, ValueError):
                pass
        if status is not None:
            try:
                sys.stdout.flush()
            except (OSError, ValueError):
                pass
            print(interrupted_message(prog, resumes), file=sys.stderr, flush=True)
    return status


def command(module: str, *, resumes: bool = False, stop_children: bool = False):
    """Decorator of a command's ``main(argv=None) -> int``: the same ``main`` (console script entry point and
    ``python -m`` path alike) run by :func:`run_command` with the command's name."""

    def decorate(main):
        @functools.wraps(main)
        def entry(argv: list[str] | None = None) -> int:
            return run_command(main, argv, prog=prog_of(module), resumes=resumes, stop_children=stop_children)

        entry.resumes = resumes
        return entry

    return decorate
