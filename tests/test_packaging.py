"""`pip install .` into a new virtual environment gives a working toolkit, from any folder.

The new environment sees this environment's packages through a ``.pth`` file (so torch and friends are not
installed again), and pip resolves the project's declared dependencies against them (no ``--no-deps``): a
missing or conflicting dependency would make it install or fail, which the test catches.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest

from pipelines.cli import COMMANDS

ROOT = Path(__file__).resolve().parents[1]


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def test_console_scripts_are_the_commands_and_each_has_main():
    import importlib
    import inspect

    scripts = _pyproject()["project"]["scripts"]
    assert scripts == {name: f"{module}:main" for name, module in COMMANDS.items()}
    for module in COMMANDS.values():
        main = importlib.import_module(module).main
        assert list(inspect.signature(main).parameters) == ["argv"]


def test_declared_dependencies_cover_the_pinned_runtime_requirements():
    declared = {requirement.split(">")[0].split("<")[0].split("=")[0].split("~")[0].strip().lower()
                for requirement in _pyproject()["project"]["dependencies"]}
    extras = _pyproject()["project"]["optional-dependencies"]
    crawl = {r.split(">")[0].strip().lower() for r in extras["crawl"]}
    pinned = {line.split("==")[0].strip().lower() for line in (ROOT / "requirements.txt").read_text().splitlines()
              if line.strip() and not line.startswith("#")}
    assert pinned == declared | crawl
    assert {"pytest", "datasets", "polars", "duckdb"} <= {r.split(">")[0].strip().lower() for r in extras["dev"]}
    assert "ray" in {r.split(">")[0].strip().lower() for r in extras["ray"]}


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A new venv with ``pip install .`` of this checkout; returns (venv, pip's output)."""
    base = tmp_path_factory.mktemp("pip-install")
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "base_environment.pth").write_text(sysconfig.get_paths()["purelib"] + "\n", encoding="utf-8")
    before = {p.name for p in ROOT.iterdir()}
    # --no-build-isolation: build with the setuptools already here, offline; dependencies are still resolved
    result = subprocess.run([python, "-m", "pip", "install", "--no-build-isolation", "--no-cache-dir", str(ROOT)],
                            capture_output=True, text=True, cwd=base, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert {p.name for p in ROOT.iterdir()} - before == set(), "pip install . left files in the source tree"
    assert not (ROOT / "build").exists() and not list(ROOT.glob("*.egg-info"))
    return venv, result.stdout


def test_pip_install_resolves_the_declared_dependencies(installed):
    _, output = installed
    for dependency in ("torch", "pyarrow", "librosa", "scikit-learn"):
        assert f"Requirement already satisfied: {dependency}" in output
    assert "Successfully installed nemu-hhmpn" in output


def test_the_installed_packages_import_and_carry_their_resources_from_any_folder(installed, tmp_path):
    venv, _ = installed
    code = ("import nemu, hhmpn, baselines, pipelines; from importlib import resources; "
            "print(nemu.__file__); "
            "print(resources.files('nemu').joinpath('resources/songci_excerpt.jsonl').is_file(), "
            "resources.files('baselines').joinpath('resources/krf_dutir_emotions.csv').is_file())")
    result = subprocess.run([venv / "bin" / "python", "-c", code], capture_output=True, text=True, cwd=tmp_path,
                            env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert result.returncode == 0, result.stderr
    location, resources = result.stdout.splitlines()
    assert Path(location).is_relative_to(venv), f"imported {location}, not the installed copy"
    assert resources == "True True"


def test_every_console_script_answers_help_from_any_folder(installed, tmp_path):
    venv, _ = installed
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    for script in COMMANDS:
        result = subprocess.run([venv / "bin" / script, "--help"], capture_output=True, text=True, cwd=tmp_path,
                                env=env, timeout=300)
        assert result.returncode == 0, f"{script} --help: {result.stderr}"
        assert result.stdout.startswith(f"usage: {script} "), result.stdout[:200]


def test_the_installed_sample_command_writes_a_raw_folder_from_any_folder(installed, tmp_path):
    venv, _ = installed
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([venv / "bin" / "nemu-sample", "--out", "raw", "--songs", "12", "--quiet"],
                            capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
    assert result.returncode == 0, result.stderr
    lines = (tmp_path / "raw" / "records.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 12
