"""The version of peft-neft (one place; the package face and the CLI read it)."""

__version__ = "0.1.0"
REPOSITORY = "https://github.com/peft-neft/peft-neft"
"""The source repository (also ``[project.urls]`` in pyproject.toml); model cards name it."""
