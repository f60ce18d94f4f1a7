"""IAM-OnDB's line-stroke files: the XML of one line, and the archive or folder of all lines.

A line file is ``<WhiteboardCaptureSession>`` with one ``<StrokeSet>`` of ``<Stroke>`` elements,
each a list of ``<Point x=".." y=".." time=".."/>``. :func:`parse_line_bytes` turns it into
``(N, 3)`` float32 ``(dx, dy, pen_up)``: the offset from the previous point (``(0, 0)`` for the
first) and 1 on the last point of every stroke. :func:`read_archive` streams every line file of a
``lineStrokes-all`` tar archive (nothing is extracted), :func:`read_tree` reads an extracted
``lineStrokes/`` folder; both key the lines by name (``a01-000u-01``).
"""

from __future__ import annotations

import lzma
import tarfile
import zlib
from pathlib import Path
from typing import Any
from xml.parsers import expat

import numpy as np

from datamodules.base import DataError

ARCHIVES = ("lineStrokes-all.tar.gz", "lineStrokes-all.tar.xz", "lineStrokes-all.tgz")
BASE_URL = "http://www.fki.inf.unibe.ch/DBs/iamOnDB"
LINESTROKES_URL = f"{BASE_URL}/data/lineStrokes-all.tar.gz"


class IAMFormatError(DataError):
    """A line-stroke file that is not the IAM-OnDB XML format; the message names the file."""


# ---------------------------------------------------------------------------------------------
# one line file


class _Reject(Exception):
    """Raised inside the expat handlers: the reason a file is not a line-stroke file."""


def parse_line_bytes(data: bytes, name: str) -> np.ndarray:
    """The ``(N, 3)`` float32 ``(dx, dy, pen_up)`` array of a line-stroke XML document.

    ``name`` is used in the error message. The document is read by expat (the parser under
    :mod:`xml.etree.ElementTree`) with element handlers only, which is several times faster than
    building the tree; DOCTYPE and entity declarations are refused, so nothing can expand.
    Raises :class:`IAMFormatError` (one sentence naming ``name``) for anything malformed.

    One function of about 70 lines: the handlers are closures over local lists and counters,
    the cheapest callbacks expat can call (this runs for every point of 12,195 files).
    """
    xs: list[str] = []
    ys: list[str] = []
    ends: list[int] = []  # index of the last point of each non-empty stroke
    depth = 0
    sets = 0
    in_stroke = False  # inside WhiteboardCaptureSession > StrokeSet > Stroke
    stroke_start = 0
    parent = ""  # the element at depth 2

    def start(tag: str, attrs: list[str]) -> None:
        nonlocal depth, sets, in_stroke, stroke_start, parent
        depth += 1
        if depth == 4:
            if in_stroke and tag == "Point":
                if len(attrs) >= 4 and attrs[0] == "x" and attrs[2] == "y":
                    xs.append(attrs[1])
                    ys.append(attrs[3])
                    return
                values = dict(zip(attrs[::2], attrs[1::2], strict=False))
                if "x" not in values or "y" not in values:
                    raise _Reject(f"point {len(xs) + 1} has no x or no y attribute")
                xs.append(values["x"])
                ys.append(values["y"])
        elif depth == 3:
            in_stroke = tag == "Stroke" and parent == "StrokeSet"
            stroke_start = len(xs)
        elif depth == 2:
            parent = tag
            if tag == "StrokeSet":
                sets += 1
                if sets > 1:
                    raise _Reject("it holds more than one StrokeSet")
        elif depth == 1 and tag != "WhiteboardCaptureSession":
            raise _Reject(f"its root element is <{tag}>, not <WhiteboardCaptureSession>")

    def end(tag: str) -> None:
        nonlocal depth, in_stroke
        depth -= 1
        if depth == 2 and in_stroke:
            in_stroke = False
            if len(xs) > stroke_start:
                ends.append(len(xs) - 1)

    def refuse_doctype(*_: Any) -> None:
        raise _Reject("it has a DOCTYPE declaration, which line-stroke files never have")

    parser = expat.ParserCreate()
    parser.ordered_attributes = True
    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.StartDoctypeDeclHandler = refuse_doctype
    parser.EntityDeclHandler = refuse_doctype
    try:
        parser.Parse(data, True)
    except _Reject as error:
        raise IAMFormatError(f"{name} is not an IAM-OnDB line-stroke file: {error}") from None
    except expat.ExpatError as error:
        raise IAMFormatError(f"{name} is not well-formed XML ({error})") from None
    except Exception as error:  # e.g. an unknown encoding: any parser failure is a format error
        raise IAMFormatError(f"{name} could not be parsed as XML ({error!r})") from None
    if sets == 0:
        raise IAMFormatError(f"{name} has no StrokeSet element, so it holds no pen strokes")
    if not xs:
        raise IAMFormatError(f"{name} has an empty StrokeSet (no Point in any Stroke)")
    return _offsets(xs, ys, ends, name)


def _offsets(xs: list[str], ys: list[str], ends: list[int], name: str) -> np.ndarray:
    """``(N, 3)`` float32 ``(dx, dy, pen_up)`` of the points' coordinate strings and the index
    of each stroke's last point; IAMFormatError naming ``name`` for a coordinate that is not a
    finite number."""
    try:
        coords = np.empty((len(xs), 2), dtype=np.float64)
        coords[:, 0] = np.array(xs, dtype=np.float64)
        coords[:, 1] = np.array(ys, dtype=np.float64)
    except (ValueError, TypeError, OverflowError):
        pairs = enumerate(zip(xs, ys, strict=True))
        bad = next((i for i, (x, y) in pairs if not _numeric(x, y)), 0)
        raise IAMFormatError(
            f"{name} has a point ({bad + 1}) whose x={xs[bad]!r} or y={ys[bad]!r} is not a number"
        ) from None
    out = np.zeros((len(xs), 3), dtype=np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        out[1:, :2] = np.diff(coords, axis=0)
    out[ends, 2] = 1.0
    if not np.isfinite(coords).all() or not np.isfinite(out).all():
        raise IAMFormatError(f"{name} has a point whose coordinates are not finite numbers")
    return out


def _numeric(x: str, y: str) -> bool:
    """Whether numpy reads both strings as numbers (the same conversion as the parser's)."""
    try:
        np.array([x, y], dtype=np.float64)
    except (ValueError, TypeError, OverflowError):
        return False
    return True


def parse_line_strokes(path: str | Path) -> np.ndarray:
    """The ``(N, 3)`` float32 ``(dx, dy, pen_up)`` array of one line-stroke XML file.

    dx, dy: offset from the previous point (0, 0 for the first); pen_up: 1 on the last point of
    each stroke, else 0. Raises :class:`IAMFormatError` naming the file when it cannot be read or
    is not a line-stroke file (not XML, no StrokeSet, a Point without numeric x and y, no points).
    """
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise IAMFormatError(f"{path} cannot be read ({error.strerror or error})") from None
    return parse_line_bytes(data, str(path))


# ---------------------------------------------------------------------------------------------
# the whole archive


def line_name(member: str) -> str | None:
    """``a01-000u-01`` for ``.../a01-000u-01.xml``; None for anything that is not a line file."""
    base = member.rsplit("/", 1)[-1]
    if not base.endswith(".xml") or base.startswith("._"):
        return None
    return base[:-4]


def _add(out: dict[str, np.ndarray], name: str, where: str, points: np.ndarray) -> None:
    if name in out:
        raise DataError(f"{where} holds a second line file named {name}.xml; remove the duplicate")
    out[name] = points


def read_archive(path: str | Path) -> dict[str, np.ndarray]:
    """Every line file of a ``lineStrokes`` tar archive (gz, xz, bz2 or plain), by line name.

    Members are streamed one by one, nothing is extracted. Raises :class:`DataError` for an
    unreadable archive and :class:`IAMFormatError` (naming the member) for a malformed file.
    """
    path = Path(path)
    out: dict[str, np.ndarray] = {}
    try:
        with tarfile.open(path, "r|*") as tar:
            for member in tar:
                name = line_name(member.name) if member.isfile() else None
                if name is None:
                    continue
                handle = tar.extractfile(member)
                assert handle is not None
                where = f"{path}:{member.name}"
                _add(out, name, str(path), parse_line_bytes(handle.read(), where))
    except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, OSError) as error:
        raise DataError(
            f"{path} is not a readable tar archive ({error}); replace it with a good copy of "
            f"{LINESTROKES_URL}"
        ) from error
    if not out:
        raise DataError(f"{path} holds no line-stroke .xml files; is it lineStrokes-all.tar.gz?")
    return out


def tree_files(folder: Path) -> list[Path]:
    """The line files under an extracted ``lineStrokes`` folder, sorted."""
    return sorted(p for p in folder.rglob("*.xml") if p.is_file() and line_name(p.name))


def read_tree(folder: str | Path) -> dict[str, np.ndarray]:
    """Every ``*.xml`` line file under an extracted ``lineStrokes`` folder, by line name."""
    folder = Path(folder)
    out: dict[str, np.ndarray] = {}
    for file in tree_files(folder):
        _add(out, file.stem, str(folder), parse_line_strokes(file))  # stem: its line_name
    if not out:
        raise DataError(f"{folder} holds no line-stroke .xml files; is it the lineStrokes folder?")
    return out


__all__ = [
    "ARCHIVES",
    "BASE_URL",
    "LINESTROKES_URL",
    "IAMFormatError",
    "line_name",
    "parse_line_bytes",
    "parse_line_strokes",
    "read_archive",
    "read_tree",
    "tree_files",
]
