"""Language-coverage guard: never route a ticket on noise because the model cannot read it.

all-MiniLM-L6-v2 is English-only: most Chinese characters become ``[UNK]`` (measured on the
BQ corpus: 38-100 % of a question's tokens, median 80 %) and the rest are single characters
the model never learned, and unrelated Chinese tickets then score higher than true
duplicates (退款什么时候到账 vs 贷款利息怎么计算: cosine 1.00). English text has 0 % (STS-B, 400 sentences); a mostly
English ticket quoting a Chinese order name stays under 30 %. A ticket above
TRIAGE_MAX_UNKNOWN_RATIO is routed `manual` with the reason recorded, and its vector is
never offered as a match to later tickets.

The guard needs the model's own tokenizer: it is on for the local model and for
all-MiniLM-L6-v2 served by Ollama (``all-minilm``) or an OpenAI-compatible server (same
vocabulary, read from the packaged tokenizer.json), and off for other models, which are the
multilingual path (``bge-m3``, multilingual-e5-small). An OpenAI-served model the project
has not measured counts as multilingual, and ``doctor`` notes it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from tokenizers import Tokenizer

from config.settings import Settings
from worker.embedding import Embedder
from worker.thresholds import known_model

logger = logging.getLogger(__name__)

# BERT's vocabulary keeps a few thousand CJK characters as single tokens, but the English
# training of all-MiniLM-L6-v2 gave them no meaning: measured, 0.1-0.5 % of Chinese
# questions (BQ, ATEC, LCQMC) stay under the [UNK] limit on such characters alone. They
# count as unreadable too: Han ideographs, kana, Hangul (the ranges the tokenizer splits
# into single characters).
_CJK_RANGES = (
    (0x3040, 0x30FF),  # Hiragana, Katakana
    (0x3400, 0x4DBF),  # CJK Extension A
    (0x4E00, 0x9FFF),  # CJK Unified Ideographs
    (0xAC00, 0xD7AF),  # Hangul syllables
    (0xF900, 0xFAFF),  # CJK Compatibility Ideographs
)


def _is_cjk(token: str) -> bool:
    token = token.removeprefix("##")
    return len(token) == 1 and any(lo <= ord(token) <= hi for lo, hi in _CJK_RANGES)


def _english_only(embedder: Embedder) -> bool:
    """An OpenAI-served model this project measured as English-only (all-MiniLM-L6-v2);
    an unknown one counts as multilingual (``doctor`` says so)."""
    model = known_model(embedder.model_id, str(getattr(embedder, "fingerprint", "")))
    return model is not None and not model.multilingual


class CoverageGuard:
    def __init__(self, tokenizer_file: Path, *, max_unknown_ratio: float, model: str) -> None:
        self._tokenizer = Tokenizer.from_file(str(tokenizer_file))
        # Measure the whole ticket the model will read (256 tokens), not the shipped 128.
        self._tokenizer.enable_truncation(256)
        self._tokenizer.no_padding()
        unk = self._tokenizer.token_to_id("[UNK]")
        if unk is None:
            raise ValueError(f"{tokenizer_file} has no [UNK] token: cannot measure coverage")
        self._unk = unk
        self.max_unknown_ratio = max_unknown_ratio
        self.model = model

    @classmethod
    def for_embedder(cls, embedder: Embedder, settings: Settings) -> CoverageGuard | None:
        folder: Path | None = None
        if settings.embedder == "local":
            folder = getattr(embedder, "model_path", None)
        elif (
            settings.embedder == "ollama" and settings.ollama_model.split(":")[0] == "all-minilm"
        ) or (settings.embedder == "openai" and _english_only(embedder)):
            try:
                from worker.embedding.local import packaged_model_dir

                folder = packaged_model_dir()
            except Exception:  # the packaged model is optional with Ollama
                folder = None
        if folder is None or not (Path(folder) / "tokenizer.json").is_file():
            logger.info("language-coverage guard off for %s", embedder.model_id)
            return None
        return cls(
            Path(folder) / "tokenizer.json",
            max_unknown_ratio=settings.max_unknown_ratio,
            model=embedder.model_id,
        )

    def unknown_ratios(self, texts: Sequence[str]) -> list[float]:
        """Per text: the share of its tokens the model cannot read ([UNK] or a lone CJK character)."""
        out = []
        for enc in self._tokenizer.encode_batch(list(texts)):
            unreadable = total = 0
            for token_id, token, special in zip(
                enc.ids, enc.tokens, enc.special_tokens_mask, strict=True
            ):
                if special:
                    continue
                total += 1
                unreadable += token_id == self._unk or _is_cjk(token)
            out.append(unreadable / total if total else 0.0)
        return out

    def reason(self, ratio: float) -> str | None:
        if ratio <= self.max_unknown_ratio:
            return None
        return (
            f"unreadable for {self.model}: {ratio:.0%} of its tokens are unknown to the model "
            f"(limit {self.max_unknown_ratio:.0%}); routed manual. For such languages use a "
            "multilingual model (TRIAGE_EMBEDDER=openai with multilingual-e5-small, or ollama "
            "with bge-m3) and `triage reindex` (docs: Languages and models)"
        )
