"""Greedy decoding as compare does it, in float32 and in bf16, with and without the contiguous LM-head input.

SmolLM2-135M with an untrained LoRA r=8 on every Linear (the demo's LoRA), 32 Django test messages in the
chat template, 24 new tokens, one batch. Settings, interleaved in one run:

- fp32: float32 weights, no autocast;
- bf16: frozen weights in bf16, LoRA in float32, under bf16 autocast (``Precision.apply``), as compare runs;
- bf16, strided head input: the same without ``contiguous_head_input``, as transformers hands it over.

    python benchmarks/decode_precision.py [--out docs/performance/decode_cpu.json]
"""

from __future__ import annotations

import argparse
import sys
from contextlib import nullcontext
from pathlib import Path
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_common as bc  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402

from peft_neft.compare import evaluate  # noqa: E402
from peft_neft.embedded_model import load_model_and_tokenizer  # noqa: E402
from peft_neft.tasks import django_translation_pairs  # noqa: E402
from peft_neft.training.precision import Precision  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sentences", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=24)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=bc.RESULTS_DIR / "decode_cpu.json")
    args = parser.parse_args(argv)
    fp32, bf16 = Precision.resolve("cpu", "float32"), Precision.resolve("cpu", "bfloat16")
    models = {}
    for precision in (fp32, bf16):
        model, tokenizer = load_model_and_tokenizer(None)
        models[precision.name] = precision.apply(get_peft_model(model, LoraConfig(r=8, target_modules="all-linear")))
    sources = django_translation_pairs("fr")["test"]["source"][:args.sentences]
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": f"Translate into French: {s}"}],
                                             add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
               for s in sources]

    def decode(precision: Precision, strided: bool) -> list[str]:
        unhooked = mock.patch.object(evaluate, "contiguous_head_input", lambda _model: nullcontext())
        with unhooked if strided else nullcontext():
            return evaluate.generate(models[precision.name], tokenizer, prompts, max_new_tokens=args.new_tokens,
                                     batch_size=len(prompts), precision=precision, progress=False)

    fns = {"fp32": lambda: decode(fp32, False), "bf16": lambda: decode(bf16, False),
           "bf16, strided head input": lambda: decode(bf16, True)}
    results = bc.interleaved_medians(fns, "cpu", args.warmup, args.repeats)
    med = {n: r["median_s"] for n, r in results.items()}
    ratios = {"bf16 / fp32": med["bf16"] / med["fp32"],
              "bf16 strided / bf16": med["bf16, strided head input"] / med["bf16"]}
    print(f"\nSmolLM2-135M + LoRA r8 (all Linear), {len(prompts)} prompts, {args.new_tokens} new tokens, one batch, "
          f"bf16 {'native' if bf16.native else 'emulated'}, {args.repeats} repeats after {args.warmup} warm-up, medians")
    print(bc.table(["setting", "decode s"], [[n, v] for n, v in med.items()]))
    print("\n" + bc.table(["ratio", "value"], [[k, v] for k, v in ratios.items()]))
    bc.write_json(args.out, {"command": bc.command_line(), "machine": bc.machine(), "sentences": len(prompts),
                             "new_tokens": args.new_tokens, "bf16": "native" if bf16.native else "emulated",
                             "results": results, "ratios": ratios})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
