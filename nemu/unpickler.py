"""Loading pickled source files that may come from anywhere, without letting them run code.

``load_pickle_file``: a restricted unpickler that builds only containers, numbers, strings and numpy
arrays/scalars (and ``argparse.Namespace`` where asked). ``load_torch_file``: ``torch.load(weights_only=True)``
with the same numpy allowlist (a plain pickle under a ``.pt`` name goes through the restricted unpickler). A
file that needs more (arbitrary classes or functions) is refused with :class:`UntrustedPickleError` unless
``trust_pickle`` is given; a file that is not a readable pickle raises :class:`UnreadablePickleError`.
"""

from __future__ import annotations

import argparse
import codecs
import collections
import pickle
import re
import zipfile
from pathlib import Path

import numpy as np


class UnreadablePickleError(ValueError):
    """Not a readable pickle or torch.save file; the message names the file and what was expected."""


class UntrustedPickleError(UnreadablePickleError):
    """The file needs full unpickling (it could run code) and ``trust_pickle`` was not given."""


def _multiarray():
    return np._core.multiarray if hasattr(np, "_core") else np.core.multiarray


def _safe_numpy_globals() -> list:
    core = _multiarray()
    dtypes = [type(np.dtype(code)) for code in "? b B h H i I l L q Q e f d g F D G O U S V M8 m8".split()]
    return [core._reconstruct, core.scalar, np.ndarray, np.dtype, *dtypes]


def _torch_safe_globals() -> list:
    core = _multiarray()
    # Files written under numpy 1.x name numpy.core.multiarray; give torch both spellings.
    aliases = [(core._reconstruct, "numpy.core.multiarray._reconstruct"),
               (core.scalar, "numpy.core.multiarray.scalar")]
    return [*_safe_numpy_globals(), *aliases, argparse.Namespace]


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles builtin containers, strings, numbers and numpy arrays/scalars; nothing that runs code.

    ``namespace=True`` also allows ``argparse.Namespace`` (a .pt's ``settings``), as for torch.load.
    """

    def __init__(self, file, *, encoding: str = "latin1", namespace: bool = False):
        super().__init__(file, encoding=encoding)
        self.namespace = namespace

    def find_class(self, module: str, name: str):
        if self.namespace and (module, name) == ("argparse", "Namespace"):
            return argparse.Namespace
        core = _multiarray()
        allowed = {
            ("numpy.core.multiarray", "_reconstruct"): core._reconstruct,
            ("numpy._core.multiarray", "_reconstruct"): core._reconstruct,
            ("numpy.core.multiarray", "scalar"): core.scalar,
            ("numpy._core.multiarray", "scalar"): core.scalar,
            ("numpy", "ndarray"): np.ndarray,
            ("numpy", "dtype"): np.dtype,
            ("_codecs", "encode"): codecs.encode,  # bytes in protocol-2 pickles
            ("collections", "OrderedDict"): collections.OrderedDict,
        }
        if (module, name) in allowed:
            return allowed[(module, name)]
        if module == "numpy.dtypes" and name.endswith("DType"):
            candidate = getattr(np.dtypes, name, None)
            if isinstance(candidate, type) and issubclass(candidate, np.dtype):
                return candidate
        raise pickle.UnpicklingError(f"global '{module}.{name}' is not on the allowlist")


def _refusal(path: Path, reason: str) -> UntrustedPickleError:
    return UntrustedPickleError(
        f"{path}: refused: it does not load safely ({reason}), and loading it otherwise needs full unpickling, "
        f"which can run arbitrary code. Only tensors, numpy arrays, containers and argparse.Namespace load "
        f"safely. If you trust the file's source, pass --trust-pickle (trust_pickle=True) to load it anyway.")


def _is_torch_save_file(path: Path) -> bool:
    """A zip-format torch.save file, or the legacy format (a pickled magic number first)."""
    import torch  # here: only .pt sources need torch's file format

    if zipfile.is_zipfile(path):
        return True
    with path.open("rb") as handle:
        head = handle.read(64)
    magic = torch.serialization.MAGIC_NUMBER
    return any(head.startswith(pickle.dumps(magic, protocol=p)) for p in range(2, pickle.HIGHEST_PROTOCOL + 1))


def load_torch_file(path: Path, trust_pickle: bool = False, expected: str = "the aligned train_valid_test.pt"):
    """``torch.load(weights_only=True)`` with numpy arrays allowed; full unpickling only if trusted.

    A plain pickle saved under a ``.pt`` name goes through the restricted unpickler instead. ``expected``: what
    the file should be, for the error messages.
    """
    import torch  # here: only .pt sources need torch's file format

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if not _is_torch_save_file(path):
        return load_pickle_file(path, trust_pickle, namespace=True, expected=expected)
    try:
        with torch.serialization.safe_globals(_torch_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        message = str(exc)
        match = re.search(r"WeightsUnpickler error:\s*(.*?)(?:\n\n|Check the documentation|$)", message, re.S)
        reason = " ".join((match.group(1) if match else message.splitlines()[-1]).split())[:300]
        if not trust_pickle:
            raise _refusal(path, reason) from None
    except Exception as exc:
        raise UnreadablePickleError(f"{path}: cannot be read as a torch.save file ({type(exc).__name__}: {exc}); "
                                    f"expected {expected}") from exc
    return torch.load(path, map_location="cpu", weights_only=False)  # reached only with trust_pickle


def load_pickle_file(path: Path, trust_pickle: bool = False, namespace: bool = False,
                     expected: str = "mosei_senti_data_noalign.pkl"):
    """A restricted unpickler (containers, numbers, strings, numpy arrays); plain pickle only if trusted."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    with path.open("rb") as handle:
        try:
            return RestrictedUnpickler(handle, encoding="latin1", namespace=namespace).load()
        except pickle.UnpicklingError as exc:
            if not str(exc).startswith("global "):
                raise UnreadablePickleError(f"{path}: not a readable pickle ({exc}); expected {expected}") from exc
            if not trust_pickle:
                raise _refusal(path, str(exc)) from None
        except (EOFError, ValueError, TypeError, IndexError, KeyError) as exc:
            raise UnreadablePickleError(f"{path}: not a readable pickle ({type(exc).__name__}: {exc}); expected "
                                        f"{expected}") from exc
        handle.seek(0)
        return pickle.load(handle, encoding="latin1")
