"""``select``'s bar over the streamed weight matrices: shown on request, silent off a terminal, same scores."""

import torch

from peft_neft.selection import score_checkpoints

from conftest import make_tiny_llama


def _checkpoints(tmp_path):
    base = make_tiny_llama()
    base.save_pretrained(tmp_path / "base")
    with torch.no_grad():
        base.model.layers[0].mlp.up_proj.weight[3] += 1.0
    base.save_pretrained(tmp_path / "tuned")
    return tmp_path / "base", tmp_path / "tuned"


def test_streamed_scoring_shows_a_bar_only_when_asked(tmp_path, capfd):
    base, tuned = _checkpoints(tmp_path)
    capfd.readouterr()
    quiet = score_checkpoints(base, tuned)  # pytest's captured stderr is not a terminal
    assert "scoring" not in capfd.readouterr().err
    shown = score_checkpoints(base, tuned, progress=True)
    bar = capfd.readouterr().err
    assert "scoring: 100%" in bar and "4/4" in bar  # up_proj and down_proj of 2 layers
    hidden = score_checkpoints(base, tuned, progress=False)
    assert "scoring" not in capfd.readouterr().err
    for name in quiet.scores:
        assert torch.equal(quiet.scores[name], shown.scores[name]) and torch.equal(quiet.scores[name], hidden.scores[name])
    assert quiet.scores["model.layers.0.mlp.up_proj"].argmin().item() == 3
