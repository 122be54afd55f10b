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
lists              comma-separated everywhere: ``--models A,B``, ``--modalities lyrics,audio``, ``--seeds 0,1,2``
=================  ==============================================================================================

``prog`` is the console script a user types (``COMMANDS``, the same names as pyproject.toml's
``[project.scripts]``); ``python -m MODULE`` runs the same command. Every flag's default is stated once in its
help. Old spellings keep working for one release through :class:`DeprecatedAlias`, which prints a deprecation
message naming the new flag.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import textwrap
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


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


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
    parser.add_argument("--seed", type=int, default=default, metavar="S",
                        help=HELP["seed"] + (f" ({what})" if what else ""))


def add_seeds(parser: CommandParser, *, default: list[int]) -> None:
    parser.add_argument("--seeds", type=comma_list(int), nargs="+", action=CommaListAction, default=default,
                        metavar="S,S", help=HELP["seeds"])


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
