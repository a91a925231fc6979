"""Affective image captioning (HP model): a show-attend-tell decoder on the last backbone stage (ArtEmis).

The decoder (Xu et al., 2015) attends over the positions of the last stage's feature map: embedding
128, ``LSTMCell`` hidden 512, attention 512, dropout 0.1 before the word classifier, a sigmoid gate on
the attended context; trained with teacher forcing, cross-entropy over the real tokens (padding
masked) plus the doubly stochastic attention regulariser ``alpha_c * mean((1 - sum_t alpha_t)^2)``
(alpha_c = 1). :meth:`Captioning.caption` decodes greedily to text.

The :class:`Vocabulary` is built from the training utterances: a simple deterministic tokenizer
(lower case, runs of letters and digits, inner apostrophes kept), words seen at least ``min_freq`` (5)
times ordered by frequency then alphabetically, ids pad 0, sos 1, eos 2, unk 3, at most
``max_length`` (30) words per caption. Its ``collate`` turns ``(image, utterance)`` samples into
``(images, tokens)`` batches for the task's ``DataLoader``.
"""
from __future__ import annotations

import re
from collections import Counter
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from sentizoo.stages import tap_channels

from .base import PretextTask, imagenet_normalize, images_of, pretext_indices, stage_maps

__all__ = ['Captioning', 'ShowAttendTellDecoder', 'SoftAttention', 'Vocabulary', 'tokenize',
           'PAD', 'SOS', 'EOS', 'UNK', 'SPECIAL_TOKENS']

PAD, SOS, EOS, UNK = 0, 1, 2, 3
SPECIAL_TOKENS = ('<pad>', '<sos>', '<eos>', '<unk>')
_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)*")  # letters/digits (any script), e.g. "don't", "1920s"


def tokenize(text: str) -> List[str]:
    """Lower-cased words of ``text``; punctuation and other separators dropped."""
    return _WORD.findall(text.lower())


class Vocabulary:
    """Word <-> id mapping with the special tokens ``<pad>`` 0, ``<sos>`` 1, ``<eos>`` 2, ``<unk>`` 3.

    Args:
        words: the vocabulary's words, in id order from 4.
        max_length: captions are cut to this many words (sos and eos come on top).
    """

    def __init__(self, words: Sequence[str], max_length: int = 30):
        self.itos: Tuple[str, ...] = SPECIAL_TOKENS + tuple(words)
        self.stoi: Dict[str, int] = {w: i for i, w in enumerate(self.itos)}
        if len(self.stoi) != len(self.itos):
            raise ValueError('Vocabulary: words must be distinct and must not be special tokens')
        if max_length < 1:
            raise ValueError(f'Vocabulary: max_length must be >= 1, got {max_length}')
        self.max_length = max_length

    @classmethod
    def build(cls, texts: Iterable[str], min_freq: int = 5, max_length: int = 30,
              max_size: Optional[int] = None) -> 'Vocabulary':
        """The words of ``texts`` seen at least ``min_freq`` times, most frequent first (ties alphabetical)."""
        counts = Counter(word for text in texts for word in tokenize(text))
        words = sorted((w for w, c in counts.items() if c >= min_freq), key=lambda w: (-counts[w], w))
        return cls(words[:max_size], max_length)

    def __len__(self) -> int:
        return len(self.itos)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and (self.itos, self.max_length) == (other.itos, other.max_length)

    def encode(self, text: str) -> List[int]:
        """``[sos, word ids (unknown -> unk, at most max_length), eos]``."""
        return [SOS] + [self.stoi.get(w, UNK) for w in tokenize(text)[:self.max_length]] + [EOS]

    def encode_batch(self, texts: Sequence[str]) -> torch.Tensor:
        """(N, longest + 2) int64 token ids, padded with ``pad``."""
        encoded = [self.encode(t) for t in texts]
        tokens = torch.full((len(encoded), max(map(len, encoded))), PAD, dtype=torch.long)
        for row, ids in zip(tokens, encoded):
            row[:len(ids)] = torch.tensor(ids)
        return tokens

    def decode(self, ids: Iterable[int]) -> str:
        """The words of ``ids`` up to the first eos (pad and sos skipped)."""
        words = []
        for i in (int(i) for i in ids):
            if i == EOS:
                break
            if i not in (PAD, SOS):
                words.append(self.itos[i])
        return ' '.join(words)

    def collate(self, samples: Sequence[Tuple[torch.Tensor, str]]) -> Tuple[torch.Tensor, torch.Tensor]:
        """``DataLoader`` collate: ``(image, utterance)`` samples -> ``(images (N, 3, H, W), tokens (N, L))``."""
        return torch.stack([s[0] for s in samples]), self.encode_batch([s[1] for s in samples])

    def state_dict(self) -> Dict[str, Any]:
        """Plain data (words, max_length) to store in a checkpoint; :meth:`from_state_dict` rebuilds the vocabulary."""
        return {'words': list(self.itos[len(SPECIAL_TOKENS):]), 'max_length': self.max_length}

    @classmethod
    def from_state_dict(cls, state: Dict[str, Any]) -> 'Vocabulary':
        return cls(state['words'], state['max_length'])


class SoftAttention(nn.Module):
    """Additive attention over feature positions: ``softmax(w . relu(W_f f + W_h h))``."""

    def __init__(self, encoder_dim: int, hidden_dim: int, attention_dim: int):
        super().__init__()
        self.encoder_proj = nn.Linear(encoder_dim, attention_dim)
        self.hidden_proj = nn.Linear(hidden_dim, attention_dim)
        self.score = nn.Linear(attention_dim, 1)

    def forward(self, features: torch.Tensor, projected: torch.Tensor, h: torch.Tensor
                ) -> Tuple[torch.Tensor, torch.Tensor]:
        """``features`` (N, P, C) and their ``encoder_proj`` (N, P, A), hidden ``h`` (N, H) ->
        (context (N, C), weights (N, P))."""
        alpha = self.score(torch.relu(projected + self.hidden_proj(h)[:, None]))[..., 0].softmax(-1)
        return torch.einsum('np,npc->nc', alpha, features), alpha


class ShowAttendTellDecoder(nn.Module):
    """The show-attend-tell LSTM decoder over encoder features (N, P, C)."""

    def __init__(self, encoder_dim: int, vocab_size: int, embed_dim: int = 128, hidden_dim: int = 512,
                 attention_dim: int = 512, dropout: float = 0.1):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embed_dim)
        self.attention = SoftAttention(encoder_dim, hidden_dim, attention_dim)
        self.init_h = nn.Linear(encoder_dim, hidden_dim)
        self.init_c = nn.Linear(encoder_dim, hidden_dim)
        self.gate = nn.Linear(hidden_dim, encoder_dim)
        self.lstm = nn.LSTMCell(embed_dim + encoder_dim, hidden_dim)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(hidden_dim, vocab_size)

    def _start(self, features: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mean = features.mean(1)
        return self.attention.encoder_proj(features), self.init_h(mean), self.init_c(mean)

    def _step(self, features: torch.Tensor, projected: torch.Tensor, embedded: torch.Tensor, h: torch.Tensor,
              c: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One LSTM step: (attention weights, h, c); the word logits are ``fc(dropout(h))``."""
        context, alpha = self.attention(features, projected, h)
        context = torch.sigmoid(self.gate(h)) * context
        h, c = self.lstm(torch.cat([embedded, context.to(embedded.dtype)], 1), (h, c))
        return alpha, h, c

    def forward(self, features: torch.Tensor, tokens: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Teacher forcing: ``tokens`` (N, T) from sos -> (logits (N, T-1, V) predicting ``tokens[:, 1:]``,
        attention weights (N, T-1, P))."""
        projected, h, c = self._start(features)
        embedded = self.embedding(tokens[:, :-1])
        hidden, alphas = [], []
        for t in range(embedded.shape[1]):
            alpha, h, c = self._step(features, projected, embedded[:, t], h, c)
            hidden.append(h)
            alphas.append(alpha)
        # the word classifier runs once over all steps: one large matmul instead of T small ones
        return self.fc(self.dropout(torch.stack(hidden, 1))), torch.stack(alphas, 1)

    @torch.no_grad()
    def generate(self, features: torch.Tensor, max_length: int) -> torch.Tensor:
        """Greedy decoding: (N, <= max_length) ids, eos included where produced, pad after it."""
        projected, h, c = self._start(features)
        token = torch.full((len(features),), SOS, dtype=torch.long, device=features.device)
        done = torch.zeros_like(token, dtype=torch.bool)
        out = []
        for _ in range(max_length):
            _, h, c = self._step(features, projected, self.embedding(token), h, c)
            token = self.fc(h).argmax(-1).masked_fill(done, PAD)
            out.append(token)
            done |= token == EOS
            if bool(done.all()):
                break
        return torch.stack(out, 1)


class Captioning(PretextTask):
    """Show-attend-tell captioning on the last backbone stage.

    Args:
        backbone: the timm backbone (read for its last stage and its width, :func:`~.base.pretext_indices`).
        vocab: the :class:`Vocabulary` (sets the word layers' size; its ``collate`` is the loader's).
        embed_dim, hidden_dim, attention_dim, dropout: decoder sizes (paper: 128, 512, 512, 0.1).
        alpha_c: weight of the doubly stochastic attention regulariser (paper: 1).
    """

    name = 'captioning'

    def __init__(self, backbone: nn.Module, vocab: Vocabulary, embed_dim: int = 128, hidden_dim: int = 512,
                 attention_dim: int = 512, dropout: float = 0.1, alpha_c: float = 1.0):
        super().__init__()
        if not isinstance(vocab, Vocabulary):
            raise TypeError(f'Captioning: vocab must be a Vocabulary (Vocabulary.build(dataset.utterances)), '
                            f'got {type(vocab).__name__}')
        self.vocab, self.alpha_c, self.index = vocab, alpha_c, pretext_indices(backbone)[-1]
        self.collate_fn = vocab.collate
        self.head = ShowAttendTellDecoder(tap_channels(backbone, [self.index])[0], len(vocab), embed_dim,
                                          hidden_dim, attention_dim, dropout)

    def prepare(self, batch: Sequence[torch.Tensor]) -> Tuple[Tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
        """``(images in [0, 1], tokens)`` (from :meth:`Vocabulary.collate`) -> ``((images, tokens), tokens)``."""
        if isinstance(batch, torch.Tensor) or len(batch) < 2 or not isinstance(batch[1], torch.Tensor) \
                or batch[1].dtype != torch.long:
            raise ValueError('captioning: expected an (images, tokens) batch; use the vocabulary\'s collate '
                             '(Captioning.collate_fn) in the DataLoader')
        tokens = batch[1]
        return (imagenet_normalize(images_of(batch)), tokens), tokens

    def encode(self, backbone: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """Normalised images -> the last stage's features as a sequence of positions (N, H*W, C)."""
        return stage_maps(backbone, images, [self.index])[0].flatten(2).transpose(1, 2)

    def forward(self, backbone: nn.Module, inputs: Tuple[torch.Tensor, torch.Tensor]
                ) -> Tuple[torch.Tensor, torch.Tensor]:
        images, tokens = inputs
        return self.head(self.encode(backbone, images), tokens)

    def loss(self, outputs: Tuple[torch.Tensor, torch.Tensor], tokens: torch.Tensor) -> torch.Tensor:
        logits, alphas = outputs
        targets = tokens[:, 1:]
        words = F.cross_entropy(logits.float().transpose(1, 2), targets, ignore_index=PAD)
        # each position's attention summed over the caption's real steps should be close to 1
        coverage = (alphas.float() * (targets != PAD)[..., None]).sum(1)
        return words + self.alpha_c * ((1 - coverage) ** 2).mean()

    @torch.no_grad()
    def caption(self, backbone: nn.Module, images: torch.Tensor, max_length: Optional[int] = None) -> List[str]:
        """Greedy captions of RGB images in [0, 1] (N, 3, H, W); put the backbone and head in eval mode first."""
        features = self.encode(backbone, imagenet_normalize(images))
        ids = self.head.generate(features, max_length or self.vocab.max_length)
        return [self.vocab.decode(row) for row in ids.tolist()]
