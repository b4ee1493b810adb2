"""Data pipeline: documents -> token shards -> packed, shuffled, resumable batches."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from llamaforge.data import (
    PackedBatches, PackedSequences, TokenShards, eval_batches, is_validation, iter_documents, input_files,
    token_dtype, tokenize_corpus, unigram_perplexity,
)


class ByteTokenizer:
    """A stand-in for the SentencePiece wrapper: one id per UTF-8 byte, offset past BOS/EOS."""

    bos_id, eos_id, vocab_size = 1, 2, 3 + 256

    def __init__(self, model_path):
        self.model_path = model_path
        model_path.write_text("byte tokenizer")

    def encode_batch(self, texts, bos=False, eos=False, num_threads=-1):
        return [[self.bos_id] * bos + [3 + b for b in t.encode()] + [self.eos_id] * eos for t in texts]


def _documents(n: int) -> list[str]:
    rng = np.random.default_rng(0)
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta"]
    return [" ".join(rng.choice(words, size=int(rng.integers(3, 30)))) + f" {i}" for i in range(n)]


@pytest.fixture
def corpus(tmp_path):
    docs = _documents(300)
    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "a.txt").write_text("\n\n".join(docs[:150]) + "\n")
    (folder / "b.jsonl").write_text("".join(json.dumps({"text": d, "id": i}) + "\n" for i, d in enumerate(docs[150:])))
    return folder, docs


def test_documents_from_txt_and_jsonl_in_order(tmp_path, corpus):
    folder, docs = corpus
    assert list(iter_documents(input_files(folder))) == docs
    multi = tmp_path / "multi.txt"
    multi.write_text("line one\nline two\n\n\n\nsecond doc\n")
    assert list(iter_documents([multi])) == ["line one\nline two", "second doc"]


def test_bad_inputs_are_explained(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"body": "no text"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2 has no string field 'text'"):
        list(iter_documents([bad]))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        input_files([tmp_path / "missing"])
    (tmp_path / "x.csv").write_text("a")
    with pytest.raises(ValueError, match="unsupported file type"):
        input_files([tmp_path / "x.csv"])


def test_parquet_column(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"content": ["one doc", "two doc"]}), tmp_path / "d.parquet")
    assert list(iter_documents([tmp_path / "d.parquet"], "content")) == ["one doc", "two doc"]


def test_shards_hold_every_document_with_bos_eos_split_by_hash(tmp_path, corpus):
    folder, docs = corpus
    tok = ByteTokenizer(tmp_path / "tok.model")
    out = tokenize_corpus(folder, tok, tmp_path / "shards", val_fraction=0.2, shard_tokens=2000, progress=False)
    expected = {"train": [], "val": []}
    for doc in docs:
        expected["val" if is_validation(doc, 0.2) else "train"] += [1] + [3 + b for b in doc.encode()] + [2]
    for split in ("train", "val"):
        shards = TokenShards(out, split)
        assert shards.dtype == np.uint16
        assert np.concatenate(shards.arrays).tolist() == expected[split]
    train = TokenShards(out, "train")
    assert len(train.arrays) > 1  # shard_tokens forced several shards...
    for array in train.arrays:  # ...each holding whole documents
        assert array[0] == 1 and array[-1] == 2
    assert 0.1 < len(expected["val"]) / (len(expected["val"]) + len(expected["train"])) < 0.3


def test_split_depends_only_on_the_text():
    assert is_validation("some document", 0.5) == is_validation("some document", 0.5)
    assert not any(is_validation(f"doc {i}", 0.0) for i in range(100))
    share = sum(is_validation(f"doc {i}", 0.1) for i in range(5000)) / 5000
    assert 0.08 < share < 0.12


def test_token_dtype_fits_the_vocabulary():
    assert token_dtype(32000) == np.uint16 and token_dtype(65536) == np.uint16
    assert token_dtype(65537) == np.uint32


def test_existing_shards_are_reused_and_foreign_ones_refused(tmp_path, corpus):
    folder, _ = corpus
    tok = ByteTokenizer(tmp_path / "tok.model")
    out = tokenize_corpus(folder, tok, tmp_path / "shards", val_fraction=0.1, progress=False)
    stamp = (out / "index.json").stat().st_mtime_ns
    tokenize_corpus(folder, tok, out, val_fraction=0.1, progress=False)
    assert (out / "index.json").stat().st_mtime_ns == stamp
    with pytest.raises(FileExistsError, match="other inputs"):
        tokenize_corpus(folder, tok, out, val_fraction=0.3, progress=False)


def _stream(tmp_path, n_tokens: int = 5000):
    tok = ByteTokenizer(tmp_path / "tok.model")
    folder = tmp_path / "c"
    folder.mkdir()
    docs = _documents(400)
    (folder / "a.txt").write_text("\n\n".join(docs))
    return TokenShards(tokenize_corpus(folder, tok, tmp_path / "s", val_fraction=0.1, progress=False), "train")


def test_windows_overlap_by_one_token_so_each_token_is_predicted_once(tmp_path):
    shards = _stream(tmp_path)
    seqs = PackedSequences(shards, seq_len=16)
    stream = np.concatenate(shards.arrays)
    assert len(seqs) == (len(stream) - 1) // 16
    batch = seqs.batch([0, 3])
    assert batch["inputs"].dtype == torch.int64
    assert batch["inputs"][1].tolist() == stream[48:64].tolist()
    assert batch["targets"][1].tolist() == stream[49:65].tolist()


def test_batches_shuffle_by_seed_and_cover_an_epoch_once(tmp_path):
    seqs = PackedSequences(_stream(tmp_path), seq_len=16)
    a = PackedBatches(seqs, 4, seed=1)
    b = PackedBatches(seqs, 4, seed=1)
    c = PackedBatches(seqs, 4, seed=2)
    first = [next(a)["inputs"] for _ in range(5)]
    assert all(torch.equal(x, next(b)["inputs"]) for x in first)
    assert not all(torch.equal(x, next(c)["inputs"]) for x in first)
    # One epoch visits every window once (the remainder short of a batch is dropped).
    order = a.order(0)
    assert sorted(order.tolist()) == list(range(len(seqs)))
    assert not np.array_equal(order, a.order(1))


def test_resuming_from_state_dict_continues_the_same_stream(tmp_path):
    seqs = PackedSequences(_stream(tmp_path), seq_len=16)
    reference = PackedBatches(seqs, 8, seed=3)
    steps = len(seqs) // 8 + 5  # crosses an epoch boundary
    expected = [next(reference)["inputs"] for _ in range(steps)]
    for cut in (1, len(seqs) // 8, len(seqs) // 8 + 2):
        first = PackedBatches(seqs, 8, seed=3)
        for _ in range(cut):
            next(first)
        resumed = PackedBatches(seqs, 8, seed=3)
        resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))
        assert all(torch.equal(next(resumed)["inputs"], expected[i]) for i in range(cut, steps))
    with pytest.raises(ValueError, match="same data"):
        PackedBatches(seqs, 8, seed=4).load_state_dict(reference.state_dict())


def test_ranks_read_disjoint_slices_of_the_single_process_global_batch(tmp_path):
    seqs = PackedSequences(_stream(tmp_path), seq_len=16)
    single = PackedBatches(seqs, 6, seed=0)
    ranks = [PackedBatches(seqs, 3, seed=0, rank=r, world_size=2) for r in range(2)]
    for _ in range(4):
        whole = next(single)["inputs"]
        parts = torch.cat([next(r)["inputs"] for r in ranks])
        assert torch.equal(whole, parts)


def test_eval_batches_give_every_rank_the_same_count(tmp_path):
    seqs = PackedSequences(_stream(tmp_path), seq_len=16)
    per_rank = [eval_batches(seqs, 2, rank=r, world_size=2) for r in range(2)]
    assert len(per_rank[0]) == len(per_rank[1]) == len(seqs) // 4
    assert len(eval_batches(seqs, 2, max_batches=3)) == 3
    assert torch.equal(per_rank[1][0]["inputs"], eval_batches(seqs, 4)[0]["inputs"][2:])
    with pytest.raises(ValueError, match="fewer than one batch"):
        eval_batches(seqs, len(seqs) + 1)


def test_unigram_perplexity_hand_computed(tmp_path):
    class Four(ByteTokenizer):
        vocab_size = 4

        def encode_batch(self, texts, bos=False, eos=False, num_threads=-1):
            return [[int(c) for c in t] for t in texts]

    (tmp_path / "d.txt").write_text("1311\n")
    out = tokenize_corpus(tmp_path / "d.txt", Four(tmp_path / "t.model"), tmp_path / "s", val_fraction=0.0, progress=False)
    # counts of ids 0..3 in train: [0, 3, 0, 1] (+1 smoothing) -> [1, 4, 1, 2] / 8,
    # so p(1) = 1/2, p(3) = 1/4 and the perplexity is exp(-(ln 1/2 + ln 1/4) / 2) = sqrt(8).
    assert unigram_perplexity(TokenShards(out, "train"), np.array([1, 3])) == pytest.approx(math.sqrt(8))
