"""Atomic writes: an artifact is either complete at its final path or absent."""

import contextlib
import json
import os
import shutil
import tempfile

# Suffixes Keras checks on save; a temporary file must keep them.
_KERAS_SUFFIXES = (".weights.h5", ".keras")


def remove(path):
    """Removes a file or a folder tree, if present."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.remove(path)


def _swap_directory(tmp, path):
    """Renames directory ``tmp`` to ``path``, replacing an existing ``path`` only on success."""
    if not os.path.lexists(path):
        os.rename(tmp, path)
        return
    parent, base = os.path.split(path)
    old = tempfile.mkdtemp(prefix=f".{base}.old-", dir=parent)
    os.rmdir(old)
    os.rename(path, old)
    try:
        os.rename(tmp, path)
    except BaseException:
        os.rename(old, path)
        raise
    remove(old)


@contextlib.contextmanager
def atomic_path(path, directory=False):
    """Yields a temporary sibling of ``path``; moves it to ``path`` if the block succeeds.

    The temporary lives in the destination directory (so the final rename stays on one
    filesystem) and keeps ``path``'s suffix (Keras checks ``.keras``/``.weights.h5``). On an
    exception it is removed and ``path`` is left as it was.

    Args:
        path: str or PathLike. The final file or directory.
        directory: bool. Yield an empty directory instead of an (absent) file path.
    """
    path = os.path.abspath(os.fspath(path))
    parent, base = os.path.split(path)
    os.makedirs(parent, exist_ok=True)
    if directory:
        tmp = tempfile.mkdtemp(prefix=f".{base}.tmp-", dir=parent)
    else:
        suffix = next((s for s in _KERAS_SUFFIXES if base.endswith(s)), os.path.splitext(base)[1])
        fd, tmp = tempfile.mkstemp(prefix=f".{base}.tmp-", suffix=suffix, dir=parent)
        os.close(fd)
        os.remove(tmp)  # writers create it themselves (some refuse to overwrite)
    try:
        yield tmp
        if directory:
            _swap_directory(tmp, path)
        else:
            os.replace(tmp, path)
    except BaseException:
        remove(tmp)
        raise


def _write_bytes(path, content):
    with open(path, "wb") as f:
        f.write(content)
        f.flush()
        os.fsync(f.fileno())


def save_bytes(path, content):
    """Writes ``content`` (e.g. a TFLite flatbuffer) to ``path`` atomically. Returns the path."""
    with atomic_path(path) as tmp:
        _write_bytes(tmp, content)
    return os.fspath(path)


def write_json(path, obj):
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=True, default=float)
            f.write("\n")
