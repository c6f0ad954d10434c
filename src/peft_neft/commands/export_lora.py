"""``peft-neft export-lora``: write a NeFT adapter as an exact, standard peft LoRA adapter."""

from __future__ import annotations

import argparse

from ._options import number

NAME = "export-lora"
HELP = "Write a NeFT adapter as a standard peft LoRA adapter (exact: lora_A = row deltas, lora_B one-hot)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("adapter_dir", help="the NeFT adapter folder (save_pretrained output)")
    parser.add_argument("out_dir", help="the LoRA adapter folder to write")
    parser.add_argument("--base", help="the base model (folder or hub id) for the output sizes and layer types; "
                        "default: the adapter's base_model_name_or_path")
    parser.add_argument("--adapter", dest="adapter_name", metavar="NAME",
                        help="which adapter of a multi-adapter folder ('all' for every one, in peft's layout)")
    parser.add_argument("--max-rank", type=number(int, at_least=1), metavar="R",
                        help="the largest LoRA rank to write (e.g. a server's max LoRA rank): a module with more rows "
                        "gets its best rank-R approximation (truncated SVD) and its relative error is reported; "
                        "default: exact, rank = rows per module")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")


def run(args: argparse.Namespace) -> int:
    from ..adapters.export import export_lora

    out = export_lora(args.adapter_dir, args.out_dir, base=args.base, adapter_name=args.adapter_name,
                      max_rank=args.max_rank, overwrite=args.overwrite)
    print(f"Wrote LoRA adapter to {out} (details in {out}/README.md)")
    return 0
