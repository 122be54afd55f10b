"""One vocabulary across the command lines: every command's --help, the shared flags' names, types and
wording, defaults stated once, prog = the console script, folds checked, comma lists, deprecated aliases."""

from __future__ import annotations

import argparse
import importlib
import re
from pathlib import Path

import pytest

from pipelines import cli
from pipelines.cli import COMMANDS, HELP

BENCHMARKS = ("bench.bench_build", "bench.bench_run_all")


class _Grabbed(Exception):
    pass


def parser_of(module: str, monkeypatch) -> argparse.ArgumentParser:
    """The parser ``module.main`` builds, caught when it starts parsing (nothing else of main runs)."""
    grabbed = {}

    def grab(self, args=None, namespace=None):
        grabbed["parser"] = self
        raise _Grabbed

    with monkeypatch.context() as patch:
        patch.setattr(argparse.ArgumentParser, "parse_known_args", grab)
        with pytest.raises(_Grabbed):
            importlib.import_module(module).main([])
    return grabbed["parser"]


def option(parser: argparse.ArgumentParser, flag: str) -> argparse.Action | None:
    return next((a for a in parser._actions if flag in a.option_strings), None)


def expanded_help(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    formatter = parser._get_formatter()
    return formatter._expand_help(action) if action.help else ""


@pytest.fixture(scope="module")
def parsers():
    monkeypatch = pytest.MonkeyPatch()
    try:
        return {script: parser_of(module, monkeypatch) for script, module in COMMANDS.items()} | \
            {module: parser_of(module, monkeypatch) for module in BENCHMARKS}
    finally:
        monkeypatch.undo()


@pytest.mark.parametrize("script", list(COMMANDS))
def test_help_prog_is_the_console_script(script, capsys):
    with pytest.raises(SystemExit) as exit_:
        importlib.import_module(COMMANDS[script]).main(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith(f"usage: {script} ")
    assert f"python -m {COMMANDS[script]}" in text  # the other way to run it


def test_benchmarks_are_named_as_they_are_run(parsers):
    for module in BENCHMARKS:
        assert parsers[module].prog == f"python -m {module}"


def test_no_abbreviations_and_no_positionals(parsers):
    for name, parser in parsers.items():
        assert parser.allow_abbrev is False, name
        visible = [a for a in parser._actions if not a.option_strings and a.help is not argparse.SUPPRESS]
        assert not visible, f"{name}: positional {[a.dest for a in visible]} (inputs are flags: --raw, --data)"


# shared flag -> (metavar, type, the help's opening words)
SHARED = {
    "--data": ("DATA", Path, HELP["data"]),
    "--run": ("RUN", Path, HELP["run"]),
    "--out": ("DIR", Path, "output folder: "),
    "--output": ("FILE", Path, "output file: "),
    "--fold": ("K", cli.fold_index, HELP["fold"]),
    "--seed": ("S", cli.nonnegative_int, HELP["seed"]),
    "--split": ("SPLIT", cli.split_name, HELP["split"]),
    "--no-progress": (None, None, HELP["progress"]),
}
COMMA_LISTS = {"--seeds": HELP["seeds"], "--models": HELP["models"], "--modalities": HELP["modalities"]}


def test_shared_flags_have_one_name_type_and_meaning(parsers):
    seen = set()
    for name, parser in parsers.items():
        for flag, (metavar, kind, opening) in SHARED.items():
            action = option(parser, flag)
            if action is None:
                continue
            seen.add(flag)
            assert action.metavar == metavar, (name, flag)
            if name == "nemu-benchmark" and flag == "--data":  # several datasets: a comma-separated list
                assert action.type.__name__.startswith("comma-separated"), (name, flag)
            else:
                assert action.type is kind, (name, flag)
            assert action.help.startswith(opening), (name, flag, action.help)
        for flag, opening in COMMA_LISTS.items():
            action = option(parser, flag)
            if action is None:
                continue
            seen.add(flag)
            assert action.type.__name__.startswith("comma-separated"), (name, flag)
            assert action.help.startswith(opening), (name, flag, action.help)
        raw = option(parser, "--raw")
        if raw is not None:
            seen.add("--raw")
            assert raw.type is Path and raw.metavar == ("SRC" if name == "nemu-build-mosei" else "RAW")
            if name != "nemu-build-mosei":  # MOSEI's source files are not a raw NEMu folder
                assert raw.help.startswith(HELP["raw"]), (name, raw.help)
            if name.startswith("nemu-build"):
                assert raw.help.endswith("(required)")
    assert seen >= {"--data", "--run", "--out", "--output", "--fold", "--seed", "--seeds", "--models", "--modalities",
                    "--split", "--raw", "--no-progress"}


def test_shared_flags_are_where_each_command_needs_them(parsers):
    wanted = {"nemu-sample": ["--out"], "nemu-build": ["--raw", "--out"], "nemu-build-mosei": ["--raw", "--out"],
              "nemu-crawl": ["--out"], "hhmpn-train": ["--data", "--out", "--fold", "--modalities"],
              "hhmpn-predict": ["--run", "--data", "--split", "--output"],
              "nemu-benchmark": ["--data", "--out", "--models", "--seeds"]}
    for script, flags in wanted.items():
        for flag in flags:
            assert option(parsers[script], flag) is not None, (script, flag)
    assert option(parsers["hhmpn-predict"], "--out") is None  # predict writes one file: --output


def test_every_default_is_stated_exactly_once(parsers):
    for name, parser in parsers.items():
        for action in parser._actions:
            if not action.option_strings or action.help in (None, argparse.SUPPRESS) or "-h" in action.option_strings:
                continue
            text = expanded_help(parser, action)
            stated = len(re.findall(r"\bdefault\b", text, re.IGNORECASE))
            assert stated <= 1, (name, action.option_strings, text)
            has_default = action.default not in (None, False, argparse.SUPPRESS)
            if has_default:
                assert stated == 1, (name, action.option_strings, text)


def test_fold_is_checked_against_the_ten_folds(parsers, capsys):
    train = parsers["hhmpn-train"]
    assert train.parse_args(["--data", "d", "--out", "o", "--fold", "9"]).fold == 9
    for bad in ("10", "-1", "x"):
        with pytest.raises(SystemExit) as exit_:
            train.parse_args(["--data", "d", "--out", "o", "--fold", bad])
        assert exit_.value.code == 2
        assert "fold must be" in capsys.readouterr().err and "0..9" in cli.HELP["fold"]


def test_lists_are_comma_separated_everywhere(parsers, capsys):
    bench = parsers["nemu-benchmark"]
    args = bench.parse_args(["--seeds", "0,1,2", "--models", "BR,HHMPN"])
    assert args.seeds == [0, 1, 2] and args.models == ["BR", "HHMPN"]
    assert capsys.readouterr().err == ""
    # the old space-separated seeds still work, with a deprecation message
    assert bench.parse_args(["--seeds", "0", "1", "2"]).seeds == [0, 1, 2]
    assert "deprecated" in capsys.readouterr().err
    assert parsers["hhmpn-train"].parse_args(["--data", "d", "--out", "o", "--modalities", "lyrics,audio"]) \
        .modalities == ["lyrics", "audio"]
    for bad in ("", "a,,b", "a,a"):
        with pytest.raises(SystemExit):
            bench.parse_args(["--models", bad])
    with pytest.raises(SystemExit):
        bench.parse_args(["--seeds", "0,x"])


def test_deprecated_aliases_still_work_with_a_message(parsers, capsys):
    build = parsers["nemu-build"].parse_args(["raw", "--out", "out"])
    assert build.raw == Path("raw")
    assert "deprecated" in capsys.readouterr().err
    predict = parsers["hhmpn-predict"].parse_args(["--checkpoint", "runs/x", "--data", "d"])
    assert predict.run == Path("runs/x")
    err = capsys.readouterr().err
    assert "--checkpoint is deprecated" in err and "--run" in err
    bench = parsers["nemu-benchmark"].parse_args(["--datasets", "nemu=data/nemu"])
    assert "--datasets is deprecated" in capsys.readouterr().err
    assert dict(bench.datasets) == {"nemu": Path("data/nemu")}
    with pytest.raises(SystemExit):  # old and new spelling at once is refused, not silently merged
        parsers["nemu-build"].parse_args(["raw", "--raw", "raw2", "--out", "out"])


def test_data_is_never_taken_for_datasets(parsers, capsys):
    args = parsers["nemu-benchmark"].parse_args(["--data", "data/nemu"])
    assert "deprecated" not in capsys.readouterr().err
    assert dict(args.datasets) == {"nemu": Path("data/nemu")}


def test_the_validation_split_has_both_names(parsers):
    predict = parsers["hhmpn-predict"]
    for name, key in (("validation", "valid"), ("valid", "valid"), ("test", "test"), ("train", "train")):
        assert predict.parse_args(["--run", "r", "--data", "d", "--split", name]).split == key
    with pytest.raises(SystemExit):
        predict.parse_args(["--run", "r", "--data", "d", "--split", "dev"])


def test_a_rotation_outside_the_folds_is_refused_not_wrapped():
    from nemu.splits import cv_rotation

    assert cv_rotation(9) == {"train": list(range(1, 9)), "valid": [0], "test": [9]}
    for bad in (10, -1):
        with pytest.raises(ValueError, match=r"0\.\.9"):
            cv_rotation(bad)


def test_comma_list_and_fold_types():
    assert cli.comma_list(int)("3, 4") == [3, 4]
    with pytest.raises(argparse.ArgumentTypeError, match="more than once"):
        cli.comma_list()("a,a")
    assert cli.fold_index("0") == 0
    with pytest.raises(argparse.ArgumentTypeError, match=r"0\.\.9"):
        cli.fold_index("10")
