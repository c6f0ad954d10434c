"""NeFT is a registered peft method, whatever is imported first, and the registration fails loudly if
peft changes under it."""

import subprocess
import sys

import peft
import pytest
from peft import PeftConfig, PeftType
from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_PREFIX_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING

import peft_neft
from peft_neft.tuner import registration
from peft_neft.tuner.registration import PeftCompatibilityError, check_peft_compatibility

_REGISTERED = "from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING as M; from peft_neft import NeFTConfig; " \
              "print(M['NEFT'] is NeFTConfig)"


def _fresh_python(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip()


def test_import_peft_neft_loads_neither_torch_nor_peft():
    code = "import sys, peft_neft; print(sorted(m for m in ('torch', 'peft', 'transformers') if m in sys.modules))"
    assert _fresh_python(code) == "[]"


@pytest.mark.parametrize("first", [
    "import peft_neft; import peft",                              # the README's order
    "import peft; import peft_neft",                              # peft already loaded
    "import peft_neft, importlib.util; importlib.util.find_spec('peft'); from peft import PeftModel",  # a probe
    "import peft_neft._targets; import peft",                     # a module below the tuner
    "import peft_neft.selection.neuron_selection",                # a selection module that imports the tuner
    "from peft_neft.tuner.fingerprint import model_fingerprint",  # a tuner module with no peft import of its own
    "from peft_neft.tuner.model import NeFTModel",                # the tuner's own first import of peft
    "import peft_neft.selection",                                 # peft first imported deep inside the package
    "import peft_neft.compare",
])
def test_neft_is_registered_whatever_is_imported_first(first):
    assert _fresh_python(f"{first}\n{_REGISTERED}") == "True"


def test_peft_still_offers_what_registration_relies_on():
    # If this fails after a peft upgrade, the message names the missing internal.
    check_peft_compatibility()


def test_neft_is_a_peft_type_and_maps_to_its_classes():
    assert PeftType("NEFT") is PeftType.NEFT
    assert PeftType["NEFT"] is PeftType.NEFT
    assert "NEFT" in list(PeftType)
    assert PEFT_TYPE_TO_CONFIG_MAPPING[PeftType.NEFT] is peft_neft.NeFTConfig
    assert PEFT_TYPE_TO_TUNER_MAPPING[PeftType.NEFT] is peft_neft.NeFTModel
    assert PEFT_TYPE_TO_PREFIX_MAPPING[PeftType.NEFT] == "neft_"


def test_registering_twice_is_harmless():
    members_before = list(PeftType)
    assert registration.register() is PeftType.NEFT
    assert registration.register() is PeftType.NEFT
    assert list(PeftType) == members_before


def test_a_foreign_method_under_the_same_name_is_refused(monkeypatch):
    class OtherConfig(PeftConfig):
        pass

    monkeypatch.setitem(PEFT_TYPE_TO_CONFIG_MAPPING, PeftType.NEFT, OtherConfig)
    with pytest.raises(PeftCompatibilityError, match="already has a method registered"):
        registration.register()


def test_missing_peft_internal_is_named(monkeypatch):
    monkeypatch.delattr(peft.utils, "register_peft_method")
    with pytest.raises(PeftCompatibilityError, match="register_peft_method"):
        check_peft_compatibility()


def test_config_round_trips_through_peft_config_loader(tmp_path):
    config = peft_neft.NeFTConfig(neurons={"model.layers.0.mlp.up_proj": [4, 1]})
    config.save_pretrained(tmp_path)
    loaded = PeftConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, peft_neft.NeFTConfig)
    assert loaded.neuron_counts == {"model.layers.0.mlp.up_proj": 2}
    assert loaded.neurons is None
