"""``peft-neft analyze`` end to end on the real SmolLM2 and Multi30k, and its input errors."""

from __future__ import annotations

import gzip
import json

import pytest
import torch
from peft import get_peft_model

from peft_neft import NeFTConfig, NeuronSelection
from peft_neft.analysis import load_texts
from peft_neft.cli import main

UP = "model.layers.{}.mlp.up_proj"


def test_load_texts_reads_jsonl_and_text_lines(tmp_path):
    jsonl = tmp_path / "eval.jsonl"
    jsonl.write_text('{"text": "a cat"}\n{"text": "  "}\n{"text": "a dog"}\n')
    assert load_texts(jsonl) == ["a cat", "a dog"]
    lines = tmp_path / "eval.txt.gz"
    with gzip.open(lines, "wt") as handle:
        handle.write("one\ntwo\nthree\n")
    assert load_texts(lines, limit=2) == ["one", "two"]
    with pytest.raises(ValueError, match=r"no field 'source'.*\['text'\]"):
        load_texts(jsonl, text_field="source")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(ValueError, match=r"empty\.jsonl' is empty"):
        load_texts(empty)
    blank = tmp_path / "blank.txt"
    blank.write_text("\n  \n")
    with pytest.raises(ValueError, match="no non-empty texts"):
        load_texts(blank)
    broken = tmp_path / "broken.jsonl"
    broken.write_text("{not json\n")
    with pytest.raises(ValueError, match="could not be read as JSON lines"):
        load_texts(broken)
    with pytest.raises(FileNotFoundError):
        load_texts(tmp_path / "missing.jsonl")


@pytest.mark.slow
def test_analyze_cli_on_smollm2_adapter(smollm2_dir, shared_data, tmp_path, capsys):
    from peft_neft.embedded_model import load_model_and_tokenizer

    base, _ = load_model_and_tokenizer(smollm2_dir)
    selection = NeuronSelection(rows={UP.format(1): torch.arange(0, 1536, 8)})
    selection.save(tmp_path / "sel.safetensors")
    model = get_peft_model(base, NeFTConfig.from_selection(selection))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "neft_delta" in name:
                param.copy_(0.5 * torch.randn_like(param))
    model.save_pretrained(tmp_path / "adapter")
    data = shared_data / "multi30k" / "test_2016_flickr.en.gz"
    args = ["analyze", "--model-a", "default", "--model-b", str(tmp_path / "adapter"), "--data", str(data),
            "--max-examples", "8", "--out", str(tmp_path / "report"), "--selection", str(tmp_path / "sel.safetensors"),
            "--target-modules", UP.format(0), UP.format(2), "--strong-threshold", "500"]
    assert main(args) == 0
    summary = json.loads((tmp_path / "report" / "report.json").read_text())
    assert summary["num_neurons"] == 3 * 1536 and summary["strong_threshold"] == 500
    assert set(summary["per_layer"]) == {"0", "1", "2"}
    # Layer 0 runs before the changed rows, so nothing there moves; the trained layer does.
    assert summary["per_module"][UP.format(0)]["avg_abs_delta_rank"] < summary["per_module"][UP.format(1)]["avg_abs_delta_rank"]
    counts = summary["category_counts"]
    # some of the trained (selected) rows are themselves strongly affected, so not all strong ones are indirect
    assert 0 < counts["indirectly_affected"] < counts["strongly_affected"]
    assert "report written" in capsys.readouterr().out

    foreign = NeuronSelection(rows={"model.layers.40.mlp.up_proj": torch.tensor([1])})
    foreign.save(tmp_path / "foreign.safetensors")
    args[args.index("--selection") + 1] = str(tmp_path / "foreign.safetensors")
    assert main(args) == 1
    assert "another model" in capsys.readouterr().err
