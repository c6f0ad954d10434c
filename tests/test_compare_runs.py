"""A comparison's runs are reproducible: alone, after other runs, in worker processes, resumed after a kill."""

from __future__ import annotations

import functools
import gzip
import logging
import json
import subprocess
import sys

import pytest
import torch
from peft import AutoPeftModelForCausalLM, PeftModel

from conftest import make_tiny_llama
from peft_neft.compare import compare, read_outputs
from peft_neft.compare.report import bracketing, markdown_table
from peft_neft.selection import NeuronSelection
from peft_neft.training.trainer import KeepBestCallback
from test_compare import _config, data, tokenizer  # noqa: F401  (fixtures)

TIMING = ("time_per_step_s", "train_seconds", "eval_seconds", "seconds")


def _loader(tokenizer, seed=0):
    return functools.partial(make_tiny_llama, seed=seed, vocab=len(tokenizer))


def _without_timing(value):
    if isinstance(value, dict):
        return {k: _without_timing(v) for k, v in value.items() if k not in TIMING}
    if isinstance(value, list):
        return [_without_timing(v) for v in value]
    return value


def _runs(folder):
    return _without_timing(json.loads((folder / "results.json").read_text())["runs"])


def _config_long(**overrides):
    return _config(max_steps=6, eval_every=2, patience=None, **overrides)


@pytest.fixture
def one_thread():
    """One torch thread, as each of two workers gets on two cores: float sums depend on the thread count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_a_run_is_the_same_alone_after_other_runs_and_in_worker_processes(tokenizer, data, tmp_path, one_thread):
    methods = ["lora:2", "neft:match-lora:2"]
    compare(_loader(tokenizer), tokenizer, data, methods, [0], tmp_path / "alone", _config_long(), progress=False)
    torch.manual_seed(1234)
    torch.rand(100)  # whatever ran before in the process must not matter
    compare(_loader(tokenizer), tokenizer, data, ["full", "embed", *methods], [0], tmp_path / "after",
            _config_long(), progress=False)
    compare(_loader(tokenizer), tokenizer, data, methods, [0], tmp_path / "workers", _config_long(workers=2),
            progress=False)
    alone = _runs(tmp_path / "alone")
    for other in ("after", "workers"):
        runs = _runs(tmp_path / other)
        assert {k: runs[k] for k in alone} == alone, other
        for key in alone:
            name = key.replace(":", "_") + ".jsonl.gz"
            assert read_outputs(tmp_path / other / "outputs" / name) == read_outputs(tmp_path / "alone" / "outputs" / name)
    for other in ("after", "workers"):  # the saved adapters are bit-identical too
        for method in ("lora_2", "neft_match-lora_2"):
            a = (tmp_path / "alone" / "adapters" / method / "adapter_model.safetensors").read_bytes()
            assert a == (tmp_path / other / "adapters" / method / "adapter_model.safetensors").read_bytes()


def test_a_killed_comparison_resumes_mid_run_and_ends_as_an_uninterrupted_one(tokenizer, data, tmp_path, monkeypatch):
    methods = ["lora:2", "neft:match-lora:2"]
    compare(_loader(tokenizer), tokenizer, data, methods, [0], tmp_path / "whole", _config_long(), progress=False)
    saved = KeepBestCallback.on_save

    def killed_after_step_4(self, args, state, control, **kwargs):
        saved(self, args, state, control, **kwargs)
        if state.global_step == 4:
            raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(KeepBestCallback, "on_save", killed_after_step_4)
        with pytest.raises(KeyboardInterrupt):
            compare(_loader(tokenizer), tokenizer, data, methods, [0], tmp_path / "killed", _config_long(),
                    progress=False)
    folder = tmp_path / "killed"
    assert not (folder / "results.json").exists()
    assert (folder / "checkpoints" / "lora_2@seed0@lr0.001" / "training" / "checkpoint-4").is_dir()
    steps = []
    monkeypatch.setattr(KeepBestCallback, "on_step_end",
                        lambda self, args, state, control, **kw: steps.append(state.global_step))
    compare(_loader(tokenizer), tokenizer, data, methods, [0], folder, _config_long(), progress=False)
    assert steps[:2] == [5, 6]  # LoRA resumed after its checkpoint at step 4, then NeFT from 1
    assert _runs(folder) == _runs(tmp_path / "whole")
    assert not (folder / "checkpoints" / "lora_2@seed0@lr0.001").exists()  # a finished run's checkpoints are removed


def test_saved_adapters_load_with_peft_and_the_selection_sits_beside_neft(tokenizer, data, tmp_path):
    out = tmp_path / "cmp"
    results = compare(_loader(tokenizer), tokenizer, data, ["lora:2", "neft:match-lora:2"], [0, 1], out,
                      _config(save_adapters="best"), progress=False)
    assert sorted(p.name for p in (out / "adapters").iterdir()) == ["lora_2", "neft_match-lora_2"]
    neft = out / "adapters" / "neft_match-lora_2"
    selection = NeuronSelection.load(neft / "selection.safetensors")
    model = PeftModel.from_pretrained(make_tiny_llama(vocab=len(tokenizer)), neft)
    rows = {name.removeprefix("base_model.model."): sorted(m.neft_rows["default"].tolist())
            for name, m in model.named_modules() if hasattr(m, "neft_rows") and "default" in m.neft_rows}
    assert rows == {k: sorted(v.tolist()) for k, v in selection.rows.items()}
    # "best": the seed with the lower validation loss is the one kept.
    runs = [results["runs"][f"neft:match-lora:2@seed{s}"] for s in (0, 1)]
    best_seed = min(runs, key=lambda r: r["best_val_loss"])["seed"]
    alone = tmp_path / "alone"
    compare(_loader(tokenizer), tokenizer, data, ["neft:match-lora:2"], [best_seed], alone, _config(), progress=False)
    assert (alone / "adapters" / "neft_match-lora_2" / "adapter_model.safetensors").read_bytes() == \
        (neft / "adapter_model.safetensors").read_bytes()
    compare(_loader(tokenizer), tokenizer, data, ["lora:2"], [0], tmp_path / "all", _config(save_adapters="all"),
            progress=False)
    assert [p.name for p in (tmp_path / "all" / "adapters").iterdir()] == ["lora_2@seed0"]
    compare(_loader(tokenizer), tokenizer, data, ["lora:2"], [0], tmp_path / "none", _config(save_adapters="none"),
            progress=False)
    assert not (tmp_path / "none" / "adapters").exists()


def test_the_folder_identity_is_the_model_weights_not_its_path(tokenizer, data, tmp_path):
    model_dir = tmp_path / "model"
    make_tiny_llama(vocab=len(tokenizer)).save_pretrained(model_dir)
    out = tmp_path / "cmp"
    load = functools.partial(type(make_tiny_llama()).from_pretrained, model_dir)
    compare(load, tokenizer, data, ["base"], [0], out, _config(), model_id=str(model_dir), progress=False)
    make_tiny_llama(seed=1, vocab=len(tokenizer)).save_pretrained(model_dir)  # same path, other weights
    with pytest.raises(ValueError, match="different configuration.*model"):
        compare(load, tokenizer, data, ["lora:2"], [0], out, _config(), model_id=str(model_dir), progress=False)
    moved = tmp_path / "moved"
    make_tiny_llama(vocab=len(tokenizer)).save_pretrained(moved)  # the first weights, at another path: resumes
    again = compare(functools.partial(type(make_tiny_llama()).from_pretrained, moved), tokenizer, data, ["base"], [0],
                    out, _config(), model_id=str(moved), progress=False)
    assert list(again["runs"]) == ["base@seed0"]


def test_a_failing_report_never_stops_the_runs(tokenizer, data, tmp_path, monkeypatch, caplog):
    import peft_neft.compare.run as run

    def broken(*args, **kwargs):
        raise TypeError("don't know how to coerce float and float32")

    monkeypatch.setattr(run, "write_report", broken)
    results = compare(_loader(tokenizer), tokenizer, data, ["base", "lora:2"], [0], tmp_path / "cmp", _config(),
                      progress=False)
    assert set(results["runs"]) == {"base@seed0", "lora:2@seed0"}
    assert "could not be written" in caplog.text and "coerce" in caplog.text


def _chatty_loader(vocab):
    """The tiny model, loaded as transformers loads a model where torchao is installed: with a line of import chatter."""
    from transformers.utils import logging as hf_logging

    logging.getLogger("torchao").warning("Failed to load a GPU kernel (import chatter)")
    logging.getLogger("peft_neft.tests").info("transformers' bars shown: %s", hf_logging.is_progress_bar_enabled())
    return make_tiny_llama(seed=0, vocab=vocab)


def test_workers_hide_the_library_chatter_and_bars_the_command_hides(tokenizer, data, tmp_path, capfd):
    from peft_neft.cli import _transformers_bars, command_logging

    with command_logging("INFO"), _transformers_bars(False):  # as `compare --no-progress` runs
        compare(functools.partial(_chatty_loader, vocab=len(tokenizer)), tokenizer, data, ["lora:2", "neft:match-lora:2"],
                [0], tmp_path, _config(workers=2), progress=False)
    err = capfd.readouterr().err
    assert "[worker " in err and "training at lr" in err  # the workers' own records are shown
    assert "import chatter" not in err
    in_workers = [line for line in err.splitlines() if line.startswith("[worker ") and "bars shown" in line]
    # two trainings and NeFT's calibration, a job of the same queue, each loads the model in a worker
    assert len(in_workers) == 3 and all(line.endswith("False") for line in in_workers)  # no "Loading weights" bars


def test_a_worker_starts_before_the_libraries_whose_import_chatter_it_hides():
    # A spawned worker imports its initializer's module before running it, so that module must not import torch,
    # transformers or torchao (whose import prints) before the initializer has set the command's logger levels.
    code = ("import sys; from peft_neft.compare.workers import start_worker; "
            "print(sorted(m for m in ('torch', 'transformers', 'peft', 'torchao') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "[]", done.stdout + done.stderr


def test_workers_need_a_picklable_loader(tokenizer, data, tmp_path):
    with pytest.raises(ValueError, match="picklable"):
        compare(lambda: make_tiny_llama(vocab=len(tokenizer)), tokenizer, data, ["lora:2"], [0], tmp_path / "x",
                _config(workers=2), progress=False)


def test_training_curves_survive_in_the_results_folder(tokenizer, data, tmp_path):
    out = tmp_path / "cmp"
    results = compare(_loader(tokenizer), tokenizer, data, ["lora:2"], [0], out, _config(report_to="tensorboard"),
                      progress=False)
    events = list((out / "runs" / "lora_2@seed0@lr0.001").rglob("events.out.tfevents.*"))
    assert events and all(e.stat().st_size > 0 for e in events)
    curve = results["runs"]["lora:2@seed0"]["curve"]
    assert [c["step"] for c in curve] == [2, 3] and all(c["val_loss"] > 0 and c["train_loss"] > 0 for c in curve)
    assert not list(tmp_path.glob("runs")) and not (out / "checkpoints").exists()  # no stray folder, nothing left


def test_each_run_s_figures_are_computed_once_and_stored(tokenizer, data, tmp_path, monkeypatch):
    from peft_neft.tasks.task import Task

    calls = {"intervals": 0, "paired_test": 0}
    for name in calls:
        real = getattr(Task, name)

        def counted(self, *args, _real=real, _name=name, **kwargs):
            calls[_name] += 1
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(Task, name, counted)
    out = tmp_path / "cmp"
    compare(_loader(tokenizer), tokenizer, data, ["base", "lora:2", "neft:match-lora:2"], [0, 1], out, _config(),
            progress=False)
    assert calls == {"intervals": 5, "paired_test": 2}  # 5 runs (base once), NeFT vs LoRA per seed: not per report
    stored = json.loads((out / "results.json").read_text())
    assert all("intervals" in run for run in stored["runs"].values())
    assert set(stored["paired"]) == {"neft:match-lora:2@seed0 vs lora:2@seed0", "neft:match-lora:2@seed1 vs lora:2@seed1"}


def test_report_rerenders_a_folder_and_merges_folders_with_paired_tests_across_them(tokenizer, data, tmp_path, capsys):
    from peft_neft.cli import main

    lora, neft = tmp_path / "lora", tmp_path / "neft"
    compare(_loader(tokenizer), tokenizer, data, ["lora:2"], [0], lora, _config(), progress=False)
    compare(_loader(tokenizer), tokenizer, data, ["neft:match-lora:2"], [0], neft, _config(lr_grid=(1.0, 3.0)),
            progress=False)
    (lora / "results.md").unlink()
    assert main(["report", str(lora)]) == 0
    assert "| lora:2 |" in capsys.readouterr().out and (lora / "results.md").is_file()
    older = json.loads((neft / "results.json").read_text())  # a folder from before intervals were stored
    del older["runs"]["neft:match-lora:2@seed0"]["intervals"]
    (neft / "results.json").write_text(json.dumps(older))
    before = {f: f.read_bytes() for folder in (lora, neft) for f in folder.rglob("*") if f.is_file()}
    assert main(["report", str(lora), str(neft), "--out", str(tmp_path / "both")]) == 0
    assert {f: f.read_bytes() for folder in (lora, neft) for f in folder.rglob("*") if f.is_file()} == before  # read only
    assert "intervals" in json.loads((tmp_path / "both" / "results.json").read_text())["runs"]["neft:match-lora:2@seed0"]
    merged = json.loads((tmp_path / "both" / "results.json").read_text())
    assert set(merged["runs"]) == {"lora:2@seed0", "neft:match-lora:2@seed0"}
    assert list(merged["paired"]) == ["neft:match-lora:2@seed0 vs lora:2@seed0"]
    report = (tmp_path / "both" / "results.md").read_text()
    assert "| neft:match-lora:2 | lora:2 | 0 |" in report
    assert "| BLEU | chrf | best val loss |" in report
    assert f"| {merged['runs']['lora:2@seed0']['best_val_loss']:.4f} | 0 |" in report
    search = merged["runs"]["neft:match-lora:2@seed0"]["lr_search"]  # two rates: the chosen one is at an end
    chosen = merged["runs"]["neft:match-lora:2@seed0"]["lr"]
    assert len(search) == 2 and "## Learning-rate search" in report
    assert f"| neft:match-lora:2 | 0 | **{chosen:.3g}** |" in report
    side = "highest" if chosen == max(t["lr"] for t in search) else "lowest"
    assert f"neft:match-lora:2 seed 0: {chosen:.3g}, not bracketed: the {side} rate tried" in report
    lr_section = report.split("## Learning-rate search")[1].split("## Paired tests")[0]
    assert "| lora:2 |" not in lr_section  # one rate: no search to show
    assert (tmp_path / "both" / "results-lr.png").read_bytes()[:4] == b"\x89PNG"
    assert not (lora / "results-lr.png").exists()
    other = dict(data, test=data["test"].select(range(3)))
    compare(_loader(tokenizer), tokenizer, other, ["base"], [0], tmp_path / "other", _config(), progress=False)
    capsys.readouterr()
    assert main(["report", str(lora), str(tmp_path / "other"), "--out", str(tmp_path / "x")]) != 0
    assert "has other test data" in capsys.readouterr().err
    assert main(["report", str(lora), str(neft)]) != 0 and "give --out" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "nothing")]) != 0
    assert "results.json does not exist" in capsys.readouterr().err
    merged_before = {f: f.read_bytes() for f in (tmp_path / "both").rglob("*") if f.is_file()}
    (neft / "outputs" / "neft_match-lora_2@seed0.jsonl.gz").rename(tmp_path / "aside.jsonl.gz")
    assert main(["report", str(lora), str(neft), "--out", str(tmp_path / "both"), "--overwrite"]) != 0
    assert "neft_match-lora_2@seed0.jsonl.gz is missing, so" in capsys.readouterr().err
    assert {f: f.read_bytes() for f in (tmp_path / "both").rglob("*") if f.is_file()} == merged_before
    with gzip.open(tmp_path / "aside.jsonl.gz", "rb") as gzipped:  # a folder from before outputs were gzipped
        (neft / "outputs" / "neft_match-lora_2@seed0.jsonl").write_bytes(gzipped.read())
    assert main(["report", str(lora), str(neft), "--out", str(tmp_path / "older")]) == 0
    assert (tmp_path / "older" / "outputs" / "neft_match-lora_2@seed0.jsonl").is_file()
    assert (tmp_path / "older" / "results.md").read_text() == report


def test_a_chosen_rate_is_bracketed_only_with_a_worse_rate_on_both_sides():
    search = [{"lr": lr} for lr in (3e-4, 1e-3, 3e-3)]
    assert bracketing({"lr": 1e-3, "lr_search": search}) == "bracketed"
    assert "highest rate tried; add a larger factor" in bracketing({"lr": 3e-3, "lr_search": search})
    assert "lowest rate tried; add a smaller factor" in bracketing({"lr": 3e-4, "lr_search": search})


def test_a_chosen_rate_whose_training_hit_max_steps_is_said_not_converged():
    search = [{"lr": lr} for lr in (3e-4, 1e-3, 3e-3)]
    assert bracketing({"lr": 1e-3, "lr_search": search, "stop_reason": "plateau"}) == "bracketed"
    said = bracketing({"lr": 1e-3, "lr_search": search, "stop_reason": "max_steps"})
    assert said.startswith("bracketed") and "max_steps" in said and "not converged" in said and "--epochs" in said
    said = bracketing({"lr": 3e-3, "lr_search": search, "stop_reason": "max_steps"})
    assert "add a larger factor" in said and "not converged" in said


def _table_row(runs: list[dict]) -> str:
    """The table's row for ``runs``: result rows of one method, each a default row with the given fields."""
    default = {"method": "neft:match-lora:8", "lr": 4.5e-3, "steps_run": 9, "best_step": 9, "stop_reason": "plateau",
               "scores": {"bleu": 30.0, "chrf": 50.0}, "best_val_loss": 1.0, "trainable_params": 10,
               "trainable_pct": 1.0, "time_per_step_s": 2.0, "memory_mb": 1.0, "adapter_bytes": 0,
               "memory_kind": "weights", "signatures": {}, "calibration": None}
    results = {"identity": {"config": {"task": "translation"}, "device": "cpu", "dtype": "float32"},
               "runs": {str(i): {**default, **run} for i, run in enumerate(runs)}}
    return next(line for line in markdown_table(results).splitlines() if line.startswith("| neft:match-lora:8 |"))


def test_the_table_gives_each_seed_its_own_end_beside_its_steps():
    row = _table_row([{"seed": 2, "steps_run": 1500, "best_step": 1500, "stop_reason": "max_steps"},
                      {"seed": 1, "steps_run": 1410, "best_step": 1128, "stop_reason": "plateau"}])
    assert "| 1,2 | 0.0045 | 1410 (1128),1500 (1500) | plateau,max_steps |" in row


def test_the_table_gives_the_span_of_a_count_that_differs_between_seeds():
    """NeFT's rows are chosen per seed, so its parameter count at a budget moves with the up/down mix."""
    row = _table_row([{"seed": seed, "trainable_params": params, "trainable_pct": params / 1e6, "adapter_bytes": size}
                      for seed, params, size in [(0, 2442432, 9805728), (1, 2442048, 9804440), (2, 2442432, 9805912)]])
    assert row.startswith("| neft:match-lora:8 | 2,442,048-2,442,432 | 2.442 |")  # the shares round to one figure
    assert "| 9.35 |" in row  # as do the adapter sizes


@pytest.mark.parametrize("damage, message", [
    (lambda f: (f / "results.json").write_text("{not json"), "results.json is not valid UTF-8 JSON"),
    (lambda f: (f / "results.json").write_bytes(b'{"format": "\xff"}'), "results.json is not valid UTF-8 JSON"),
    (lambda f: (f / "results.json").write_text("[]"), "results.json is not a peft-neft comparison results file"),
    (lambda f: (f / "results.json").write_text('{"format": "peft-neft-compare/1", "runs": {}}'),
     "results.json lacks identity"),
    (lambda f: (f / "outputs" / "base@seed0.jsonl.gz").write_bytes(
        (f / "outputs" / "base@seed0.jsonl.gz").read_bytes()[:30]), "base@seed0.jsonl.gz is damaged"),
    (lambda f: (f / "outputs" / "base@seed0.jsonl.gz").unlink(), "base@seed0.jsonl.gz is missing"),
])
def test_a_damaged_results_folder_is_named_with_the_fix(tokenizer, data, tmp_path, capsys, damage, message):
    from peft_neft.cli import main

    out = tmp_path / "cmp"
    compare(_loader(tokenizer), tokenizer, data, ["base"], [0], out, _config(), progress=False)
    stored = json.loads((out / "results.json").read_text())
    del stored["runs"]["base@seed0"]["intervals"]  # as an older folder: the report must read the outputs
    (out / "results.json").write_text(json.dumps(stored))
    damage(out)
    capsys.readouterr()
    assert main(["report", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and ".tmp" not in err[0], err
    if message.startswith("results.json"):  # resuming says the same; damaged outputs only cost the report
        with pytest.raises(ValueError, match=message):
            compare(_loader(tokenizer), tokenizer, data, ["base"], [0], out, _config(), progress=False)


def test_a_report_of_a_system_that_scores_zero_everywhere(tokenizer, data, tmp_path):
    """Every bootstrap resample of an empty output scores BLEU 0: the intervals and the plot still work."""
    import gzip

    from peft_neft.compare import write_report
    from peft_neft.compare.significance import store_figures

    out = tmp_path / "cmp"
    compare(_loader(tokenizer), tokenizer, data, ["base"], [0], out, _config(), progress=False)
    results = json.loads((out / "results.json").read_text())
    del results["runs"]["base@seed0"]["intervals"]
    path = out / "outputs" / "base@seed0.jsonl.gz"
    lines = [dict(json.loads(line), hypothesis="") for line in gzip.open(path, "rt")]
    with gzip.open(path, "wt") as handle:
        handle.write("\n".join(json.dumps(line) for line in lines) + "\n")
    assert store_figures(results, out)
    assert results["runs"]["base@seed0"]["intervals"]["bleu"] == {"score": 0.0, "ci": 0.0}
    assert "| base |" in write_report(results, out) and (out / "results.png").read_bytes()[:4] == b"\x89PNG"
    json.dumps(results)  # plain floats only


def test_a_learning_rate_grid_extended_on_resume_trains_only_the_new_rates(tokenizer, data, tmp_path, caplog):
    out = tmp_path / "cmp"
    compare(_loader(tokenizer), tokenizer, data, ["base", "lora:2", "neft:match-lora:2"], [0], out,
            _config(lr_grid=(1.0,)), progress=False)
    first = json.loads((out / "results.json").read_text())
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="peft_neft"):
        wider = compare(_loader(tokenizer), tokenizer, data, ["base", "lora:2", "neft:match-lora:2"], [0], out,
                        _config(lr_grid=(1.0, 30.0)), progress=False)
    trained = [r.getMessage() for r in caplog.records if "training at lr" in r.getMessage()]
    assert trained == ["lora:2 seed 0: training at lr 0.03", "neft:match-lora:2 seed 0: training at lr 0.015"]
    assert "lora:2@seed0: the learning-rate grid now also has 0.03; reopened" in caplog.text
    for key in ("lora:2@seed0", "neft:match-lora:2@seed0"):
        search = wider["runs"][key]["lr_search"]
        assert len(search) == 2 and search[0] == first["runs"][key]["lr_search"][0]
        assert wider["runs"][key]["best_val_loss"] == min(t["best_val_loss"] for t in search)
    assert wider["runs"]["base@seed0"] == first["runs"]["base@seed0"]
    assert set(wider["paired"]) == {"neft:match-lora:2@seed0 vs lora:2@seed0"}
    again = compare(_loader(tokenizer), tokenizer, data, ["lora:2"], [0], out, _config(lr_grid=(1.0,)), progress=False)
    assert again["runs"]["lora:2@seed0"]["lr_search"] == wider["runs"]["lora:2@seed0"]["lr_search"]  # not narrowed
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="peft_neft"):  # one method's grid widened alone
        alone = compare(_loader(tokenizer), tokenizer, data, ["neft:match-lora:2"], [0], out,
                        _config(lr_grid=(1.0, 30.0, 0.1)), progress=False)
    trained = [r.getMessage() for r in caplog.records if "training at lr" in r.getMessage()]
    assert trained == [f"neft:match-lora:2 seed 0: training at lr {0.1 * 5e-4:g}"]
    assert alone["runs"]["lora:2@seed0"] == wider["runs"]["lora:2@seed0"]
    assert len(alone["runs"]["neft:match-lora:2@seed0"]["lr_search"]) == 3


def test_a_widened_grid_stopped_before_its_new_rates_leaves_a_folder_that_reports_and_resumes(tokenizer, data,
                                                                                              tmp_path, monkeypatch):
    """Reopening a run moves its outputs back under its training; results.json on disk says so at once, so a folder
    stopped (or copied) while the new rates train still renders, and resumes to the same run as one call."""
    from peft_neft.cli import main
    from peft_neft.compare import run as compare_run

    out = tmp_path / "cmp"
    compare(_loader(tokenizer), tokenizer, data, ["lora:2"], [0], out, _config(lr_grid=(1.0,)), progress=False)

    def killed_before_training(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(compare_run, "_finish_run", killed_before_training)
        with pytest.raises(KeyboardInterrupt):
            compare(_loader(tokenizer), tokenizer, data, ["lora:2"], [0], out, _config(lr_grid=(1.0, 30.0)),
                    progress=False)
    stored = json.loads((out / "results.json").read_text())
    assert stored["runs"] == {} and list(stored["trainings"]) == ["lora:2@seed0@lr0.001"]
    assert main(["report", str(out)]) == 0
    resumed = compare(_loader(tokenizer), tokenizer, data, ["lora:2"], [0], out, _config(lr_grid=(1.0, 30.0)),
                      progress=False)
    assert [t["lr"] for t in resumed["runs"]["lora:2@seed0"]["lr_search"]] == [1e-3, 3e-2]
    assert read_outputs(out / "outputs" / "lora_2@seed0.jsonl.gz")["hypothesis"]


def test_a_run_stopped_after_its_last_training_is_chosen_on_resume_without_training(tokenizer, data, tmp_path,
                                                                                      monkeypatch, caplog):
    from peft_neft.compare import run as compare_run

    grid = _config(lr_grid=(1.0, 3.0))
    whole = compare(_loader(tokenizer), tokenizer, data, ["lora:2"], [0], tmp_path / "whole", grid, progress=False)
    finish = compare_run._finish_run

    def killed_before_choosing(method, seed, config, results, *rest):
        if len(results["trainings"]) == 2:  # both rates recorded
            raise KeyboardInterrupt
        return finish(method, seed, config, results, *rest)

    with monkeypatch.context() as patch:
        patch.setattr(compare_run, "_finish_run", killed_before_choosing)
        with pytest.raises(KeyboardInterrupt):
            compare(_loader(tokenizer), tokenizer, data, ["lora:2"], [0], tmp_path / "killed", grid, progress=False)
    stored = json.loads((tmp_path / "killed" / "results.json").read_text())
    assert len(stored["trainings"]) == 2 and stored["runs"] == {}
    with caplog.at_level(logging.INFO, logger="peft_neft"):
        resumed = compare(_loader(tokenizer), tokenizer, data, ["lora:2"], [0], tmp_path / "killed", grid,
                          progress=False)
    assert "training at lr" not in caplog.text
    assert _without_timing(resumed["runs"]) == _without_timing(whole["runs"])
    assert (tmp_path / "killed" / "adapters" / "lora_2" / "adapter_model.safetensors").read_bytes() == (
        tmp_path / "whole" / "adapters" / "lora_2" / "adapter_model.safetensors").read_bytes()


def test_lora_targets_and_weight_decay_are_settings_and_older_folders_resume(tokenizer, data, tmp_path):
    out = tmp_path / "cmp"
    narrow = _config(lora_target_modules=("up_proj", "down_proj"))
    results = compare(_loader(tokenizer), tokenizer, data, ["lora:2", "neft:match-lora:2"], [0], out, narrow,
                      progress=False)
    lora, neft = results["runs"]["lora:2@seed0"], results["runs"]["neft:match-lora:2@seed0"]
    assert lora["trainable_params"] == 2 * 2 * 2 * (32 + 64)  # r * (in + out), up and down of 2 layers only
    assert abs(neft["trainable_params"] - lora["trainable_params"]) <= 64  # the budget counts the same modules
    decayed = compare(_loader(tokenizer), tokenizer, data, ["lora:2"], [0], tmp_path / "wd",
                      _config(weight_decay=0.5, learning_rates={"lora": 0.05}), progress=False)["runs"]["lora:2@seed0"]
    plain = compare(_loader(tokenizer), tokenizer, data, ["lora:2"], [0], tmp_path / "plain",
                    _config(learning_rates={"lora": 0.05}), progress=False)["runs"]["lora:2@seed0"]
    assert decayed["best_val_loss"] != plain["best_val_loss"]
    stored = json.loads((tmp_path / "plain" / "results.json").read_text())
    for key in ("lora_target_modules", "weight_decay"):  # as a folder made before these settings existed
        del stored["identity"]["config"][key]
    (tmp_path / "plain" / "results.json").write_text(json.dumps(stored))
    again = compare(_loader(tokenizer), tokenizer, data, ["lora:2"], [0], tmp_path / "plain",
                    _config(learning_rates={"lora": 0.05}), progress=False)
    assert again["runs"]["lora:2@seed0"] == stored["runs"]["lora:2@seed0"]
