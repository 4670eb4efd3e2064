"""Writing files so that nothing is lost: atomic replacement with ordinary permissions.

Every file this package writes (Lightning checkpoints, weight exports, the latent cache, sample
grids, edited images, layout files) goes through :func:`atomic_path`: the bytes are written to a
temporary file ``.NAME.PID.tmp`` *beside* the target (same folder, so the same file system), flushed
to disk with ``fsync``, and renamed over the target. A reader -- or a run killed half way, or a full
disk -- sees the old file or the whole new one, never a torn write. A target that exists must be a
regular file (a FIFO or a device node is never replaced), and temporaries left by killed processes
are removed the first time a process writes into their folder.

Files are *read* through :func:`check_readable`: a missing path, a folder and anything that is not a
regular file (a FIFO would block the reader forever) are refused in one line.
"""
from __future__ import annotations

import errno
import json
import os
import re
import stat
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from .errors import MissingFileError, UserError

DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class WriteError(UserError, OSError):
    """A file could not be written (full disk, read-only file system, no permission, not a folder)."""


def write_error(path: Path, err: OSError, kept: bool) -> WriteError:
    """One line naming the file, the reason, and whether the previous version survives."""
    reason = err.strerror or str(err)
    if err.errno in DISK_FULL:
        reason = f"no space left on the file system of {path.parent}"
    elif err.errno == errno.EROFS:
        reason = f"{path.parent} is on a read-only file system"
    elif err.errno in (errno.EACCES, errno.EPERM):
        reason = f"no permission to write in {path.parent}"
    kept_note = f"; the previous {path.name} is kept unchanged" if kept else ""
    return WriteError(f"cannot write {path}: {reason}{kept_note}")


def fsync_dir(folder: Path) -> None:
    """Persist a rename: fsync the folder entry (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def file_kind(mode: int) -> str:
    """What a non-regular ``st_mode`` is, in words."""
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def check_readable(path: str | os.PathLike, what: str = "file") -> Path:
    """``path`` as a :class:`Path` if it names an existing regular file (links followed), else one line:
    :class:`MissingFileError` only when nothing is there, :class:`UserError` for a folder, a FIFO, a
    device, a socket (reading those would fail late or block forever)."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise MissingFileError(f"{what} {path} does not exist") from None
    except NotADirectoryError:
        raise MissingFileError(f"{what} {path} does not exist (a parent of it is a file)") from None
    except OSError as err:
        raise UserError(f"cannot read {what} {path}: {err.strerror or err}") from None
    if not stat.S_ISREG(mode):
        raise UserError(f"{what} {path} is {file_kind(mode)}, not a regular file")
    return path


def read_json(path: Path, what: str, error: type[UserError] = UserError, max_bytes: int | None = None) -> Any:
    """The JSON document in ``path`` (UTF-8, a byte-order mark allowed), or one ``error`` line naming
    ``what`` was wrong: larger than ``max_bytes``, not JSON, not UTF-8, nested too deeply."""
    size = path.stat().st_size
    if max_bytes is not None and size > max_bytes:
        raise error(f"{what} {path} is {size / 1e6:.1f} MB; a config is at most {max_bytes // 10**6} MB")
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as err:
        raise error(f"{path} is not valid JSON: {err}") from err
    except UnicodeDecodeError as err:
        raise error(f"{path} is not a UTF-8 text file ({err.reason} at byte {err.start})") from None
    except RecursionError:
        raise error(f"{path} nests JSON too deeply to be a config") from None


def checkpoint_format(path: str | os.PathLike) -> str:
    """``"safetensors"`` or ``"torch"``, read from the file's first bytes (not its suffix): a torch
    checkpoint is a zip (``PK``) or a pickle; a safetensors file starts with its header's length
    (8 bytes, little-endian) and the header's ``{``. An unrecognised file goes by its suffix."""
    with open(path, "rb") as f:
        head = f.read(9)
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":
        return "torch"
    if len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") <= os.path.getsize(path) - 8:
        return "safetensors"
    return "safetensors" if Path(path).suffix == ".safetensors" else "torch"


def check_writable_target(path: str | os.PathLike, what: str = "output") -> Path:
    """``path`` may be written: it does not exist yet, or it is a regular file (a FIFO, a device node
    or a folder in its place is refused, never replaced). Links are not followed: a link is replaced
    by the new file, its target is left alone."""
    path = Path(path)
    try:
        mode = path.lstat().st_mode
    except (FileNotFoundError, NotADirectoryError):
        return path
    if not (stat.S_ISREG(mode) or stat.S_ISLNK(mode)):
        raise WriteError(f"cannot write {what} {path}: it is {file_kind(mode)}; give a new file name or a regular file")
    return path


def check_output_path(path: str | os.PathLike, what: str = "--out", image: bool = True) -> Path:
    """Fail before any work when ``path`` cannot be written: a folder, under a file, a read-only file
    system or no permission, a FIFO or device node in its place, and (``image``) an unknown image suffix."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{what} {path} is a folder; give a file name such as {path / 'samples.png'}")
    folder = path.resolve().parent
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        raise UserError(f"{what} {path}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{what} {path}: cannot write in {existing} (read-only file system or no permission)")
    check_writable_target(path, what)
    if image:
        image_format(path)
    return path


TEMPORARY = re.compile(r"^\..+\.(\d+)\.tmp$")
_cleaned: set[Path] = set()


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def clean_stale_temporaries(folder: Path) -> list[Path]:
    """Remove the ``.NAME.PID.tmp`` files in ``folder`` whose process is gone (a run killed while
    writing); once per folder and process. Returns what was removed."""
    folder = Path(folder)
    key = folder.resolve()
    if key in _cleaned:
        return []
    _cleaned.add(key)
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return []
    for entry in entries:
        found = TEMPORARY.match(entry.name)
        if found is None or int(found.group(1)) == os.getpid() or process_alive(int(found.group(1))):
            continue
        try:
            if entry.is_file(follow_symlinks=False):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except OSError:
            pass
    return removed


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success fsync it and rename it over ``path``.

    The new file gets the mode an ordinary new file would have (``0666`` minus the umask), whatever
    the writer used. Any ``OSError`` (full disk, read-only file system, ...) becomes one
    :class:`WriteError` line; the temporary file is removed and a previous ``path`` is untouched.
    """
    path = check_writable_target(path, "file")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    kept = path.exists()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        clean_stale_temporaries(path.parent)
        os.close(os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o666))  # the mode a new file gets here
        mode = tmp.stat().st_mode & 0o777
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as err:
        if isinstance(err, UserError):
            raise
        raise write_error(path, err, kept) from err
    finally:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass


def save_text(text: str, path: str | os.PathLike) -> Path:
    """Write ``text`` (UTF-8) to ``path``, atomically (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


#: image formats by file suffix (what an image output's name may end with)
IMAGE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP", ".tif": "TIFF", ".tiff": "TIFF", ".webp": "WEBP"}


def image_format(path: str | os.PathLike) -> str:
    """The format an image file named ``path`` is written in, by its suffix; an unknown suffix is refused."""
    suffix = Path(path).suffix.lower()
    if suffix not in IMAGE_FORMATS:
        raise UserError(f"image file {path}: unknown image suffix {suffix or '(none)'!r}; name it "
                        + ", ".join(sorted(set(IMAGE_FORMATS))))
    return IMAGE_FORMATS[suffix]


def save_picture(image: Any, path: str | os.PathLike) -> Path:
    """Write ``image`` (a PIL image, or a uint8 tensor ``(C, H, W)`` with C = 1 or 3) in the format
    its suffix names (:func:`image_format`), atomically (see :func:`atomic_path`)."""
    import torch
    from PIL import Image

    fmt = image_format(path)
    if isinstance(image, torch.Tensor):
        array = image.detach().cpu().permute(1, 2, 0).numpy()
        image = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
    with atomic_path(path) as tmp:  # the temporary name has no image suffix: name the format
        image.save(tmp, format=fmt)
    return Path(path)


def save_safetensors(tensors: dict[str, Any], path: str | os.PathLike, metadata: dict[str, str] | None = None) -> Path:
    """Write ``tensors`` to ``path`` as safetensors, atomically (see :func:`atomic_path`).

    safetensors creates files readable by the owner only (mode 0600); the result gets the mode an
    ordinary new file would have, so colleagues on a shared machine can load exported weights.
    """
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return Path(path)


def save_torch(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj, path)``, atomically (see :func:`atomic_path`).

    torch's zip writer reports a failed write (a full disk) as a ``RuntimeError`` about stream
    positions; writing through a Python file keeps the ``OSError`` underneath, which is raised instead.
    """
    import torch

    with atomic_path(path) as tmp:
        try:
            with open(tmp, "wb") as f:
                torch.save(obj, f)
        except RuntimeError as err:
            cause = err.__context__
            while cause is not None and not isinstance(cause, OSError):
                cause = cause.__context__
            if cause is None:
                raise
            raise cause from None
    return Path(path)


def __getattr__(name: str) -> Any:
    """:class:`AtomicCheckpointIO` is built on first use, so importing this module does not import Lightning."""
    if name == "AtomicCheckpointIO":
        global AtomicCheckpointIO
        from pytorch_lightning.plugins.io import TorchCheckpointIO

        class AtomicCheckpointIO(TorchCheckpointIO):
            """Lightning's checkpoint writer, made atomic on every file system: each checkpoint is written
            beside its final name, fsynced and renamed (Lightning's own writer may stage the file elsewhere
            and copy it, which a full disk leaves torn under the final name). Local paths only."""

            def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any | None = None) -> None:
                if storage_options is not None:
                    raise TypeError(f"{type(self).__name__} does not take storage_options, got {storage_options!r}")
                save_torch(checkpoint, path)

        return AtomicCheckpointIO
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
