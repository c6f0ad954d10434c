"""What leaves the process as files: adapter folders and their hand-over to whoever receives them.

``saving`` (atomic saves, the card on every save), ``model_card`` (the one card writer, for NeFT and LoRA
adapters) and ``export`` (NeFT <-> LoRA conversion of saved adapters, with their cards).
"""
