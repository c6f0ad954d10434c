"""``peft-neft env``: the versions and hardware facts a bug report needs (as ``transformers env``, ``trl env``)."""

from __future__ import annotations

import argparse

NAME = "env"
HELP = "Print the versions of peft-neft and its libraries, the platform, CPU bf16 support and CUDA, for a bug report."
PACKAGES = ("peft-neft", "torch", "transformers", "peft", "accelerate", "trl", "datasets", "torchao")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """No options besides the common ones."""


def _version(package: str) -> str:
    from importlib import metadata  # here, not at the top: building the parser for --help stays cheap

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def run(args: argparse.Namespace) -> int:
    import platform

    import torch

    from ..training.precision import cpu_has_native_bf16

    facts = {"Platform": platform.platform(), "Python": platform.python_version(),
             **{package: _version(package) for package in PACKAGES},
             "CPU bf16 matrix math": "native (AVX512-BF16 or AMX)" if cpu_has_native_bf16()
             else "emulated (no AVX512-BF16 or AMX): bfloat16 runs, slowly",
             "torch CPU capability": torch.backends.cpu.get_cpu_capability()}
    if torch.cuda.is_available():
        names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        facts["CUDA"] = f"{torch.version.cuda}, {torch.cuda.device_count()} device(s): {names}"
        facts["CUDA bf16"] = "native" if torch.cuda.is_bf16_supported(including_emulation=False) else "no"
    else:
        facts["CUDA"] = f"not available (torch built with CUDA {torch.version.cuda})" if torch.version.cuda \
            else "not available (CPU-only torch build)"
    print("Copy-and-paste the text below in your GitHub issue.\n")
    print("\n".join(f"- {key}: {value}" for key, value in facts.items()))
    return 0
