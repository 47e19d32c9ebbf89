"""Lightning callbacks of codecplatform (pass them in a config's trainer.callbacks list).

The list every experiment uses lives in ``experiments/_base/trainer.yaml``. Callbacks that write
files send them to the MLflow run, or to ``<trainer.log_dir>/artifacts/`` without an MLflow
logger (see ``callbacks.artifacts``).
"""

from callbacks.audio_logger import AudioReconstructionLogger
from callbacks.codebook_logger import CodebookUsageLogger
from callbacks.health import TrainingHealthMonitor
from callbacks.progress import LossProgressBar
from callbacks.reconstruction_writer import ReconstructionWriter
from callbacks.summary import RunSummary
from callbacks.throughput import AudioThroughputMonitor

__all__ = [
    "AudioReconstructionLogger",
    "AudioThroughputMonitor",
    "CodebookUsageLogger",
    "LossProgressBar",
    "ReconstructionWriter",
    "RunSummary",
    "TrainingHealthMonitor",
]
