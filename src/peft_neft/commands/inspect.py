"""``peft-neft inspect``: where one or more selections sit, as a markdown report and a picture.

For each selection: its rows per band of layers and module kind, and (given the base model) the norm
percentiles of its rows per module kind; for several, the overlap of each pair; ``--plot`` draws their
heatmaps (module kind x layer, % of rows selected) one above the other on one colour scale.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ._options import UsageError

NAME = "inspect"
HELP = "Show where selections sit: rows per layer and module, norm percentiles of their rows, overlaps."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("selections", nargs="+", metavar="[LABEL=]SELECTION",
                        help="selection files (.safetensors); LABEL= names one in the report (default: its file name)")
    parser.add_argument("--model", help="the base model they were made on, a transformers folder or 'default' "
                                        "(embedded SmolLM2-135M): adds the norm percentiles of the selected rows")
    parser.add_argument("--out", required=True, help="the report to write (.md)")
    parser.add_argument("--plot", help="also write the heatmaps of the selections here (.png)")


def _labelled(specs: list[str]) -> dict[str, str]:
    labelled = {}
    for spec in specs:
        label, _, path = spec.rpartition("=") if "=" in spec and not os.path.exists(spec) else ("", "", spec)
        label = label or Path(path).stem
        if label in labelled:
            raise UsageError(f"Two selections are labelled {label!r}; name them, e.g. paper={path}.")
        if not os.path.isfile(path):
            raise UsageError(f"No selection file at {path!r}; give files written by `peft-neft select` or `calibrate`.")
        labelled[label] = path
    return labelled


def run(args: argparse.Namespace) -> int:
    from ..outputs import check_output

    paths = _labelled(args.selections)
    inputs = {path: f"selection {label}" for label, path in paths.items()}
    if args.model and args.model != "default":
        inputs[args.model] = "model (--model)"
    for flag, path in (("--out", args.out), ("--plot", args.plot)):
        if path:
            check_output(path, inputs, folder=False, option=flag)
    from ..atomic import atomic_path
    from ..selection import NeuronSelection
    from ..selection.placement import placement_report, plot_selections

    selections = {label: NeuronSelection.load(path) for label, path in paths.items()}
    model = None
    if args.model:
        from transformers import AutoModelForCausalLM

        from ..embedded_model import resolve_model_path

        model = AutoModelForCausalLM.from_pretrained(resolve_model_path(None if args.model == "default"
                                                                        else args.model))
    text = placement_report(selections, model)
    with atomic_path(args.out) as tmp:
        Path(tmp).write_text(text)
    print(text)
    print(f"report written to {args.out}")
    if args.plot:
        plot_selections(selections, args.plot)
        print(f"plot written to {args.plot}")
    return 0
