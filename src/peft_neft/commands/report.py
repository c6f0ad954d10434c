"""``peft-neft report``: re-render the table and plot of results folders, and merge several into one report."""

from __future__ import annotations

import argparse
import json
import logging
import shutil
from pathlib import Path

from ._options import UsageError, add_overwrite_argument, holds_only_results

logger = logging.getLogger(__name__)

NAME = "report"
HELP = ("Re-render results.md and results.png of a comparison folder; with --out, merge several (same task and "
        "test data) into a new folder, one table with paired tests across them (the merged folders are only read).")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folders", nargs="+", metavar="OUT", help="folders peft-neft compare wrote")
    parser.add_argument("--out", help="merge the folders' runs into this new folder (needed for several folders)")
    add_overwrite_argument(parser, "the merged report")


def _merged_before(folder: Path) -> bool:
    """Whether ``folder`` holds a merge this command wrote, whole or cut short (so merging again may replace it)."""
    if not (folder / "results.json").exists():
        return holds_only_results(folder)
    try:
        return "merged_from" in json.loads((folder / "results.json").read_text(encoding="utf-8"))["identity"]
    except (OSError, ValueError, KeyError, TypeError):
        return False


def run(args: argparse.Namespace) -> int:
    from ..compare.report import write_report
    from ..compare.results import (check_scored, diverged, outputs_path, read_results, save_results,
                                   stored_outputs)
    from ..compare.significance import store_figures
    from ..outputs import check_output

    folders = [Path(f) for f in args.folders]
    if len(folders) > 1 and not args.out:
        raise UsageError("Several folders are merged into a new one: give --out FOLDER.")
    if args.out:
        check_output(args.out, {f: "results folder" for f in args.folders}, folder=True, overwrite=args.overwrite,
                     ours=_merged_before)
    loaded = [(folder, read_results(folder / "results.json")) for folder in folders]
    for folder, results in loaded:
        check_scored(results, folder / "results.json")
    if not args.out:  # the folder re-rendered, with the figures it does not store yet (older folders)
        folder, results = loaded[0]
        if store_figures(results, folder):
            save_results(folder / "results.json", results)
        print(write_report(results, folder), end="")
        return 0
    out = Path(args.out)
    merged = _merge(loaded)
    copies = []  # every run's outputs, checked before anything is written
    for folder, results in loaded:
        for key in results["runs"]:
            if merged["runs"][key] is results["runs"][key] and not diverged(results["runs"][key]):  # diverged: none
                source = stored_outputs(outputs_path(folder, key))  # older folders: a plain .jsonl
                if not source.is_file():
                    raise UsageError(f"{source} is missing, so {folder} cannot be merged (nothing was written): "
                                     "restore the folder's outputs/ from a copy, or rerun that run (remove its "
                                     "entry from results.json).")
                copies.append((source, outputs_path(out, key).with_name(source.name)))
    for source, target in copies:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    merged["paired"] = {}  # pairs across folders too
    store_figures(merged, out)
    save_results(out / "results.json", merged)
    print(write_report(merged, out), end="")
    print(f"merged report written to {out}/")
    return 0


def _merge(loaded: list[tuple[Path, dict]]) -> dict:
    """One results record with every folder's runs; the folders must share the task and the test data."""
    first_folder, first = loaded[0]
    identity = {**first["identity"], "merged_from": [str(f) for f, _ in loaded]}
    runs: dict = {}
    for folder, results in loaded:
        for field, value in (("task", results["identity"]["config"]["task"]),
                             ("test data", results["identity"]["data"].get("test"))):
            expected = first["identity"]["config"]["task"] if field == "task" else first["identity"]["data"].get("test")
            if value != expected:
                raise ValueError(f"{folder} has other {field} than {first_folder} ({value} vs {expected}); "
                                 "merge only folders scored on the same test set.")
        for key, run in results["runs"].items():
            if key in runs:  # the first folder that has a run keeps it
                logger.warning("%s: %s is also in an earlier folder; that one is kept", folder, key)
            runs.setdefault(key, run)
    return {**first, "identity": identity, "runs": runs, "trainings": {}}
