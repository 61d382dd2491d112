"""Every artifact name and key is written once, in detox_pa/artifacts.py, and the shell reads it from there."""

from __future__ import annotations

import ast
from pathlib import Path

from detox_pa import artifacts as A

REPO = Path(__file__).resolve().parents[1]
# parts of artifact names (a string holding one builds or names an artifact) and whole keys
NAME_PARTS = ("mapping_model", "detox_pa_teacher", "detox_pa_run", ".final.tmp", ".journal", "_records.jsonl",
              "_report.md", "_report.png", ".meta.json", "prompt-response pairs", "A-Za-z0-9_-")
WHOLE_KEYS = (A.MATRIX_KEY, A.STEER_KEY, A.PAIRS_KEY, "rtp_")  # "rtp_" + split + ".jsonl": the prompt files


def python_files() -> list[Path]:
    files = [p for p in REPO.glob("*.py")] + list((REPO / "detox_pa").glob("*.py"))
    files += list((REPO / "scripts").glob("*.py")) + list((REPO / "bench").glob("*.py"))
    return sorted(files)


def code_strings(path: Path) -> list[tuple[int, str]]:
    """Every string constant of a file but its docstrings (module, class and function)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    return [(n.lineno, n.value) for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings]


def test_artifact_names_and_keys_are_written_only_in_the_artifacts_module():
    found = []
    for path in python_files():
        if path == REPO / "detox_pa" / "artifacts.py":
            continue
        for line, s in code_strings(path):
            if any(part in s for part in NAME_PARTS) or s in WHOLE_KEYS:
                found.append(f"{path.relative_to(REPO)}:{line}: {s[:70]!r}")
    assert not found, "\n".join(found)


def test_the_artifacts_module_itself_holds_them():
    strings = [s for _, s in code_strings(REPO / "detox_pa" / "artifacts.py")]
    for part in NAME_PARTS:
        assert any(part in s for s in strings), part
    for key in WHOLE_KEYS:
        assert key in strings, key


def test_the_shell_reads_the_names_from_the_generated_file():
    assert (REPO / "scripts" / "artifacts.env").read_text() == A.shell_env(), \
        "scripts/artifacts.env is out of date: python -m detox_pa.artifacts > scripts/artifacts.env"
    for sh in [*REPO.glob("*.sh"), *(REPO / "scripts").glob("*.sh"), *(REPO / "bench").glob("*.sh")]:
        code = "\n".join(ln for ln in sh.read_text().splitlines() if not ln.lstrip().startswith("#"))
        for name in (A.MATRIX_FILE, A.TEACHER_SIDECAR, A.MATRIX_SIDECAR, "_toxicity.json", "_ppl.json"):
            assert name not in code, f"{sh.name} spells {name} (source scripts/artifacts.env instead)"


def test_paths_follow_the_paper_and_our_conventions(tmp_path):
    assert A.score_paths("runs/g.json", "toxicity")["summary"] == Path("runs/g_toxicity.json")
    assert A.score_paths("g.json", "ppl", "judge2")["records"] == Path("g_ppl_judge2_records.jsonl")
    assert A.score_paths("g.json", "toxicity", output="x/y.json")["meta"] == Path("x/y.meta.json")
    assert A.journal_path(tmp_path / "g.json", 1, 2).name == "g.json.journal.rank1.jsonl"
    assert A.generation_meta_path("o/g.json") == Path("o/g.meta.json")
    for name in ("g_toxicity.json", "g_toxicity_b2.json", "g_ppl.json", "g_ppl_x.json", "g_report.md", "gx_ppl.json"):
        (tmp_path / name).write_text("[]")
    found = A.find_score_files(tmp_path / "g.json")
    assert [t for t, _ in found["toxicity"]] == ["", "b2"] and [t for t, _ in found["ppl"]] == ["", "x"]
