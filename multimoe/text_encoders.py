"""Text encoders: hashed n-gram ids -> P tokens of width D; an optional local Hugging Face model.

Input (``multimoe.data.kinds.text``): ids ``x_BW`` (int64 in [0, vocab), 0 = padding) and ``missing_BW`` (True at
padding). Shape letters: the legend in ``multimoe/__init__.py`` (W token ids of a text).
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor, nn

from multimoe.config import ConfigError, EncoderConfig
from multimoe.data.kinds.base import KindShape
from multimoe.errors import optional_import


class HashedBag(nn.Module):
    """A bag of hashed n-grams (fastText, Joulin et al. 2017, with the hashing trick): the mean of the ids'
    embeddings (padding excluded; an empty text gives zeros), then a two-layer MLP to P tokens, as the table MLP
    encoder. Needs no download and no vocabulary."""

    def __init__(self, shape: KindShape, tokens: int, dim: int, cfg: EncoderConfig, width: int = 64) -> None:
        super().__init__()
        if shape.vocab < 2:
            raise ConfigError(f"the hashed-bag text encoder needs the id count of its input, got vocab={shape.vocab}")
        self.tokens, self.dim = tokens, dim
        self.bag = nn.EmbeddingBag(shape.vocab, width, mode="mean", padding_idx=0)
        self.net = nn.Sequential(nn.Linear(width, cfg.hidden), nn.GELU(), nn.Linear(cfg.hidden, tokens * dim))
        self.norm = nn.LayerNorm(dim)

    def forward(self, ids_BW: Tensor, missing_BW: Tensor) -> Tensor:
        bag_BI = self.bag(ids_BW.masked_fill(missing_BW, 0))
        return self.norm(self.net(bag_BI).view(ids_BW.shape[0], self.tokens, self.dim))


class HFText(nn.Module):
    """A Hugging Face model from a local folder (``pip install 'multimoe[text]'``). Not available in this build:
    it needs the text source to tokenise with the model's own tokenizer; the constructor says what is missing."""

    def __init__(self, shape: KindShape, tokens: int, dim: int, cfg: EncoderConfig, path: str = "") -> None:
        super().__init__()
        optional_import("transformers", "text", "a Hugging Face text encoder")
        if not path or not Path(path).is_dir():
            raise ConfigError(
                f"a Hugging Face text encoder needs a local model folder (got {path!r}); multimoe never downloads "
                "weights"
            )
        raise ConfigError(
            "Hugging Face text encoders need text tokenised by the model's own tokenizer, which the text source does "
            "not do yet; use the hashed-bag encoder"
        )
