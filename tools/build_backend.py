"""setuptools' build backend, building outside the source tree.

``pip install .`` builds in the source folder, and setuptools leaves ``build/`` and ``*.egg-info`` there.
This wrapper points setuptools' ``build_base`` and ``egg_base`` into a temporary folder (through the extra
configuration file setuptools reads from ``DIST_EXTRA_CONFIG``) for every hook, so the tree stays as it was.
pyproject.toml names it with ``backend-path``; everything else is setuptools' own ``build_meta``.
"""

from __future__ import annotations

import contextlib
import functools
import os
import tempfile

from setuptools import build_meta as _setuptools
from setuptools.build_meta import *  # noqa: F401,F403 - the hooks not wrapped below


@contextlib.contextmanager
def _outside_the_tree():
    with tempfile.TemporaryDirectory(prefix="nemu-hhmpn-build-") as scratch:
        config = os.path.join(scratch, "setup.cfg")
        with open(config, "w", encoding="utf-8") as handle:
            handle.write(f"[build]\nbuild_base = {os.path.join(scratch, 'build')}\n"
                         f"[egg_info]\negg_base = {scratch}\n")
        previous = os.environ.get("DIST_EXTRA_CONFIG")
        os.environ["DIST_EXTRA_CONFIG"] = config
        try:
            yield
        finally:
            if previous is None:
                os.environ.pop("DIST_EXTRA_CONFIG", None)
            else:
                os.environ["DIST_EXTRA_CONFIG"] = previous


def _wrapped(hook):
    @functools.wraps(hook)
    def run(*args, **kwargs):
        with _outside_the_tree():
            return hook(*args, **kwargs)
    return run


build_wheel = _wrapped(_setuptools.build_wheel)
build_sdist = _wrapped(_setuptools.build_sdist)
build_editable = _wrapped(_setuptools.build_editable)
prepare_metadata_for_build_wheel = _wrapped(_setuptools.prepare_metadata_for_build_wheel)
prepare_metadata_for_build_editable = _wrapped(_setuptools.prepare_metadata_for_build_editable)
get_requires_for_build_wheel = _wrapped(_setuptools.get_requires_for_build_wheel)
get_requires_for_build_sdist = _wrapped(_setuptools.get_requires_for_build_sdist)
get_requires_for_build_editable = _wrapped(_setuptools.get_requires_for_build_editable)
