"""`llamaforge.download` against a fake Meta server on 127.0.0.1 serving a tiny model tree.

The server checks a signature query parameter (403 when wrong), honours Range requests,
and can be told to drop a connection mid-file, ignore Range, corrupt a file or answer 503.
"""

import hashlib
import io
import random
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from llamaforge import download as dl

SIGNATURE = "s3cr3t-signature"
SHARD_BYTES = 300_000
# 7B has one shard, 13B two (SPEC §2); 70B is left off the server to test a 404.
SERVED_MODELS = {"llama-2-7b": 1, "llama-2-13b-chat": 2}


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def build_tree(root: Path) -> dict[str, bytes]:
    """Write Meta's file layout with random bytes and real md5 checklists; return path -> bytes."""
    rng = random.Random(0)
    files = {
        "LICENSE": b"LLAMA 2 COMMUNITY LICENSE AGREEMENT (test copy)\n",
        "USE_POLICY.md": b"# Llama 2 Acceptable Use Policy (test copy)\n",
        "tokenizer.model": rng.randbytes(5_000),
    }
    files["tokenizer_checklist.chk"] = f"{_md5(files['tokenizer.model'])}  tokenizer.model\n".encode()
    for folder, shards in SERVED_MODELS.items():
        listed = {f"consolidated.{i:02d}.pth": rng.randbytes(SHARD_BYTES) for i in range(shards)}
        listed["params.json"] = b'{"dim": 64, "n_layers": 2, "n_heads": 4, "vocab_size": -1}'
        for name, data in listed.items():
            files[f"{folder}/{name}"] = data
        files[f"{folder}/checklist.chk"] = "".join(
            f"{_md5(data)}  {name}\n" for name, data in listed.items()
        ).encode()
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return files


class FakeMetaServer(ThreadingHTTPServer):
    def __init__(self, root: Path):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.root = root
        self.requests: list[tuple[str, str | None, int]] = []  # (path, Range header, status)
        self.drop_once: dict[str, int] = {}  # path -> bytes sent before the connection drops
        self.ignore_range: set[str] = set()
        self.corrupt: set[str] = set()
        self.failures: dict[str, int] = {}  # path -> number of 503 answers still to give
        self.lock = threading.Lock()

    def url(self, signature=SIGNATURE) -> str:
        return f"http://127.0.0.1:{self.server_port}/*?Policy=abc&Signature={signature}&Key-Pair-Id=K1"


class _Handler(BaseHTTPRequestHandler):
    server: FakeMetaServer

    def log_message(self, *args):
        pass

    def _answer(self, rel: str, status: int, body: bytes = b"", headers=()):
        with self.server.lock:
            self.server.requests.append((rel, self.headers.get("Range"), status))
        self.send_response(status)
        for key, value in headers:
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        parts = urllib.parse.urlsplit(self.path)
        rel = urllib.parse.unquote(parts.path.lstrip("/"))
        query = urllib.parse.parse_qs(parts.query)
        server = self.server
        if query.get("Signature") != [SIGNATURE]:
            return self._answer(rel, 403, b"<Error>AccessDenied</Error>")
        path = server.root / rel
        if not path.is_file():
            return self._answer(rel, 404, b"<Error>NoSuchKey</Error>")
        with server.lock:
            if server.failures.get(rel, 0) > 0:
                server.failures[rel] -= 1
                fail = True
            else:
                fail = False
        if fail:
            return self._answer(rel, 503, b"Service Unavailable")
        data = path.read_bytes()
        if rel in server.corrupt:
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        range_header = self.headers.get("Range")
        if range_header and rel not in server.ignore_range:
            start = int(range_header.removeprefix("bytes=").rstrip("-"))
            if start >= len(data):
                return self._answer(rel, 416, headers=[("Content-Range", f"bytes */{len(data)}")])
            content_range = f"bytes {start}-{len(data) - 1}/{len(data)}"
            return self._answer(rel, 206, data[start:], [("Content-Range", content_range)])
        with server.lock:
            cut = server.drop_once.pop(rel, None)
        if cut is not None:
            # Promise the whole file, send part of it, then hang up.
            with server.lock:
                server.requests.append((rel, range_header, 200))
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[:cut])
            self.wfile.flush()
            self.close_connection = True
            return
        return self._answer(rel, 200, data)


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "server"
    return root, build_tree(root)


@pytest.fixture
def server(tree):
    srv = FakeMetaServer(tree[0])
    thread = threading.Thread(target=srv.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch):
    monkeypatch.setattr(dl, "BACKOFF_SECONDS", 0.0)


def _requests_for(server, rel):
    return [(r, status) for path, r, status in server.requests if path == rel]


def test_two_models_download_completely_with_meta_layout(server, tree, tmp_path):
    files = tree[1]
    out = dl.download(server.url(), ["7B", "llama-2-13b-chat"], tmp_path / "out", progress=False)

    expected = sorted(files)
    got = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert got == expected  # every file, nothing extra (no .part left)
    for rel, data in files.items():
        assert (out / rel).read_bytes() == data, rel
    assert (out / "llama-2-13b-chat" / "consolidated.01.pth").is_file()
    dl.verify_checklist(out, "tokenizer_checklist.chk")
    dl.verify_checklist(out / "llama-2-7b", "checklist.chk")
    dl.verify_checklist(out / "llama-2-13b-chat", "checklist.chk")


def test_rerun_skips_verified_files_without_touching_the_network(server, tmp_path):
    out = tmp_path / "out"
    dl.download(server.url(), ["7B"], out, progress=False)
    server.requests.clear()
    # Even an expired URL is fine when everything is already there and verified.
    dl.download(server.url(signature="expired"), ["7B"], out, progress=False)
    assert server.requests == []


def test_dropped_connection_leaves_part_and_next_run_resumes_with_range(server, tree, tmp_path):
    rel = "llama-2-7b/consolidated.00.pth"
    server.drop_once[rel] = 100_000
    out = tmp_path / "out"

    with pytest.raises(dl.DownloadError, match="re-run"):
        dl.download(server.url(), ["7B"], out, progress=False, retries=0)
    assert not (out / rel).exists()
    assert (out / (rel + ".part")).stat().st_size == 100_000

    dl.download(server.url(), ["7B"], out, progress=False, retries=0)
    assert _requests_for(server, rel)[-1] == ("bytes=100000-", 206)
    assert (out / rel).read_bytes() == tree[1][rel]
    assert not (out / (rel + ".part")).exists()


def test_dropped_connection_is_retried_and_resumed_in_the_same_run(server, tree, tmp_path):
    rel = "llama-2-13b-chat/consolidated.01.pth"
    server.drop_once[rel] = 12_345
    out = dl.download(server.url(), ["13B-chat"], tmp_path / "out", progress=False, retries=1)
    assert _requests_for(server, rel) == [(None, 200), ("bytes=12345-", 206)]
    assert (out / rel).read_bytes() == tree[1][rel]


def test_server_ignoring_range_restarts_the_file(server, tree, tmp_path):
    rel = "llama-2-7b/consolidated.00.pth"
    server.ignore_range.add(rel)
    out = tmp_path / "out"
    (out / "llama-2-7b").mkdir(parents=True)
    # Junk in the part: appending the 200 body to it would fail the checksum.
    (out / (rel + ".part")).write_bytes(b"\0" * 1_000)

    dl.download(server.url(), ["7B"], out, progress=False)
    assert _requests_for(server, rel) == [("bytes=1000-", 200)]
    assert (out / rel).read_bytes() == tree[1][rel]


def test_complete_part_from_a_crash_before_rename_is_not_downloaded_again(server, tree, tmp_path):
    rel = "llama-2-7b/consolidated.00.pth"
    out = tmp_path / "out"
    (out / "llama-2-7b").mkdir(parents=True)
    (out / (rel + ".part")).write_bytes(tree[1][rel])

    dl.download(server.url(), ["7B"], out, progress=False)
    assert _requests_for(server, rel) == [(f"bytes={SHARD_BYTES}-", 416)]
    assert (out / rel).read_bytes() == tree[1][rel]


def test_checksum_mismatch_deletes_the_file_and_names_both_md5s(server, tree, tmp_path):
    rel = "llama-2-7b/consolidated.00.pth"
    server.corrupt.add(rel)
    good = tree[1][rel]
    bad = bytes([good[0] ^ 0xFF]) + good[1:]
    out = tmp_path / "out"

    with pytest.raises(dl.ChecksumError) as caught:
        dl.download(server.url(), ["7B"], out, progress=False)
    message = str(caught.value)
    assert rel in message and _md5(good) in message and _md5(bad) in message
    assert "re-run" in message
    assert not (out / rel).exists()
    assert not (out / (rel + ".part")).exists()


def test_damaged_file_on_disk_is_downloaded_again(server, tree, tmp_path):
    rel = "tokenizer.model"
    out = tmp_path / "out"
    dl.download(server.url(), ["7B"], out, progress=False)
    (out / rel).write_bytes(b"damaged")
    with pytest.raises(dl.ChecksumError, match="tokenizer.model"):
        dl.verify_checklist(out, "tokenizer_checklist.chk")

    dl.download(server.url(), ["7B"], out, progress=False)
    assert (out / rel).read_bytes() == tree[1][rel]


def test_rejected_signature_says_so_without_leaking_it(server, tmp_path):
    bad_signature = "forged-signature-value"
    with pytest.raises(dl.DownloadError) as caught:
        dl.download(server.url(signature=bad_signature), ["7B"], tmp_path / "out", progress=False)
    message = str(caught.value)
    assert "HTTP 403" in message and "24h" in message and "tokenizer_checklist.chk" in message
    assert bad_signature not in message and "Policy" not in message
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_model_missing_on_server_is_a_404_error(server, tmp_path):
    with pytest.raises(dl.DownloadError, match=r"llama-2-70b/checklist.chk .*HTTP 404"):
        dl.download(server.url(), ["70B"], tmp_path / "out", progress=False)


def test_transient_5xx_is_retried_a_bounded_number_of_times(server, tree, tmp_path):
    rel = "llama-2-7b/params.json"
    server.failures[rel] = 2
    with pytest.raises(dl.DownloadError, match="HTTP 503"):
        dl.download(server.url(), ["7B"], tmp_path / "a", progress=False, retries=1)
    assert len(_requests_for(server, rel)) == 2

    server.failures[rel] = 2
    out = dl.download(server.url(), ["7B"], tmp_path / "b", progress=False, retries=2)
    assert (out / rel).read_bytes() == tree[1][rel]


@pytest.mark.parametrize(
    "url, expected",
    [
        ("ftp://download.llamameta.net/*?Signature=x", "https://"),
        ("download.llamameta.net/*?Signature=x", "https://"),
        ("https://download.llamameta.net/file?Policy=p&Signature=topsecret", "no '\\*'"),
    ],
)
def test_bad_url_fails_up_front(url, expected, tmp_path):
    with pytest.raises(dl.DownloadError, match=expected) as caught:
        dl.download(url, ["7B"], tmp_path / "out", progress=False)
    assert "topsecret" not in str(caught.value)
    assert not (tmp_path / "out").exists()


def test_model_names():
    assert dl.model_folders(["7B", "llama-2-7b", "70b-chat", "Llama-2-13b"]) == [
        "llama-2-7b", "llama-2-70b-chat", "llama-2-13b"
    ]
    assert len(dl.model_folders(["all"])) == 6
    with pytest.raises(dl.DownloadError, match="7B, 7B-chat, 13B, 13B-chat, 70B, 70B-chat"):
        dl.model_folders(["8B"])
    with pytest.raises(dl.DownloadError, match="never released"):
        dl.model_folders(["34B"])


def test_checklist_parsing_accepts_md5sum_formats_and_rejects_junk(tmp_path):
    (tmp_path / "a.chk").write_text(f"{'a' * 32}  x.pth\n{'B' * 32} *y.json\n\n")
    assert dl.read_checklist(tmp_path / "a.chk") == {"x.pth": "a" * 32, "y.json": "b" * 32}
    (tmp_path / "b.chk").write_text("not a checksum line\n")
    with pytest.raises(dl.DownloadError, match="b.chk, line 1"):
        dl.read_checklist(tmp_path / "b.chk")


def test_cli_reads_url_from_env_and_shows_progress(server, tree, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(dl.URL_ENV_VAR, server.url())
    monkeypatch.setattr("sys.stdin", io.StringIO())
    out = tmp_path / "out"
    assert dl.main(["--models", "7B", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "llama-2-7b/consolidated.00.pth" in captured.err  # the progress bar's label
    assert (out / "llama-2-7b" / "params.json").read_bytes() == tree[1]["llama-2-7b/params.json"]


def test_cli_errors_are_messages_not_tracebacks(server, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(dl.URL_ENV_VAR, raising=False)
    monkeypatch.setattr("sys.stdin", io.StringIO())
    url = server.url(signature="wrong")
    assert dl.main(["--url", url, "--models", "7B", "--out", str(tmp_path), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "HTTP 403" in err and "wrong" not in err

    assert dl.main(["--models", "7B", "--out", str(tmp_path)]) == 2
    assert dl.URL_ENV_VAR in capsys.readouterr().err
