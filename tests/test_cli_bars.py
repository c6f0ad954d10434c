"""The command line's progress bars: a Ctrl-C's "interrupted" line starts a line of its own, and transformers'
"Loading weights" bars clear themselves once the weights are in."""

from __future__ import annotations

import sys

from tqdm import tqdm
from transformers.utils import logging as hf_logging

from peft_neft import cli


def test_the_bars_a_ctrl_c_leaves_open_are_ended_before_the_interrupted_line(capsys):
    bar = tqdm(total=10, desc="training", file=sys.stderr)
    bar.update(3)  # Trainer's bar, left open by the KeyboardInterrupt that unwound through it
    cli._close_progress_bars()
    print("peft-neft compare: interrupted; ...", file=sys.stderr)
    err = capsys.readouterr().err
    assert "training" in err and err.endswith("\npeft-neft compare: interrupted; ...\n")
    assert bar not in tqdm._instances


def test_loading_weights_bars_clear_themselves_and_others_stay(capsys):
    with cli._transformers_bars(True):
        loading = hf_logging.tqdm(range(2), desc="Loading weights", file=sys.stderr)
        other = hf_logging.tqdm(range(2), desc="Writing", file=sys.stderr)
        assert loading.leave is False and other.leave is True
        loading.close(), other.close()
    assert hf_logging.tqdm(range(2), desc="Loading weights", disable=True).leave is True  # the hook is gone again
