from __future__ import annotations

import pytest

from llmbatch.engine.detokenizer import IncrementalDetokenizer, find_stop_string

TEXTS = [
    "Hello, world! How are you today?",
    "Café crème, naïve façade — déjà vu.",
    "日本語のテキストと絵文字 🎉🚀👩‍👩‍👧 mixed in.",
    "  leading spaces\nand\ttabs  ",
    "emoji at the very end 🤖",
]


def stream(tokenizer, prompt_ids: list[int], ids: list[int], skip_special: bool = True):
    detokenizer = IncrementalDetokenizer(tokenizer, prompt_ids, skip_special)
    pieces = [detokenizer.add(t) for t in ids]
    return pieces, "".join(pieces) + detokenizer.flush()


@pytest.mark.parametrize("text", TEXTS)
def test_incremental_text_equals_whole_decode(smollm2_tokenizer, text):
    prompt = smollm2_tokenizer.encode("Say something:")
    ids = smollm2_tokenizer.encode(text, add_special_tokens=False)
    pieces, joined = stream(smollm2_tokenizer, prompt, ids)
    assert joined == smollm2_tokenizer.decode(ids) == text
    # characters split over several byte tokens are held back, never emitted half-done
    assert all("\ufffd" not in piece for piece in pieces)


def test_multibyte_character_split_across_tokens_is_emitted_once_complete(smollm2_tokenizer):
    ids = smollm2_tokenizer.encode("🎉", add_special_tokens=False)
    assert len(ids) > 1, "the test needs a character spread over several tokens"
    pieces, joined = stream(smollm2_tokenizer, [], ids)
    assert pieces[:-1] == [""] * (len(ids) - 1)
    assert pieces[-1] == joined == "🎉"


def test_special_tokens_are_skipped_or_kept_as_asked(smollm2_tokenizer):
    ids = smollm2_tokenizer.encode("Fine.<|im_end|>", add_special_tokens=False)
    assert stream(smollm2_tokenizer, [], ids, skip_special=True)[1] == "Fine."
    assert stream(smollm2_tokenizer, [], ids, skip_special=False)[1] == "Fine.<|im_end|>"


def test_unfinished_character_is_flushed_as_the_tokenizer_renders_it(smollm2_tokenizer):
    ids = smollm2_tokenizer.encode("a🎉", add_special_tokens=False)[:-1]
    pieces, joined = stream(smollm2_tokenizer, [], ids)
    assert "".join(pieces) == "a"
    assert joined == smollm2_tokenizer.decode(ids)


def test_stop_string_found_only_where_new_text_completes_it():
    assert find_stop_string("abc STOP", 2, ["STOP"]) == ("STOP", 4)
    assert find_stop_string("abc STOP", 4, ["STOP", "c S"]) == ("c S", 2)
    assert find_stop_string("STOP then more", 4, ["STOP"]) is None
    assert find_stop_string("no stop here", 3, ["STOP"]) is None
