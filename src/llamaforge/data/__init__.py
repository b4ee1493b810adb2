"""Data for every stage: corpora -> token shards on disk -> packed, shuffled, resumable batches.

    from llamaforge.data import tokenize_corpus, TokenShards, PackedSequences, PackedBatches
    tokenize_corpus("corpus/", tokenizer, "shards/")              # text / JSONL / Parquet
    train = PackedSequences(TokenShards("shards/", "train"), seq_len=256)
    batches = PackedBatches(train, batch_size=8, seed=0, rank=rank, world_size=world)
    batch = next(batches)                                        # {"inputs", "targets"} [8, 256]
"""

from .packing import PackedBatches, PackedSequences, eval_batches, unigram_perplexity
from .shards import TokenShards, is_validation, read_index, token_dtype, tokenize_corpus
from .sources import fingerprint, input_files, iter_documents

__all__ = [
    "tokenize_corpus", "TokenShards", "read_index", "token_dtype", "is_validation",
    "PackedSequences", "PackedBatches", "eval_batches", "unigram_perplexity",
    "input_files", "iter_documents", "fingerprint",
]
