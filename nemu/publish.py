"""The output folder is always one whole dataset: a lock, a staged build, one atomic swap, a careful tidy-up.

A folder this module publishes looks like this::

    OUT/train            -> .builds/current/train          (and valid, test, manifest.json, DATASET_CARD.md,
    OUT/manifest.json    -> .builds/current/manifest.json   quarantine.jsonl, word_vectors.bin: whatever the
    ...                                                      build wrote at its top level)
    OUT/.builds/current  -> gen-20261201T104030Z-4242-1a2b3c
    OUT/.builds/gen-20261201T104030Z-4242-1a2b3c/          one complete build: shards, manifest, card, report
    OUT/.builds/lock                                       file lock of the build writing OUT; names its holder
    OUT/.builds/rejected/                                  what the last failed --strict build staged (its report)

Every top-level entry is a fixed relative link through ``.builds/current``, so replacing that one link
(``os.replace`` of a symlink: atomic on POSIX) swaps shards, manifest, card and report together. A reader
that resolves the folder once (``nemu.shards.published_root``; ``nemu.load`` does) reads one build, glob
readers (``OUT/train/*.parquet`` for pyarrow.dataset or Hugging Face ``datasets``) list one build's split
folder, and a kill at any moment leaves the previous build or the new one:

1. ``DatasetPublisher.__enter__`` takes the lock (a second build fails at once, naming the holder: pid, host,
   start time), finishes what a killed build left (see ``_recover``) and opens ``.builds/staging-<id>/``.
2. The build writes everything into ``publisher.path``. Any failure before the swap removes the staging
   folder: the published folder is untouched and no temporary file is left.
3. ``commit`` fsyncs the staged files, renames the folder to ``gen-<id>``, turns real entries left by a
   build of an earlier version (or a copy made with links followed) into links without changing what they
   show (``_adopt_real_entries``), and replaces ``.builds/current``: the commit point.
4. The previous generation is retired: files the build wrote (its manifest's shards, its top-level files)
   are deleted; anything else found in it, i.e. files a user put into ``OUT/train/`` and so on, is moved
   into the new generation at the same place, so it stays visible in OUT and is never deleted (when the
   new build wrote a file of the same name, the foreign file is kept under ``.builds/kept-<id>/``).

Files directly in OUT that are not build outputs (notes, other folders, the feature cache) are never touched.
"""

from __future__ import annotations

import ctypes
import errno
import filecmp
import json
import os
import secrets
import shutil
import socket
import time
import warnings
from pathlib import Path

from filelock import FileLock, Timeout

from nemu.shards import MANIFEST_FILE, fault_point, shard_name_pattern

BUILDS_DIR = ".builds"
CURRENT = "current"
PREVIOUS = "previous"
REJECTED = "rejected"
LOCK_FILE = "lock"


class FolderLocked(RuntimeError):
    """Another build holds the output folder's lock."""


class FolderConflict(RuntimeError):
    """An entry of the output folder is in the way of a build output and is not the build's."""


def link_target(name: str) -> str:
    """What OUT/<name> points to: the same name in the current generation (relative, so OUT can be moved)."""
    return os.path.join(BUILDS_DIR, CURRENT, name)


def _is_published_link(path: Path, name: str) -> bool:
    return path.is_symlink() and os.readlink(path) == link_target(name)


def _exists(path: Path) -> bool:
    return path.exists() or path.is_symlink()


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif _exists(path):
        path.unlink()


def _symlink_atomic(path: Path, target: str) -> None:
    """Point ``path`` at ``target``, replacing a file or link there in one rename (readers never see it missing)."""
    tmp = path.with_name(f".{path.name}.link-{os.getpid()}")
    if _exists(tmp):
        tmp.unlink()
    os.symlink(target, tmp)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    """Flush every file and folder under ``root`` so the swap never publishes data still only in the page cache."""
    for folder, _, files in os.walk(root):
        for name in files:
            if not os.path.islink(os.path.join(folder, name)):
                _fsync(Path(folder) / name)
        _fsync(Path(folder))


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2 RENAME_EXCHANGE); False where the system cannot."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EXDEV):
        return False
    raise OSError(code, os.strerror(code), str(b))


def _same_content(a: Path, b: Path) -> bool:
    if a.is_symlink() or b.is_symlink():
        return a.is_symlink() and b.is_symlink() and os.readlink(a) == os.readlink(b)
    try:
        return os.path.samefile(a, b) or filecmp.cmp(a, b, shallow=False)
    except OSError:
        return False


def _mirror(source: Path, target: Path) -> None:
    """Make ``target`` show exactly what ``source`` shows, by hard links (copies across file systems)."""
    _remove(target)

    def place(src: Path, dst: Path) -> None:
        if src.is_symlink():
            os.symlink(os.readlink(src), dst)
            return
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    if source.is_dir() and not source.is_symlink():
        for folder, _, files in os.walk(source):
            destination = target / Path(folder).relative_to(source)
            destination.mkdir(parents=True, exist_ok=True)
            for name in files:
                place(Path(folder) / name, destination / name)
    else:
        place(source, target)


def build_outputs(generation: Path) -> set[str]:
    """Relative paths in a generation folder that the build wrote: its top-level files and its manifest's shards.

    Without a readable manifest (a folder an older build left half-written), files named like shards in a
    split folder count as the build's."""
    outputs = {entry.name for entry in generation.iterdir() if not entry.is_dir() or entry.is_symlink()}
    try:
        manifest = json.loads((generation / MANIFEST_FILE).read_text(encoding="utf-8"))
        outputs |= {entry["path"] for entries in manifest["shards"].values() for entry in entries}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        for folder in generation.iterdir():
            if folder.is_dir() and not folder.is_symlink():
                outputs |= {f"{folder.name}/{p.name}" for p in folder.iterdir()
                            if shard_name_pattern(folder.name).fullmatch(p.name)}
    return outputs


def _write_holder(fd: int) -> None:
    holder = {"pid": os.getpid(), "host": socket.gethostname(),
              "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, json.dumps(holder).encode("utf-8"))


def _read_holder(path: Path) -> str:
    try:
        holder = json.loads(path.read_bytes()[:4096].decode("utf-8"))
        return f"pid {holder['pid']} on host {holder['host']}, started {holder['started']}"
    except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError):  # Windows denies reading a locked file
        return "holder not yet recorded"


class DatasetPublisher:
    """``with DatasetPublisher(out) as publisher:`` write into ``publisher.path``, then ``publisher.commit()``.

    Leaving the block without ``commit`` (an exception, a --strict failure after ``reject``) removes what was
    staged and leaves OUT as it was. The lock is held for the whole block."""

    def __init__(self, out_dir: Path):
        self.out_dir = Path(out_dir)
        self.builds = self.out_dir / BUILDS_DIR
        self.build_id = f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{os.getpid()}-{secrets.token_hex(3)}"
        self.path = self.builds / f"staging-{self.build_id}"
        self._lock: FileLock | None = None
        self._unpublished: Path | None = None  # staged or generation folder not (yet) behind .builds/current

    # -- lock -----------------------------------------------------------------------------------------
    def _acquire(self) -> None:
        self.builds.mkdir(parents=True, exist_ok=True)
        path = self.builds / LOCK_FILE
        # timeout 0: a second build fails at once; the holder's identity is written into the lock file itself,
        # through the locked descriptor, and the file stays in place on release (its inode is the lock).
        lock = FileLock(path, timeout=0, thread_local=False, preserve_lock_file=True, on_acquired=_write_holder)
        try:
            lock.acquire()
        except Timeout:
            raise FolderLocked(f"{self.out_dir} is being built by another build ({_read_holder(path)}; lock "
                               f"{path}); wait for it to finish or build into another --out") from None
        self._lock = lock

    def __enter__(self) -> DatasetPublisher:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._acquire()
        try:
            self._recover()
            self.path.mkdir()
            self._unpublished = self.path
        except BaseException:
            self._release()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        try:
            current = self._current()
            if self._unpublished is not None and (current is None or current.name != self._unpublished.name):
                shutil.rmtree(self._unpublished, ignore_errors=True)
        finally:
            self._release()

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    # -- the generations ------------------------------------------------------------------------------
    def _current(self) -> Path | None:
        """The published generation folder, or None (a new folder, or one with real entries only)."""
        link = self.builds / CURRENT
        if link.is_symlink():
            target = self.builds / os.readlink(link)
            if target.is_dir():
                return target
        return None

    def _recover(self) -> None:
        """Finish what a killed build left: retire a generation it had replaced, drop folders it never published."""
        current = self._current()
        previous = self.builds / PREVIOUS
        if previous.is_symlink():
            retired = self.builds / os.readlink(previous)
            if retired.is_dir() and (current is None or retired.resolve() != current.resolve()):
                self._retire(retired, current, build_outputs(retired))
            previous.unlink()
        for entry in sorted(self.builds.iterdir()):
            if entry.name in (LOCK_FILE, CURRENT, REJECTED) or entry.name.startswith("kept-") or (
                    current is not None and entry.name == current.name):
                continue
            if entry.name.startswith("adopting-") and entry.is_dir():
                # real entries moved aside while being turned into links: their files are linked in current
                for child in sorted(entry.iterdir()):
                    self._retire(child, current / child.name if current else None, set())
                shutil.rmtree(entry, ignore_errors=True)
            else:  # staging-*, gen-* never published, temporary links
                _remove(entry)
        for stray in self.out_dir.glob(".*.link-*"):
            if stray.is_symlink():
                stray.unlink()
        if current is not None:  # an adoption killed between its two renames left a name without its link
            for child in current.iterdir():
                if not _exists(self.out_dir / child.name):
                    _symlink_atomic(self.out_dir / child.name, link_target(child.name))

    def _retire(self, old: Path, into: Path | None, ours: set[str]) -> None:
        """Delete what the build wrote in ``old``; move anything else into ``into`` (or keep it under kept-)."""
        if not old.is_dir() or old.is_symlink():
            if _exists(old):
                if old.name in ours or (into is not None and _exists(into) and _same_content(old, into)):
                    old.unlink()
                elif into is not None and not _exists(into):
                    os.rename(old, into)
            return
        for folder, _, files in os.walk(old):
            for name in files:
                path = Path(folder) / name
                relative = path.relative_to(old).as_posix()
                twin = into / relative if into is not None else None
                if relative in ours or (twin is not None and _exists(twin) and _same_content(path, twin)):
                    path.unlink()
                elif twin is not None and not _exists(twin):
                    twin.parent.mkdir(parents=True, exist_ok=True)
                    os.rename(path, twin)  # a file the build did not write stays visible where it was
        for folder, _, _ in sorted(os.walk(old), key=lambda item: -len(item[0])):
            try:
                os.rmdir(folder)
            except OSError:
                pass
        if old.exists():
            kept = self.builds / f"kept-{self.build_id}" / old.name
            kept.parent.mkdir(parents=True, exist_ok=True)
            os.rename(old, kept)
            left = sorted(p.relative_to(kept).as_posix() for p in kept.rglob("*") if not p.is_dir())
            warnings.warn(f"{self.out_dir}: kept files the build did not write but whose names it now uses: "
                          f"{', '.join(left[:5])}{' ...' if len(left) > 5 else ''} (under {kept})", stacklevel=2)

    def _adopt_real_entries(self, names: set[str]) -> None:
        """Turn real files and folders at build-output names into links, showing the same content throughout.

        They come from a build of an earlier version of this toolkit or from a copy of OUT made with links
        followed. Their content is hard-linked into a generation (the current one, or a new ``gen-adopted-``),
        then each entry is replaced by its link: files by one rename, folders by an atomic exchange
        (renameat2) where the system has it."""
        manifest = self.out_dir / MANIFEST_FILE
        legacy = None
        if _exists(manifest) and not manifest.is_symlink():
            try:
                legacy = json.loads(manifest.read_text(encoding="utf-8"))
                names = names | set(legacy["shards"])
            except (OSError, ValueError, KeyError, TypeError):
                legacy = None
        real = sorted(n for n in names if _exists(self.out_dir / n) and not (self.out_dir / n).is_symlink()
                      and self._written_by_a_build(n, legacy))
        if not real:
            return  # anything else in the way is refused by commit's conflict check, never deleted
        target = self._current()
        if target is None:
            _remove(self.builds / CURRENT)  # a copied folder, not a link
            target = self.builds / f"gen-adopted-{self.build_id}"
            target.mkdir()
        for name in real:
            _mirror(self.out_dir / name, target / name)
        _fsync_tree(target)
        if self._current() is None:
            _symlink_atomic(self.builds / CURRENT, target.name)
        aside = self.builds / f"adopting-{self.build_id}"
        aside.mkdir(exist_ok=True)
        for name in real:
            fault_point("adopting")
            entry = self.out_dir / name
            if entry.is_dir():
                tmp = entry.with_name(f".{name}.link-{os.getpid()}")
                if _exists(tmp):
                    tmp.unlink()
                os.symlink(link_target(name), tmp)
                if _exchange(tmp, entry):
                    os.rename(tmp, aside / name)  # tmp now names the real folder
                else:
                    os.rename(entry, aside / name)
                    os.rename(tmp, entry)
            else:
                _symlink_atomic(entry, link_target(name))
                continue
            self._retire(aside / name, target / name, set())
        shutil.rmtree(aside, ignore_errors=True)

    def _written_by_a_build(self, name: str, legacy: dict | None) -> bool:
        """Whether the real entry OUT/<name> is a build's output. Split folders are (inside them only the
        manifest's shards count as the build's); a top-level file only beside a build's real manifest, and
        word vectors only when that build trained them (not a file the user passed with --word-vectors)."""
        if (self.out_dir / name).is_dir():
            return True
        if legacy is None:  # a takeover killed half-way had already hard-linked the file into current
            current = self._current()
            return current is not None and _exists(current / name) and _same_content(self.out_dir / name,
                                                                                      current / name)
        if name == "word_vectors.bin":
            vectors = legacy.get("settings", {}).get("text", {}).get("word_vectors", {})
            return isinstance(vectors, dict) and vectors.get("source") != "file"
        return True

    def commit(self) -> Path:
        """Publish the staged build as OUT's dataset in one atomic step; returns the generation folder."""
        staged = self.path
        names = {entry.name for entry in staged.iterdir()}
        if MANIFEST_FILE not in names:
            raise ValueError(f"{staged}: nothing to publish without {MANIFEST_FILE}")
        fault_point("staged")
        _fsync_tree(staged)
        generation = self.builds / f"gen-{self.build_id}"
        os.rename(staged, generation)
        self._unpublished = generation
        old = self._current()
        old_names = {entry.name for entry in old.iterdir()} if old is not None else set()
        self._adopt_real_entries(names | old_names)
        old = self._current()
        old_names = {entry.name for entry in old.iterdir()} if old is not None else set()
        for name in sorted(names):
            entry = self.out_dir / name
            if _exists(entry) and not _is_published_link(entry, name):
                raise FolderConflict(f"{entry} is in the way of the build's {name} and was not written by a build; "
                                     f"move it away and build again")
        created = []
        try:
            for name in sorted(names):
                if not _exists(self.out_dir / name):
                    _symlink_atomic(self.out_dir / name, link_target(name))  # resolves once current is swapped
                    created.append(self.out_dir / name)
            if old is not None:
                _symlink_atomic(self.builds / PREVIOUS, old.name)
            fault_point("before-swap")
            _symlink_atomic(self.builds / CURRENT, generation.name)  # the commit point
        except BaseException:
            for link in created:  # links to names the previous dataset does not have: they lead nowhere
                if not link.exists():
                    link.unlink(missing_ok=True)
            raise
        self._unpublished = None
        fault_point("swapped")
        # Published. What follows only tidies up; a kill or an error here is finished by the next build's
        # _recover, so it is a warning, not a failed build.
        try:
            _fsync(self.builds)  # the swap itself survives a power cut
            for name in sorted(old_names - names):
                if _is_published_link(self.out_dir / name, name):
                    (self.out_dir / name).unlink()
            if old is not None:
                self._retire(old, generation, build_outputs(old))
                (self.builds / PREVIOUS).unlink()
            _remove(self.builds / REJECTED)
        except OSError as exc:
            warnings.warn(f"{self.out_dir}: the new dataset is published, but tidying up the previous one failed "
                          f"({exc}); the next build finishes it", stacklevel=2)
        return generation

    def reject(self) -> Path:
        """Keep what was staged (the quarantine report of a failed --strict build) as ``.builds/rejected``."""
        rejected = self.builds / REJECTED
        _remove(rejected)
        os.rename(self.path, rejected)
        self._unpublished = None
        return rejected
