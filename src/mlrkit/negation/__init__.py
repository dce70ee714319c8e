"""Negation-aware CLIP (Park et al., "Know 'No' Better", 2025): see ``docs/negation.md``.

* :mod:`mlrkit.negation.captions`: negated captions, P1 (absent objects: context-aware / random / LLM
  proposals, verified by the annotations or a multimodal LLM) and P2 (VQA "no" answers);
* :mod:`mlrkit.negation.llm`: an OpenAI-compatible chat-completions client (standard library);
* :mod:`mlrkit.negation.finetune`: contrastive fine-tuning on original + negated captions;
* :mod:`mlrkit.negation.bench`: NegRefCOCOg-format referring retrieval, its builder for box-annotated
  data, caption retrieval against negated distractors, zero-shot mAP;
* ``mlrkit negation captions | finetune | build-benchmark | eval``.
"""

from __future__ import annotations

import importlib
from typing import Any

# Lazy exports: `mlrkit --help` imports mlrkit.cli.negation, which must not pull in torch.
_EXPORTS = {
    "mlrkit.negation.bench": ("RefItem", "build_caption_pairs", "build_mosaic_benchmark", "build_referring",
                              "caption_points", "evaluate_caption_pairs", "evaluate_referring", "load_referring",
                              "parse_referring", "referring_points", "zeroshot_map"),
    "mlrkit.negation.captions": ("augment_caption_with_answer", "cooccurrence", "generate_p1", "generate_p2",
                                 "parse_yes_no", "read_jsonl", "rewrite_yes_no", "write_jsonl"),
    "mlrkit.negation.finetune": ("FinetuneConfig", "FinetuneResult", "finetune_negation", "split_by_image"),
    "mlrkit.negation.llm": ("ChatClient", "ChatStats", "LLMConfig"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'mlrkit.negation' has no attribute {name!r}")
