"""Project hygiene a user relies on: the README's commands, CI, packaging and import weight."""

import re
import subprocess
import sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the dev extra installs tomli
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def readme_commands() -> list[str]:
    return re.findall(r"```bash\n(python3 -m venv .*)\n```", README)


def test_readme_has_exactly_two_setup_commands_and_ci_runs_the_test_one_verbatim():
    commands = readme_commands()
    assert len(commands) == 2, commands
    run_main, run_tests = commands
    assert run_main.endswith("cxmind demo") and 'pip install ".[dev]"' not in run_main
    assert '".[dev]"' in run_tests and "pytest" in run_tests
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert run_tests in ci
    assert "cxmind demo" in ci


def test_pyproject_is_the_single_source_of_metadata():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    deps = " ".join(project["dependencies"])
    for name in ("trl", "transformers", "peft", "accelerate", "datasets", "pillow", "torch", "torchvision"):
        assert re.search(rf"\b{name}\b", deps), name
    assert "trl>=1.16,<1.17" in project["dependencies"]
    extras = project["optional-dependencies"]
    assert {"vllm", "deepspeed", "quant", "flash", "eval", "dev"} <= set(extras)
    setup_cfg = (ROOT / "setup.cfg").read_text(encoding="utf-8")
    assert "[metadata]" not in setup_cfg and "install_requires" not in setup_cfg
    assert project["license"] == "Apache-2.0" and "Apache License" in (ROOT / "LICENSE").read_text()


def test_importing_cxmind_needs_no_gpu_extra():
    code = (
        "import sys, cxmind, cxmind.format, cxmind.vocab, cxmind.rewards, cxmind.testing, cxmind.cli\n"
        "import cxmind.training, cxmind.hub, cxmind.demo\n"
        "heavy = {'vllm', 'deepspeed', 'bitsandbytes', 'flash_attn'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_version_and_help_run_as_commands():
    version = subprocess.run([sys.executable, "-m", "cxmind", "--version"], capture_output=True, text=True)
    assert version.returncode == 0 and "cxmind 0." in version.stdout
    for command in (["demo", "--help"], ["train", "--help"]):
        done = subprocess.run([sys.executable, "-m", "cxmind", *command], capture_output=True, text=True)
        assert done.returncode == 0 and "usage: cxmind" in done.stdout, done.stderr
