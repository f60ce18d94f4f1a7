"""PTB / text8 / enwik8 DataModules, their cache, and downloads from a local HTTP server."""

from __future__ import annotations

import hashlib
import http.server
import io
import logging
import os
import socket
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from datamodules.download import fetch, part_path, sha256_of
from datamodules.stream import SPLITS, DataError
from datamodules.text import Enwik8DataModule, PTBCharDataModule, Text8DataModule
from hmrnn.config import DataConfig

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
PTB_DIR, TEXT8_DIR, ENWIK8_DIR = SHARED / "ptb-char", SHARED / "text8", SHARED / "enwik8"


def needs(folder: Path):
    return pytest.mark.skipif(
        not folder.is_dir(), reason=f"reference data {folder} is absent (see shared/data/README.md)"
    )


def config(root: Path, local_dir: Path | str = "") -> DataConfig:
    cfg = DataConfig(root=str(root))
    cfg.local_dir = str(local_dir)  # the field the lead adds to DataConfig (getattr in the code)
    return cfg


def line_split_count(text: str) -> int:
    """The reference tokenisation: ``line.split()`` plus an end-of-line symbol per line."""
    return sum(len(line.split()) + 1 for line in io.StringIO(text))


# ---------------------------------------------------------------------------------------------
# real data


@pytest.mark.data
@needs(PTB_DIR)
def test_ptb_symbol_counts_vocabulary_boundaries_and_cache(tmp_path, monkeypatch) -> None:
    dm = PTBCharDataModule(config(tmp_path, PTB_DIR), progress=False)
    dm.prepare_data()
    dm.setup()
    assert {s: len(dm.tokens[s]) for s in SPLITS} == {
        "train": 5_017_483,
        "valid": 393_043,
        "test": 442_424,
    }
    assert dm.vocab_size == 50 and dm.vocab is not None
    first = "consumers_may_want_to_move_their_telephones_a_little_closer_to_the_tv_set\n"
    assert dm.vocab.decode(dm.tokens["valid"][: len(first)]) == first
    marks = dm.boundaries("valid")
    assert marks["line"].sum() == 3371  # 3,370 newlines and a last line holding one space
    assert marks["word"][len("consumers") - 1] and not marks["word"][len("consumers")]
    assert marks["word"][len(first) - 2] and not marks["word"][len(first) - 1]  # "set" / EOL
    assert (dm.tokens["valid"][marks["word"]] != dm.vocab.symbols.index("_")).all()
    manifest = tmp_path / "ptb" / "cache" / "manifest.json"
    assert manifest.is_file()

    def no_reading(*args):
        raise AssertionError("the source files were read again")

    monkeypatch.setattr(PTBCharDataModule, "encode", no_reading)
    again = PTBCharDataModule(config(tmp_path, PTB_DIR), progress=False)
    tokens, vocab = again.load()
    assert vocab == dm.vocab and all(np.array_equal(tokens[s], dm.tokens[s]) for s in SPLITS)


@pytest.mark.data
@needs(TEXT8_DIR)
def test_text8_excerpt_is_split_90_5_5_with_27_symbols(tmp_path, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="datamodules.text"):
        tokens, vocab = Text8DataModule(config(tmp_path, TEXT8_DIR), progress=False).load()
    assert vocab.symbols == tuple(" abcdefghijklmnopqrstuvwxyz")
    assert [len(tokens[s]) for s in SPLITS] == [668_528, 37_140, 37_141]
    assert "split 90%/5%/5%" in caplog.text and "text8_prefix.txt" in caplog.text
    text = (TEXT8_DIR / "text8_prefix.txt").read_text()
    assert vocab.decode(np.concatenate([tokens[s] for s in SPLITS])) == text
    dm = Text8DataModule(config(tmp_path, TEXT8_DIR / "text8_prefix.txt"), progress=False)
    word = dm.boundaries("train")["word"]
    assert word[: len(" anarchism")].tolist() == [False] * 9 + [True]


@pytest.mark.data
@needs(ENWIK8_DIR)
def test_enwik8_excerpt_round_trips_bytes(tmp_path) -> None:
    dm = Enwik8DataModule(config(tmp_path, ENWIK8_DIR), progress=False)
    dm.setup()
    raw = (ENWIK8_DIR / "enwik8_small").read_bytes()
    assert len(dm.vocab) == len(set(raw)) == 195
    assert dm.to_bytes(np.concatenate([dm.tokens[s] for s in SPLITS])) == raw
    assert sum(len(dm.tokens[s]) for s in SPLITS) == len(raw)
    word = dm.boundaries("valid")["word"]
    valid = dm.to_bytes(dm.tokens["valid"])
    ends = np.flatnonzero(word)
    assert all(valid[t + 1 : t + 2] in (b" ", b"\n", b"\t", b"\r") for t in ends[:100])


# ---------------------------------------------------------------------------------------------
# the cache, format errors (small files of our own)


def text8_copy(tmp_path: Path, size: int = 20_000) -> Path:
    rng = np.random.default_rng(0)
    words = ["".join(rng.choice(list("abcdefghij"), rng.integers(1, 8))) for _ in range(size // 4)]
    path = tmp_path / "src" / "text8"
    path.parent.mkdir(exist_ok=True)
    path.write_text((" " + " ".join(words))[:size])
    return path


def test_cache_is_reused_and_rebuilt_when_the_source_changes(tmp_path, monkeypatch) -> None:
    source = text8_copy(tmp_path)
    _, vocab = Text8DataModule(config(tmp_path, source.parent), progress=False).load()
    cache = tmp_path / "text8" / "cache"
    assert sorted(p.name for p in cache.iterdir()) == [
        "manifest.json",
        "test.npy",
        "train.npy",
        "valid.npy",
        "vocab.json",
    ]
    calls = []
    encode = Text8DataModule.encode
    monkeypatch.setattr(
        Text8DataModule, "encode", lambda self, s: calls.append(1) or encode(self, s)
    )
    dm = Text8DataModule(config(tmp_path, source.parent), progress=False)
    assert dm.cache.is_valid()
    dm.load()
    assert calls == []  # read from the cache
    os.utime(source, ns=(1, 10**18))  # only the mtime moves: the digest shows it is the same
    Text8DataModule(config(tmp_path, source.parent), progress=False).load()
    assert calls == []
    text = source.read_text()
    source.write_text("zz" + text[2:])  # same size, new content
    dm = Text8DataModule(config(tmp_path, source.parent), progress=False)
    assert not dm.cache.is_valid()
    tokens, _ = dm.load()
    assert calls == [1] and vocab.decode(tokens["train"][:2]) == "zz"


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete", "manifest"])
def test_corrupt_cache_is_detected_and_rebuilt(tmp_path, damage, caplog) -> None:
    source = text8_copy(tmp_path)
    first, _ = Text8DataModule(config(tmp_path, source), progress=False).load()
    cache = tmp_path / "text8" / "cache"
    train = cache / "train.npy"
    data = bytearray(train.read_bytes())
    if damage == "flip":
        data[-5] ^= 0x01
        train.write_bytes(bytes(data))
    elif damage == "truncate":
        train.write_bytes(bytes(data[:-100]))
    elif damage == "delete":
        train.unlink()
    else:
        (cache / "manifest.json").write_text("{not json")
    with caplog.at_level(logging.INFO, logger="datamodules.text"):
        tokens, _ = Text8DataModule(config(tmp_path, source), progress=False).load()
    assert "encoding" in caplog.text  # rebuilt
    assert all(np.array_equal(tokens[s], first[s]) for s in SPLITS)
    assert np.array_equal(np.load(train), first["train"])


def test_wrong_formats_and_missing_files_are_one_clear_error(tmp_path) -> None:
    bad = tmp_path / "text8"
    bad.write_text(" hello World" + " abc" * 10)
    with pytest.raises(DataError, match=r"text8 holds byte b'W' at offset 7.*only a-z and space"):
        Text8DataModule(config(tmp_path / "r", bad), progress=False).load()
    with pytest.raises(DataError, match=r"holds none of text8, text8\.zip"):
        Text8DataModule(config(tmp_path / "r", tmp_path / "empty"), progress=False).load()
    words = tmp_path / "words"
    words.mkdir()
    for split in SPLITS:
        (words / f"ptb.char.{split}.txt").write_text("a b _ c\n the cat\n")
    with pytest.raises(DataError, match=r"ptb.char.train.txt line 2 .*not characters separated"):
        PTBCharDataModule(config(tmp_path / "r", words), progress=False).load()
    with pytest.raises(DataError, match=r"holds neither ptb\.char\.train\.txt"):
        PTBCharDataModule(config(tmp_path / "r", tmp_path / "empty"), progress=False).load()
    broken = tmp_path / "enwik8.zip"
    good = io.BytesIO()
    with zipfile.ZipFile(good, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("enwik8", b"<mediawiki>" * 1000)
    broken.write_bytes(good.getvalue()[: len(good.getvalue()) // 2])
    with pytest.raises(DataError, match=r"enwik8.zip is not a readable zip archive"):
        Enwik8DataModule(config(tmp_path / "r", broken), progress=False).load()


# ---------------------------------------------------------------------------------------------
# downloads from a local server


class Handler(http.server.SimpleHTTPRequestHandler):
    """Serves ``directory``; ``/cut/<f>`` stops halfway, ``/norange/<f>`` ignores Range."""

    ranges: list[str | None]  # the Range header of each request, set per server

    def log_message(self, *args) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        mode, _, name = self.path.lstrip("/").rpartition("/")
        path = Path(self.directory) / name
        self.ranges.append(self.headers.get("Range"))
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        start = 0
        wanted = self.headers.get("Range")
        if wanted and mode != "norange":
            start = int(wanted.removeprefix("bytes=").split("-")[0])
            if start >= len(data):
                self.send_error(416)
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: len(body) // 2] if mode == "cut" else body)


@pytest.fixture
def server(tmp_path) -> Iterator[tuple[str, Path, list]]:
    folder = tmp_path / "www"
    folder.mkdir()
    ranges: list[str | None] = []
    handler = type("H", (Handler,), {"ranges": ranges})

    def make(*args, **kwargs):
        return handler(*args, directory=str(folder), **kwargs)

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), make)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", folder, ranges
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def payload(folder: Path, name: str = "blob.bin", size: int = 300_000) -> tuple[bytes, str]:
    data = np.random.default_rng(1).integers(0, 256, size, dtype=np.uint8).tobytes()
    (folder / name).write_bytes(data)
    return data, hashlib.sha256(data).hexdigest()


def test_good_download_is_verified_and_renamed(server, tmp_path, capsys) -> None:
    url, folder, _ = server
    data, digest = payload(folder)
    dest = tmp_path / "got" / "blob.bin"
    assert fetch(f"{url}/blob.bin", dest, digest, chunk_size=50_000) == dest
    assert dest.read_bytes() == data and not part_path(dest).exists()
    assert "blob.bin" in capsys.readouterr().err  # the progress bar
    assert sha256_of(dest) == digest
    assert fetch(f"{url}/missing.bin", dest, digest) == dest  # in place: nothing to do


def test_checksum_mismatch_leaves_nothing_behind(server, tmp_path) -> None:
    url, folder, _ = server
    _, digest = payload(folder)
    dest = tmp_path / "blob.bin"
    with pytest.raises(DataError, match=rf"blob.bin .* has sha256 {digest} but 0+ was expected"):
        fetch(f"{url}/blob.bin", dest, "0" * 64, progress=False)
    assert not dest.exists() and not part_path(dest).exists()


@pytest.mark.parametrize("second", ["", "norange/"])
def test_cut_off_download_is_an_error_then_resumes_or_restarts(server, tmp_path, second) -> None:
    url, folder, ranges = server
    data, digest = payload(folder)
    dest = tmp_path / "blob.bin"
    with pytest.raises(DataError, match=r"cut off after 150,000 of 300,000 bytes.*run again"):
        fetch(f"{url}/cut/blob.bin", dest, digest, progress=False)
    assert not dest.exists() and part_path(dest).stat().st_size == 150_000
    fetch(f"{url}/{second}blob.bin", dest, digest, progress=False)
    assert ranges == [None, "bytes=150000-"]
    assert dest.read_bytes() == data and not part_path(dest).exists()


def test_http_and_connection_errors_name_the_url(server, tmp_path) -> None:
    url, _, _ = server
    with pytest.raises(DataError, match=rf"downloading {url}/nope.bin failed with HTTP 404"):
        fetch(f"{url}/nope.bin", tmp_path / "nope.bin", None, progress=False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(DataError, match=rf"could not download http://127.0.0.1:{port}/x.*place"):
        fetch(f"http://127.0.0.1:{port}/x", tmp_path / "x", None, progress=False)
    assert not (tmp_path / "x").exists() and not (tmp_path / "nope.bin").exists()


PTB_TEXTS = {
    "train": "a _ c a t _ s a t\n < u n k > _ o n _ N\n",
    "valid": "t h e _ d o g\n",
    "test": "a _ b i r d\n $ _ 1 . 5\n ",  # ends like the real files: a last line of a space
}


def fake_ptb(folder: Path, texts: dict[str, str] = PTB_TEXTS) -> dict[str, str]:
    """A small simple-examples.tgz with the real layout; the digests of its three char files."""
    with tarfile.open(folder / "simple-examples.tgz", "w:gz") as tar:
        members = {f"simple-examples/data/ptb.char.{s}.txt": t for s, t in texts.items()}
        members["simple-examples/data/ptb.train.txt"] = "a cat sat\n"
        members["simple-examples/README"] = "fake\n"
        for name, text in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(text.encode())
            tar.addfile(info, io.BytesIO(text.encode()))
    return {s: hashlib.sha256(t.encode()).hexdigest() for s, t in texts.items()}


def test_ptb_download_extract_encode_end_to_end(server, tmp_path) -> None:
    url, folder, _ = server
    digests, texts = fake_ptb(folder), PTB_TEXTS

    class FakePTB(PTBCharDataModule):
        URL = f"{url}/simple-examples.tgz"
        SHA256 = digests

    root = tmp_path / "root"
    dm = FakePTB(config(root), progress=False)
    dm.prepare_data()
    dm.setup()
    assert {s: len(dm.tokens[s]) for s in SPLITS} == {"train": 21, "valid": 8, "test": 14}
    assert [len(dm.tokens[s]) for s in SPLITS] == [line_split_count(t) for t in texts.values()]
    assert dm.vocab is not None and dm.vocab.decode(dm.tokens["valid"]) == "the_dog\n"
    assert dm.boundaries("valid")["word"].tolist() == [0, 0, 1, 0, 0, 0, 1, 0]
    for split in SPLITS:
        assert sha256_of(root / "ptb" / f"ptb.char.{split}.txt") == digests[split]
    assert (root / "ptb" / "simple-examples.tgz").is_file()
    assert not list((root / "ptb").glob("*.part"))

    local = FakePTB(config(tmp_path / "local", folder), progress=False)  # the archive in local_dir
    assert (
        local.load()[1] == dm.vocab and (tmp_path / "local" / "ptb" / "ptb.char.test.txt").is_file()
    )

    wrong = {**digests, "test": "f" * 64}

    class WrongDigest(FakePTB):
        SHA256 = wrong

    other = tmp_path / "other"
    with pytest.raises(DataError, match=r"ptb.char.test.txt in .* has sha256 .* but f+ was"):
        WrongDigest(config(other), progress=False).load()
    assert not (other / "ptb" / "simple-examples.tgz").exists()  # deleted: next run downloads


def test_text8_zip_download_end_to_end(server, tmp_path) -> None:
    url, folder, _ = server
    text = text8_copy(tmp_path, 4000).read_bytes()
    with zipfile.ZipFile(folder / "text8.zip", "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("text8", text)

    class FakeText8(Text8DataModule):
        URL = f"{url}/text8.zip"
        ZIP_SHA256 = sha256_of(folder / "text8.zip")

    tokens, vocab = FakeText8(config(tmp_path / "root"), progress=False).load()
    assert vocab.decode(np.concatenate([tokens[s] for s in SPLITS])).encode() == text
    assert [len(tokens[s]) for s in SPLITS] == [3600, 200, 200]


def test_a_complete_part_file_is_only_renamed(server, tmp_path) -> None:
    url, folder, ranges = server
    data, digest = payload(folder)
    dest = tmp_path / "blob.bin"
    part_path(dest).write_bytes(data)
    fetch(f"{url}/blob.bin", dest, digest, progress=False)
    assert ranges == [] and dest.read_bytes() == data and not part_path(dest).exists()
    part_path(dest).write_bytes(data + b"extra")  # longer than the file: the server answers 416
    dest.unlink()
    fetch(f"{url}/blob.bin", dest, digest, progress=False)
    assert ranges == [f"bytes={len(data) + 5}-", None] and dest.read_bytes() == data
