"""NeFT under data parallelism on 2 CPU processes (gloo), started with the real ``accelerate launch``.

* DDP through accelerate (``docs/examples/accelerate/train_neft.py`` with ``docs/examples/accelerate/ddp.yaml``).
* FSDP2 (``torch.distributed.fsdp.fully_shard``, what accelerate's FSDP2 plugin calls). accelerate 1.15 only
  turns on FSDP for accelerator back-ends (its CPU path is plain DDP), so on CPU this file shards the model
  itself, in the worker at the bottom, launched by accelerate as well.

Both must end with the adapter of a one-process run over the same global batches (fp32 tolerance).
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "docs" / "examples" / "accelerate" / "train_neft.py"
DDP_CONFIG = ROOT / "docs" / "examples" / "accelerate" / "ddp.yaml"
COMMON = ["--model", "tiny", "--steps", "4", "--rows-per-module", "8", "--seed", "0", "--lr", "1e-2"]
PER_PROCESS_BATCH = 2


def _free_port() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return str(sock.getsockname()[1])


def _run(command: list[str]) -> str:
    env = dict(os.environ, OMP_NUM_THREADS="1", ACCELERATE_USE_CPU="true", PYTHONUNBUFFERED="1")
    done = subprocess.run([str(c) for c in command], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{command} failed:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    return done.stdout


def _accelerate_launch_2_cpus(script: Path, *args) -> str:
    return _run([sys.executable, "-m", "accelerate.commands.launch", "--config_file", DDP_CONFIG,
                 "--num_processes", "2", "--main_process_port", _free_port(), script, *args])


@pytest.fixture(scope="module")
def single_process(tmp_path_factory) -> Path:
    """The reference: one process, per-step batch = the two processes' batches together."""
    out = tmp_path_factory.mktemp("single")
    _run([sys.executable, EXAMPLE, *COMMON, "--batch-size", 2 * PER_PROCESS_BATCH, "--output-dir", out,
          "--save-rank-states"])
    return out


def _assert_same_adapter(folder: Path, reference: Path) -> None:
    """Same files, same config, identical row indices, deltas equal to fp32 tolerance (and trained)."""
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in reference.iterdir())
    assert json.loads((folder / "adapter_config.json").read_text()) == json.loads(
        (reference / "adapter_config.json").read_text())
    got, want = load_file(folder / "adapter_model.safetensors"), load_file(reference / "adapter_model.safetensors")
    assert sorted(got) == sorted(want)
    assert any(".neft_delta" not in k for k in got) and any(".neft_delta" in k for k in got)
    for key in want:
        assert got[key].dtype == want[key].dtype and got[key].shape == want[key].shape, key
        if "neft_rows" in key:
            assert torch.equal(got[key], want[key]), key
        else:
            assert want[key].abs().max() > 1e-3, f"{key} was not trained"
            torch.testing.assert_close(got[key], want[key], rtol=1e-4, atol=1e-5, msg=key)


def test_accelerate_ddp_on_two_cpu_processes_equals_one_process(single_process, tmp_path):
    # Gradient checkpointing on here only: it must not change the result either.
    stdout = _accelerate_launch_2_cpus(EXAMPLE, *COMMON, "--batch-size", PER_PROCESS_BATCH, "--gradient-checkpointing",
                                       "--output-dir", tmp_path, "--save-rank-states")
    assert "distributed_type=MULTI_CPU processes=2" in stdout

    rank0, rank1 = load_file(tmp_path / "rank0.safetensors"), load_file(tmp_path / "rank1.safetensors")
    assert rank0 and sorted(rank0) == sorted(rank1)
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), f"replicas differ in {name}"
    reference = load_file(single_process / "rank0.safetensors")
    assert sorted(rank0) == sorted(reference)
    for name in reference:
        torch.testing.assert_close(rank0[name], reference[name], rtol=1e-4, atol=1e-5, msg=name)

    _assert_same_adapter(tmp_path / "adapter", single_process / "adapter")


def test_fsdp2_sharded_training_on_two_cpu_processes_saves_the_one_process_adapter(single_process, tmp_path):
    stdout = _accelerate_launch_2_cpus(Path(__file__), "fsdp2-worker", tmp_path)
    assert "sharded deltas: 6 of 6" in stdout  # 2 layers x 3 MLP projections: every delta is a DTensor split across the two ranks
    _assert_same_adapter(tmp_path / "adapter", single_process / "adapter")


def _fsdp2_worker(output_dir: Path) -> None:
    """Train the example's model and data with FSDP2 on gloo; rank 0 saves the gathered adapter."""
    import torch.distributed as dist
    from peft import get_peft_model
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    import peft_neft

    spec = importlib.util.spec_from_file_location("train_neft", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    args = example.parse_args([*COMMON, "--batch-size", str(PER_PROCESS_BATCH), "--output-dir", str(output_dir)])

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    base, _ = example.load_model(args.model, args.seed)
    rows = example.random_rows(base, args.target_modules.split(","), args.rows_per_module, args.seed)
    model = get_peft_model(base, peft_neft.NeFTConfig(neurons=rows))
    model.train()
    for block in base.model.layers:
        fully_shard(block)
    fully_shard(model)
    deltas = [p for p in model.parameters() if p.requires_grad]
    sharded = sum(isinstance(p, DTensor) and p.to_local().shape[0] < p.shape[0] for p in deltas)
    if rank == 0:
        print(f"sharded deltas: {sharded} of {len(deltas)}")

    tokens = example.build_dataset(args, None, base.config.vocab_size).tensors[0]
    optimizer = torch.optim.AdamW(deltas, lr=args.lr, weight_decay=0.0)
    for step in range(args.steps):
        start = (step * world + rank) * args.batch_size  # accelerate's order: batch i goes to rank i % world
        batch = tokens[start:start + args.batch_size]
        model(input_ids=batch, labels=batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank == 0:
        model.save_pretrained(output_dir / "adapter", state_dict=state)
    dist.barrier()
    dist.destroy_process_group()


def test_the_training_engine_under_accelerate_launch_equals_one_process(tmp_path):
    # peft_neft.training.train_model (TargetLossTrainer) on 2 processes with batch 2 each against 1 process with
    # batch 4: the same global batches, so the same adapter, validation curve and best step.
    _run([sys.executable, Path(__file__), "engine-worker", tmp_path / "single", 2 * PER_PROCESS_BATCH])
    stdout = _accelerate_launch_2_cpus(Path(__file__), "engine-worker", tmp_path / "ddp", PER_PROCESS_BATCH)
    assert "processes: 2" in stdout
    _assert_same_adapter(tmp_path / "ddp" / "adapter", tmp_path / "single" / "adapter")
    ddp, single = (json.loads((tmp_path / run / "stats.json").read_text()) for run in ("ddp", "single"))
    assert [p["step"] for p in ddp["curve"]] == [p["step"] for p in single["curve"]] == [2, 4, 6]
    assert [p["val_loss"] for p in ddp["curve"]] == pytest.approx([p["val_loss"] for p in single["curve"]], rel=1e-5)
    assert ddp["best_step"] == single["best_step"] and ddp["steps_run"] == single["steps_run"] == 6


def _engine_worker(output_dir: Path, batch_size: int) -> None:
    """NeFT on a tiny Llama through the training engine; the main process saves the adapter and the statistics."""
    from accelerate import PartialState
    from peft import get_peft_model

    import peft_neft
    from conftest import make_tiny_llama
    from peft_neft.training import Precision, TrainingSettings, train_model

    def rows(count: int, seed: int) -> list[dict]:
        gen = torch.Generator().manual_seed(seed)
        ids = torch.randint(0, 128, (count, 12), generator=gen).tolist()
        return [{"input_ids": r, "attention_mask": [1] * 12, "labels": [-100] * 4 + r[4:]} for r in ids]

    def collate(batch: list[dict]) -> dict[str, torch.Tensor]:
        return {key: torch.tensor([r[key] for r in batch]) for key in batch[0]}

    neurons = {f"model.layers.{i}.mlp.{m}": list(range(0, 32, 3)) for i in range(2) for m in ("up_proj", "down_proj")}
    model = get_peft_model(make_tiny_llama(), peft_neft.NeFTConfig(neurons=neurons))
    settings = TrainingSettings(max_steps=6, batch_size=batch_size, eval_every=2, patience=None, eval_batch_size=2,
                                group_by_length=False)
    stats = train_model(model, rows(48, 1), rows(8, 2), collate, settings, learning_rate=1e-2, seed=0,
                        precision=Precision(torch.device("cpu"), torch.float32, True), progress=False)
    state = PartialState()
    if state.is_main_process:
        print(f"processes: {state.num_processes}")
        model.save_pretrained(output_dir / "adapter")
        (output_dir / "stats.json").write_text(json.dumps(stats))


if __name__ == "__main__" and sys.argv[1:2] == ["fsdp2-worker"]:
    _fsdp2_worker(Path(sys.argv[2]))
if __name__ == "__main__" and sys.argv[1:2] == ["engine-worker"]:
    _engine_worker(Path(sys.argv[2]), int(sys.argv[3]))
