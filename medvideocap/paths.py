"""Where a path may lead: the checks every verb makes on the folders it is given, and on the paths it
reads out of files (metadata rows, manifests, sidecars).

One owner, because each rule is easy to get subtly different in every verb that needs it:

* :func:`check_apart`: a verb that reads SRC and writes OUT refuses OUT == SRC, OUT inside SRC and
  SRC inside OUT before doing any work. Written into its source, ``build`` would scan its own output
  as input on the next run; written around it, a cleanup of OUT would delete the source.
* :func:`resolve_path`: a folder given on the command line made absolute, with a symlink loop named as
  such instead of pathlib's ``RuntimeError: Symlink loop`` (Python < 3.13) or ``OSError`` (3.13+).
* :func:`inside`: a relative path read from a file must stay inside the folder it is relative to. A
  metadata row whose ``shard`` is ``../elsewhere/x.tar`` would otherwise make a reader serve bytes from
  anywhere on the disk under a clip's name.

A leaf module (no torch, no other subpackage) so that the CLI, ``dataset``, ``loading`` and ``build``
can all import it cheaply.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path, PurePosixPath, PureWindowsPath

from medvideocap.errors import DataError


class PathLoopError(ValueError):
    """A path runs through a symlink loop; the message names it."""


class OutsideRootError(DataError, ValueError):
    """A path read from a file leads outside the folder it is relative to; the message names the row.

    A :class:`~medvideocap.errors.DataError`: it is one row's bad data, so a reader under
    ``on_error="skip"`` skips that row and keeps the rest."""


def resolve_path(path: str | Path, *, label: str) -> Path:
    """``path`` absolute with every symlink followed (it need not exist); a symlink loop in it is a
    :class:`PathLoopError` naming ``label`` and the path, so a verb prints one line, not a traceback."""
    try:
        return Path(path).expanduser().resolve()
    except RuntimeError as exc:  # Python < 3.13: "Symlink loop from '...'"
        cause: Exception = exc
    except OSError as exc:  # Python 3.13+: ELOOP
        if exc.errno != errno.ELOOP:
            raise
        cause = exc
    raise PathLoopError(f"{label} {path}: runs through a symlink loop ({cause}); fix or remove that link")


def check_apart(
    src: str | Path,
    out: str | Path,
    *,
    src_label: str = "--src",
    out_label: str = "--out",
    error: type[Exception] = ValueError,
) -> None:
    """Refuse an output folder that is the source, lies inside it, or holds it; raise ``error``.

    ``error`` is the calling verb's own error family (``BuildError``, ``RecaptionError``...), which
    its CLI already prints as one line. Paths are compared after following symlinks, so a link to the
    source counts as the source. A ``src`` that is not a local path (a Hub repo id) has nothing to
    overlap and passes; one that runs through a symlink loop raises ``error`` naming it."""
    if not os.path.lexists(Path(src).expanduser()):
        return
    try:
        s = resolve_path(src, label=src_label)
        o = resolve_path(out, label=out_label)
    except PathLoopError as exc:
        raise error(str(exc)) from None
    if o == s:
        problem = f"{out_label} {out} is {src_label} {src} itself"
    elif s in o.parents:
        problem = f"{out_label} {out} lies inside {src_label} {src}"
    elif o in s.parents:
        problem = f"{src_label} {src} lies inside {out_label} {out}"
    else:
        return
    raise error(
        f"{problem}: the source is never modified, and a rerun would read the output back as input; "
        f"choose an {out_label} folder beside {src_label}, neither in it nor around it"
    )


DATASET_ROW_FIX = "correct or drop this row (`medvideocap validate DIR` lists every such row)"


def inside(
    root: str | Path, relative: str, *, where: str, what: str = "path", fix: str = DATASET_ROW_FIX
) -> Path:
    """``root / relative`` when ``relative`` (read from a file) stays inside ``root``; else
    :class:`OutsideRootError` naming ``where`` (the file and row it came from) and ``fix`` (what to do,
    left out when empty).

    The check is lexical (``..`` and absolute paths are refused after normalising), not a
    ``resolve()``: a Hub snapshot's files are symlinks into the cache's ``blobs/`` folder, so following
    links would refuse every downloaded dataset, while what a row may name is a place inside its
    folder. A path that is empty or the folder itself is refused too (it names no file)."""
    text = str(relative)
    base = os.path.normpath(os.path.abspath(root))
    joined = os.path.normpath(os.path.join(base, text))
    absolute = PurePosixPath(text).is_absolute() or bool(PureWindowsPath(text).drive)
    if absolute or not text or joined == base or os.path.commonpath([base, joined]) != base:
        tail = f": {fix}" if fix else ""
        raise OutsideRootError(
            f"{where}: {what} {text!r} leads outside {root}, the folder it is relative to; it is not read{tail}"
        )
    return Path(root) / text
