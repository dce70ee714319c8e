"""``pytest -m badinput --reliability-table=docs/reliability.md``: the table of that page, made from the tests.

Every ``badinput`` test's docstring starts with ``<kind> | <input tried> | <what the test checks>``; the
table lists each test with that text, its number of cases (parametrisations) and how many passed in
this very run. Hooks are imported by ``tests/conftest.py``.
"""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

KINDS = ("no code run", "clear error", "nothing silently accepted", "nothing lost")
_OUTCOMES: dict[str, dict[str, int]] = {}


def pytest_addoption(parser) -> None:
    parser.addoption("--reliability-table", metavar="FILE", default=None,
                     help="write the Markdown table of the badinput tests run (docs/reliability.md) to FILE")


def pytest_runtest_logreport(report) -> None:
    if "badinput" not in report.keywords:
        return
    func = report.nodeid.split("[")[0]
    out = _OUTCOMES.setdefault(func, {})
    case = report.nodeid
    if report.when == "call" or report.failed or report.skipped:
        out[case] = "passed" if report.passed and report.when == "call" else \
            ("failed" if report.failed else "skipped")


def describe(func_nodeid: str) -> tuple[str, str, str]:
    """(kind, input tried, what is checked) from the test's docstring."""
    path, name = func_nodeid.split("::")
    module = importlib.import_module(path.replace("/", ".").removesuffix(".py"))
    doc = " ".join((inspect.getdoc(getattr(module, name)) or "").split("\n\n")[0].split())
    parts = [p.strip() for p in doc.split(" | ")]
    if len(parts) != 3 or parts[0] not in KINDS:
        raise ValueError(f"{func_nodeid}: docstring must start with '<kind> | <input> | <check>' (kinds: {KINDS})")
    return parts[0], parts[1], parts[2]


def table(outcomes: dict[str, dict[str, str]]) -> str:
    rows = []
    for func in sorted(outcomes, key=lambda f: (KINDS.index(describe(f)[0]), f)):
        kind, tried, check = describe(func)
        cases = outcomes[func]
        passed = sum(v == "passed" for v in cases.values())
        rows.append(f"| {kind} | {tried} | {check} | {len(cases)} | {passed}/{len(cases)} | "
                    f"`{func.split('::')[1]}` |")
    head = ("| kind | input tried | what the test checks | cases | passed | test |\n"
            "|---|---|---|---:|---:|---|")
    total = sum(len(c) for c in outcomes.values())
    ok = sum(v == "passed" for c in outcomes.values() for v in c.values())
    return head + "\n" + "\n".join(rows) + f"\n\n{len(outcomes)} tests, {total} cases, {ok} passed.\n"


def pytest_sessionfinish(session) -> None:
    target = session.config.getoption("--reliability-table", None)
    if target and _OUTCOMES and not hasattr(session.config, "workerinput"):
        write_table(Path(target), table(_OUTCOMES))


BEGIN, END = "<!-- badinput table: begin -->", "<!-- badinput table: end -->"


def write_table(path: Path, text: str) -> None:
    """Replace the text between the BEGIN/END markers of ``path`` (docs/reliability.md), or write the file."""
    old = path.read_text() if path.is_file() else ""
    if BEGIN in old and END in old:
        head, rest = old.split(BEGIN, 1)
        path.write_text(head + BEGIN + "\n" + text + END + rest.split(END, 1)[1])
    else:
        path.write_text(text)
