"""Negated captions (Park et al., "Know 'No' Better", 2025): P1 (absent objects) and P2 (VQA "no" answers).

**P1, negation of objects.** For each image a candidate *absent* object is proposed, verified to be
absent, and written into the image's caption:

* proposers: ``context`` (default) samples an absent class with probability proportional to its
  co-occurrence with the classes present in the image, counted over the training annotations
  (``w_c = sum_{s in present} N(s, c)``, ``N`` = number of training images holding both); a class
  that never co-occurs with the present ones is never proposed (when no absent class co-occurs,
  the image is skipped and counted, or falls back to ``random`` with ``context_fallback``).
  ``random`` (the Rand-P1 ablation) samples uniformly among the absent classes. ``llm`` asks a
  chat model for an object likely in the scene but not mentioned in the caption (``llm-random``:
  any object, the LLM form of the ablation);
* verification: by the annotations (the class must be a *known* negative of the image: ground truth
  0, and known where the dataset marks unknown entries), or, for LLM proposals that name no class
  of the dataset, by a multimodal LLM asked whether the object is in the image (``verify="mllm"``);
  anything unverifiable is rejected and counted;
* rewriting: templates (``"{caption} with no {obj}."``, ``"there is no {obj} in {caption}."``...) or
  an LLM rewrite (checked to mention the object and a negation word, else rejected and counted).

**P2, negation beyond objects.** VQA-format records ``{"image", "question", "answer"}`` whose
answer is "no" become negation-augmented captions of the image (``form="caption"``, the paper's
P2): the image's own caption with the negated content of the answer added (``"a man riding a
horse."`` + ``"Is the man wearing a hat?"`` -> ``"a man riding a horse, but the man is not wearing
a hat."``; ``"Is there a dog on the beach?"`` -> ``"a man riding a horse with no dog on the
beach."``), with templates or an LLM. ``form="statement"`` writes the rewritten question alone
(``"there is no dog."``) for VQA files without captions. Questions the templates cannot parse,
and images without a caption, are counted and listed, never dropped silently.

Output rows (JSONL): ``{"image_id", "caption", "negated_caption", "absent_objects", "kind": "P1"|"P2",
"proposer": "context"|"random"|"llm"|"vqa", "rewriter": "template"|"llm"}``, plus ``"mentioned"`` (the
present classes a caption made from the labels names) and, for P2, ``"question"`` and ``"p2_form"``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mlrkit.errors import DataError, MlrkitError
from mlrkit.negation.llm import ChatClient, image_data_url

P1_TEMPLATES: tuple[str, ...] = (
    "{caption} with no {obj}.",
    "{caption}, but there is no {obj}.",
    "{caption} and no {obj}.",
    "{caption} without {a_obj}.",
    "there is no {obj} in {caption}.",
    "{caption}; no {obj} can be seen.",
)
"""Templates writing absent objects into a caption: ``{caption}`` (its final period removed),
``{obj}`` (names joined with "or"), ``{a_obj}`` (the same with articles)."""

PROPOSERS = ("context", "random", "llm", "llm-random")
REWRITERS = ("template", "llm")
VERIFIERS = ("annotations", "mllm")


def article(name: str) -> str:
    """'bag' -> 'a bag', 'ankle boot' -> 'an ankle boot'."""
    return ("an " if name[:1].lower() in "aeiou" else "a ") + name


def display_name(name: str) -> str:
    """A class name as it is written in captions (lower case, '_' -> ' '), e.g. 'Ankle boot' -> 'ankle boot'."""
    return name.replace("_", " ").strip().lower()


# ---------------------------------------------------------------------------- co-occurrence and proposals
def cooccurrence(targets: np.ndarray) -> np.ndarray:
    """Class co-occurrence counts ``N[i, j]`` = images with both i and j (int64 [C, C], zero diagonal)."""
    t = (np.asarray(targets) == 1).astype(np.int64)
    n = t.T @ t
    np.fill_diagonal(n, 0)
    return n


def verified_absent(targets_row: np.ndarray, known_row: np.ndarray | None = None) -> np.ndarray:
    """Classes the annotations say are absent (ground truth 0 and, where given, known): bool [C]."""
    absent = np.asarray(targets_row) == 0
    if known_row is not None:
        absent &= np.asarray(known_row, dtype=bool)
    return absent


def context_weights(present: np.ndarray, absent_ok: np.ndarray, cooc: np.ndarray) -> np.ndarray:
    """Sampling weights of the context-aware proposer: co-occurrence with the present classes, absent ones only."""
    present = np.asarray(present, dtype=np.int64)
    if present.size == 0:
        return np.zeros(cooc.shape[0], dtype=np.float64)
    w = cooc[present].sum(axis=0).astype(np.float64)
    w[~absent_ok] = 0.0
    w[present] = 0.0
    return w


def propose_context(present: np.ndarray, absent_ok: np.ndarray, cooc: np.ndarray, rng: np.random.Generator,
                    k: int = 1) -> list[int] | None:
    """Up to ``k`` absent classes, drawn without replacement with probability ∝ co-occurrence; None if none co-occur."""
    w = context_weights(present, absent_ok, cooc)
    nz = int((w > 0).sum())
    if nz == 0:
        return None
    return [int(c) for c in rng.choice(len(w), size=min(k, nz), replace=False, p=w / w.sum())]


def propose_random(absent_ok: np.ndarray, rng: np.random.Generator, k: int = 1) -> list[int] | None:
    """Up to ``k`` absent classes drawn uniformly without replacement (Rand-P1); None if nothing is absent."""
    cand = np.flatnonzero(absent_ok)
    if cand.size == 0:
        return None
    return [int(c) for c in rng.choice(cand, size=min(k, cand.size), replace=False)]


# ---------------------------------------------------------------------------- rewriting
def join_or(names: Sequence[str], articles: bool = False) -> str:
    items = [article(n) if articles else n for n in names]
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " or " + items[-1]


def negate_with_template(caption: str, objects: Sequence[str], template: str) -> str:
    """Write absent ``objects`` into ``caption`` with one of :data:`P1_TEMPLATES`."""
    base = caption.strip().rstrip(".").strip()
    if not base or not objects:
        raise MlrkitError(f"cannot negate caption {caption!r} with objects {list(objects)!r}")
    return template.format(caption=base, obj=join_or(objects), a_obj=join_or(objects, articles=True))


NEGATION_WORDS = re.compile(r"\b(no|not|without|none|nothing|never|nobody|absent)\b|n't\b", re.IGNORECASE)


def one_shot_line(client: ChatClient, system: str, example: tuple[str, str], prompt: str,
                  accept: Callable[[str], bool]) -> tuple[str | None, str]:
    """Ask ``client`` with one worked ``example`` (user, assistant); the reply stripped of quotes if it is one
    non-empty line that ``accept`` takes: (text, "ok"), else (None, "llm_rejected") / (None, "llm_failed")."""
    reply = client.complete([{"role": "system", "content": system},
                             {"role": "user", "content": example[0]}, {"role": "assistant", "content": example[1]},
                             {"role": "user", "content": prompt}])
    if reply is None:
        return None, "llm_failed"
    text = reply.strip().strip("'\"").strip()
    if not text or "\n" in text or not accept(text):
        return None, "llm_rejected"
    return text, "ok"


_EDIT_CAPTION = "You edit image captions. Reply with the edited caption only, on one line."


def llm_rewrite(client: ChatClient, caption: str, objects: Sequence[str]) -> tuple[str | None, str]:
    """An LLM rewrite of ``caption`` stating that ``objects`` are absent: (caption or None, outcome)."""
    return one_shot_line(
        client, _EDIT_CAPTION,
        ("Caption: 'two dogs run on a beach'. Edit it to also say that the image contains no frisbee.",
         "two dogs run on a beach with no frisbee in sight"),
        f"Caption: '{caption.strip()}'. Edit it to also say that the image contains no {join_or(objects)}.",
        lambda text: all(o.lower() in text.lower() for o in objects) and bool(NEGATION_WORDS.search(text)))


# ---------------------------------------------------------------------------- LLM proposals and verification
_ARTICLE_RE = re.compile(r"^(a|an|the|some|any)\s+", re.IGNORECASE)


def clean_object_reply(reply: str) -> str:
    """'A Sneaker.' -> 'sneaker' (first line, no article, no punctuation, lower case)."""
    line = reply.strip().splitlines()[0] if reply.strip() else ""
    line = line.strip().strip(".!,;:'\"`*").strip().lower()
    return _ARTICLE_RE.sub("", line).strip()


def class_lookup(class_names: Sequence[str]) -> dict[str, int]:
    """Spellings -> class index: 'ankle boot', 'ankle boots', and each part of 't-shirt/top'."""
    table: dict[str, int] = {}
    for j, name in enumerate(class_names):
        base = display_name(name)
        for form in {base, *base.split("/")}:
            form = form.strip()
            if form:
                table.setdefault(form, j)
                table.setdefault(form + "s", j)
                table.setdefault(form + "es", j)
    return table


def llm_propose(client: ChatClient, caption: str, random_object: bool) -> str | None:
    """One object name from the LLM (context: likely in the scene but not mentioned; random: any object)."""
    if random_object:
        prompt = "Name any one everyday object. Reply with the object name only."
    else:
        prompt = (f"Here is an image caption: '{caption.strip()}'. Name one object that the caption does not mention "
                  "but that could plausibly be in such a scene. Reply with the object name only.")
    reply = client.complete([{"role": "system", "content": "You answer with a single object name."},
                             {"role": "user", "content": prompt}])
    if reply is None:
        return None
    name = clean_object_reply(reply)
    return name or None


def mllm_says_absent(client: ChatClient, image: Any, obj: str) -> bool | None:
    """Ask a multimodal LLM whether ``obj`` is in ``image`` (PIL): True absent, False present, None unclear/failed."""
    messages = [{"role": "user", "content": [
        {"type": "text", "text": f"Is there {article(obj)} in this image? Answer with yes or no only."},
        {"type": "image_url", "image_url": {"url": image_data_url(image)}},
    ]}]
    reply = client.complete(messages)
    if reply is None:
        return None
    word = re.sub(r"[^a-z]", " ", reply.lower()).split()
    if not word:
        return None
    if word[0] == "no":
        return True
    if word[0] == "yes":
        return False
    return None


# ---------------------------------------------------------------------------- P1 generation
@dataclass
class GenerationReport:
    """What happened to every image / question (counts, and the ids of those that produced nothing)."""

    kind: str
    items: int = 0
    rows: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    examples_skipped: dict[str, list[str]] = field(default_factory=dict)
    llm: dict[str, Any] | None = None
    mllm: dict[str, Any] | None = None

    def count(self, what: str, item_id: str | None = None, keep: int = 20) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1
        if item_id is not None:
            ids = self.examples_skipped.setdefault(what, [])
            if len(ids) < keep:
                ids.append(item_id)

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "items": self.items, "rows": self.rows, "counts": dict(sorted(self.counts.items())),
                "examples_skipped": self.examples_skipped, "llm": self.llm, "mllm": self.mllm}


def generate_p1(
    *,
    class_names: Sequence[str],
    targets: np.ndarray,
    ids: Sequence[str],
    captions: Sequence[str] | None = None,
    known: np.ndarray | None = None,
    cooc_targets: np.ndarray | None = None,
    proposer: str = "context",
    rewriter: str = "template",
    verify: str = "annotations",
    per_image: int = 1,
    max_absent: int = 1,
    templates: Sequence[str] = P1_TEMPLATES,
    seed: int = 0,
    context_fallback: str | None = None,
    subset_prob: float = 0.0,
    caption_fn: Callable[[np.ndarray, np.random.Generator], str] | None = None,
    llm: ChatClient | None = None,
    mllm: ChatClient | None = None,
    image_fn: Callable[[int], Any] | None = None,
) -> tuple[list[dict[str, Any]], GenerationReport]:
    """P1 negated captions for the images of one split (module docstring).

    Args:
        targets: ground truth uint8 [N, C] of the images; ``known`` (bool [N, C]) marks the entries
            whose ground truth exists (None: all).
        captions: one caption per image; None: ``caption_fn(labels, rng)`` makes one per row; by
            default :func:`mlrkit.vl.pretraining.caption_and_classes` (the mosaic-clip training captions:
            with probability ``subset_prob`` they name a random non-empty subset of the present
            classes, as real captions mention only some objects), and the row then records the
            classes it names (``mentioned``), which multi-positive fine-tuning uses.
        cooc_targets: training annotations for the co-occurrence counts (default ``targets``).
        per_image: rows per image (each with its own caption draw and proposal).
        max_absent: absent objects per negated caption.
        context_fallback: ``"random"``: images whose present classes co-occur with no absent class
            get a random proposal (``proposer: random``) instead of being skipped.
        llm / mllm: clients for ``proposer="llm"``/``"llm-random"``, ``rewriter="llm"`` and ``verify="mllm"``.
        image_fn: ``i -> PIL image`` (for the multimodal verifier).
    """
    if proposer not in PROPOSERS:
        raise MlrkitError(f"unknown proposer {proposer!r} (known: {', '.join(PROPOSERS)})")
    if rewriter not in REWRITERS:
        raise MlrkitError(f"unknown rewriter {rewriter!r} (known: {', '.join(REWRITERS)})")
    if verify not in VERIFIERS:
        raise MlrkitError(f"unknown verifier {verify!r} (known: {', '.join(VERIFIERS)})")
    if context_fallback not in (None, "random"):
        raise MlrkitError(f"context_fallback must be None or 'random', got {context_fallback!r}")
    targets = np.asarray(targets)
    if targets.ndim != 2 or targets.shape[1] != len(class_names) or len(ids) != len(targets):
        raise MlrkitError(f"targets {targets.shape}, {len(ids)} ids and {len(class_names)} classes do not agree")
    if captions is not None and len(captions) != len(targets):
        raise MlrkitError(f"{len(captions)} captions for {len(targets)} images")
    if per_image < 1 or max_absent < 1:
        raise MlrkitError(f"per_image and max_absent must be >= 1, got {per_image}, {max_absent}")
    if proposer.startswith("llm") or rewriter == "llm":
        if llm is None:
            raise MlrkitError(f"proposer {proposer!r} / rewriter {rewriter!r} need an LLM client (--llm-config)")
    if verify == "mllm" and (mllm is None or image_fn is None):
        raise MlrkitError("verify='mllm' needs a multimodal LLM client and the images")
    if not 0.0 <= subset_prob <= 1.0:
        raise MlrkitError(f"subset_prob must be in [0, 1], got {subset_prob}")
    from mlrkit.vl.pretraining import caption_and_classes

    names = [display_name(n) for n in class_names]
    lookup = class_lookup(class_names)
    cooc = cooccurrence(targets if cooc_targets is None else cooc_targets)
    if cooc.shape != (len(names), len(names)):
        raise MlrkitError(f"co-occurrence targets have {cooc.shape[0]} classes, expected {len(names)}")
    rng = np.random.default_rng(seed)
    report = GenerationReport(kind="P1")
    rows: list[dict[str, Any]] = []
    for i in range(len(targets)):
        report.items += 1
        image_id = str(ids[i])
        present = np.flatnonzero(targets[i] == 1)
        absent_ok = verified_absent(targets[i], None if known is None else known[i])
        for _ in range(per_image):
            mentioned: list[str] | None = None
            if captions is not None:
                caption = captions[i]
            elif caption_fn is not None:
                caption = caption_fn(targets[i], rng)
            else:
                caption, named = caption_and_classes(targets[i], class_names, rng, subset_prob=subset_prob)
                mentioned = [names[int(c)] for c in named]
            used = proposer
            picked: list[int] | None = None
            objects: list[str]
            if proposer == "context":
                picked = propose_context(present, absent_ok, cooc, rng, max_absent)
                if picked is None and context_fallback == "random":
                    picked, used = propose_random(absent_ok, rng, max_absent), "random"
                    if picked is not None:
                        report.count("context_fallback_random", image_id)
                if picked is None:
                    report.count("no_context_candidate" if absent_ok.any() else "nothing_absent", image_id)
                    continue
                objects = [names[c] for c in picked]
            elif proposer == "random":
                picked = propose_random(absent_ok, rng, max_absent)
                if picked is None:
                    report.count("nothing_absent", image_id)
                    continue
                objects = [names[c] for c in picked]
            else:
                assert llm is not None
                obj = llm_propose(llm, caption, random_object=proposer == "llm-random")
                if obj is None:
                    report.count("llm_failed", image_id)
                    continue
                used = "llm"
                cls = lookup.get(obj)
                if cls is not None:  # a class of the dataset: the annotations decide
                    if not absent_ok[cls]:
                        report.count("rejected_present_by_annotations", image_id)
                        continue
                    report.count("verified_by_annotations")
                elif verify == "mllm":
                    assert mllm is not None and image_fn is not None
                    verdict = mllm_says_absent(mllm, image_fn(i), obj)
                    if verdict is None:
                        report.count("mllm_unclear_or_failed", image_id)
                        continue
                    if not verdict:
                        report.count("rejected_present_by_mllm", image_id)
                        continue
                    report.count("verified_by_mllm")
                else:
                    report.count("unverifiable", image_id)
                    continue
                objects = [obj]
            if used in ("context", "random"):  # proposals come from the annotations; verify them against them
                if not all(absent_ok[c] for c in picked):  # pragma: no cover - guarded by construction
                    raise MlrkitError(f"internal error: proposed a class that is not a known negative of {image_id}")
                report.count("verified_by_annotations")
            if rewriter == "llm":
                assert llm is not None
                negated, outcome = llm_rewrite(llm, caption, objects)
                if negated is None:
                    report.count(outcome, image_id)
                    continue
            else:
                negated = negate_with_template(caption, objects, templates[int(rng.integers(len(templates)))])
            row = {"image_id": image_id, "caption": caption, "negated_caption": negated,
                   "absent_objects": objects, "kind": "P1", "proposer": used, "rewriter": rewriter}
            if mentioned is not None:
                row["mentioned"] = mentioned
            rows.append(row)
    report.rows = len(rows)
    report.llm = llm.stats.as_dict() if llm is not None else None
    report.mllm = mllm.stats.as_dict() if mllm is not None else None
    return rows, report


# ---------------------------------------------------------------------------- P2: VQA "no" answers
_PRONOUNS = {"it", "he", "she", "they", "this", "that", "these", "those", "you", "we", "i", "someone", "anyone",
             "somebody", "anybody", "everyone", "everything", "something", "anything"}
_DETERMINERS = {"a", "an", "the", "this", "that", "these", "those", "his", "her", "their", "its", "my", "your", "our",
                "some", "any", "each", "every", "both", "all"}
_PREPOSITIONS = {"in", "on", "at", "of", "under", "near", "behind", "with", "by", "for", "from", "to", "inside",
                 "outside", "above", "below", "over", "next", "beside", "between", "into", "onto", "around",
                 "through", "against", "along", "across", "beneath", "underneath", "during", "without", "like"}
_STOP = _PREPOSITIONS | _DETERMINERS | {"not", "and", "or", "but", "being", "been", "still", "currently", "also",
                                       "very", "too", "so", "there", "here", "made", "used", "visible", "open",
                                       "closed", "empty", "full", "on", "off", "real", "alone", "wet", "dry", "clean",
                                       "dirty", "new", "old", "big", "small", "large", "tall", "short", "long",
                                       "happy", "sad", "sunny", "cloudy", "dark", "bright", "lit", "up", "down",
                                       "white", "black", "red", "green", "blue", "yellow", "brown", "gray", "grey",
                                       "orange", "pink", "purple", "silver", "gold", "same", "different", "hot",
                                       "cold", "broken", "moving", "parked", "asleep", "awake", "young", "male",
                                       "female", "wooden", "metal", "plastic", "glass", "round", "square"}
_BASE_VERBS = {"have", "wear", "look", "seem", "appear", "contain", "hold", "show", "need", "like", "want", "see",
               "exist", "belong", "come", "go", "eat", "drink", "play", "sit", "stand", "use", "carry", "ride",
               "match", "fit", "work", "run", "face", "feature", "cover", "own", "know", "say", "read", "fly",
               "swim", "walk", "lie", "lay", "hang", "sleep", "smile", "move", "get", "make", "take", "give",
               "keep", "fill", "reach", "touch", "block", "support", "serve", "allow", "cast", "fall"}
_STOP |= _BASE_VERBS
_NEGATED_AUX = {"is": "is not", "are": "are not", "was": "was not", "were": "were not", "does": "does not",
                "do": "do not", "did": "did not", "has": "has not", "have": "have not", "had": "had not",
                "can": "cannot", "could": "could not", "will": "will not", "would": "would not",
                "should": "should not", "may": "may not", "might": "might not", "must": "must not"}
_BE = {"is", "are", "was", "were"}


def _subject_split(words: list[str]) -> int | None:
    """Number of leading words that form the subject of a question body, leaving at least one word."""
    if len(words) < 2:
        return None
    if words[0] in _PRONOUNS:
        return 1
    if words[0] in _DETERMINERS:
        k = 2
        while k < len(words) - 1 and words[k] not in _STOP and not words[k].endswith("ing"):
            k += 1
        return k
    return 1  # a proper noun or a bare plural ("people", "John")


@dataclass(frozen=True)
class YesNoParse:
    """A yes/no question taken apart: ``there`` questions (``aux`` + ``phrase``: "is" + "dog on the bed") or
    subject questions (``aux`` + ``subject`` + ``predicate``: "is" + "the man" + "wearing a hat")."""

    aux: str
    kind: str  # "there" | "subject"
    phrase: str = ""
    subject: str = ""
    predicate: str = ""

    def statement(self) -> str:
        """The negated statement: "there is no dog on the bed." / "the man is not wearing a hat."."""
        if self.kind == "there":
            return f"there {self.aux} no {self.phrase}."
        return f"{self.subject} {_NEGATED_AUX[self.aux]} {self.predicate}."

    def objects(self) -> list[str]:
        """The absent object of a ``there`` question (its words before the first preposition); [] otherwise."""
        if self.kind != "there":
            return []
        words = self.phrase.split(" ")
        cut = next((k for k, w in enumerate(words) if w in _PREPOSITIONS and k > 0), len(words))
        return [" ".join(words[:cut])]


def parse_yes_no(question: str) -> YesNoParse | None:
    """Take a yes/no question apart (:class:`YesNoParse`); None if it does not parse."""
    q = re.sub(r"\s+", " ", question.strip().rstrip("?").strip())
    words = q.lower().split(" ")
    if len(words) < 2 or words[0] not in _NEGATED_AUX:
        return None
    aux, rest = words[0], words[1:]
    if aux in _BE and rest[0] == "there":
        body = rest[1:]
        if body and body[0] in ("a", "an", "any", "some"):
            body = body[1:]
        if not body:
            return None
        return YesNoParse(aux=aux, kind="there", phrase=" ".join(body))
    k = _subject_split(rest)
    if k is None:
        return None
    return YesNoParse(aux=aux, kind="subject", subject=" ".join(rest[:k]), predicate=" ".join(rest[k:]))


def rewrite_yes_no(question: str) -> tuple[str, list[str]] | None:
    """A yes/no question answered "no" -> (negated statement, absent objects); None if it does not parse.

    ``"Is there a dog on the bed?"`` -> ``("there is no dog on the bed.", ["dog"])``;
    ``"Is the man wearing a hat?"`` -> ``("the man is not wearing a hat.", [])``;
    ``"Does the cat have a collar?"`` -> ``("the cat does not have a collar.", [])``.
    """
    parsed = parse_yes_no(question)
    return None if parsed is None else (parsed.statement(), parsed.objects())


P2_THERE_TEMPLATES: tuple[str, ...] = (
    "{caption} with no {phrase}.",
    "{caption}, but there {aux} no {phrase}.",
    "{caption}, and there {aux} no {phrase}.",
)
"""Caption augmentation for "Is there ...?" answered "no": ``{caption}`` (final period removed), ``{phrase}``
("dog on the bed"), ``{aux}`` ("is"/"are"...)."""

P2_CLAUSE_TEMPLATES: tuple[str, ...] = (
    "{caption}, but {statement}",
    "{caption}, and {statement}",
    "{caption}; {statement}",
)
"""Caption augmentation for other yes/no questions answered "no": ``{statement}`` is the negated statement
("the man is not wearing a hat.")."""

P2_FORMS = ("caption", "statement")


def augment_caption_with_answer(caption: str, parsed: YesNoParse, template: int = 0) -> str:
    """The image's caption with the negated content of a "no" answer added (P2 as caption augmentation).

    ``("a man riding a horse.", "Is there a dog on the beach?")`` -> ``"a man riding a horse with no dog on
    the beach."``; ``("a man riding a horse.", "Is the man wearing a hat?")`` -> ``"a man riding a horse,
    but the man is not wearing a hat."``. ``template`` indexes :data:`P2_THERE_TEMPLATES` /
    :data:`P2_CLAUSE_TEMPLATES` (modulo their length).
    """
    base = caption.strip().rstrip(".").strip()
    if not base:
        raise MlrkitError(f"cannot augment an empty caption ({caption!r})")
    if parsed.kind == "there":
        t = P2_THERE_TEMPLATES[template % len(P2_THERE_TEMPLATES)]
        return t.format(caption=base, phrase=parsed.phrase, aux=parsed.aux)
    t = P2_CLAUSE_TEMPLATES[template % len(P2_CLAUSE_TEMPLATES)]
    return t.format(caption=base, statement=parsed.statement())


_CONTENT_STOP = _DETERMINERS | _PREPOSITIONS | {"and", "or", "but", "is", "are", "was", "were", "with", "there"}


def content_words(text: str) -> set[str]:
    """Lower-case words of ``text`` other than determiners, prepositions and a few function words."""
    return {w for w in re.findall(r"[a-z][a-z'-]*", text.lower()) if w not in _CONTENT_STOP and len(w) > 1}


def keeps_caption(caption: str, text: str, min_fraction: float = 0.5) -> bool:
    """Whether ``text`` keeps at least ``min_fraction`` of the caption's content words (LLM output check)."""
    words = content_words(caption)
    return not words or len(words & content_words(text)) >= min_fraction * len(words)


def llm_caption_with_answer(client: ChatClient, caption: str, question: str) -> tuple[str | None, str]:
    """LLM caption augmentation: ``caption`` edited to also state that the answer to ``question`` is "no".

    A reply is accepted when it is one line, contains a negation word and keeps at least half of the
    caption's content words (:func:`keeps_caption`); else (None, "llm_rejected").
    """
    return one_shot_line(
        client, _EDIT_CAPTION,
        ("Caption: 'a woman riding a horse in a field'. The question 'Is she wearing a hat?' was answered 'no' "
         "for this image. Edit the caption to also say this.", "a woman not wearing a hat riding a horse in a field"),
        f"Caption: '{caption.strip()}'. The question '{question.strip()}' was answered 'no' for this image. Edit "
        "the caption to also say this.",
        lambda text: bool(NEGATION_WORDS.search(text)) and keeps_caption(caption, text))


def is_no(answer: Any) -> bool | None:
    """True for a "no" answer, False for "yes", None for anything else (an open question)."""
    a = re.sub(r"[^a-z]", "", str(answer).lower())
    return True if a == "no" else False if a == "yes" else None


def read_vqa(path: str | Path) -> list[dict[str, Any]]:
    """A VQA-format file: a JSON list of ``{"image", "question", "answer"}`` (also JSONL); errors name the entry."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise DataError(f"cannot read VQA file {path}: {e}") from None
    try:
        doc = json.loads(text)
        records = doc if isinstance(doc, list) else None
    except json.JSONDecodeError:
        records = [json.loads(line) for line in text.splitlines() if line.strip()] if text.lstrip()[:1] == "{" \
            else None
    if records is None:
        raise DataError(f"{path}: a VQA file must be a JSON list (or JSON lines) of {{image, question, answer}}")
    for n, r in enumerate(records):
        if not isinstance(r, dict) or not all(k in r for k in ("image", "question", "answer")):
            raise DataError(f"{path}: entry {n} lacks image/question/answer: {str(r)[:120]}")
        if not isinstance(r["question"], str) or not r["question"].strip():
            raise DataError(f"{path}: entry {n} has an empty question")
    return records


def llm_statement(client: ChatClient, question: str) -> tuple[str | None, str]:
    """LLM rewrite of a yes/no question answered "no" into a negated statement."""
    return one_shot_line(
        client, "You turn a yes/no question answered 'no' into one short true statement. Reply with the statement "
        "only.", ("Question: 'Is the sky cloudy?' Answer: no.", "the sky is not cloudy."),
        f"Question: '{question.strip()}' Answer: no.", lambda text: bool(NEGATION_WORDS.search(text)))


def generate_p2(
    records: Iterable[dict[str, Any]], *, captions: dict[str, str] | None = None, rewriter: str = "template",
    llm: ChatClient | None = None, form: str = "caption", seed: int = 0,
) -> tuple[list[dict[str, Any]], GenerationReport]:
    """P2 rows from VQA records answered "no".

    Args:
        captions: image -> its caption (the first one given for it).
        form: ``"caption"`` (default, the paper's P2): the image's own caption augmented with the negated
            content of the answer (:func:`augment_caption_with_answer`, or :func:`llm_caption_with_answer`
            with ``rewriter="llm"``); records whose image has no caption are counted (``no_caption``) and
            listed. ``"statement"``: the question rewritten into a standalone negated statement
            (:func:`rewrite_yes_no` / :func:`llm_statement`), the caption kept alongside in ``caption``.
        seed: seed of the template draw (``form="caption"``, ``rewriter="template"``).
    """
    if rewriter not in REWRITERS:
        raise MlrkitError(f"unknown rewriter {rewriter!r} (known: {', '.join(REWRITERS)})")
    if form not in P2_FORMS:
        raise MlrkitError(f"unknown P2 form {form!r} (known: {', '.join(P2_FORMS)})")
    if rewriter == "llm" and llm is None:
        raise MlrkitError("rewriter 'llm' needs an LLM client (--llm-config)")
    if form == "caption" and not captions:
        raise MlrkitError("P2 as caption augmentation (--p2-form caption) needs the images' captions (--captions "
                          "FILE of {image_id, caption}); --p2-form statement writes standalone statements instead")
    rng = np.random.default_rng(seed)
    report = GenerationReport(kind="P2")
    rows: list[dict[str, Any]] = []
    for r in records:
        report.items += 1
        image_id = str(r["image"])
        verdict = is_no(r["answer"])
        if verdict is None:
            report.count("not_yes_no")
            continue
        if not verdict:
            report.count("answer_yes")
            continue
        caption = (captions or {}).get(image_id)
        if form == "caption" and caption is None:
            report.count("no_caption", image_id)
            continue
        parsed = parse_yes_no(r["question"])
        objects = parsed.objects() if parsed is not None else []
        if rewriter == "llm":
            assert llm is not None
            if form == "caption":
                assert caption is not None
                text, outcome = llm_caption_with_answer(llm, caption, r["question"])
            else:
                text, outcome = llm_statement(llm, r["question"])
            if text is None:
                report.count(outcome, image_id)
                continue
        else:
            if parsed is None:
                report.count("unparsed_question", f"{image_id}: {r['question']}")
                continue
            if form == "caption":
                assert caption is not None
                text = augment_caption_with_answer(caption, parsed, int(rng.integers(1 << 30)))
            else:
                text = parsed.statement()
        rows.append({"image_id": image_id, "caption": caption, "negated_caption": text,
                     "absent_objects": objects, "kind": "P2", "proposer": "vqa", "rewriter": rewriter,
                     "p2_form": form, "question": r["question"]})
    report.rows = len(rows)
    report.llm = llm.stats.as_dict() if llm is not None else None
    return rows, report


# ---------------------------------------------------------------------------- JSONL
ROW_KEYS = ("image_id", "caption", "negated_caption", "absent_objects", "kind", "proposer")


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> Path:
    """Write rows as JSON lines (atomically)."""
    from mlrkit.utils import atomic_write, json_dumps

    path = Path(path)
    with atomic_write(path) as tmp, tmp.open("w") as f:
        for r in rows:
            f.write(json_dumps(r) + "\n")
    return path


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Read negated-caption rows; a bad line raises :class:`DataError` naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"negated-caption file not found: {path}")
    rows = []
    with path.open() as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                r = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{n}: not JSON ({e})") from None
            missing = [k for k in ROW_KEYS if k not in r]
            if missing:
                raise DataError(f"{path}:{n}: missing keys {missing}")
            if not isinstance(r["negated_caption"], str) or not r["negated_caption"].strip():
                raise DataError(f"{path}:{n}: empty negated_caption")
            rows.append(r)
    if not rows:
        raise DataError(f"{path}: no rows")
    return rows
