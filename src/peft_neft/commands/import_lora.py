"""``peft-neft import-lora``: write a row-sparse LoRA adapter (one-hot B columns) as a NeFT adapter."""

from __future__ import annotations

import argparse

NAME = "import-lora"
HELP = "Write a row-sparse LoRA adapter (each lora_B column has at most one non-zero) as an exact NeFT adapter."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("lora_dir", help="the LoRA adapter folder, e.g. one written by export-lora")
    parser.add_argument("out_dir", help="the NeFT adapter folder to write")
    parser.add_argument("--adapter", dest="adapter_name", metavar="NAME",
                        help="which adapter of a multi-adapter folder ('all' for every one, in peft's layout)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")


def run(args: argparse.Namespace) -> int:
    from ..adapters.export import import_lora

    out = import_lora(args.lora_dir, args.out_dir, adapter_name=args.adapter_name, overwrite=args.overwrite)
    print(f"Wrote NeFT adapter to {out}")
    return 0
