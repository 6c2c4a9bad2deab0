"""The mutation score per module after `mutmut run` (called by `make mutation`).

score = killed / (killed + survived), where "killed" counts the mutants a test failed on (or timed out on: an endless
loop is caught), "survived" every other one (mutmut's survived, no tests, suspicious), minus the mutants judged
equivalent: those listed in
tests/mutation_equivalents.txt as ``function | the mutated line | why no behaviour changes``. A listed line is matched
against the mutant's diff (`mutmut show`), so the list survives renumbering. Unmatched survivors are printed with
their diff: each is a missing test or a new equivalent to list. Exits 1 when a module scores below ``BAR`` (85 %).

    python tests/mutation_score.py            # after `mutmut run`
"""

from __future__ import annotations

import ast
import collections
import difflib
import functools
import re
import subprocess
import sys
from pathlib import Path

EQUIVALENTS = Path(__file__).with_name("mutation_equivalents.txt")
BAR = 0.85  # the score every module must reach (exit status 1 below it)
MUTMUT = str(Path(sys.executable).with_name("mutmut"))


def results() -> dict[str, str]:
    out = subprocess.run([MUTMUT, "results", "--all", "true"], capture_output=True, text=True, check=True).stdout
    found = {}
    for line in out.splitlines():
        name, sep, status = line.strip().rpartition(": ")
        if sep and split_name(name) and status != "skipped":
            found[name] = status
    return found


def split_name(name: str) -> tuple[str, str] | None:
    """(module, mutant's function in mutants/) of a mutant name: functions are ``module.x_name__mutmut_N``, methods
    ``module.xǁClassǁname__mutmut_N``; None for anything else mutmut lists."""
    found = re.match(r"^(.+?)\.(xǁ.+|x_.+)$", name)
    return (found[1], found[2]) if found else None


def function_of(name: str) -> str:
    """The mutated function as module.function or module.Class.method."""
    module, mangled = split_name(name)
    return f"{module}.{mangled.rsplit('__mutmut_', 1)[0][2:].replace('ǁ', '.')}"


@functools.cache
def _mutant_sources(module: str) -> dict[str, list[str]]:
    """Function name -> its source lines, for every function of mutmut's generated copy of ``module``."""
    path = Path("mutants") / (module.replace(".", "/") + ".py")
    source = path.read_text()
    lines = source.splitlines()
    return {
        n.name: lines[n.lineno - 1 : n.end_lineno]
        for n in ast.walk(ast.parse(source))
        if isinstance(n, ast.FunctionDef)
    }


def mutated_line(name: str) -> str:
    """The lines a mutant adds to its function (what `mutmut show` marks with +), read from mutants/ directly."""
    module, rest = split_name(name)
    sources = _mutant_sources(module)
    original = sources[rest.rsplit("__mutmut_", 1)[0] + "__mutmut_orig"]
    mutant = sources[rest]
    added = [line[1:].strip() for line in difflib.ndiff(original[1:], mutant[1:]) if line.startswith("+ ")]
    return " / ".join(added)


def equivalents() -> dict[str, set[str]]:
    listed: dict[str, set[str]] = collections.defaultdict(set)
    for line in EQUIVALENTS.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            function, mutated, _why = (part.strip() for part in line.split(" | ", 2))
            listed[function].add(mutated)
    return listed


def main() -> int:
    found = results()
    if not found:
        print("no mutmut results: run `mutmut run` first")
        return 1
    listed = equivalents()
    per_module: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    unexplained = []
    for name, status in sorted(found.items()):
        module, function = split_name(name)[0], function_of(name)
        if status in ("killed", "timeout"):
            per_module[module]["killed"] += 1
            continue
        mutated = mutated_line(name)
        if mutated in listed.get(function, set()):
            per_module[module]["equivalent"] += 1
        else:
            per_module[module]["survived"] += 1
            unexplained.append((name, status, mutated))
    print(f"{'module':<28} {'killed':>7} {'survived':>9} {'equivalent':>11} {'score':>7}")
    total = collections.Counter()
    for module, c in sorted(per_module.items()):
        total.update(c)
        score = c["killed"] / max(c["killed"] + c["survived"], 1)
        print(f"{module:<28} {c['killed']:>7} {c['survived']:>9} {c['equivalent']:>11} {score:>7.1%}")
    score = total["killed"] / max(total["killed"] + total["survived"], 1)
    print(f"{'all':<28} {total['killed']:>7} {total['survived']:>9} {total['equivalent']:>11} {score:>7.1%}")
    for name, status, mutated in unexplained:
        print(f"  {status:<10} {name}: {mutated}")
    low = [m for m, c in per_module.items() if c["killed"] < BAR * (c["killed"] + c["survived"])]
    if low:
        print(f"below {BAR:.0%}: {', '.join(sorted(low))}")
    return 1 if low else 0


if __name__ == "__main__":
    sys.exit(main())
