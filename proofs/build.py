"""Build the LaTeX proofs to PDF when a TeX engine is installed, and skip clearly otherwise.

Usage: ``python -m iga_theory.proofs.build [OUT_DIR]``. ``latexmk -pdf`` is preferred
(it reruns for references); ``pdflatex`` run twice is the fallback. Without either,
nothing is built and the returned message names what to install.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
from pathlib import Path

logger = logging.getLogger(__name__)

PROOFS_DIR = Path(__file__).resolve().parent
# A TeX run that takes longer than this is stuck (e.g. waiting for input despite nonstopmode).
TEX_TIMEOUT_S = 300


def tex_sources() -> list[Path]:
    """List the standalone LaTeX documents of the proofs (theorem1.tex, theorem2.tex, theorem3.tex)."""
    return sorted(PROOFS_DIR.glob("theorem*.tex"))


def build(out_dir: str | Path | None = None) -> dict:
    """Compile every proof to PDF in ``out_dir`` (default: ``proofs-pdf`` in the working directory).

    Returns
    -------
    dict with ``built`` (list of PDF paths), ``engine`` (the command used or None) and
    ``message``. Raises RuntimeError when an installed engine fails on a document.
    """
    out_dir = Path(out_dir) if out_dir is not None else Path.cwd() / "proofs-pdf"
    out_dir.mkdir(parents=True, exist_ok=True)
    if shutil.which("latexmk"):
        engine = "latexmk"
    elif shutil.which("pdflatex"):
        engine = "pdflatex"
    else:
        message = ("proof build skipped: neither latexmk nor pdflatex is installed "
                   "(install a TeX distribution, e.g. `apt-get install texlive-latex-extra latexmk`)")
        logger.warning(message)
        return {"built": [], "engine": None, "message": message}

    built = []
    for source in tex_sources():
        if engine == "latexmk":
            commands = [["latexmk", "-pdf", "-interaction=nonstopmode", "-halt-on-error",
                         f"-outdir={out_dir}", str(source)]]
        else:
            command = ["pdflatex", "-interaction=nonstopmode", "-halt-on-error",
                       f"-output-directory={out_dir}", str(source)]
            commands = [command, command]  # the second pass resolves references
        for command in commands:
            result = subprocess.run(command, cwd=PROOFS_DIR, capture_output=True, text=True, timeout=TEX_TIMEOUT_S)
            if result.returncode != 0:
                raise RuntimeError(f"{engine} failed on {source.name} (exit {result.returncode}):\n"
                                   f"{result.stdout[-2000:]}")
        built.append(out_dir / f"{source.stem}.pdf")
    return {"built": built, "engine": engine, "message": f"built {len(built)} PDF(s) with {engine} in {out_dir}"}


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns 0 when built or skipped, 1 when a build failed."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        result = build(argv[0] if argv else None)
    except (RuntimeError, subprocess.TimeoutExpired) as error:
        print(error)
        return 1
    print(result["message"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
