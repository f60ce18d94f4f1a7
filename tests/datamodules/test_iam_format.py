"""IAM-OnDB line files: the parser (with fuzzing), the archive and the extracted tree."""

from __future__ import annotations

import contextlib
import io
import re
import signal
import tarfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from datamodules.base import DataError
from datamodules.iam_format import IAMFormatError, parse_line_strokes, read_archive, read_tree
from tests.datamodules.iam_files import SAMPLE, SAMPLE_FILES, needs_sample

POINT = re.compile(rb'<Point\s+x="(-?\d+)"\s+y="(-?\d+)"')
STROKE = re.compile(rb"<Stroke\b")

MINIMAL = b"""<?xml version="1.0" encoding="ISO-8859-1"?>
<WhiteboardCaptureSession><WhiteboardDescription/><StrokeSet>
<Stroke><Point x="10" y="20" time="1"/><Point x="13" y="18" time="2"/></Stroke>
<Stroke></Stroke>
<Stroke><Point time="3" y="30" x="11"/></Stroke>
</StrokeSet></WhiteboardCaptureSession>"""


def raw_points(path: Path) -> np.ndarray:
    """Absolute (x, y) of every Point, counted independently of the parser."""
    return np.array(POINT.findall(path.read_bytes()), dtype=np.int64).reshape(-1, 2)


def test_minimal_document_offsets_and_pen_ups(tmp_path) -> None:
    path = tmp_path / "x.xml"
    path.write_bytes(MINIMAL)
    out = parse_line_strokes(path)
    assert out.dtype == np.float32 and out.shape == (3, 3)
    assert out.tolist() == [[0, 0, 0], [3, -2, 1], [-2, 12, 1]]  # the empty Stroke adds nothing


@needs_sample
def test_sample_forms_counts_pen_ups_and_cumsum() -> None:
    assert len(SAMPLE_FILES) == 30  # a01-000u: 6, a01-020x: 6, a02-000: 10, a02-050: 8
    for path in SAMPLE_FILES:
        data = path.read_bytes()
        absolute = raw_points(path)
        assert len(absolute) == len(re.findall(rb"<Point\b", data))
        out = parse_line_strokes(path)
        assert out.shape == (len(absolute), 3) and out.dtype == np.float32
        assert int(out[:, 2].sum()) == len(STROKE.findall(data))  # one pen-up per stroke
        assert out[-1, 2] == 1 and set(np.unique(out[:, 2])) <= {0.0, 1.0}
        assert out[0, :2].tolist() == [0, 0]
        rebuilt = np.cumsum(out[:, :2].astype(np.int64), axis=0)
        assert np.array_equal(rebuilt, absolute - absolute[0])


@needs_sample
def test_tree_and_archive_give_the_same_sequences(tmp_path) -> None:
    archive = tmp_path / "lineStrokes-all.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(SAMPLE / "lineStrokes", arcname="lineStrokes")
    tree, packed = read_tree(SAMPLE / "lineStrokes"), read_archive(archive)
    assert sorted(tree) == sorted(packed) == sorted(p.stem for p in SAMPLE_FILES)
    assert all(np.array_equal(tree[k], packed[k]) for k in tree)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "well-formed"),
        (b"\x00\xff garbage", "well-formed"),
        (b"<WhiteboardCaptureSession><StrokeSet>", "well-formed"),
        (b"<Other/>", "root element"),
        (b"<WhiteboardCaptureSession/>", "no StrokeSet"),
        (b"<WhiteboardCaptureSession><StrokeSet/></WhiteboardCaptureSession>", "empty StrokeSet"),
        (
            b"<WhiteboardCaptureSession><StrokeSet><Stroke/></StrokeSet></WhiteboardCaptureSession>",
            "empty StrokeSet",
        ),
        (
            b'<WhiteboardCaptureSession><StrokeSet><Stroke><Point y="1"/></Stroke></StrokeSet>'
            b"</WhiteboardCaptureSession>",
            "no x or no y",
        ),
        (
            b'<WhiteboardCaptureSession><StrokeSet><Stroke><Point x="a" y="1"/></Stroke>'
            b"</StrokeSet></WhiteboardCaptureSession>",
            "not a number",
        ),
        (
            b'<WhiteboardCaptureSession><StrokeSet><Stroke><Point x="nan" y="1"/></Stroke>'
            b"</StrokeSet></WhiteboardCaptureSession>",
            "not finite",
        ),
        (
            b'<WhiteboardCaptureSession><StrokeSet><Stroke><Point x="-1e300" y="1"/>'
            b'<Point x="1e300" y="1"/></Stroke></StrokeSet></WhiteboardCaptureSession>',
            "not finite",
        ),
        (
            b"<WhiteboardCaptureSession><StrokeSet/><StrokeSet/></WhiteboardCaptureSession>",
            "more than one StrokeSet",
        ),
        (
            b'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;">]>'
            b"<WhiteboardCaptureSession>&b;</WhiteboardCaptureSession>",
            "DOCTYPE",
        ),
        (b'<?xml version="1.0" encoding="no-such-codec"?><a/>', "XML"),
    ],
)
def test_malformed_files_raise_one_error_naming_the_file(tmp_path, data, reason) -> None:
    path = tmp_path / "bad-01.xml"
    path.write_bytes(data)
    with pytest.raises(IAMFormatError, match=reason) as info:
        parse_line_strokes(path)
    assert str(path) in str(info.value) and isinstance(info.value, DataError)
    with pytest.raises(IAMFormatError, match="cannot be read"):
        parse_line_strokes(tmp_path / "missing.xml")


@contextlib.contextmanager
def time_limit(seconds: int) -> Iterator[None]:
    """Fail a hang instead of waiting for it (hypothesis' deadline only judges finished calls)."""
    if not hasattr(signal, "SIGALRM"):  # pragma: no cover - not on Windows
        yield
        return

    def hang(*_) -> None:
        raise TimeoutError(f"parse_line_strokes ran for more than {seconds} s")

    previous = signal.signal(signal.SIGALRM, hang)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _check_parse(folder: Path, data: bytes) -> None:
    path = folder / "fuzz-01.xml"
    path.write_bytes(data)
    try:
        with time_limit(5):
            out = parse_line_strokes(path)
    except IAMFormatError as error:
        assert str(path) in str(error)
        return
    assert out.ndim == 2 and out.shape[1] == 3 and len(out) >= 1 and out.dtype == np.float32
    assert np.isfinite(out).all() and set(np.unique(out[:, 2])) <= {0.0, 1.0}
    assert out[-1, 2] == 1 and out[0, :2].tolist() == [0, 0]


FUZZ = settings(
    max_examples=300, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@FUZZ
@given(data=st.binary(max_size=2000))
def test_fuzz_random_bytes(tmp_path, data) -> None:
    _check_parse(tmp_path, data)


SEED_XML = min((p.read_bytes() for p in SAMPLE_FILES), key=len, default=MINIMAL)  # a whole file
TAG_ENDS = [m.end() for m in re.finditer(rb"/?>", SEED_XML)]  # cuts that keep tags whole
PIECES = st.one_of(
    st.binary(max_size=4),
    st.sampled_from(
        [
            *(b'x="', b'y="', b"-", b"e9", b"nan", b'"', b"<Point ", b"<Stroke>", b"</Stroke>"),
            *(b"/>", b"<StrokeSet>", b"&amp;", b"<!--", b"-->", b"\xff", b"1.5", b' x="1"'),
        ]
    ),
)


@FUZZ
@given(
    cut=st.one_of(st.just(len(SEED_XML)), st.sampled_from(TAG_ENDS), st.integers(0, len(SEED_XML))),
    edits=st.lists(
        st.tuples(st.integers(0, len(SEED_XML)), st.sampled_from([0, 1, 2]), PIECES), max_size=3
    ),
    close=st.booleans(),
)
def test_fuzz_mutated_real_xml(tmp_path, cut, edits, close) -> None:
    data = bytearray(SEED_XML[:cut])
    if close:
        data += b"</Stroke></StrokeSet></WhiteboardCaptureSession>"
    for at, kind, piece in edits:
        at = min(at, len(data))
        if kind == 0:  # insert
            data[at:at] = piece
        elif kind == 1:  # delete
            del data[at : at + len(piece) + 1]
        else:  # overwrite
            data[at : at + len(piece)] = piece
    _check_parse(tmp_path, bytes(data))


def test_archive_errors_name_the_member(tmp_path) -> None:
    archive = tmp_path / "lineStrokes-all.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("lineStrokes/a01/a01-000/a01-000u-01.xml")
        info.size = 5
        tar.addfile(info, io.BytesIO(b"<oops"))
    with pytest.raises(IAMFormatError, match=r"a01-000u-01\.xml"):
        read_archive(archive)
    broken = tmp_path / "broken.tar.gz"
    broken.write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(DataError, match="not a readable tar archive"):
        read_archive(broken)
