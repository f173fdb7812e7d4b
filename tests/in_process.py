"""The command line run inside the test process (``submit.main``), for tests that read its
exit status and output without paying a subprocess's imports."""

from __future__ import annotations

from pathlib import Path


def run_main(args: list[str], capfd, monkeypatch, cwd: Path, presets_module: str | None = "tests.presets") -> tuple[int, str, str]:
    """``submit.main(args)`` in ``cwd``, with the test presets registered: (exit status, stdout, stderr)."""
    import submit

    monkeypatch.chdir(cwd)
    if presets_module:
        monkeypatch.setenv("X3D_PRESETS_MODULE", presets_module)
    capfd.readouterr()
    try:
        code = submit.main(args)
    except SystemExit as exc:
        code = exc.code
    out, err = capfd.readouterr()
    return code, out, err
