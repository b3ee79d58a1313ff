"""The one atomic writer: every file contrastkit writes goes through here.

A file is written to a temporary file in the same folder, fsync'ed, renamed over the target with
``os.replace`` and the folder is fsync'ed, so a reader (or a machine that loses power) sees the
old file or the new one, never a mix. A folder (a checkpoint) is written into a temporary folder
that ends with ``MANIFEST.json`` (the sha256 and size of every file), fsync'ed and renamed into
place; :func:`verify_manifest` checks a folder against its manifest.

When a write fails with an ``OSError`` (a full disk, an I/O error) the temporary file is removed,
the previous file stays intact, and a :class:`WriteFailedError` (``DiskFullError`` for ENOSPC /
EDQUOT) is raised whose message names the path and the bytes it needed.

>>> import json, tempfile
>>> from pathlib import Path
>>> d = Path(tempfile.mkdtemp())
>>> write_json(d / "a.json", {"x": 1})
>>> json.loads((d / "a.json").read_text())
{'x': 1}
>>> with open_atomic(d / "b.bin") as f:
...     _ = f.write(b"hello ")
...     _ = f.write(b"world")
>>> (d / "b.bin").read_bytes()
b'hello world'
>>> with atomic_folder(d / "ckpt") as tmp:
...     tmp.write_bytes("w.bin", b"1234")
>>> sorted(p.name for p in (d / "ckpt").iterdir())
['MANIFEST.json', 'w.bin']
>>> verify_manifest(d / "ckpt")
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

MANIFEST = "MANIFEST.json"
MANIFEST_FORMAT = 1
_FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


def _read_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# mkstemp/mkdtemp create 0600/0700; files and folders get the usual 0666/0777 minus the umask,
# as a plain open() or mkdir() would give them (read once: changing the umask is process-wide)
_UMASK = _read_umask()

__all__ = [
    "MANIFEST",
    "CorruptFolderError",
    "DiskFullError",
    "SymlinkRefusedError",
    "WriteFailedError",
    "atomic_folder",
    "fsync_dir",
    "open_atomic",
    "open_nofollow",
    "pwrite_all",
    "refuse_symlink",
    "verify_manifest",
    "write_bytes",
    "write_json",
    "write_text",
]


class WriteFailedError(OSError):
    """A write that failed (I/O error, read-only disk...); the previous file is intact.

    ``errno`` is the original error's; ``str()`` is the one-line message (no ``[Errno N]``).
    """

    def __str__(self) -> str:
        return str(self.strerror)


class DiskFullError(WriteFailedError):
    """A write that ran out of space (ENOSPC / EDQUOT); the previous file is intact."""


class CorruptFolderError(ValueError):
    """A folder whose files do not match its ``MANIFEST.json`` (or that has none)."""


def _failed(err: OSError, path: Path, needed: int | None) -> WriteFailedError:
    """The one-line error for a failed write of ``path`` (``needed`` bytes, when known)."""
    size = f"{needed:,} bytes" if needed is not None else "its bytes"
    if err.errno in _FULL:
        return DiskFullError(
            err.errno,
            f"could not write {path}: the disk is full (needed {size} in {path.parent}); "
            "free space there or point the output elsewhere, then retry (the previous file is "
            "intact)",
        )
    reason = err.strerror or str(err)
    return WriteFailedError(
        err.errno,
        f"could not write {path} ({size}): {reason}; check the disk and permissions of "
        f"{path.parent}, then retry (the previous file is intact)",
    )


# fsync of a folder that this platform or filesystem cannot do: nothing to persist, not a failure
_NO_DIR_FSYNC = {
    errno.EINVAL,
    errno.EBADF,
    getattr(errno, "ENOTSUP", errno.EINVAL),
    getattr(errno, "EOPNOTSUPP", errno.EINVAL),
    getattr(errno, "ENOSYS", errno.EINVAL),
}


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Persist a rename in folder ``path``.

    Only "this folder cannot be fsync'ed here" is ignored (Windows, where a folder cannot be
    opened; EINVAL / ENOTSUP from filesystems without folder fsync); any other error (EIO, a
    full journal) is a :class:`WriteFailedError`: the rename may not survive a power loss.
    """
    if os.name == "nt":  # pragma: no cover - folders cannot be opened for fsync on Windows
        return
    folder = Path(path)
    try:
        fd = os.open(os.fspath(folder), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as err:
        if err.errno in _NO_DIR_FSYNC:
            return
        reason = err.strerror or str(err)
        raise WriteFailedError(
            err.errno,
            f"could not persist the files renamed in {folder} (fsync of the folder: {reason}); "
            "check the disk, then retry",
        ) from err


class SymlinkRefusedError(ValueError):
    """A path contrastkit would write (or read as its own file) is a symbolic link."""


def refuse_symlink(path: str | os.PathLike[str], what: str = "") -> None:
    """Raise :class:`SymlinkRefusedError` (one line) if ``path`` itself is a symbolic link: a
    link planted in a run folder (or the folder itself) would send writes somewhere else."""
    if Path(path).is_symlink():
        subject = f"{os.fspath(path)}: the {what}" if what else os.fspath(path)
        raise SymlinkRefusedError(
            f"{subject} is a symbolic link; contrastkit never writes through links in a run "
            "folder: remove it (or copy the real file or folder there)"
        )


_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def open_nofollow(path: str | os.PathLike[str], flags: int, mode: int = 0o666) -> int:
    """``os.open(path, flags | O_NOFOLLOW)``: a symbolic link at ``path`` is refused with one line
    (:class:`SymlinkRefusedError`) instead of being followed to the file it points at."""
    try:
        return os.open(os.fspath(path), flags | _NOFOLLOW, mode)
    except OSError as err:
        # Linux gives ELOOP for a link under O_NOFOLLOW, FreeBSD EMLINK
        if err.errno in (errno.ELOOP, errno.EMLINK) and Path(path).is_symlink():
            refuse_symlink(path)
        raise


def pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    """Write all of ``data`` at ``offset`` of ``fd``: ``os.pwrite`` may write fewer bytes than
    asked (a signal, a full disk); the rest is written, and no progress at all is an error."""
    view = memoryview(data).cast("B")
    while view:
        n = os.pwrite(fd, view, offset)
        if n <= 0:
            raise OSError(errno.EIO, f"pwrite wrote nothing at offset {offset}")
        view, offset = view[n:], offset + n


class _Sink:
    """A binary file object over a raw fd that counts what it wrote (for error messages)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.written = 0

    def write(self, data: bytes | bytearray | memoryview) -> int:
        view = memoryview(data).cast("B")
        total = len(view)
        while view:
            n = os.write(self.fd, view)
            view = view[n:]
        self.written += total
        return total

    def flush(self) -> None:  # os.write is unbuffered
        return None

    def tell(self) -> int:
        return self.written

    def writable(self) -> bool:
        return True


@contextlib.contextmanager
def open_atomic(path: str | os.PathLike[str], size_hint: int | None = None) -> Iterator[_Sink]:
    """Stream bytes into ``path`` atomically: yields a binary file object (``write``/``tell``).

    The target appears only when the block ends without an exception; on any error the
    temporary file is removed and ``path`` keeps its previous content. ``size_hint`` is the
    number of bytes reported as needed when the disk fills up (default: what was written).
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    except OSError as err:
        raise _failed(err, path, size_hint) from err
    sink = _Sink(fd)
    try:
        try:
            with contextlib.suppress(OSError, AttributeError):  # no fchmod on Windows
                os.fchmod(fd, 0o666 & ~_UMASK)
            yield sink
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(err, OSError) and not isinstance(err, WriteFailedError):
            raise _failed(err, path, size_hint or sink.written or None) from err
        raise
    fsync_dir(folder)


def write_bytes(path: str | os.PathLike[str], data: bytes | Sequence[bytes]) -> None:
    """Write ``data`` (bytes, or a sequence of chunks written in order) to ``path`` atomically.

    A list or tuple is written as given; any other sequence is read one chunk at a time while
    writing (blocks read on demand from a file stay out of memory), its ``nbytes`` attribute, if
    any, is the size a full disk's error reports."""
    chunks: Sequence[bytes]
    if isinstance(data, (bytes, bytearray, memoryview)):
        chunks, size = [data], len(data)
    elif isinstance(data, (list, tuple)):
        chunks, size = data, sum(len(c) for c in data)
    else:  # lazy: never materialised as a whole
        chunks, size = data, getattr(data, "nbytes", None)
    with open_atomic(path, size_hint=size) as handle:
        for chunk in chunks:
            handle.write(chunk)


def write_text(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` atomically."""
    write_bytes(path, text.encode(encoding))


def write_json(path: str | os.PathLike[str], obj: Any, indent: int | None = 2) -> None:
    """Write ``obj`` as JSON to ``path`` atomically (a serialisation error writes nothing)."""
    write_text(path, json.dumps(obj, indent=indent))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync_file(path: Path, final: Path) -> None:
    """fsync ``path`` (a file of a folder being built; ``final`` names it in errors)."""
    try:
        fd = open_nofollow(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as err:
        raise _failed(err, final, None) from err


class FolderWriter:
    """The temporary folder of :func:`atomic_folder`; files written here enter the manifest."""

    def __init__(self, path: Path, final: Path) -> None:
        self.path = path
        self.final = final

    def write_bytes(self, name: str, data: bytes) -> None:
        """Write ``data`` as file ``name`` of the folder (fsync'ed before the manifest)."""
        target = self.path / name
        try:
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
            try:
                _Sink(fd).write(data)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as err:
            raise _failed(err, self.final / name, len(data)) from err

    def write_json(self, name: str, obj: Any) -> None:
        """Write ``obj`` as JSON file ``name`` of the folder."""
        self.write_bytes(name, json.dumps(obj, indent=1).encode("utf-8"))


@contextlib.contextmanager
def atomic_folder(final: str | os.PathLike[str]) -> Iterator[FolderWriter]:
    """Build folder ``final`` atomically: yields a writer on a temporary sibling folder.

    When the block ends, ``MANIFEST.json`` (sha256 + size of every file) is written last, the
    folder is fsync'ed and renamed to ``final`` (an older ``final`` is moved aside first and
    removed after), then the parent is fsync'ed. On an error nothing appears at ``final``.
    """
    final = Path(final)
    parent = final.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp_{final.name}.", dir=parent))
    with contextlib.suppress(OSError):
        os.chmod(tmp, 0o777 & ~_UMASK)
    writer = FolderWriter(tmp, final)
    try:
        yield writer
        files = sorted(p for p in tmp.rglob("*") if p.is_file())
        # files written by other writers (save_pretrained, torch.onnx.export) into the folder
        # are fsync'ed too, and every subfolder, before the manifest and the rename
        for path in files:
            _fsync_file(path, final / path.relative_to(tmp))
        for sub in sorted((p for p in tmp.rglob("*") if p.is_dir()), reverse=True):
            fsync_dir(sub)
        entries = {
            p.relative_to(tmp).as_posix(): {"size": p.stat().st_size, "sha256": _sha256(p)}
            for p in files
        }
        writer.write_json(MANIFEST, {"format": MANIFEST_FORMAT, "files": entries})
        fsync_dir(tmp)
        aside = None
        if final.exists():
            aside = parent / f".old_{final.name}.{os.getpid()}"
            os.replace(final, aside)
        os.replace(tmp, final)
        fsync_dir(parent)
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(err, OSError) and not isinstance(err, WriteFailedError):
            raise _failed(err, final, None) from err
        raise


def verify_manifest(folder: str | os.PathLike[str]) -> None:
    """Check every file ``MANIFEST.json`` lists (size, then sha256); raise what is wrong.

    Raises:
        CorruptFolderError: no manifest, an unreadable manifest, or a file missing, of the
            wrong size or with the wrong sha256 (the message names the file).
    """
    folder = Path(folder)
    manifest = folder / MANIFEST
    if not manifest.is_file():
        raise CorruptFolderError(f"{folder}: no {MANIFEST} (an unfinished or foreign folder)")
    try:
        data = json.loads(manifest.read_bytes().decode("utf-8"))
        files = data["files"]
        entries = [(str(name), int(e["size"]), str(e["sha256"])) for name, e in files.items()]
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise CorruptFolderError(f"{manifest}: unreadable manifest ({err})") from None
    for name, size, sha in entries:
        path = folder / name
        if ".." in Path(name).parts or not path.is_file():
            raise CorruptFolderError(f"{path}: listed in {MANIFEST} but missing")
        actual = path.stat().st_size
        if actual != size:
            raise CorruptFolderError(f"{path}: {actual} bytes, {MANIFEST} says {size} (truncated?)")
        if _sha256(path) != sha:
            raise CorruptFolderError(f"{path}: sha256 does not match {MANIFEST} (corrupted)")


class LockHeldError(ValueError):
    """Another process holds a lock that is not waited for (see :func:`exclusive_lock`)."""


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike[str], *, what: str, wait: bool) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created, never followed through a symlink) for
    the block; the holder's pid is written into it, so a second writer can be told who holds it.

    Args:
        path: the lock file, e.g. ``RUN/train.lock``.
        what: what the lock protects, for the error (``"training of runs/x"``).
        wait: block until the holder releases it (index builds queue), or raise
            :class:`LockHeldError` at once naming the holder's pid (two trainings of one run).

    The lock is released when the block ends or the process dies (the kernel drops a dead
    process's ``flock``), so a killed run never leaves a stale lock.

    >>> import tempfile
    >>> from pathlib import Path
    >>> lock = Path(tempfile.mkdtemp()) / "x.lock"
    >>> with exclusive_lock(lock, what="x", wait=False):
    ...     try:
    ...         with exclusive_lock(lock, what="x", wait=False):
    ...             pass
    ...     except LockHeldError as err:
    ...         print(str(err).split(" (")[0])
    x is in use by another contrastkit process
    """
    import fcntl

    path = Path(path)
    fd = open_nofollow(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "unknown"
            raise LockHeldError(
                f"{what} is in use by another contrastkit process (pid {holder}, lock {path}); "
                "wait for it to finish, or use another run folder"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
