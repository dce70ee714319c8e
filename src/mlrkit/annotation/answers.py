"""Yes/no answers to (image, class) questions, merged into three-state labels.

An answers file is CSV with a header: ``image`` (or ``row``, the row of the official training set),
``class`` and ``answer`` — the ``queries.csv`` that ``mlrkit suggest-labels`` writes, with its
``answer`` column filled in. ``yes``/``y``/``true``/``1``/``+1``/``positive``/``present`` make the entry a
known positive (+1); ``no``/``n``/``false``/``-1``/``negative``/``absent`` a known negative (−1); an empty
answer (or ``skip``, ``unsure``, ``?``) leaves it unknown and is counted. ``0`` is refused: in the observed
convention it means unknown, in ground truth it means absent.

Answers merge into:

* a manifest (CSV, JSON lines or a JSON array; see :mod:`mlrkit.data.datasets.manifest`), read and
  validated as training reads it: the answered rows' ``positives``/``negatives`` (or, in the dense
  form, their class cells ``1``/``0``) change, every other row, column and the order are kept.
  Complete rows (``labels``) are fully known: an answer can only agree with them;
* a features ``.npz``: its ``observed_train`` (int8 [N_train, C]; made from a complete ``Y_train`` when
  absent) is updated, every other array is copied; images are ``train/<row>`` as in
  ``features:`` datasets. When ``Y_train`` (the ground truth) is there, answers must agree with it;
* an observed-label ``.npz`` (``mlrkit prepare``, or a run's ``observed_labels.npz``), matched by
  ``row``; the result trains with ``--labels NEW.npz``.

An answer for an image or class that does not exist, two different answers for one entry, or an
answer that contradicts an existing annotation is an error naming the file, line and value.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mlrkit.data.datasets.features import open_npz
from mlrkit.errors import DataError, MlrkitError
from mlrkit.labels import NEGATIVE, POSITIVE, UNKNOWN, check_observed

YES = {"yes", "y", "true", "1", "+1", "positive", "present", "pos"}
NO = {"no", "n", "false", "-1", "negative", "absent", "neg"}
UNANSWERED = {"", "skip", "unsure", "?", "unknown"}


@dataclass
class Answer:
    """One answer as read: where it came from, the image (or row), the class and ±1."""

    line: int
    image: str | None
    row: int | None
    cls: str
    value: int


@dataclass
class AnswerSet:
    path: Path
    answers: list[Answer]
    unanswered: int = 0


@dataclass
class MergeReport:
    """What a merge did: entries newly known, answers that repeated an existing annotation, skipped ones."""

    new_positive: int = 0
    new_negative: int = 0
    already_known: int = 0
    unanswered: int = 0
    entries: list[tuple[int, int, int]] = field(default_factory=list)  # (row, col, value) newly known

    def as_dict(self) -> dict[str, int]:
        return {"new_positive": self.new_positive, "new_negative": self.new_negative,
                "already_known": self.already_known, "unanswered": self.unanswered}


def parse_answer(raw: str, where: str) -> int | None:
    """+1, −1, or None (unanswered) from an answer cell."""
    v = raw.strip().lower()
    if v in YES:
        return POSITIVE
    if v in NO:
        return NEGATIVE
    if v in UNANSWERED:
        return None
    if v in ("0", "+0", "-0"):
        raise DataError(f"{where}: answer {raw!r} is ambiguous (0 means unknown in observed labels, absent in "
                        "ground truth): write yes or no")
    raise DataError(f"{where}: answer {raw!r} is not yes/no (accepted: {sorted(YES)} / {sorted(NO)}; empty = "
                    "not answered)")


def _read_text(path: Path, what: str) -> str:
    if not path.is_file():
        raise DataError(f"{what} not found: {path}")
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e})") from None


def _csv_table(path: Path, text: str, what: str) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """(header, [(line number, fields)]) of a CSV text; blank lines skipped, field counts checked."""
    reader = csv.reader(text.splitlines())
    rows: list[tuple[int, list[str]]] = []
    try:
        header = next(reader, None)
        if header is None:
            raise DataError(f"{path}: empty {what}")
        header = [h.strip() for h in header]
        for fields in reader:
            if not fields or not any(f.strip() for f in fields):
                continue
            if len(fields) != len(header):
                raise DataError(f"{path}:{reader.line_num}: {len(fields)} fields, the header has {len(header)}")
            rows.append((reader.line_num, fields))
    except csv.Error as e:
        raise DataError(f"{path}:{reader.line_num}: malformed CSV ({e})") from None
    return header, rows


def read_answers(path: str | Path) -> AnswerSet:
    """Read an answers CSV (``image`` or ``row``, ``class``, ``answer``); other columns are ignored."""
    path = Path(path)
    header, table = _csv_table(path, _read_text(path, "answers file"), "answers file (expected a header "
                                                                        "'image,class,answer')")
    missing = [c for c in ("class", "answer") if c not in header]
    if "image" not in header and "row" not in header:
        missing.insert(0, "image (or row)")
    if missing:
        raise DataError(f"{path}:1: header {header} lacks column(s) {missing}")
    col = {h: i for i, h in enumerate(header)}
    out: list[Answer] = []
    unanswered = 0
    for lineno, fields in table:
        where = f"{path}:{lineno}"
        value = parse_answer(fields[col["answer"]], where)
        if value is None:
            unanswered += 1
            continue
        row = None
        if "row" in col and fields[col["row"]].strip():
            raw_row = fields[col["row"]].strip()
            try:
                row = int(raw_row)
            except ValueError:
                raise DataError(f"{where}: row {raw_row!r} is not an integer") from None
            if row < 0:
                raise DataError(f"{where}: row {row} is negative")
        image = fields[col["image"]].strip() if "image" in col else None
        cls = fields[col["class"]].strip()
        if not cls:
            raise DataError(f"{where}: empty class")
        out.append(Answer(lineno, image or None, row, cls, value))
    return AnswerSet(path, out, unanswered)


def merge_answers(observed: np.ndarray, rows: np.ndarray, cols: np.ndarray, values: np.ndarray,
                  where: list[str] | None = None) -> tuple[np.ndarray, MergeReport]:
    """``observed`` with the answers ``values[k]`` (±1) at ``(rows[k], cols[k])``; a new array.

    An answer equal to the existing annotation counts as ``already_known``; one that contradicts
    it, or two different answers for one entry, raise :class:`DataError` (``where[k]`` names the
    answer's file and line in the message).
    """
    obs = check_observed(observed).copy()
    rows, cols, values = (np.asarray(a, dtype=np.int64).ravel() for a in (rows, cols, values))
    if not (len(rows) == len(cols) == len(values)):
        raise MlrkitError("rows, cols and values of the answers differ in length")
    if len(values) and not np.isin(values, (POSITIVE, NEGATIVE)).all():
        raise DataError(f"answers must be +1 or -1, found {np.unique(values[~np.isin(values, (1, -1))]).tolist()}")
    n, c = obs.shape
    bad = (rows < 0) | (rows >= n) | (cols < 0) | (cols >= c)
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        raise DataError(f"{_at(where, k)}: entry (row {rows[k]}, class {cols[k]}) is outside the labels [{n}, {c}]")
    report = MergeReport()
    first: dict[tuple[int, int], int] = {}
    for k, (r, j, v) in enumerate(zip(rows.tolist(), cols.tolist(), values.tolist())):
        key = (r, j)
        if key in first:
            if values[first[key]] != v:
                raise DataError(f"{_at(where, k)}: answer {_word(v)} conflicts with {_word(int(values[first[key]]))} "
                                f"for the same entry at {_at(where, first[key])}")
            continue
        first[key] = k
        cur = int(obs[r, j])
        if cur == UNKNOWN:
            obs[r, j] = v
            report.entries.append((r, j, v))
            if v == POSITIVE:
                report.new_positive += 1
            else:
                report.new_negative += 1
        elif cur == v:
            report.already_known += 1
        else:
            raise DataError(f"{_at(where, k)}: answer {_word(v)} contradicts the existing annotation "
                            f"({_word(cur)}) of that entry")
    return obs, report


def _word(v: int) -> str:
    return "yes" if v == POSITIVE else "no"


def _at(where: list[str] | None, k: int) -> str:
    return where[k] if where is not None else f"answer {k + 1}"


def _class_index(names: list[str], ans: Answer, path: Path) -> int:
    try:
        return names.index(ans.cls)
    except ValueError:
        pass
    import difflib

    close = difflib.get_close_matches(ans.cls, names, n=2)
    hint = f" (did you mean {' or '.join(close)}?)" if close else ""
    raise DataError(f"{path}:{ans.line}: class {ans.cls!r} is not a class of the labels{hint}")


def _resolve(answers: AnswerSet, names: list[str], image_rows: dict[str, int] | None,
             n_rows: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """(rows, cols, values, where) of the answers; images through ``image_rows`` or by ``row``."""
    rows, cols, vals, where = [], [], [], []
    p = answers.path
    for a in answers.answers:
        if image_rows is not None and a.image is not None:
            if a.image not in image_rows:
                raise DataError(f"{p}:{a.line}: image {a.image!r} is not in the labels being updated")
            r = image_rows[a.image]  # by image; a 'row' column is then not needed
        elif a.row is not None:
            r = a.row
            if r >= n_rows:
                raise DataError(f"{p}:{a.line}: row {r} is outside the {n_rows} labelled rows")
        else:
            need = "image" if image_rows is not None else "row"
            raise DataError(f"{p}:{a.line}: the answer names no {need}")
        rows.append(r)
        cols.append(_class_index(names, a, p))
        vals.append(a.value)
        where.append(f"{p}:{a.line}")
    return np.array(rows, np.int64), np.array(cols, np.int64), np.array(vals, np.int64), where


# --------------------------------------------------------------------------- targets of a merge


def apply_answers(target: str | Path, answers_path: str | Path, out: str | Path,
                  classes: str | Path | None = None, uncertain: str = "unknown") -> MergeReport:
    """Merge an answers file into a manifest, a features ``.npz`` or an observed-label ``.npz``; write ``out``."""
    target, out = Path(target), Path(out)
    if not target.is_file():
        raise DataError(f"labels to update not found: {target}")
    if out.resolve() == target.resolve():
        raise MlrkitError(f"--out {out} is the input file: write the merged labels to a new file")
    answers = read_answers(answers_path)
    if target.suffix == ".npz":
        with open_npz(target) as z:
            files = list(z.files)
        if "observed" in files and "meta" in files:
            report = _apply_to_observed_file(target, answers, out)
        elif "X_train" in files:
            report = _apply_to_features(target, answers, out)
        else:
            raise DataError(f"{target}: neither a features file (X_train, ...) nor an observed-label file "
                            f"(observed, meta); arrays: {files}")
    else:
        report = _apply_to_manifest(target, answers, out, classes, uncertain)
    report.unanswered = answers.unanswered
    return report


def _apply_to_observed_file(target: Path, answers: AnswerSet, out: Path) -> MergeReport:
    from mlrkit.labels import ObservedLabels

    obs = ObservedLabels.load(target)
    n, c = obs.observed.shape
    names = list(obs.class_names) or [str(j) for j in range(c)]
    if any(a.row is None for a in answers.answers):
        a = next(a for a in answers.answers if a.row is None)
        raise DataError(f"{answers.path}:{a.line}: an observed-label file is matched by row: the answers need a "
                        "'row' column (as suggest-labels writes)")
    rows, cols, vals, where = _resolve(answers, names, None, n)
    new, report = merge_answers(obs.observed, rows, cols, vals, where)
    protocol = obs.protocol if obs.protocol.endswith("+answers") else f"{obs.protocol}+answers"
    ObservedLabels(observed=new, protocol=protocol, seed=obs.seed, dataset=obs.dataset,
                   targets_sha256=obs.targets_sha256, class_names=list(obs.class_names)).save(out)
    return report


def _apply_to_features(target: Path, answers: AnswerSet, out: Path) -> MergeReport:
    from mlrkit.data.datasets.features import load_features_npz

    ds = load_features_npz(target)  # the same validation as training on it
    with open_npz(target) as z:
        arrays = {k: z[k] for k in z.files}
    y = arrays.get("Y_train")
    if "observed_train" in arrays:
        observed = check_observed(arrays["observed_train"], f"{target}: observed_train")
    else:  # complete labels: every entry is known already
        observed = np.where(np.asarray(y) == 1, POSITIVE, NEGATIVE).astype(np.int8)
    n = len(observed)
    names = list(ds.class_names)
    rows, cols, vals, where = _resolve(answers, names, {sid: i for i, sid in enumerate(ds.trainval.ids)}, n)
    new, report = merge_answers(observed, rows, cols, vals, where)
    if y is not None:  # Y_train is the ground truth beside the annotations: answers must agree with it
        for k, (r, c, v) in enumerate(zip(rows, cols, vals)):
            if (v == POSITIVE) != bool(y[r, c]):
                raise DataError(f"{where[k]}: answer {_word(int(v))} contradicts Y_train of {target} "
                                f"(image train/{r}, class {names[c]!r})")
    arrays["observed_train"] = new
    from mlrkit.utils import atomic_write

    with atomic_write(out) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
    return report


# --------------------------------------------------------------------------- manifests


def _manifest_records(path: Path, text: str, kind: str) -> tuple[list[str] | None, list]:
    """The raw records of a manifest in file order: (CSV header, field lists) or (None, JSON objects)."""
    if kind == "csv":
        lines = text.splitlines()
        while lines and not lines[0].strip(" ,\t"):
            lines = lines[1:]  # blank lines before the header, as the manifest reader skips them
        header, table = _csv_table(path, "\n".join(lines), "manifest")
        return header, [list(fields) for _, fields in table]
    if kind == "jsonl":
        return None, [json.loads(line) for line in text.splitlines() if line.strip()]
    return None, list(json.loads(text))


def _apply_to_manifest(target: Path, answers: AnswerSet, out: Path, classes: str | Path | None,
                       uncertain: str = "unknown") -> MergeReport:
    """Answers into a manifest, keeping its form: the three-state lists (``positives``/``negatives``) or
    the dense class columns (``1``/``0``) of the answered rows change, nothing else. Complete rows
    (``labels``) are fully known already: their answers can only agree (or conflict: an error)."""
    from mlrkit.data.datasets.manifest import (
        _kind,
        load_manifest,
        read_csv_rows,
        read_json_array_rows,
        read_jsonl_rows,
    )

    ds = load_manifest(target, classes, uncertain)  # the same validation as training on it
    names = list(ds.class_names)
    col = {n: j for j, n in enumerate(names)}
    text = _read_text(target, "manifest")
    kind = _kind(target, text)
    dense = None
    if kind == "csv":
        rows, dense = read_csv_rows(target, text, uncertain)
    else:
        rows = read_jsonl_rows(target, text) if kind == "jsonl" else read_json_array_rows(target, text)
    header, records = _manifest_records(target, text, kind)
    if len(records) != len(rows):
        raise DataError(f"{target}: read {len(rows)} manifest rows but {len(records)} records")
    observed = np.zeros((len(rows), len(names)), dtype=np.int8)
    image_rows: dict[str, int] = {}
    for i, r in enumerate(rows):
        image_rows[r.image] = i
        if r.negatives is None:
            observed[i] = NEGATIVE
        else:
            observed[i, [col[x] for x in r.negatives]] = NEGATIVE
        observed[i, [col[x] for x in r.positives]] = POSITIVE
    a_rows, a_cols, a_vals, where = _resolve(answers, names, image_rows, len(rows))
    new, report = merge_answers(observed, a_rows, a_cols, a_vals, where)
    changed = sorted({r for r, _, _ in report.entries})

    def lists(i: int) -> tuple[list[str], list[str]]:
        return ([names[j] for j in np.flatnonzero(new[i] == POSITIVE)],
                [names[j] for j in np.flatnonzero(new[i] == NEGATIVE)])

    from mlrkit.utils import atomic_write

    if header is None:
        for i in changed:
            records[i]["positives"], records[i]["negatives"] = lists(i)
        with atomic_write(out) as tmp:
            if kind == "jsonl":
                tmp.write_text("".join(json.dumps(obj, ensure_ascii=False) + "\n" for obj in records),
                               encoding="utf-8")
            else:
                tmp.write_text(json.dumps(records, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
        return report
    header = list(header)
    if dense is not None:
        for r, j, v in report.entries:
            records[r][header.index(names[j])] = "1" if v == POSITIVE else "0"
    elif changed:
        for name in ("positives", "negatives"):
            if name not in header:  # e.g. a positives-only manifest that now has known negatives
                header.append(name)
                for rec in records:
                    rec.append("")
        for i in changed:
            pos, neg = lists(i)
            records[i][header.index("positives")] = "|".join(pos)
            records[i][header.index("negatives")] = "|".join(neg)
    with atomic_write(out) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh, lineterminator="\n")
            w.writerow(header)
            w.writerows(records)
    return report
