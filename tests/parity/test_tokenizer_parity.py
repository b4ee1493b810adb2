"""Our Tokenizer against SentencePiece itself, on the released Llama 2 tokenizer (SPEC §3)."""

import hashlib
from pathlib import Path

import pytest
import sentencepiece as spm
from hypothesis import given, settings
from hypothesis import strategies as st

from llamaforge.tokenizer import LLAMA2_TRAINER_SETTINGS, Tokenizer, train_tokenizer

LLAMA2_TOKENIZER = Path(__file__).resolve().parents[3] / "shared/assets/llama2-tokenizer.model"
LLAMA2_MD5 = "eeec4125e9c7560836b4873b6f8e3025"


@pytest.fixture(scope="module")
def sp():
    if not LLAMA2_TOKENIZER.is_file():
        pytest.skip(f"the released Llama 2 tokenizer is not at {LLAMA2_TOKENIZER}")
    digest = hashlib.md5(LLAMA2_TOKENIZER.read_bytes()).hexdigest()
    assert digest == LLAMA2_MD5, f"{LLAMA2_TOKENIZER} is not the released Llama 2 tokenizer (md5 {digest})"
    return spm.SentencePieceProcessor(model_file=str(LLAMA2_TOKENIZER))


@pytest.fixture(scope="module")
def tok(sp):
    return Tokenizer(LLAMA2_TOKENIZER)


TEXTS = [
    "",
    " ",
    "Hello world",
    "12345",
    "3.14159 and 2023-07-18",
    "🦙🦙 llamas 🌍",
    "日本語のテキストと中文",
    "مرحبا بالعالم",
    "Привет, мир",
    "    four leading spaces",
    "trailing spaces   ",
    "a \t b\n\nc\r\nd",
    "\n\n\n",
    "<s> and </s> typed as text",
    "[INST] <<SYS>>\nsys\n<</SYS>>\n\nhi [/INST]",
    "e\u0301 a\u0308 n\u0303",  # combining marks
    "\x00\x01\x7f nul and control bytes",
    "\ue000\U0010fffd private use",
    "word " * 500,
]


@pytest.mark.parametrize("text", TEXTS)
def test_encode_and_decode_equal_sentencepiece(tok, sp, text):
    ids = tok.encode(text)
    assert ids == sp.encode(text)
    assert tok.encode(text, bos=True, eos=True) == [1] + ids + [2]
    assert tok.decode(ids) == sp.decode(ids) == text


def test_vocabulary_and_special_ids(tok):
    assert tok.vocab_size == tok.n_words == 32000
    assert (tok.unk_id, tok.bos_id, tok.eos_id, tok.pad_id) == (0, 1, 2, -1)


def test_known_ids(tok):
    # Ids read once from sentencepiece with the released model.
    assert tok.encode("12345") == [29871, 29896, 29906, 29941, 29946, 29945]
    assert tok.encode("<s>") == [529, 29879, 29958]
    assert tok.encode("</s>") == [1533, 29879, 29958]
    assert tok.encode("[INST]") == [518, 25580, 29962]
    assert tok.encode("  hi") == [259, 7251]
    assert tok.encode("😀") == [29871, 243, 162, 155, 131]


def test_every_digit_is_a_single_token(tok):
    sp = tok.sp
    for i in range(tok.vocab_size):
        if sp.is_byte(i) or sp.is_control(i) or sp.is_unknown(i):
            continue
        text = tok.id_to_piece(i).replace("\u2581", "")
        if any(c in "0123456789" for c in text):
            assert len(text) == 1, f"piece {i} {tok.id_to_piece(i)!r} holds a digit and more"
    ids = tok.encode("9876543210")
    assert [tok.id_to_piece(i) for i in ids[1:]] == list("9876543210")


@pytest.mark.parametrize("char", ["🦙", "\x00", "\ue000", "𝔘", "\U0010fffd"])
def test_characters_outside_the_vocabulary_become_their_utf8_bytes(tok, char):
    pieces = [tok.id_to_piece(i) for i in tok.encode(char)]
    assert pieces == ["\u2581"] + [f"<0x{b:02X}>" for b in char.encode("utf-8")]
    assert tok.unk_id not in tok.encode(char)


# SentencePiece represents spaces internally as U+2581 ("▁"), so a literal U+2581 in the text is
# indistinguishable from a space and decodes as one; every other character round-trips.
# The wrapper keeps SentencePiece's (and the released model's) encoding rather than diverge.
NO_META_SPACE = st.characters(codec="utf-8", exclude_characters="\u2581")


@settings(max_examples=150, deadline=None)
@given(st.text(alphabet=NO_META_SPACE, max_size=60))
def test_any_text_round_trips_and_matches_sentencepiece(tok, sp, text):
    ids = tok.encode(text)
    assert ids == sp.encode(text)
    assert tok.unk_id not in ids
    assert tok.decode(ids) == text


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from(list(" \t\n\r0123456789ab.,<>[]/\u00a0\u3000")), max_size=40))
def test_whitespace_digits_and_brackets_round_trip(tok, text):
    assert tok.decode(tok.encode(text)) == text


def test_the_meta_space_character_decodes_as_a_space(tok):
    assert tok.decode(tok.encode("a\u2581b")) == "a b"
    assert tok.encode("a\u2581b") == tok.encode("a b")


def test_trainer_settings_are_the_released_models(tmp_path):
    """LLAMA2_TRAINER_SETTINGS against the released model's own trainer spec, and a trained model's."""
    model_pb2 = pytest.importorskip(
        "sentencepiece.sentencepiece_model_pb2", reason="reading a model's trainer spec needs protobuf"
    )
    if not LLAMA2_TOKENIZER.is_file():
        pytest.skip(f"the released Llama 2 tokenizer is not at {LLAMA2_TOKENIZER}")

    def settings_of(path):
        proto = model_pb2.ModelProto()
        proto.ParseFromString(Path(path).read_bytes())
        trainer, normalizer = proto.trainer_spec, proto.normalizer_spec
        trainer_keys = [key for key in LLAMA2_TRAINER_SETTINGS if key in trainer.DESCRIPTOR.fields_by_name]
        values = {key: getattr(trainer, key) for key in trainer_keys}
        values["model_type"] = trainer.ModelType.Name(trainer.model_type).lower()
        values["normalization_rule_name"] = normalizer.name
        values["add_dummy_prefix"] = normalizer.add_dummy_prefix
        values["remove_extra_whitespaces"] = normalizer.remove_extra_whitespaces
        return values, trainer

    released, released_trainer = settings_of(LLAMA2_TOKENIZER)
    assert released == LLAMA2_TRAINER_SETTINGS
    assert (released_trainer.vocab_size, round(released_trainer.character_coverage, 5)) == (32000, 0.99995)

    lines = [f"line {i}: the quick brown fox {i * 7919 % 1000} jumps" for i in range(3000)]
    trained = train_tokenizer(iter(lines), tmp_path / "tok.model", 300)
    assert settings_of(trained.model_path)[0] == LLAMA2_TRAINER_SETTINGS
