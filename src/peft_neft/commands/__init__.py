"""One module per ``peft-neft`` subcommand (discovered by :mod:`peft_neft.cli`)."""
