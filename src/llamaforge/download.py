"""Download Meta's Llama 2 checkpoints with a signed URL: the equivalent of Meta's `download.sh`.

SPEC §2: Meta emails a signed URL of the form ``https://host/*?Policy=...&Signature=...``;
each file's relative path replaces the ``*``. The script fetches ``LICENSE``,
``USE_POLICY.md``, ``tokenizer.model`` and ``tokenizer_checklist.chk`` at the top level, then
for every model its ``consolidated.NN.pth`` shards, ``params.json`` and ``checklist.chk``,
and checks every file against the md5 checklists.

What this version adds to the shell script:

- Resumable: bytes go to ``<file>.part`` and continue with an HTTP Range request on the next
  attempt; the final name appears only through ``os.replace`` once the file is complete and
  its md5 matches, so a crash never leaves a half-written or corrupt file under it.
- Re-running skips every file that is already there and verified.
- Transient failures (connection drops, 5xx) are retried with exponential backoff.
- Error messages never contain the URL's query string: it is the signature.

Only the standard library (urllib) and tqdm are used.
"""

from __future__ import annotations

import argparse
import getpass
import hashlib
import http.client
import os
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from tqdm import tqdm

TOKENIZER_CHECKLIST = "tokenizer_checklist.chk"
MODEL_CHECKLIST = "checklist.chk"

# SPEC §2: model-parallel shards per released size (34B was never released, SPEC §1).
SHARDS_PER_SIZE = {"7B": 1, "13B": 2, "70B": 8}
MODEL_FOLDERS = {
    f"{size}{suffix}": f"llama-2-{size.lower()}{suffix}"
    for size in SHARDS_PER_SIZE
    for suffix in ("", "-chat")
}

URL_ENV_VAR = "LLAMA_SIGNED_URL"
CHUNK_BYTES = 1 << 20
TIMEOUT_SECONDS = 60
# Waits between retries are BACKOFF_SECONDS * 2**attempt (2 s, 4 s, 8 s with the defaults).
BACKOFF_SECONDS = 2.0


class DownloadError(RuntimeError):
    """A download that cannot go on; the message says what happened and what to do."""


class ChecksumError(DownloadError):
    """A file whose md5 does not match its checklist."""


class _TransientError(Exception):
    """A failure worth retrying: dropped connection, timeout, 5xx."""


def model_folders(models: list[str]) -> list[str]:
    """Map model names (``7B``, ``70B-chat``, ``llama-2-13b``, ``all``) to Meta's folder names.

    Order is kept and duplicates are dropped. Unknown names raise an error listing the
    valid ones.
    """
    by_name = {}
    for name, folder in MODEL_FOLDERS.items():
        by_name[name.lower()] = folder
        by_name[folder] = folder
    folders: list[str] = []
    for raw in models:
        name = raw.strip().lower()
        if not name:
            continue
        if name == "all":
            wanted = list(MODEL_FOLDERS.values())
        elif name in by_name:
            wanted = [by_name[name]]
        elif name in ("34b", "34b-chat", "llama-2-34b", "llama-2-34b-chat"):
            raise DownloadError(
                f"Llama 2 {raw.strip()} was never released (SPEC §1); "
                f"choose from {', '.join(MODEL_FOLDERS)}"
            )
        else:
            raise DownloadError(
                f"unknown model {raw.strip()!r}; valid names are {', '.join(MODEL_FOLDERS)} "
                f"(or llama-2-7b style folder names, or 'all')"
            )
        folders += [folder for folder in wanted if folder not in folders]
    if not folders:
        raise DownloadError(
            f"no model given; name at least one of {', '.join(MODEL_FOLDERS)}, or 'all'"
        )
    return folders


def _shard_count(folder: str) -> int:
    size = folder.removeprefix("llama-2-").removesuffix("-chat").upper()
    return SHARDS_PER_SIZE[size]


def check_signed_url(url: str) -> str:
    """Return the URL stripped of whitespace, or raise if it cannot be Meta's signed URL."""
    url = url.strip()
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise DownloadError(
            "the download URL must start with https:// (paste the whole URL from Meta's email)"
        )
    if "*" not in parts.path:
        raise DownloadError(
            f"the download URL {_redact(url)} has no '*' in its path; Meta's signed URL looks "
            "like https://download.llamameta.net/*?Policy=...&Signature=... — paste it whole"
        )
    return url


def _file_url(url: str, rel_path: str) -> str:
    """The URL of one file: its relative path replaces the first '*' (as download.sh does)."""
    return url.replace("*", urllib.parse.quote(rel_path), 1)


def _redact(url: str) -> str:
    """The URL without its query string (the signature must not end up in logs)."""
    return urllib.parse.urlsplit(url)._replace(query="", fragment="").geturl()


def md5_of(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def read_checklist(path: Path) -> dict[str, str]:
    """Parse ``md5sum`` output: lines of ``<md5>  <filename>`` (``*<filename>`` in binary mode)."""
    path = Path(path)
    if not path.is_file():
        raise DownloadError(f"checklist {path} does not exist; re-run the download")
    entries = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        match = re.fullmatch(r"\s*([0-9a-fA-F]{32})\s+\*?(.+?)\s*", line)
        if match is None:
            raise DownloadError(
                f"{path}, line {number}: expected '<md5>  <filename>', got {line!r}; "
                "delete the checklist and re-run the download"
            )
        entries[match.group(2)] = match.group(1).lower()
    return entries


def verify_checklist(dir: str | os.PathLike, checklist_name: str) -> None:
    """Check every file listed in ``dir/checklist_name`` against its md5 (``md5sum -c``).

    Raises ChecksumError naming every missing or mismatching file.
    """
    dir = Path(dir)
    problems = []
    for name, expected in read_checklist(dir / checklist_name).items():
        path = dir / name
        if not path.is_file():
            problems.append(f"{path} is missing")
        elif (actual := md5_of(path)) != expected:
            problems.append(f"{path}: expected md5 {expected}, got {actual}")
    if problems:
        raise ChecksumError(
            f"{dir / checklist_name} does not verify:\n  " + "\n  ".join(problems)
            + "\nre-run the download to fetch these files again"
        )


def download(
    url: str,
    models: list[str],
    out_dir: str | os.PathLike,
    *,
    progress: bool = True,
    retries: int = 3,
) -> Path:
    """Download the tokenizer and ``models`` into ``out_dir`` with Meta's layout; return it.

    ``out_dir`` ends up holding LICENSE, USE_POLICY.md, tokenizer.model,
    tokenizer_checklist.chk and one folder per model (``llama-2-7b``, ``llama-2-70b-chat``,
    ...) with ``consolidated.NN.pth``, ``params.json`` and ``checklist.chk``. Safe to
    re-run: verified files are skipped, interrupted ones resume.
    """
    url = check_signed_url(url)
    folders = model_folders(models)
    if retries < 0:
        raise ValueError(f"retries must be 0 or more, got {retries}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fetch = dict(url=url, out_dir=out_dir, progress=progress, retries=retries)

    # The checklist first, so that files already on disk can be verified and skipped.
    _fetch_file(TOKENIZER_CHECKLIST, **fetch)
    tokenizer_md5 = read_checklist(out_dir / TOKENIZER_CHECKLIST)
    if "tokenizer.model" not in tokenizer_md5:
        raise DownloadError(
            f"{out_dir / TOKENIZER_CHECKLIST} does not list tokenizer.model; delete it and re-run"
        )
    for name in ("LICENSE", "USE_POLICY.md", "tokenizer.model"):
        _fetch_file(name, expected_md5=tokenizer_md5.get(name), **fetch)

    for folder in folders:
        (out_dir / folder).mkdir(exist_ok=True)
        _fetch_file(f"{folder}/{MODEL_CHECKLIST}", **fetch)
        checklist = read_checklist(out_dir / folder / MODEL_CHECKLIST)
        shards = [f"consolidated.{i:02d}.pth" for i in range(_shard_count(folder))]
        unlisted = [shard for shard in shards if shard not in checklist]
        if unlisted:
            raise DownloadError(
                f"{out_dir / folder / MODEL_CHECKLIST} does not list {', '.join(unlisted)}: it "
                f"is not the checklist of {folder}; delete it and re-run the download"
            )
        for name in shards + ["params.json"]:
            _fetch_file(f"{folder}/{name}", expected_md5=checklist.get(name), **fetch)
    return out_dir


def _fetch_file(
    rel_path: str,
    *,
    url: str,
    out_dir: Path,
    progress: bool,
    retries: int,
    expected_md5: str | None = None,
) -> None:
    """Make ``out_dir/rel_path`` a complete (and, given ``expected_md5``, verified) copy."""
    final = out_dir / rel_path
    if final.is_file():
        # A file under its final name is complete (it only gets there via os.replace);
        # with a checksum we also make sure it was not damaged since.
        if expected_md5 is None or md5_of(final) == expected_md5:
            return
        print(f"{final} does not match its checklist; downloading it again", file=sys.stderr)
        final.unlink()

    part = final.with_name(final.name + ".part")
    for attempt in range(retries + 1):
        try:
            digest = _stream_to_part(_file_url(url, rel_path), rel_path, part, progress)
            break
        except _TransientError as error:
            if attempt == retries:
                raise DownloadError(
                    f"giving up on {rel_path} after {retries + 1} attempts: {error}; "
                    "re-run the same command to resume where it stopped"
                ) from None
            time.sleep(BACKOFF_SECONDS * 2**attempt)

    if expected_md5 is not None and digest != expected_md5:
        part.unlink()
        raise ChecksumError(
            f"checksum mismatch for {rel_path}: expected md5 {expected_md5}, got {digest}; "
            "the bad file was deleted, re-run the download to fetch it again"
        )
    os.replace(part, final)


def _stream_to_part(file_url: str, rel_path: str, part: Path, progress: bool) -> str:
    """Download into ``part``, resuming what is there; return the md5 of the complete file."""
    offset = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(file_url)
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS)
    except urllib.error.HTTPError as error:
        if error.code == 416 and offset:
            # Nothing left after `offset`: the part is already whole, or longer than the
            # file (then start over).
            total = error.headers.get("Content-Range", "").rpartition("/")[2]
            if total.isdigit() and int(total) == offset:
                return md5_of(part)
            part.unlink()
            raise _TransientError(f"HTTP 416 for {rel_path}, restarting it") from None
        raise _http_error(error.code, rel_path) from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
        reason = getattr(error, "reason", error)
        raise _TransientError(f"cannot reach {_redact(file_url)}: {reason}") from None

    with response:
        if offset and response.status == 206:
            start = response.headers.get("Content-Range", "").removeprefix("bytes ").split("-")[0]
            if start != str(offset):
                part.unlink()
                raise _TransientError(f"server resumed {rel_path} at the wrong offset")
            mode = "ab"
        else:
            # A server that ignores Range answers 200 with the whole file: start over.
            offset, mode = 0, "wb"
        length = response.headers.get("Content-Length")
        expected_total = offset + int(length) if length is not None else None

        digest = hashlib.md5()
        if offset:
            with open(part, "rb") as f:
                while chunk := f.read(CHUNK_BYTES):
                    digest.update(chunk)
        received = offset
        bar = tqdm(
            total=expected_total, initial=offset, desc=rel_path, unit="B", unit_scale=True,
            unit_divisor=1024, disable=not progress, leave=True,
        )
        try:
            with open(part, mode) as f:
                while True:
                    try:
                        chunk = response.read(CHUNK_BYTES)
                    except (OSError, http.client.HTTPException) as error:
                        raise _TransientError(f"connection lost in {rel_path}: {error}") from None
                    if not chunk:
                        break
                    f.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
        finally:
            bar.close()
        # http.client returns a short body without complaint when the peer closes early.
        if expected_total is not None and received != expected_total:
            raise _TransientError(
                f"connection closed after {received} of {expected_total} bytes of {rel_path}"
            )
    return digest.hexdigest()


def _http_error(code: int, rel_path: str) -> Exception:
    if code in (401, 403, 410):
        return DownloadError(
            f"the signed URL was rejected (HTTP {code}) for {rel_path}: URLs expire after 24h "
            "and allow a limited number of downloads; request a new one from Meta"
        )
    if code == 404:
        return DownloadError(
            f"{rel_path} is not on the server (HTTP 404): check the model names and that the "
            "URL is the one from Meta's email; expired URLs must be requested again"
        )
    if code == 429 or code >= 500:
        return _TransientError(f"HTTP {code} for {rel_path}")
    return DownloadError(f"HTTP {code} for {rel_path}; the download cannot go on")


def main(argv: list[str] | None = None) -> int:
    """``llamaforge download --url URL --models 7B,7B-chat --out DIR``."""
    parser = argparse.ArgumentParser(
        prog="llamaforge download",
        description="Download Llama 2 weights from Meta with the signed URL from their email "
        "(like Meta's download.sh, resumable and verified).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--url", help=f"signed URL from Meta's email (else ${URL_ENV_VAR}, else asked for)"
    )
    parser.add_argument(
        "--models",
        help=f"comma-separated, from {','.join(MODEL_FOLDERS)} or 'all' (asked for if omitted)",
    )
    parser.add_argument("--out", default="llama-2", help="folder to download into")
    parser.add_argument("--retries", type=int, default=3, help="retries per file")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    args = parser.parse_args(argv)

    interactive = sys.stdin.isatty()
    url = args.url or os.environ.get(URL_ENV_VAR)
    if not url and interactive:
        # getpass: the signature is a credential, keep it off the screen and out of scrollback.
        url = getpass.getpass("Enter the URL from Meta's email (input hidden): ")
    if not url:
        print(f"error: no URL; pass --url or set {URL_ENV_VAR}", file=sys.stderr)
        return 2
    models = args.models
    if models is None and interactive:
        models = input(
            f"Models to download ({','.join(MODEL_FOLDERS)}), or press Enter for all: "
        ) or "all"
    if models is None:
        print("error: no models; pass --models, e.g. --models 7B,7B-chat", file=sys.stderr)
        return 2

    try:
        out = download(
            url, models.split(","), args.out, progress=not args.no_progress, retries=args.retries
        )
    except DownloadError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"downloaded and verified into {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
