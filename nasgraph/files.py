"""Writing files all or nothing: every file nasgraph writes goes through here.

    >>> import tempfile, pathlib
    >>> from nasgraph.files import write_atomic
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> write_atomic(folder / "a.txt", "hello")
    >>> sorted(p.name for p in folder.iterdir())
    ['a.txt']

A reader never sees half a file: the data goes to a temporary name beside the target (unique
per writer, so two writers never share one), then a rename puts it in place. When writing
fails, the temporaries, any file already renamed and any folder made for them are removed,
and the OSError becomes one line that names the path. Like errors.py, this module imports
nothing else of nasgraph: the IR itself writes through it.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterator
from pathlib import Path

from nasgraph.errors import NasgraphError


@contextlib.contextmanager
def written_together(*paths: Path, error: type[NasgraphError] = NasgraphError
                     ) -> Iterator[tuple[Path, ...]]:
    """Temporary names beside `paths` (files of one folder) for the block to write, renamed
    onto `paths` when it succeeds: the files of an export are all written, or none."""
    paths = tuple(Path(p) for p in paths)
    for path in paths:
        if path.is_dir():
            raise error(f"{path}: is a directory; hint: give the path of a file to write")
    folder = paths[0].parent
    made = [d for d in (folder, *folder.parents) if not d.exists()]  # deepest first
    token = secrets.token_hex(4)
    temps = tuple(p.with_name(f".{p.name}.{token}.tmp") for p in paths)
    renamed: list[Path] = []
    done = False
    try:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise error(f"{paths[0]}: cannot create the folder {e.filename or folder} "
                        f"({e.strerror or e})") from None
        yield temps
        for tmp, path in zip(temps, paths, strict=True):
            tmp.replace(path)
            renamed.append(path)
        done = True
    except OSError as e:
        raise error(f"{paths[0]}: cannot write ({e.strerror or e})") from None
    finally:
        if not done:
            for p in (*temps, *renamed):
                with contextlib.suppress(OSError):
                    p.unlink(missing_ok=True)
            for d in made:
                with contextlib.suppress(OSError):
                    d.rmdir()


def write_atomic(path: str | Path, data: str | bytes,
                 error: type[NasgraphError] = NasgraphError) -> None:
    """Write `data` (text as UTF-8) to `path` all or nothing."""
    with written_together(Path(path), error=error) as (tmp,):
        tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
