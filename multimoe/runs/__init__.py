"""Run folders: what ``train`` writes and everything that reads it back.

- ``folder``: ``RunFolder``, the one owner of every file name in a run folder (make, open, check), and the one list
  of result-neutral config keys;
- ``checkpoint``: weights and training state in safetensors files that load without executing code;
- ``resume``: continuing a killed run from its last completed epoch;
- ``reopen``: a run's best model with its data rebuilt, evaluated under another protocol.
"""

from multimoe.runs.folder import RESULT_NEUTRAL, RunFolder

__all__ = ["RESULT_NEUTRAL", "RunFolder"]
