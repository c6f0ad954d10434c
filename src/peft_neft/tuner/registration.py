"""The one place that touches ``peft`` internals: adding NeFT as a peft method.

``peft.utils.register_peft_method`` only accepts names that already exist in the
``PeftType`` enum, and a plugin cannot add members to an ``Enum`` through its public
API. :func:`register` therefore extends ``PeftType`` in place (the same three tables
``enum`` itself fills when a class is created) and then calls peft's own
registration function. Registering twice is harmless.

If a peft release changes what this relies on, :func:`check_peft_compatibility`
raises ``PeftCompatibilityError`` naming the missing piece; the test-suite runs it.
"""

from __future__ import annotations

import peft.mapping as mapping
import peft.utils as utils
from peft.utils import PeftType

from .config import PEFT_TYPE_NAME, NeFTConfig
from .model import NeFTModel

METHOD_NAME = "neft"
PREFIX = "neft_"


class PeftCompatibilityError(RuntimeError):
    """The installed peft no longer offers what the NeFT registration needs."""


def check_peft_compatibility() -> None:
    """Fail loudly if the installed ``peft`` changed the internals :func:`register` uses."""
    needed = {
        "peft.utils.register_peft_method": getattr(utils, "register_peft_method", None),
        "peft.mapping.PEFT_TYPE_TO_CONFIG_MAPPING": getattr(mapping, "PEFT_TYPE_TO_CONFIG_MAPPING", None),
        "peft.mapping.PEFT_TYPE_TO_TUNER_MAPPING": getattr(mapping, "PEFT_TYPE_TO_TUNER_MAPPING", None),
        "peft.mapping.PEFT_TYPE_TO_PREFIX_MAPPING": getattr(mapping, "PEFT_TYPE_TO_PREFIX_MAPPING", None),
    }
    missing = [name for name, value in needed.items() if value is None]
    for attr in ("_member_map_", "_value2member_map_", "_member_names_"):
        if not hasattr(PeftType, attr):
            missing.append(f"PeftType.{attr} (enum internals used to add the NEFT member)")
    if missing:
        raise PeftCompatibilityError(
            "peft-neft cannot register NeFT with this peft release; missing: "
            + ", ".join(missing)
            + ". Install a peft version listed in peft-neft's pyproject.toml."
        )


def _add_peft_type_member(name: str) -> PeftType:
    """Add ``name`` to the ``PeftType`` str-enum, or return the existing member."""
    if name in PeftType.__members__:
        return PeftType[name]
    member = str.__new__(PeftType, name)
    member._name_ = name
    member._value_ = name
    member.__objclass__ = PeftType
    type.__setattr__(PeftType, name, member)
    PeftType._member_map_[name] = member
    PeftType._value2member_map_[name] = member
    PeftType._member_names_.append(name)
    return member


def register() -> PeftType:
    """Register NeFT with peft (idempotent) and return ``PeftType.NEFT``."""
    check_peft_compatibility()
    peft_type = _add_peft_type_member(PEFT_TYPE_NAME)
    registered_config = mapping.PEFT_TYPE_TO_CONFIG_MAPPING.get(peft_type)
    if registered_config is None:
        utils.register_peft_method(name=METHOD_NAME, config_cls=NeFTConfig, model_cls=NeFTModel, prefix=PREFIX)
    elif registered_config is not NeFTConfig:
        raise PeftCompatibilityError(
            f"peft already has a method registered as {PEFT_TYPE_NAME!r} ({registered_config.__name__}); "
            "peft-neft cannot register its NeFTConfig under the same name."
        )
    return peft_type
