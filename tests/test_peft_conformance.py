"""peft's own generic tuner tests, run on NeFT.

peft's ``tests/test_custom_models.py`` (with ``testing_common.py``'s ``PeftCommonTester``) and
``tests/test_decoder_models.py`` are every in-tree tuner's contract. They come unchanged from the source
distribution of the installed peft (``tests/peft_sdist.py``); here only their parametrization changes: peft's
rows (``TEST_CASES``, ``MULTIPLE_ACTIVE_ADAPTERS_TEST_CASES``, ``ALL_CONFIGS`` x ``PEFT_DECODER_MODELS_TO_TEST``)
are replaced by NeFT rows. Tests parametrized over anything else test other tuners' features (LoRA's weighted
adapters, trainable tokens, prompt learning, ...) and are not collected. A test that cannot apply to NeFT is
skipped by ``SKIPS`` below, each with its reason; peft's assertions are never changed.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import pytest
import torch
from peft_sdist import fetch_tests, import_upstream
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from peft_neft import NeFTConfig

TESTS_DIR, WHY_NOT = fetch_tests()
if TESTS_DIR is None:
    pytest.skip(f"peft's test-suite is not available: {WHY_NOT}", allow_module_level=True)

custom = import_upstream("test_custom_models", TESTS_DIR)
decoder = import_upstream("test_decoder_models", TESTS_DIR)

LIN0, LIN1 = [0, 3, 7, 19], [1]  # lin0 is 10 -> 20 (MLP2: 10 -> 32), lin1 20 -> 2
# (test_name, model_id, config_cls, config_kwargs), as peft's TEST_CASES: zero and random init, both layers,
# modules_to_save, bf16 deltas, transformers' Conv1D, and the Linear heads of the conv and attention models.
CUSTOM_ROWS = [
    ("NeFT MLP lin0", "MLP", NeFTConfig, {"neurons": {"lin0": LIN0}}),
    ("NeFT MLP lin1", "MLP", NeFTConfig, {"neurons": {"lin1": LIN1}}),
    ("NeFT MLP both", "MLP", NeFTConfig, {"neurons": {"lin0": LIN0, "lin1": [0, 1]}}),
    ("NeFT MLP random init", "MLP", NeFTConfig, {"neurons": {"lin0": LIN0, "lin1": LIN1}, "init_weights": False}),
    ("NeFT MLP seeded random init", "MLP", NeFTConfig,
     {"neurons": {"lin0": LIN0, "lin1": LIN1}, "init_weights": False, "init_seed": 3}),
    ("NeFT MLP modules_to_save", "MLP", NeFTConfig, {"neurons": {"lin0": LIN0}, "modules_to_save": ["lin1"]}),
    ("NeFT MLP bf16 deltas", "MLP", NeFTConfig,
     {"neurons": {"lin0": LIN0, "lin1": LIN1}, "delta_dtype": "bfloat16"}),
    ("NeFT MLP2", "MLP2", NeFTConfig, {"neurons": {"lin0": [0, 31], "lin1": [0]}}),
    ("NeFT MLP LayerNorm", "MLP_LayerNorm", NeFTConfig, {"neurons": {"lin0": LIN0, "lin1": LIN1}}),
    ("NeFT EmbConv1D", "EmbConv1D", NeFTConfig, {"neurons": {"conv1d": [0], "lin0": [1]}}),
    ("NeFT Conv2d head", "Conv2d", NeFTConfig, {"neurons": {"lin0": [0]}}),
    ("NeFT MHA head", "MHA", NeFTConfig, {"neurons": {"lin0": [1]}}),
]
# (test_name, tuner_method, config_cls, config_kwargs_1, config_kwargs_2), as MULTIPLE_ACTIVE_ADAPTERS_TEST_CASES.
MULTI_ROWS = [
    ("NeFT Same", "neft", NeFTConfig, {"neurons": {"lin0": LIN0}, "init_weights": False},
     {"neurons": {"lin0": [1, 2, 3, 5, 8, 11, 13]}, "init_weights": False}),
    ("NeFT Different", "neft", NeFTConfig, {"neurons": {"lin0": LIN0}, "init_weights": False},
     {"neurons": {"lin1": LIN1}, "init_weights": False}),
]
# (model_id, config_cls, config_kwargs), as PEFT_DECODER_MODELS_TO_TEST x ALL_CONFIGS.
DECODER_ROWS = [
    ("tiny-llama", NeFTConfig, {"task_type": "CAUSAL_LM", "neurons": {
        "model.layers.0.self_attn.q_proj": [0, 5, 31], "model.layers.1.mlp.down_proj": [2, 3]}}),
    ("tiny-gpt2", NeFTConfig, {"task_type": "CAUSAL_LM", "neurons": {
        "transformer.h.0.attn.c_attn": [0, 40, 95], "transformer.h.1.mlp.c_proj": [7]}}),
]

# Tests of peft's matrix that cannot apply to NeFT: (test, row name or None for every row, reason).
SKIPS: list[tuple[str, str | None, str]] = [
    # The row's explicit delta_dtype="bfloat16" is the override of autocast_adapter_dtype the config offers (it
    # wins on every path, tested in test_tuner.py); peft's expectation is for adapters without one.
    ("test_adapter_dtype_autocast", "NeFT MLP bf16 deltas", "an explicit delta_dtype overrides autocast_adapter_dtype"),
    # FSDP flattens a unit's parameters into one tensor of one dtype; bf16 deltas in a float32 model are two
    # dtypes by the user's explicit choice (as LoRA's float32 adapters on a bf16 base are); delta_dtype=None is
    # one dtype. The bf16 row's merge and forward tests do run.
    ("test_save_load_roundtrip_fsdp_wrapped", "NeFT MLP bf16 deltas",
     "FSDP needs one dtype per unit; an explicit bf16 delta_dtype on a float32 model is two"),
    ("test_save_load_roundtrip_fsdp_wrapped_learnable_bias", "NeFT MLP bf16 deltas",
     "FSDP needs one dtype per unit; an explicit bf16 delta_dtype on a float32 model is two"),
    # peft checks that a freshly built adapter leaves the output unchanged; random deltas change it by design.
    ("test_disable_adapters", "NeFT MLP random init", "non-zero init: the adapter is not an identity at start"),
    ("test_disable_adapters", "NeFT MLP seeded random init", "non-zero init: the adapter is not an identity at start"),
    ("test_disable_adapters_with_merging", "NeFT MLP random init",
     "non-zero init: the adapter is not an identity at start"),
    ("test_disable_adapters_with_merging", "NeFT MLP seeded random init",
     "non-zero init: the adapter is not an identity at start"),
]


class TinyDecoders:
    """Stands in for ``AutoModelForCausalLM``: the decoder rows' models, built from configs (no Hub here)."""

    @classmethod
    def from_pretrained(cls, model_id: str, dtype: torch.dtype | None = None, **kwargs) -> torch.nn.Module:
        torch.manual_seed(0)
        dtype = dtype or kwargs.get("torch_dtype") or torch.float32
        if model_id == "tiny-llama":
            model = LlamaForCausalLM(LlamaConfig(
                vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False))
        elif model_id == "tiny-gpt2":
            model = GPT2LMHeadModel(GPT2Config(vocab_size=128, n_embd=32, n_layer=2, n_head=4, n_positions=64))
        else:
            raise ValueError(f"no tiny model {model_id!r}")
        # Recorded as from_pretrained records them (peft saves the name as base_model_name_or_path).
        model.name_or_path = model.config._name_or_path = model_id
        return model.to(dtype).eval()


def _argnames(mark: pytest.Mark) -> tuple[str, ...]:
    names = mark.args[0]
    return tuple(n.strip() for n in names.split(",")) if isinstance(names, str) else tuple(names)


def _reparametrized(test: Callable, argnames: tuple[str, ...], rows: list[tuple], ids: list[str]) -> Callable:
    """``test`` with its parametrization over ``argnames`` (possibly split over several marks) replaced by
    ``rows``, and the ``SKIPS`` that name it applied. The test body is peft's, unchanged."""

    @functools.wraps(test)
    def run(self, *args, **kwargs):
        return test(self, *args, **kwargs)

    marks = [m for m in getattr(test, "pytestmark", [])
             if not (m.name == "parametrize" and set(_argnames(m)) <= set(argnames))]
    params = []
    for row, row_id in zip(rows, ids):
        reasons = [why for name, row_name, why in SKIPS if name == test.__name__ and row_name in (None, row_id)]
        params.append(pytest.param(*row, id=row_id, marks=[pytest.mark.skip(reason=r) for r in reasons[:1]]))
    run.pytestmark = [*marks, pytest.mark.parametrize(",".join(argnames), params).mark]
    return run


def _neft_class(upstream: type, matrices: dict[tuple[str, ...], tuple[list[tuple], list[str]]], sources: tuple,
                **attrs) -> type:
    """A subclass of peft's test class whose tests parametrized over one of peft's tuner matrices (``sources``,
    the lists themselves) run on NeFT rows instead; its other tests (other tuners' features) are hidden."""
    namespace: dict = dict(attrs)
    for name in dir(upstream):
        if not name.startswith("test_"):
            continue
        test = getattr(upstream, name)
        marks = [m for m in getattr(test, "pytestmark", []) if m.name == "parametrize"]
        named = {a for m in marks if any(m.args[1] is source for source in sources) for a in _argnames(m)}
        matched = [key for key in matrices if set(key) <= named]
        if matched:
            namespace[name] = _reparametrized(test, matched[0], *matrices[matched[0]])
        else:
            namespace[name] = None  # pytest collects only functions
    return type(f"TestNeFT{upstream.__name__.removeprefix('Test')}", (upstream,), namespace)


_CUSTOM = {("test_name", "model_id", "config_cls", "config_kwargs"): (CUSTOM_ROWS, [r[0] for r in CUSTOM_ROWS])}
TestNeFTPeftCustomModel = _neft_class(custom.TestPeftCustomModel, _CUSTOM, (custom.TEST_CASES,))
TestNeFTPeftFsdpStateDict = _neft_class(custom.TestPeftFsdpStateDict, _CUSTOM, (custom.TEST_CASES,))
TestNeFTMultipleActiveAdapters = _neft_class(custom.TestMultipleActiveAdapters, {
    ("test_name", "tuner_method", "config_cls", "config_kwargs_1", "config_kwargs_2"):
        (MULTI_ROWS, [r[0] for r in MULTI_ROWS])}, (custom.MULTIPLE_ACTIVE_ADAPTERS_TEST_CASES,))
TestNeFTDecoderModels = _neft_class(decoder.TestDecoderModels, {
    ("model_id", "config_cls", "config_kwargs"): (DECODER_ROWS, [r[0] for r in DECODER_ROWS])},
    (decoder.PEFT_DECODER_MODELS_TO_TEST, decoder.ALL_CONFIGS), transformers_class=TinyDecoders)


def test_every_skip_names_a_test_and_a_row_of_the_matrix():
    """A stale entry (a renamed peft test or NeFT row) would skip nothing and hide nothing: refuse it."""
    classes = (TestNeFTPeftCustomModel, TestNeFTPeftFsdpStateDict, TestNeFTMultipleActiveAdapters,
               TestNeFTDecoderModels)
    rows = {row[0] for row in CUSTOM_ROWS + MULTI_ROWS} | {row[0] for row in DECODER_ROWS}
    for name, row, _ in SKIPS:
        assert any(callable(getattr(cls, name, None)) for cls in classes), name
        assert row is None or row in rows, row
