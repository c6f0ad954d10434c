"""compare's test-set decoding keeps each finished batch on disk, so a kill mid-decoding loses at most one batch."""

from __future__ import annotations

import json

from conftest import make_tiny_llama, make_tiny_tokenizer
from peft_neft.compare.evaluate import generate


def _setup():
    tokenizer = make_tiny_tokenizer()
    model = make_tiny_llama().eval()
    prompts = [tokenizer(" ".join(f"n{(7 * i + j) % 100}" for j in range(2 + i % 5)))["input_ids"] for i in range(7)]
    return model, tokenizer, prompts


def _generate(model, tokenizer, prompts, decoded):
    return generate(model, tokenizer, prompts, max_new_tokens=4, batch_size=3, progress=False, decoded=decoded)


def test_decoding_to_a_file_gives_the_same_continuations_and_stores_each_batch(tmp_path):
    model, tokenizer, prompts = _setup()
    plain = generate(model, tokenizer, prompts, max_new_tokens=4, batch_size=3, progress=False)
    decoded = tmp_path / "run" / "decoded.jsonl"
    assert _generate(model, tokenizer, prompts, decoded) == plain
    lines = decoded.read_text().splitlines()
    assert len(lines) == 1 + 3  # the prompts' digest, then one line per batch of 3 (7 prompts)
    stored = {int(i): t for line in lines[1:] for i, t in json.loads(line)["outputs"].items()}
    assert [stored[i] for i in range(len(prompts))] == plain


def test_a_stopped_decoding_resumes_with_the_batches_it_lacks(tmp_path):
    model, tokenizer, prompts = _setup()
    decoded = tmp_path / "decoded.jsonl"
    full = _generate(model, tokenizer, prompts, decoded)
    header, first, *_ = decoded.read_text().splitlines()
    batch = json.loads(first)["outputs"]
    marked = {i: "from the file" for i in batch}
    # as a kill leaves it: the first batch stored (marked, to see it is read back), the next cut mid-line
    decoded.write_text(f"{header}\n{json.dumps({'outputs': marked})}\n{{\"outputs\": {{\"3")
    forwards = []
    model.register_forward_hook(lambda *_: forwards.append(1))
    resumed = _generate(model, tokenizer, prompts, decoded)
    assert [resumed[int(i)] for i in batch] == ["from the file"] * len(batch)
    assert [t for i, t in enumerate(resumed) if str(i) not in batch] == \
        [t for i, t in enumerate(full) if str(i) not in batch]
    assert len(forwards) <= 2 * 4  # two batches decoded again (at most 4 forwards each), not three
    again = {int(i): t for line in decoded.read_text().splitlines()[1:] for i, t in json.loads(line)["outputs"].items()}
    assert [again[i] for i in range(len(prompts))] == resumed  # the cut line dropped, every batch readable


def test_a_file_made_for_other_prompts_is_started_anew(tmp_path):
    model, tokenizer, prompts = _setup()
    decoded = tmp_path / "decoded.jsonl"
    _generate(model, tokenizer, prompts[1:], decoded)
    assert _generate(model, tokenizer, prompts, decoded) == \
        generate(model, tokenizer, prompts, max_new_tokens=4, batch_size=3, progress=False)
    assert len(decoded.read_text().splitlines()) == 1 + 3  # the old batches are gone
