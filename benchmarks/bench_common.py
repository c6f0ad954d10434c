"""Shared pieces of the benchmark scripts: the model, the methods at equal trainable parameters,
one training step, interleaved timing and peak-memory accounting.

Methods share the frozen base weights (each gets its own ``nn.Parameter`` objects over the same
storage), so many of them fit in memory at once and their steps can be interleaved.

Peak memory:
- CUDA: ``torch.cuda.max_memory_allocated`` during two steps, minus what was allocated before the
  method was built (so it counts adapter parameters, gradients, optimizer state, activations).
- CPU: the same window read from the process's own accounting, the kernel's peak resident set size
  (``VmHWM``, reset through ``/proc/self/clear_refs``), minus the resident size before the method was
  built. glibc is told to serve every allocation over 64 KiB by ``mmap`` (``MALLOC_MMAP_THRESHOLD_``;
  the scripts re-execute themselves with it), so freed tensors leave the resident set at once and one
  method's leftovers do not hide the next one's peak.
"""

from __future__ import annotations

import copy
import functools
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn

from peft_neft._targets import DEFAULT_TARGET_MODULES

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "docs" / "performance"
ALL_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
MMAP_ENV = "MALLOC_MMAP_THRESHOLD_"


def reexec_with_mmap_threshold() -> None:
    """Restart this script with glibc's mmap threshold fixed (see the module docstring)."""
    if os.environ.get(MMAP_ENV) is None and sys.platform.startswith("linux"):
        env = dict(os.environ, **{MMAP_ENV: "65536"})
        os.execve(sys.executable, [sys.executable, *sys.argv], env)


# ----------------------------------------------------------------------------- models


def smollm2_config():
    """SmolLM2-135M's architecture (for random-weight runs where the real weights cannot go)."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
        num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
        rms_norm_eps=1e-5, rope_theta=100000.0, tie_word_embeddings=True,
    )


def tiny_llama_config(hidden: int, layers: int = 4, vocab: int = 4096):
    """A small Llama of the given width (MLP 8/3 x hidden, rounded to 64, as Llama does)."""
    from transformers import LlamaConfig

    intermediate = int(round(hidden * 8 / 3 / 64)) * 64
    heads = max(1, hidden // 64)
    return LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=2048,
        tie_word_embeddings=True,
    )


def load_base(device: str, dtype: torch.dtype, random_weights: bool, config=None) -> nn.Module:
    """The frozen base model: real SmolLM2-135M, or random weights from ``config`` / SmolLM2's config."""
    from transformers import LlamaForCausalLM

    if random_weights or config is not None:
        torch.manual_seed(0)
        model = LlamaForCausalLM(config or smollm2_config())
    else:
        from peft_neft.embedded_model import load_model_and_tokenizer

        model, _ = load_model_and_tokenizer(None)
    model = model.to(device=device, dtype=dtype)
    model.config.use_cache = False
    model.requires_grad_(False)
    return model.train()


def shared_copy(base: nn.Module, requires_grad: bool = False) -> nn.Module:
    """A copy of ``base`` whose parameters are new ``nn.Parameter`` objects over the same storage."""
    memo = {id(p): nn.Parameter(p.data, requires_grad=requires_grad) for p in base.parameters()}
    return copy.deepcopy(base, memo)


def target_names(model: nn.Module, suffixes: tuple[str, ...]) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n.rsplit(".", 1)[-1] in suffixes]


def total_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def neft_rows(model: nn.Module, targets: list[str], budget: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """The same number of random rows in every target, ``sum(k * in_features)`` close to ``budget``."""
    modules = dict(model.named_modules())
    per_row = sum(modules[n].in_features for n in targets)
    gen = torch.Generator().manual_seed(seed)
    rows = {}
    for name in targets:
        out = modules[name].out_features
        k = max(1, min(out, round(budget / per_row)))
        rows[name] = torch.randperm(out, generator=gen)[:k].sort().values
    return rows


# ----------------------------------------------------------------------------- methods


@dataclass
class Method:
    """A model ready to train, its optimizer, and a hook run between backward and the optimizer step."""

    name: str
    model: nn.Module
    optimizer: Optional[torch.optim.Optimizer]
    trainable: int
    after_backward: Optional[Callable[[], None]] = None
    floor: bool = False
    extra: dict = field(default_factory=dict)


def _optimizer(model: nn.Module) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=1e-6, fused=True)  # the fastest AdamW on CPU and CUDA, for all methods


def _trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def build_neft(base: nn.Module, name: str, targets: list[str], budget: int, delta_dtype: str = "float32") -> Method:
    import peft_neft
    from peft import get_peft_model

    model = get_peft_model(shared_copy(base), peft_neft.NeFTConfig(neurons=neft_rows(base, targets, budget),
                                                                    delta_dtype=delta_dtype))
    return Method(name, model, _optimizer(model), _trainable(model))


def lora_rank(base: nn.Module, targets: list[str], budget: int) -> int:
    modules = dict(base.named_modules())
    return max(1, round(budget / sum(modules[n].in_features + modules[n].out_features for n in targets)))


def build_lora(base: nn.Module, name: str, targets: list[str], budget: int) -> Method:
    from peft import LoraConfig, get_peft_model

    r = lora_rank(base, targets, budget)
    model = get_peft_model(shared_copy(base), LoraConfig(r=r, lora_alpha=2 * r, target_modules=targets,
                                                         lora_dropout=0.0))
    return Method(name, model, _optimizer(model), _trainable(model), extra={"rank": r})


def build_shira(base: nn.Module, name: str, targets: list[str], budget: int) -> Method:
    from peft import ShiraConfig, get_peft_model

    r = lora_rank(base, targets, budget)  # SHiRA trains r * (in + out) entries per module, as LoRA
    model = get_peft_model(shared_copy(base), ShiraConfig(r=r, target_modules=targets))
    return Method(name, model, _optimizer(model), _trainable(model), extra={"r": r})


def build_supertuning(base: nn.Module, name: str, targets: list[str], budget: int) -> Method:
    from peft import get_peft_model
    from peft.tuners.supertuning import SupertuningConfig

    modules = dict(base.named_modules())
    weights = sum(modules[n].weight.numel() for n in targets)
    model = get_peft_model(shared_copy(base), SupertuningConfig(target_modules=targets, sparsity=1 - budget / weights))
    return Method(name, model, _optimizer(model), _trainable(model))


def build_full(base: nn.Module, name: str) -> Method:
    model = shared_copy(base, requires_grad=True)
    return Method(name, model, _optimizer(model), _trainable(model))


def build_masked(base: nn.Module, name: str, targets: list[str], budget: int) -> Method:
    """The paper's implementation: full model, gradients of unselected rows zeroed, AdamW over all params."""
    model = shared_copy(base, requires_grad=True)
    rows = neft_rows(base, targets, budget)
    modules = dict(model.named_modules())
    masks = []
    for n, m in modules.items():
        if isinstance(m, nn.Linear) and n in rows:
            keep = torch.zeros(m.out_features, 1, dtype=torch.bool, device=m.weight.device)
            keep[rows[n].to(keep.device)] = True
            masks.append((m.weight, keep))
    masked_ids = {id(w) for w, _ in masks}
    others = [p for p in model.parameters() if id(p) not in masked_ids]

    def zero_unselected() -> None:
        for weight, keep in masks:
            weight.grad.mul_(keep)
        for p in others:
            if p.grad is not None:
                p.grad.zero_()

    trainable = sum(int(k.sum()) * w.shape[1] for w, k in masks)
    return Method(name, model, _optimizer(model), trainable, after_backward=zero_unselected)


def build_floor(base: nn.Module, name: str) -> Method:
    """Forward + backward through the frozen model with input gradients only."""
    return Method(name, shared_copy(base), None, 0, floor=True)


# ----------------------------------------------------------------------------- steps and timing


def make_batch(vocab: int, batch: int, seq: int, device: str) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab, (batch, seq), generator=gen).to(device)
    return {"input_ids": ids, "labels": ids}


def train_step(method: Method, batch: dict[str, torch.Tensor]) -> float:
    model = method.model
    if method.floor:
        embeds = model.get_input_embeddings()(batch["input_ids"]).detach().requires_grad_()
        loss = model(inputs_embeds=embeds, labels=batch["labels"]).loss
        loss.backward()
        return loss.item()
    loss = model(**batch).loss
    loss.backward()
    if method.after_backward is not None:
        method.after_backward()
    method.optimizer.step()
    method.optimizer.zero_grad(set_to_none=True)
    return loss.item()


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], device: str) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def interleaved_medians(fns: dict[str, Callable[[], object]], device: str, warmup: int, repeats: int) -> dict[str, dict]:
    """Run every function ``warmup`` times, then ``repeats`` rounds of one call each, in a rotating order."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    print(f"  warm-up done ({len(fns)} functions)", file=sys.stderr, flush=True)
    names = list(fns)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        order = names[r % len(names):] + names[:r % len(names)]
        for n in order:
            times[n].append(timed(fns[n], device))
        print(f"  round {r + 1}/{repeats} done", file=sys.stderr, flush=True)
    return {n: {"median_s": statistics.median(t), "min_s": min(t), "max_s": max(t), "times_s": t}
            for n, t in times.items()}


# ----------------------------------------------------------------------------- memory


def _proc_status_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{key} not in /proc/self/status")


def _reset_peak_rss() -> None:
    Path("/proc/self/clear_refs").write_text("5")


def peak_memory(build: Callable[[], Method], batch: dict[str, torch.Tensor], device: str, steps: int = 2) -> int:
    """Peak bytes above what was in use before ``build()``, over ``steps`` training steps."""
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        before = _proc_status_kib("VmRSS") * 1024
        _reset_peak_rss()
    method = build()
    for _ in range(steps):
        train_step(method, batch)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = _proc_status_kib("VmHWM") * 1024
    del method
    gc.collect()
    return peak - before


def measure_methods(builders: dict[str, Callable[[], Method]], batch: dict[str, torch.Tensor], device: str,
                    warmup: int, repeats: int, memory: bool = True) -> dict[str, dict]:
    """Interleaved step times of all methods at once, then each one's peak memory on its own."""
    methods = {name: build() for name, build in builders.items()}
    info = {name: {"trainable": m.trainable, **m.extra} for name, m in methods.items()}
    timings = interleaved_medians({n: functools.partial(train_step, m, batch) for n, m in methods.items()},
                                  device, warmup, repeats)
    del methods
    gc.collect()
    results = {n: {**info[n], **timings[n]} for n in builders}
    if memory:
        for name, build in builders.items():
            results[name]["peak_bytes"] = peak_memory(build, batch, device)
            print(f"  memory {name}: {results[name]['peak_bytes'] / 2**20:.1f} MiB", file=sys.stderr, flush=True)
    return results


# ----------------------------------------------------------------------------- reporting


def machine() -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "cpu_count": os.cpu_count(),
            "threads": torch.get_num_threads(), "platform": platform.platform()}
    try:
        info["cpu"] = next(l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                           if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    info["native_bf16_cpu"] = bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    import peft
    import transformers

    info["peft"], info["transformers"] = peft.__version__, transformers.__version__
    try:
        info["git"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                     text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return info


def write_json(path: Path, payload: dict) -> None:
    from peft_neft.atomic import atomic_path

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(payload, indent=2))
    print(f"wrote {path}")


def ratio(a: float, b: float):
    """``a / b``, or "n/a" where ``b`` is not positive (an RSS delta lost in page-granular noise)."""
    return a / b if b > 0 else "n/a"


def table(headers: list[str], rows: list[list]) -> str:
    cells = [[str(h) for h in headers]] + [[f"{c:.3f}" if isinstance(c, float) else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def command_line() -> str:
    return " ".join(["python", os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]])
