"""``peft-neft analyze``: neuron-utilization report of model B against model A (paper section 6)."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from ._options import (UsageError, add_config_argument, add_device_arguments, add_overwrite_argument, check_device,
                       number)

NAME = "analyze"
HELP = "Compare neuron utilization of two models (Rank, ΔRank, neuron categories) and write a report."


def _threshold(text: str) -> int | float:
    try:
        return int(text)
    except ValueError:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an int count or a float fraction, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_argument(parser)
    parser.add_argument("--model-a", required=True, help="reference model: transformers folder, adapter folder or 'default'")
    parser.add_argument("--model-b", required=True, help="compared model: transformers folder, adapter folder or 'default'")
    parser.add_argument("--data", required=True, help="inputs: .jsonl[.gz] (see --text-field) or text lines (.txt, .gz)")
    parser.add_argument("--out", "--output-dir", required=True, help="report folder (replaced atomically)")
    add_overwrite_argument(parser, "the report")
    parser.add_argument("--selection", help="saved NeuronSelection that was trained (enables 'indirectly affected')")
    parser.add_argument("--text-field", default="text", help="JSON field holding the input text")
    parser.add_argument("--max-examples", type=number(int, at_least=1), default=256, help="use the first N inputs")
    parser.add_argument("--batch-size", "--per-device-eval-batch-size", type=number(int, at_least=1), default=8,
                        help="inputs per forward pass")
    parser.add_argument("--max-length", type=number(int, at_least=1), default=128,
                        help="truncate inputs to this many tokens")
    parser.add_argument("--target-modules", nargs="+", default=["up_proj", "down_proj"],
                        help="Linear layers whose rows are analysed (the paper's: up_proj down_proj)")
    parser.add_argument("--correlate-with", choices=["layer_output", "other_model"], default="layer_output",
                        help="what each neuron's activation is correlated with (see docs/analysis.md)")
    parser.add_argument("--strong-threshold", type=_threshold, default=0.2,
                        help="|ΔRank| above which a neuron is strongly affected: an int count or a fraction "
                             "of the neuron count (0.2 is the paper's 100,000 of 483,328)")
    add_device_arguments(parser)


def _own_report(folder: Path) -> bool:
    """Whether ``folder`` is a report this command wrote (so a rerun may replace it)."""
    return (folder / "report.json").is_file() and (folder / "neurons.safetensors").is_file()


def run(args: argparse.Namespace) -> int:
    from ..outputs import check_output

    inputs = {args.data: "data file (--data)"}
    if args.selection:
        inputs[args.selection] = "selection (--selection)"
    inputs.update({m: f"model ({flag})" for m, flag in ((args.model_a, "--model-a"), (args.model_b, "--model-b"))
                   if m != "default"})
    check_output(args.out, inputs, folder=True, overwrite=args.overwrite, ours=_own_report, replaced=True)
    if not Path(args.data).is_file():  # before torch is imported (check_device imports it)
        raise UsageError(f"--data: Data file {args.data!r} does not exist; check the path.")
    precision = check_device(args.device, args.dtype)
    from ..analysis import analyze_models, load_analysis_model, load_texts, write_report
    from ..selection import NeuronSelection

    texts = load_texts(args.data, args.text_field, args.max_examples)
    selection = NeuronSelection.load(args.selection) if args.selection else None
    model_a, tokenizer = load_analysis_model(args.model_a)
    model_b, _ = load_analysis_model(args.model_b)
    model_a, model_b = precision.apply(model_a.requires_grad_(False)), precision.apply(model_b.requires_grad_(False))
    with precision.autocast():
        report = analyze_models(
            model_a, model_b, texts, tokenizer,
            selection=selection, target_modules=args.target_modules, correlate_with=args.correlate_with,
            strong_threshold=args.strong_threshold, batch_size=args.batch_size, max_length=args.max_length,
            progress=args.progress,
        )
    out = write_report(report, args.out, label_a=str(args.model_a), label_b=str(args.model_b),
                       extra={"data": str(args.data), "selection": args.selection})
    counts = report.category_counts()
    print(f"Avg(|ΔRank|) = {report.avg_abs_delta_rank:.1f} over {report.num_neurons} neurons; " +
          ", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in counts.items()))
    print(f"report written to {out}/report.md")
    return 0
