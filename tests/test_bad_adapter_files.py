"""Every entry point that reads an adapter or a selection names the file the user gave and the fix, in one line,
for each way the file can be broken: truncated or empty safetensors, adapter_config.json that is invalid JSON,
a list, without peft_type, or with fields of the wrong type. No temporary file name appears."""

import json

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model

from peft_neft import NeFTConfig, NeuronSelection, export_lora, import_lora

from conftest import make_tiny_llama

WEIGHTS, CONFIG = "adapter_model.safetensors", "adapter_config.json"


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _empty(path):
    path.write_bytes(b"")


def _json(change):
    def edit(path):
        path.write_text(json.dumps(change(json.loads(path.read_text()))))
    return edit


def _drop(key):
    def change(config):
        config.pop(key)
        return config
    return change


def _set(key, value):
    def change(config):
        config[key] = value
        return config
    return change


CORRUPTIONS = {  # name -> (file, how), the same for every adapter kind
    "truncated weights": (WEIGHTS, _truncate),
    "empty weights": (WEIGHTS, _empty),
    "invalid JSON": (CONFIG, lambda p: p.write_text('{"peft_type": "NEFT",')),
    "not UTF-8": (CONFIG, lambda p: p.write_bytes(b'{"peft_type": "\xff"}')),
    "a list, not an object": (CONFIG, lambda p: p.write_text("[1, 2]")),
    "no peft_type": (CONFIG, _json(_drop("peft_type"))),
}
NEFT_FIELDS = {"neuron_counts a list": _set("neuron_counts", ["model.layers.0.mlp.up_proj"]),
               "a row count as text": _set("neuron_counts", {"model.layers.0.mlp.up_proj": "3"}),
               "delta_dtype a number": _set("delta_dtype", 32)}
LORA_FIELDS = {"r as text": _set("r", "eight"), "rank_pattern a list": _set("rank_pattern", ["x"])}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("good")
    base = make_tiny_llama()
    base.save_pretrained(root / "base")
    neft = get_peft_model(make_tiny_llama(), NeFTConfig(neurons={"model.layers.0.mlp.up_proj": [1, 2, 3]},
                                                      init_weights=False, init_seed=1))
    neft.save_pretrained(root / "neft")
    lora = get_peft_model(make_tiny_llama(), LoraConfig(r=2, target_modules=["model.layers.0.mlp.up_proj"]))
    with torch.no_grad():
        lora.base_model.model.model.layers[0].mlp.up_proj.lora_B["default"].weight[5, 0] = 1.0
    lora.save_pretrained(root / "lora")
    NeuronSelection(rows={"model.layers.0.mlp.up_proj": torch.tensor([1, 2])}).save(root / "sel.safetensors")
    return root


def _copy(source, target):
    target.mkdir()
    for path in source.iterdir():
        (target / path.name).write_bytes(path.read_bytes())
    return target


ENTRY_POINTS = {  # name -> (folder it reads, how it is called)
    "PeftModel.from_pretrained": ("neft", lambda folder, root, out: PeftModel.from_pretrained(make_tiny_llama(), folder)),
    "NeFTConfig.from_pretrained": ("neft", lambda folder, root, out: NeFTConfig.from_pretrained(folder)),
    "export_lora": ("neft", lambda folder, root, out: export_lora(folder, out, base=root / "base")),
    "import_lora": ("lora", lambda folder, root, out: import_lora(folder, out)),
}
CASES = [(entry, name)
         for entry in ENTRY_POINTS
         for name in [*CORRUPTIONS, *(NEFT_FIELDS if ENTRY_POINTS[entry][0] == "neft" else LORA_FIELDS)]
         # peft itself reads peft_type from adapter_config.json before any NeFT code runs
         if not (entry == "PeftModel.from_pretrained" and CORRUPTIONS.get(name, (WEIGHTS,))[0] == CONFIG)]


@pytest.mark.parametrize(("entry", "corruption"), CASES, ids=[f"{e}: {c}" for e, c in CASES])
def test_a_broken_adapter_file_gets_one_line_naming_it_and_the_fix(folders, tmp_path, entry, corruption):
    kind, call = ENTRY_POINTS[entry]
    folder = _copy(folders / kind, tmp_path / "adapter")
    fields = NEFT_FIELDS if kind == "neft" else LORA_FIELDS
    file, how = (CONFIG, _json(fields[corruption])) if corruption in fields else CORRUPTIONS[corruption]
    how(folder / file)
    with pytest.raises((ValueError, FileNotFoundError)) as info:
        call(folder, folders, tmp_path / "out")
    message = str(info.value)
    assert str(folder / file) in message, message
    assert "\n" not in message and ".tmp" not in message
    assert "again" in message  # the fix: save (or write) it again
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("corruption", ["truncated weights", "empty weights"])
def test_a_broken_selection_file_gets_one_line_naming_it(folders, tmp_path, corruption):
    path = tmp_path / "sel.safetensors"
    path.write_bytes((folders / "sel.safetensors").read_bytes())
    CORRUPTIONS[corruption][1](path)
    with pytest.raises(ValueError) as info:
        NeuronSelection.load(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value) and "Write it again" in str(info.value)


def test_tensors_of_a_module_missing_from_neuron_counts_are_refused_not_dropped(folders, tmp_path):
    """Drop a module's entry from neuron_counts while its tensors stay: loading would silently lose its delta."""
    neft = get_peft_model(make_tiny_llama(), NeFTConfig(neurons={"model.layers.0.mlp.up_proj": [1, 2],
                                                                 "model.layers.1.mlp.down_proj": [4]}, init_weights=False, init_seed=1))
    neft.save_pretrained(tmp_path / "neft")
    config = json.loads((tmp_path / "neft" / CONFIG).read_text())
    for key in ("neuron_counts", "module_shapes"):
        del config[key]["model.layers.1.mlp.down_proj"]
    config["target_modules"] = ["model.layers.0.mlp.up_proj"]
    (tmp_path / "neft" / CONFIG).write_text(json.dumps(config))
    message = r"no entry for module 'model\.layers\.1\.mlp\.down_proj'"
    with pytest.raises(ValueError, match=message):
        PeftModel.from_pretrained(make_tiny_llama(), tmp_path / "neft")
    with pytest.raises(ValueError, match=message):
        export_lora(tmp_path / "neft", tmp_path / "out", base=folders / "base")


@pytest.mark.parametrize("corruption", ["invalid JSON", "not UTF-8", "a list, not an object"])
def test_analyze_names_a_corrupt_adapter_config_before_loading_any_model(folders, tmp_path, corruption):
    from peft_neft.analysis import load_analysis_model

    folder = _copy(folders / "neft", tmp_path / "adapter")
    CORRUPTIONS[corruption][1](folder / CONFIG)
    with pytest.raises(ValueError) as info:
        load_analysis_model(folder)
    message = str(info.value)
    assert str(folder / CONFIG) in message and "\n" not in message and "Save the adapter again" in message
