"""multimoe: multimodal Mixture-of-Experts under missing modalities.

Flex-MoE (NeurIPS 2024) implemented faithfully, its competitors and simple baselines on one honest harness.
"""

__version__ = "0.1.0"

from multimoe.checkpoint import CheckpointError  # noqa: E402
from multimoe.config import Config, ConfigError, load_config  # noqa: E402
from multimoe.data import DataError, Table, build_table, prepare  # noqa: E402
from multimoe.evaluate import evaluate  # noqa: E402
from multimoe.guard import NonFiniteError  # noqa: E402
from multimoe.model import build_model  # noqa: E402
from multimoe.train import RunResult, train  # noqa: E402

__all__ = [
    "CheckpointError",
    "Config",
    "ConfigError",
    "DataError",
    "NonFiniteError",
    "RunResult",
    "Table",
    "__version__",
    "build_model",
    "build_table",
    "evaluate",
    "load_config",
    "prepare",
    "train",
]
