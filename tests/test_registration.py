"""NeFT is a registered peft method, and the registration fails loudly if peft changes under it."""

import peft
import pytest
from peft import PeftConfig, PeftType
from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_PREFIX_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING

import peft_neft
from peft_neft import registration
from peft_neft.registration import PeftCompatibilityError, check_peft_compatibility


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
