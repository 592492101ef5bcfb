"""The commands in README.md and docs/*.md run as written from a fresh
clone after the README's set-up, which installs into .venv without
activating it: no bare ``anomvae`` (or ``python``, ``pip``, ``pytest``),
every file they read is shipped or made by an earlier command, and every
file they write is ignored by git or outside the repository."""

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
from click import Context

from anomvae.cli import main

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_BLOCKS = {"", "bash", "sh", "shell", "console"}
# Programs only the virtual environment has, or whose bare name may be
# another one (python 2, the system's pip) or none at all.
VENV_PROGRAMS = {"anomvae", "python", "pip", "pytest"}
# Words that may come before a command, and what separates commands.
PREFIXES = {"sudo", "time", "exec", "nohup", "env", "then", "do", "else", "!"}
SEPARATORS = {"&&", "||", ";", "|", "(", ")", "&", ";;"}
# anomvae options that take no value, from the commands themselves.
FLAGS = {
    opt for command in [main, *main.commands.values()]
    for param in command.get_params(Context(command, help_option_names=["-h", "--help"]))
    if getattr(param, "is_flag", False) for opt in param.opts + param.secondary_opts
}
OUTPUT_OPTIONS = {"-o", "--output", "--summary-json", "--heatmaps"}


def shell_commands(page):
    """(line number, command) for each command in the page's shell code
    blocks: continuation lines joined, comments dropped."""
    language, pending, start = None, "", 0
    for number, line in enumerate(page.read_text().splitlines(), 1):
        fence = re.match(r"\s*```(\S*)", line)
        if fence:
            language = fence[1] if language is None else None
            continue
        if language not in SHELL_BLOCKS:
            continue
        line = re.sub(r"(^|\s)#.*", "", line).rstrip()
        if not pending:
            start = number
        pending += line
        if pending.endswith("\\"):
            pending = pending[:-1]
            continue
        if pending.strip():
            yield start, re.sub(r"^\s*\$\s+", "", pending).strip()
        pending = ""


def _simple_commands(command):
    """The words of each simple command in ``command``, split as the shell
    splits them at ``&&``, ``||``, ``;``, ``|``, ``(`` and ``$(``."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    try:
        tokens = list(lexer)
    except ValueError:  # an unclosed quote: not a command
        return
    words = []
    for token in tokens:
        if token in SEPARATORS or token == "$":
            if words:
                yield words
            words = []
        else:
            words.append(token)
    if words:
        yield words


def command_words(command):
    """The program word of each simple command in ``command``."""
    for words in _simple_commands(command):
        words = [w for w in words if not re.fullmatch(r"\w+=.*", w)]
        while words and words[0] in PREFIXES:
            words = [w for w in words[1:] if not w.startswith("-") and not re.fullmatch(r"\w+=.*", w)]
        if words:
            yield words[0]


def all_commands():
    return [(page, number, command) for page in PAGES for number, command in shell_commands(page)]


def test_the_pages_have_commands_to_check():
    words = {word for _, _, command in all_commands() for word in command_words(command)}
    assert ".venv/bin/anomvae" in words and ".venv/bin/python" in words


def test_no_command_needs_an_activated_environment():
    bare = [f"{page.relative_to(ROOT)}:{number}: {command}" for page, number, command in all_commands()
            if VENV_PROGRAMS & set(command_words(command))]
    assert not bare, "write .venv/bin/anomvae (run from the repository root):\n" + "\n".join(bare)


def test_a_bare_command_is_caught(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("```bash\nanomvae score m x.csv\nls && anomvae fit \\\n  x.csv -o m  # a comment\n"
                    "X=1 python -m anomvae\nV='--models anomvae'; echo $(anomvae -h)\n```\n"
                    "```text\nanomvae [--version]\n```\n    .venv/bin/anomvae fit x\n")
    found = [list(command_words(command)) for _, command in shell_commands(page)]
    assert found == [["anomvae"], ["ls", "anomvae"], ["python"], ["echo", "anomvae"]]


def anomvae_runs(command):
    """Each ``.venv/bin/anomvae`` in ``command``: its subcommand, positional
    arguments and output paths (options and ``>`` redirections)."""
    for words in _simple_commands(command):
        if words[0] != ".venv/bin/anomvae" or len(words) < 2:
            continue
        positional, outputs, rest = [], [], words[2:]
        while rest:
            word = rest.pop(0)
            if word in (">", ">>"):
                outputs.append(rest.pop(0))
            elif word in OUTPUT_OPTIONS:
                outputs.append(rest.pop(0))
            elif word in FLAGS:
                continue
            elif word.startswith("-") and word != "-":
                if "=" not in word:
                    rest.pop(0)
            else:
                positional.append(word)
        yield words[1], positional, outputs


def script_outputs(command):
    """The folders the example scripts the pages run write into:
    ``examples/images.py --pngs DIR`` and ``examples/monitor.sh MODEL BATCH
    OUT_DIR``."""
    for words in _simple_commands(command):
        if "examples/images.py" in words and "--pngs" in words:
            yield words[words.index("--pngs") + 1].rstrip("/") + "/"
        if "examples/monitor.sh" in words:
            yield words[words.index("examples/monitor.sh") + 3].rstrip("/") + "/"


def test_every_file_a_command_reads_is_shipped_or_made_before():
    """A command that reads a file no one ships (the monitoring
    walkthrough once read history.csv and clean.csv) fails when copied."""
    missing = []
    for page in PAGES:
        made = []
        for number, command in shell_commands(page):
            made.extend(script_outputs(command))
            for subcommand, positional, outputs in anomvae_runs(command):
                for path in positional:
                    name = re.split(r"[*?\[]", path)[0].rstrip("/")
                    if path != "-" and not (ROOT / name).exists() and \
                            not any(name == m or name.startswith(m.rstrip("/") + "/") for m in made):
                        missing.append(f"{page.relative_to(ROOT)}:{number}: {path}")
                # calibrate without -o rewrites its model
                made.extend(outputs if subcommand != "calibrate" else outputs + positional[:1])
    assert not missing, "\n".join(missing)


@pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(), reason="needs git and a checkout")
def test_every_file_a_command_writes_is_ignored():
    outputs = set()
    for _, _, command in all_commands():
        outputs.update(script_outputs(command))
        outputs.update(path for _, _, paths in anomvae_runs(command) for path in paths)
    outputs = {path for path in outputs if path != "-" and not Path(path).is_absolute()}
    assert {"cardio_scores.csv", "model.anomvae", "heatmaps/", "digits/", "out/monitor/"} <= outputs
    checked = subprocess.run(["git", "check-ignore", "--no-index", "--stdin", "-v", "-n"],
                             input="\n".join(sorted(outputs)), capture_output=True, text=True, cwd=ROOT)
    not_ignored = [line.split("\t")[-1] for line in checked.stdout.splitlines() if line.startswith("::")]
    assert not not_ignored, f"add to .gitignore, or write outside the repository: {not_ignored}"
