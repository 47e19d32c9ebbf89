"""Lightning callbacks of codecplatform (pass them in a config's trainer.callbacks list)."""

from callbacks.reconstruction_writer import ReconstructionWriter

__all__ = ["ReconstructionWriter"]
