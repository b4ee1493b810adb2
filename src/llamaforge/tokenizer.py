"""The Llama 2 tokenizer: a thin SentencePiece wrapper, and training a Llama-style one (SPEC §3).

`Tokenizer` loads any SentencePiece model (Llama 2's `tokenizer.model` or one trained here) and
adds only what SentencePiece leaves easy to get wrong: type checks, clear errors, and explicit
BOS/EOS handling. `train_tokenizer` trains a BPE model with exactly the trainer settings of the
released Llama 2 tokenizer, at any vocabulary size.
"""

from __future__ import annotations

import argparse
import io
import os
import random
import re
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import sentencepiece as spm

# Trainer settings of the released Llama 2 tokenizer (SPEC §3), read from its model file.
# Only the vocabulary size, the character coverage and the input sampling are left to the caller.
LLAMA2_TRAINER_SETTINGS = {
    "model_type": "bpe",
    "split_digits": True,
    "byte_fallback": True,
    "split_by_unicode_script": True,
    "split_by_whitespace": True,
    "split_by_number": True,
    "max_sentencepiece_length": 16,
    "max_sentence_length": 4192,  # bytes; longer lines are skipped
    "allow_whitespace_only_pieces": True,
    "add_dummy_prefix": True,
    "remove_extra_whitespaces": False,
    "normalization_rule_name": "identity",
    "unk_id": 0,
    "bos_id": 1,
    "eos_id": 2,
    "pad_id": -1,
}

MAX_SENTENCE_BYTES = LLAMA2_TRAINER_SETTINGS["max_sentence_length"]
N_SPECIAL_PIECES = 3  # <unk>, <s>, </s>
N_BYTE_PIECES = 256  # <0x00> ... <0xFF>, so no UTF-8 byte is ever <unk> (byte_fallback)
MIN_VOCAB_SIZE = N_SPECIAL_PIECES + N_BYTE_PIECES + 1


class Tokenizer:
    """A SentencePiece model: `encode` text to ids and `decode` ids back (SPEC §3).

    The underlying `sentencepiece.SentencePieceProcessor` is `self.sp`, for anything not
    wrapped here. Control symbols are never produced from text: "<s>" in a string encodes
    as ordinary pieces, never as `bos_id`; only `bos=True` / `eos=True` add them.
    """

    def __init__(self, model_path: str | os.PathLike):
        path = Path(model_path)
        if path.is_dir() and (path / "tokenizer.model").is_file():
            path = path / "tokenizer.model"  # Meta's and Hugging Face's folders name it so
        if path.is_dir():
            raise FileNotFoundError(f"{str(path)!r} is a folder without a tokenizer.model; pass the .model file itself")
        if not path.is_file():
            raise FileNotFoundError(
                f"tokenizer model {str(path)!r} not found: pass the path of a SentencePiece .model file "
                "(Llama 2's is tokenizer.model in Meta's download; `llamaforge tokenizer` trains a new one)"
            )
        self.sp = spm.SentencePieceProcessor()
        try:
            self.sp.Load(str(path))
        except RuntimeError as e:
            raise ValueError(
                f"{str(path)!r} is not a SentencePiece model ({e}); pass a .model file written by SentencePiece, "
                "such as Llama 2's tokenizer.model"
            ) from e
        self.model_path = path

    def __repr__(self) -> str:
        return f"Tokenizer({str(self.model_path)!r}, vocab_size={self.vocab_size})"

    @property
    def vocab_size(self) -> int:
        return self.sp.vocab_size()

    @property
    def n_words(self) -> int:
        """Meta's name for `vocab_size`."""
        return self.vocab_size

    @property
    def bos_id(self) -> int:
        return self.sp.bos_id()

    @property
    def eos_id(self) -> int:
        return self.sp.eos_id()

    @property
    def pad_id(self) -> int:
        """-1: Llama 2 has no padding piece (SPEC §3)."""
        return self.sp.pad_id()

    @property
    def unk_id(self) -> int:
        return self.sp.unk_id()

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        """Token ids of `text`, with BOS in front and EOS at the end when asked.

        Exactly SentencePiece's encoding. With Llama-style models (SPEC §3) a dummy prefix space
        is added, digits are single tokens, and bytes outside the vocabulary become `<0xNN>`
        byte pieces, so nothing is `<unk>`.
        """
        if not isinstance(text, str):
            # SentencePiece would silently encode a list as a batch; make that explicit.
            raise TypeError(f"encode takes one str, got {type(text).__name__}; use encode_batch for a list of strings")
        self._check_special(bos, eos)
        try:
            return self.sp.encode(text, add_bos=bos, add_eos=eos)
        except RuntimeError as e:
            raise ValueError(_encoding_problem(text) or f"SentencePiece could not encode the text: {e}") from e

    def encode_batch(
        self, texts: Sequence[str], bos: bool = False, eos: bool = False, num_threads: int = -1
    ) -> list[list[int]]:
        """`encode` for many strings at once, in SentencePiece's C++ threads (-1: all cores)."""
        texts = list(texts)
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"encode_batch takes strings; texts[{i}] is {type(text).__name__}")
        self._check_special(bos, eos)
        try:
            return self.sp.encode(texts, add_bos=bos, add_eos=eos, num_threads=num_threads)
        except (RuntimeError, TypeError) as e:
            for i, text in enumerate(texts):
                if problem := _encoding_problem(text):
                    raise ValueError(f"texts[{i}]: {problem}") from e
            raise

    def decode(self, ids: Iterable[int]) -> str:
        """The text of `ids` (a list, tuple, 1-D tensor or array).

        Control ids (BOS, EOS) are dropped, so `decode([bos] + encode(s) + [eos]) == s`.
        `<unk>` (never produced by `encode` thanks to byte fallback) decodes as " ⁇ ".
        Text that held U+2581 ("▁"), SentencePiece's own stand-in for a space, comes back with " ".
        """
        ids = as_id_list(ids)
        vocab_size = self.vocab_size
        if ids and (min(ids) < 0 or max(ids) >= vocab_size):
            position, bad = next((k, i) for k, i in enumerate(ids) if not 0 <= i < vocab_size)
            raise ValueError(
                f"token id {bad} at position {position} is outside the vocabulary [0, {vocab_size}); "
                "strip padding or ignore-index values (such as -100) before decoding"
            )
        return self.sp.decode(ids)

    def id_to_piece(self, token_id: int) -> str:
        """The vocabulary piece of one id, e.g. '▁hello', '<0x0A>', '<s>'."""
        if not 0 <= token_id < self.vocab_size:
            raise ValueError(f"token id {token_id} is outside the vocabulary [0, {self.vocab_size})")
        return self.sp.id_to_piece(token_id)

    def _check_special(self, bos: bool, eos: bool) -> None:
        if bos and self.bos_id < 0:
            raise ValueError(f"{self.model_path} has no BOS piece; encode with bos=False")
        if eos and self.eos_id < 0:
            raise ValueError(f"{self.model_path} has no EOS piece; encode with eos=False")


def as_id_list(ids: Iterable[int]) -> list[int]:
    """A plain list of ints from a list, tuple, 1-D torch tensor or numpy array of token ids."""
    if hasattr(ids, "tolist"):
        ids = ids.tolist()
    ids = list(ids)
    if any(isinstance(i, (list, tuple)) for i in ids):
        raise ValueError("expected one sequence of token ids, got a batch; decode each row on its own")
    return [int(i) for i in ids]


def _encoding_problem(text: str) -> str | None:
    """Why SentencePiece cannot take `text` (only a lone surrogate makes it fail), or None."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        return (
            f"text cannot be encoded as UTF-8 ({e.reason} at index {e.start}, {text[e.start]!r}); "
            "it holds a lone surrogate, usually from decoding bytes with errors='surrogateescape': "
            "decode the bytes with errors='replace' instead"
        )
    return None


# --------------------------------------------------------------------------- training


def train_tokenizer(
    input: str | os.PathLike | Sequence[str | os.PathLike] | Iterator[str],
    out_path: str | os.PathLike,
    vocab_size: int,
    *,
    character_coverage: float = 0.99995,
    num_threads: int | None = None,
    input_sentence_size: int = 1_000_000,
    seed: int = 0,
    verbose: bool = False,
) -> Tokenizer:
    """Train a Llama-style BPE tokenizer (SPEC §3 trainer settings) and write it to `out_path`.

    `input` is a text file, a directory (all `*.txt` files below it), a list of those, or an
    iterator of strings. Each line is one training sentence, as in SentencePiece's own file
    input; strings from an iterator are split on newlines too, so no piece ever spans a line
    break (Llama 2 has none: "\\n" is the byte piece <0x0A>).

    At most `input_sentence_size` lines are used, a uniform sample drawn with `seed` when there
    are more: this bounds training time, and sampling here rather than inside SentencePiece
    (whose sample differs from process to process even with a fixed seed) makes the model
    depend only on the input and `seed`. Lines over 4192 bytes are skipped, as Meta's trainer did.
    The model file is written atomically (temp file, then rename); if `out_path` is an existing
    directory the file is `out_path/tokenizer.model`. Returns the trained `Tokenizer`.
    """
    if not isinstance(vocab_size, int) or vocab_size < MIN_VOCAB_SIZE:
        raise ValueError(
            f"vocab_size={vocab_size!r} is too small: a Llama-style tokenizer needs {N_SPECIAL_PIECES} special "
            f"pieces, {N_BYTE_PIECES} byte pieces and the characters of the corpus, so at least {MIN_VOCAB_SIZE} "
            "(a few hundred more is the useful minimum)"
        )
    if not 0 < character_coverage <= 1:
        raise ValueError(f"character_coverage={character_coverage!r} must be in (0, 1]; Llama 2 used 0.99995")
    if input_sentence_size < 1:
        raise ValueError(f"input_sentence_size={input_sentence_size!r} must be at least 1")
    out = Path(out_path)
    if out.is_dir():
        out = out / "tokenizer.model"

    sentences, n_lines, n_too_long = _sample_lines(_input_lines(input), input_sentence_size, random.Random(seed))
    if n_lines == 0:
        raise ValueError(f"no text found in {_describe_input(input)}: give at least one non-empty line")
    if not sentences:
        raise ValueError(
            f"all {n_lines} lines of {_describe_input(input)} are longer than {MAX_SENTENCE_BYTES} bytes, which "
            "SentencePiece skips; split the text into one sentence or paragraph per line"
        )

    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences),
            model_writer=model,
            vocab_size=vocab_size,
            character_coverage=character_coverage,
            num_threads=num_threads or os.cpu_count() or 1,
            # Our sample already fits, so SentencePiece keeps every sentence and draws nothing.
            input_sentence_size=input_sentence_size,
            minloglevel=0 if verbose else 2,
            **LLAMA2_TRAINER_SETTINGS,
        )
    except RuntimeError as e:
        raise _training_error(e, vocab_size, character_coverage, n_lines) from e

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        tmp.write_bytes(model.getvalue())
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return Tokenizer(out)


def _input_lines(input) -> Iterator[str]:
    """Every non-empty line of the input, without its line ending. Paths are checked up front."""
    if isinstance(input, (str, os.PathLike, list, tuple)):
        paths = [input] if isinstance(input, (str, os.PathLike)) else list(input)
        files = [file for i, path in enumerate(paths) for file in _text_files(Path(path), f"input[{i}]")]
        return (line for file in files for line in _lines_of_file(file))
    if isinstance(input, Iterable):
        return _lines_of_strings(input)
    raise TypeError(f"input must be a path, a list of paths or an iterator of strings, got {type(input).__name__}")


def _text_files(path: Path, name: str) -> list[Path]:
    if path.is_dir():
        files = sorted(path.rglob("*.txt"))
        if not files:
            raise FileNotFoundError(f"{name}: directory {str(path)!r} holds no *.txt files")
        return files
    if path.is_file():
        return [path]
    raise FileNotFoundError(
        f"{name}: {str(path)!r} is neither a file nor a directory "
        "(lists are read as paths; to train on strings in memory pass an iterator, e.g. iter(texts))"
    )


def _lines_of_file(file: Path) -> Iterator[str]:
    # newline="\n": split on "\n" only, as SentencePiece and _lines_of_strings do.
    with open(file, encoding="utf-8", newline="\n") as f:
        try:
            for line in f:
                line = line.rstrip("\r\n")
                if line:
                    yield line
        except UnicodeDecodeError as e:
            raise ValueError(f"{file} is not UTF-8 text ({e}); convert it to UTF-8 first") from e


def _lines_of_strings(strings: Iterable[str]) -> Iterator[str]:
    for i, text in enumerate(strings):
        if not isinstance(text, str):
            raise TypeError(f"the input iterator yielded a {type(text).__name__} at item {i}; it must yield strings")
        for line in text.split("\n"):
            line = line.rstrip("\r")
            if line:
                yield line


def _sample_lines(lines: Iterable[str], k: int, rng: random.Random) -> tuple[list[str], int, int]:
    """A uniform sample of at most `k` lines (reservoir sampling), the number of lines seen and
    the number skipped for being longer than SentencePiece accepts.

    Uniform rather than the first `k`, so a corpus sorted by topic or language still yields a
    balanced vocabulary; the sample keeps input order when everything fits.
    """
    sample: list[str] = []
    n = n_too_long = 0
    for line in lines:
        # A char is at most 4 UTF-8 bytes: only measure bytes when the length is ambiguous.
        if len(line) * 4 > MAX_SENTENCE_BYTES and len(line.encode("utf-8")) > MAX_SENTENCE_BYTES:
            n_too_long += 1
            continue
        n += 1
        if len(sample) < k:
            sample.append(line)
        else:
            j = rng.randrange(n)
            if j < k:
                sample[j] = line
    return sample, n + n_too_long, n_too_long


def _describe_input(input) -> str:
    if isinstance(input, (str, os.PathLike, list, tuple)):
        return repr(input if isinstance(input, (list, tuple)) else str(input))
    return "the input iterator"


def _training_error(e: RuntimeError, vocab_size: int, character_coverage: float, n_lines: int) -> Exception:
    """Turn SentencePiece's internal check failures into errors that say what to change."""
    message = str(e)
    too_small = re.search(r"smaller than required_chars\. (\d+) vs (\d+)", message)
    if too_small:
        needed = int(too_small.group(2))
        n_chars = needed - N_SPECIAL_PIECES - N_BYTE_PIECES
        return ValueError(
            f"vocab_size={vocab_size} is too small for this corpus: it needs at least {needed} pieces "
            f"({N_SPECIAL_PIECES} special + {N_BYTE_PIECES} byte pieces + {n_chars} characters covering "
            f"{character_coverage:.3%} of the text); use a vocab size of at least {needed}, or lower "
            "character_coverage so rare characters fall back to byte pieces"
        )
    too_large = re.search(r"Vocabulary size too high \((\d+)\)\. Please set it to a value <= (\d+)", message)
    if too_large:
        return ValueError(
            f"vocab_size={vocab_size} is too large for this corpus ({n_lines} lines): BPE can learn at most "
            f"{too_large.group(2)} pieces from it; give more (and more varied) text or a smaller vocab size"
        )
    return RuntimeError(f"SentencePiece training failed: {message}")


# --------------------------------------------------------------------------- command line


def main(argv: Sequence[str] | None = None) -> int:
    """`llamaforge tokenizer`: train a Llama-style tokenizer on text files."""
    parser = argparse.ArgumentParser(
        prog="llamaforge tokenizer",
        description=(
            "Train a SentencePiece BPE tokenizer with the Llama 2 trainer settings (byte fallback, "
            "split digits, identity normalization; ids <unk>=0 <s>=1 </s>=2, no pad). "
            "Each line of the input is one training sentence."
        ),
    )
    add = parser.add_argument
    add("--input", nargs="+", required=True, metavar="PATH", help="text files, or folders of *.txt files")
    add("--out", required=True, metavar="FILE", help="the .model file to write (a folder: its tokenizer.model)")
    add("--vocab-size", type=int, required=True, metavar="N", help="pieces in the vocabulary (Llama 2: 32000)")
    add("--character-coverage", type=float, default=0.99995, metavar="F",
        help="share of characters given their own piece (default: %(default)s)")
    add("--input-sentence-size", type=int, default=1_000_000, metavar="N",
        help="train on at most N random lines (default: %(default)s)")
    add("--seed", type=int, default=0, help="seed of that sample (default: %(default)s)")
    add("--num-threads", type=int, default=os.cpu_count() or 1, metavar="N", help="threads (default: %(default)s)")
    add("--verbose", action="store_true", help="show SentencePiece's training log")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    try:
        tok = train_tokenizer(
            args.input,
            args.out,
            args.vocab_size,
            character_coverage=args.character_coverage,
            num_threads=args.num_threads,
            input_sentence_size=args.input_sentence_size,
            seed=args.seed,
            verbose=args.verbose,
        )
    except (ValueError, TypeError, OSError) as e:
        print(f"llamaforge tokenizer: error: {e}", file=sys.stderr)
        return 1
    example = "Llama 2 in 2023: 🦙"
    pieces = [tok.id_to_piece(i) for i in tok.encode(example)]
    print(f"wrote {tok.model_path} ({tok.vocab_size} pieces) in {time.perf_counter() - start:.1f} s")
    print(f"{example!r} -> {pieces}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
