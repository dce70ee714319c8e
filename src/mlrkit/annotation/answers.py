"""Yes/no answers to (image, class) questions, merged into three-state labels.

An answers file is CSV with a header: ``image`` (or ``row``, the row of the official training set),
``class`` and ``answer`` — the ``queries.csv`` that ``mlrkit suggest-labels`` writes, with its
``answer`` column filled in. ``yes``/``y``/``true``/``1``/``+1``/``positive``/``present`` make the entry a
known positive (+1); ``no``/``n``/``false``/``-1``/``negative``/``absent`` a known negative (−1); an empty
answer (or ``skip``, ``unsure``, ``?``) leaves it unknown and is counted. ``0`` is refused: in the observed
convention it means unknown, in ground truth it means absent.

Answers merge into:

* a manifest (CSV or JSON lines): the result has the three-state columns ``positives`` /
  ``negatives`` (a ``labels`` column, meaning complete labels, is converted: listed = positive,
  every other class negative); other columns and the row order are kept;
* a features ``.npz``: its ``observed_train`` (int8 [N_train, C]; made from a complete ``Y_train`` when
  absent) is updated, every other array is copied; images are ``train/<row>`` as in
  ``features:`` datasets;
* an observed-label ``.npz`` (``mlrkit prepare``, or a run's ``observed_labels.npz``), matched by
  ``row``; the result trains with ``--labels NEW.npz``.

An answer for an image or class that does not exist, two different answers for one entry, or an
answer that contradicts an existing annotation is an error naming the file, line and value.
"""

from __future__ import annotations

import csv
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

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
                  classes: str | Path | None = None) -> MergeReport:
    """Merge an answers file into a manifest, a features ``.npz`` or an observed-label ``.npz``; write ``out``."""
    target, out = Path(target), Path(out)
    if not target.is_file():
        raise DataError(f"labels to update not found: {target}")
    if out.resolve() == target.resolve():
        raise MlrkitError(f"--out {out} is the input file: write the merged labels to a new file")
    answers = read_answers(answers_path)
    if target.suffix == ".npz":
        with _open_npz(target) as z:
            files = list(z.files)
        if "observed" in files and "meta" in files:
            report = _apply_to_observed_file(target, answers, out)
        elif "X_train" in files:
            report = _apply_to_features(target, answers, out)
        else:
            raise DataError(f"{target}: neither a features file (X_train, ...) nor an observed-label file "
                            f"(observed, meta); arrays: {files}")
    else:
        report = _apply_to_manifest(target, answers, out, classes)
    report.unanswered = answers.unanswered
    return report


def _open_npz(path: Path):
    try:
        z = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(f"{path}: not a readable .npz file ({e})") from None
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise DataError(f"{path}: a single array, not an .npz archive")
    return z


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
    with _open_npz(target) as z:
        try:
            arrays = {k: z[k] for k in z.files}
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
            raise DataError(f"{target}: cannot read arrays ({e})") from None
    if "observed_train" in arrays:
        observed = check_observed(arrays["observed_train"], f"{target}: observed_train")
    elif "Y_train" in arrays:
        y = np.asarray(arrays["Y_train"])
        if y.ndim != 2 or not np.isin(y, (0, 1)).all():
            raise DataError(f"{target}: Y_train must be a 0/1 [N, C] array, got {y.dtype} {y.shape}")
        observed = np.where(y == 1, POSITIVE, NEGATIVE).astype(np.int8)  # complete labels: every entry known
    else:
        raise DataError(f"{target}: has neither observed_train nor Y_train")
    n, c = observed.shape
    names = [str(s) for s in arrays["class_names"]] if "class_names" in arrays else [f"class{j}" for j in range(c)]
    if len(names) != c:
        raise DataError(f"{target}: class_names has {len(names)} entries, the labels have {c} classes")
    image_rows = {f"train/{i}": i for i in range(n)}
    rows, cols, vals, where = _resolve(answers, names, image_rows, n)
    new, report = merge_answers(observed, rows, cols, vals, where)
    arrays["observed_train"] = new
    from mlrkit.utils import atomic_write

    with atomic_write(out if out.suffix == ".npz" else out.with_suffix(".npz")) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
    return report


# --------------------------------------------------------------------------- manifests


@dataclass
class _ManifestRow:
    line: int
    record: dict  # the row as read (CSV: column -> text; JSONL: the object)
    image: str
    positives: list[str]
    negatives: list[str] | None  # None: complete labels (every other class negative)


def _split_names(raw: str, where: str) -> list[str]:
    if not raw.strip():
        return []
    names = [x.strip() for x in raw.split("|")]
    if any(not x for x in names):
        raise DataError(f"{where}: empty class name in {raw!r}")
    return names


def _read_manifest_rows(path: Path) -> tuple[str, list[str] | None, list[_ManifestRow]]:
    """(format, CSV header or None, rows) of a manifest, three-state or complete."""
    from mlrkit.data.datasets.manifest import _is_jsonl

    text = _read_text(path, "manifest")
    rows: list[_ManifestRow] = []
    if _is_jsonl(path, text):
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}:{e.colno}: malformed JSON ({e.msg})") from None
            if not isinstance(obj, dict) or not isinstance(obj.get("image"), str):
                raise DataError(f"{path}:{lineno}: expected an object with a string 'image'")
            rows.append(_jsonl_row(path, lineno, obj))
        return "jsonl", None, rows
    header, table = _csv_table(path, text, "manifest")
    three = "positives" in header or "negatives" in header
    if "image" not in header or (not three and "labels" not in header):
        raise DataError(f"{path}:1: header {header} needs 'image' and 'positives'/'negatives' (or 'labels')")
    for lineno, fields in table:
        rec = dict(zip(header, fields))
        where = f"{path}:{lineno}"
        if three:
            pos = _split_names(rec.get("positives", ""), where)
            neg = _split_names(rec.get("negatives", ""), where)
        else:
            pos, neg = _split_names(rec["labels"], where), None
        rows.append(_ManifestRow(lineno, rec, rec["image"].strip(), pos, neg))
    return "csv", header, rows


def _jsonl_row(path: Path, lineno: int, obj: dict) -> _ManifestRow:
    where = f"{path}:{lineno}"

    def names(key: str) -> list[str]:
        v = obj.get(key, [])
        if not isinstance(v, list) or not all(isinstance(x, str) and x.strip() for x in v):
            raise DataError(f"{where}: '{key}' must be a list of class names, got {v!r}")
        return [x.strip() for x in v]

    if "positives" in obj or "negatives" in obj:
        return _ManifestRow(lineno, obj, obj["image"].strip(), names("positives"), names("negatives"))
    if "labels" not in obj:
        raise DataError(f"{where}: needs 'positives'/'negatives' (or 'labels')")
    return _ManifestRow(lineno, obj, obj["image"].strip(), names("labels"), None)


def _apply_to_manifest(target: Path, answers: AnswerSet, out: Path, classes: str | Path | None) -> MergeReport:
    fmt, header, rows = _read_manifest_rows(target)
    if not rows:
        raise DataError(f"{target}: the manifest has no images")
    if classes is not None:
        from mlrkit.data.datasets.manifest import read_class_list

        names = read_class_list(Path(classes))
    else:
        names = sorted({x for r in rows for x in r.positives + (r.negatives or [])})
        if not names:
            raise DataError(f"{target}: no image has any label, so there are no classes (pass --classes FILE)")
    col = {n: j for j, n in enumerate(names)}
    observed = np.zeros((len(rows), len(names)), dtype=np.int8)
    image_rows: dict[str, int] = {}
    for i, r in enumerate(rows):
        where = f"{target}:{r.line}"
        if r.image in image_rows:
            first = rows[image_rows[r.image]].line
            raise DataError(f"{where}: image {r.image!r} appears twice (first on line {first})")
        image_rows[r.image] = i
        for x in r.positives + (r.negatives or []):
            if x not in col:
                raise DataError(f"{where}: class {x!r} is not in the class list {classes}")
        both = set(r.positives) & set(r.negatives or [])
        if both:
            raise DataError(f"{where}: class {sorted(both)[0]!r} is both positive and negative")
        if r.negatives is None:
            observed[i] = NEGATIVE
        else:
            observed[i, [col[x] for x in r.negatives]] = NEGATIVE
        observed[i, [col[x] for x in r.positives]] = POSITIVE
    a_rows, a_cols, a_vals, where = _resolve(answers, names, image_rows, len(rows))
    new, report = merge_answers(observed, a_rows, a_cols, a_vals, where)
    _write_manifest(out, fmt, header, rows, names, new)
    return report


def _write_manifest(out: Path, fmt: str, header: list[str] | None, rows: list[_ManifestRow], names: list[str],
                    observed: np.ndarray) -> None:
    from mlrkit.utils import atomic_write

    def sets(i: int) -> tuple[list[str], list[str]]:
        return ([names[j] for j in np.flatnonzero(observed[i] == POSITIVE)],
                [names[j] for j in np.flatnonzero(observed[i] == NEGATIVE)])

    with atomic_write(out) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            if fmt == "jsonl":
                for i, r in enumerate(rows):
                    obj = {k: v for k, v in r.record.items() if k != "labels"}
                    obj["positives"], obj["negatives"] = sets(i)
                    fh.write(json.dumps(obj, ensure_ascii=False) + "\n")
                return
            assert header is not None
            cols = [h for h in header if h != "labels"]
            for extra in ("positives", "negatives"):
                if extra not in cols:
                    cols.append(extra)
            w = csv.writer(fh, lineterminator="\n")
            w.writerow(cols)
            for i, r in enumerate(rows):
                pos, neg = sets(i)
                rec = {**r.record, "positives": "|".join(pos), "negatives": "|".join(neg)}
                w.writerow([rec.get(h, "") for h in cols])
