"""``--help`` of the commands, from the one schema (stdlib and ``conf/`` only: no Lightning).

``python -m hmrnn.train --help`` lists the group choices (the files of ``conf/experiment``,
``conf/model``, ``conf/data`` with the first sentence of each file's comment) and every dotted key
with its type, default and meaning: the attribute docstrings of :mod:`hmrnn.config`, read from its
source so that the help cannot drift from the schema. The commands that read a checkpoint
(visualize, generate, evaluate) keep their options here, in :data:`COMMANDS`, with a line each.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import itertools
import textwrap
from dataclasses import dataclass, fields, is_dataclass
from typing import Any

from hmrnn import config as schema
from hmrnn.compose import GROUPS, choices, conf_dir

HELP_FLAGS = ("-h", "--help")


@dataclass(frozen=True)
class Option:
    """One ``key=value`` option of a command that reads a checkpoint."""

    default: str
    help: str


@dataclass(frozen=True)
class Command:
    """A command's usage line, what it does, and its options (in the order shown)."""

    usage: str
    summary: str
    options: dict[str, Option]

    def defaults(self) -> dict[str, str]:
        return {key: option.default for key, option in self.options.items()}


COMMANDS: dict[str, Command] = {
    "hmrnn.visualize": Command(
        "python -m hmrnn.visualize <checkpoint> [key=value ...]",
        "Draw the boundaries a trained model uses (the paper's figures) as PNG and SVG.",
        {
            "split": Option("valid", "the data split to draw from: valid, test or train"),
            "offset": Option("0", "first symbol of the excerpt (handwriting: the sequence index)"),
            "length": Option("450", "symbols in the excerpt (90 a line)"),
            "warmup": Option("1000", "symbols before the excerpt that warm up the state"),
            "out": Option("", "output folder; empty: <run folder>/figures"),
        },
    ),
    "hmrnn.generate": Command(
        "python -m hmrnn.generate <checkpoint> [key=value ...]",
        "Sample text (with the boundaries used marked) or handwriting from a trained model.",
        {
            "prompt": Option("", "text fed before sampling (symbols of the model's vocabulary)"),
            "length": Option("700", "symbols (or pen points) to sample"),
            "temperature": Option("1.0", "softmax temperature; below 1 is more conservative"),
            "seed": Option("0", "seed of the sampler: the same seed gives the same output"),
            "marks": Option("true", "text: mark boundaries, | layer 1, || layer 2 (false: plain)"),
            "out": Option("sample", "handwriting: the PNG/SVG files' path without suffix"),
            "layer": Option("2", "handwriting: the layer whose segments colour the strokes"),
        },
    ),
    "hmrnn.evaluate": Command(
        "python -m hmrnn.evaluate <checkpoint> [key=value ...]",
        "Evaluate a trained model on a split (the state carried through the whole split); "
        "writes nothing into its run.",
        {
            "split": Option("test", "the data split: test or valid"),
            "local_dir": Option("", "take the data from this folder or file (data.local_dir)"),
            "out": Option("", "also write the metrics to this JSON file"),
        },
    ),
}


def print_help_if_asked(argv: list[str], command: str) -> bool:
    """Print ``command``'s help and return True when ``argv`` asks for it (``-h``, ``--help``)."""
    if not any(arg in HELP_FLAGS for arg in argv):
        return False
    print(train_help() if command == "hmrnn.train" else checkpoint_command_help(command))
    return True


def checkpoint_command_help(command: str) -> str:
    spec = COMMANDS[command]
    width = max(len(key) for key in spec.options) + 2
    lines = [f"usage: {spec.usage}", "", spec.summary, "", "options (key=value):"]
    for key, option in spec.options.items():
        default = option.default if option.default else '""'
        lines.append(f"  {key:<{width}}{option.help} (default: {default})")
    return "\n".join(lines)


def train_help() -> str:
    lines = [
        "usage: python -m hmrnn.train [experiment=NAME] [model=NAME] [data=NAME] [key=value ...]",
        "       python -m hmrnn.train resume=<run folder or checkpoint> [trainer.* / logger.*]",
        "",
        "Train, validate and test a model. Settings are layered: the schema's defaults <- "
        "conf/data/<data>.yaml <- conf/model/<model>.yaml <- conf/experiment/<experiment>.yaml "
        "<- the command line's key=value pairs. model.name=X and data.name=X are the same as "
        "model=X and data=X.",
    ]
    lines = [*lines[:3], *textwrap.wrap(lines[3], 100)]
    for group in GROUPS:
        lines += ["", f"{group}=NAME, one of the files in {conf_dir().name}/{group}/:"]
        for name in choices(group):
            lines += wrapped(name, first_sentence(conf_dir() / group / f"{name}.yaml"))
    lines += ["", "keys (key=value), with their type and default:"]
    for section, key, kind, default, meaning in schema_rows():
        if section:
            lines += ["", section]
        lines += wrapped(f"{key}: {kind} = {default}", meaning)
        if key in schema.CHOICES:
            lines.append(f"      choices: {' | '.join(schema.choices_of(key))}")
    return "\n".join(lines)


def wrapped(head: str, text: str) -> list[str]:
    """``  head`` then ``text`` wrapped to 100 columns, indented under it."""
    return [
        f"  {head}",
        *textwrap.wrap(text, 100, initial_indent=" " * 6, subsequent_indent=" " * 6),
    ]


def first_sentence(path: Any) -> str:
    """The first sentence of a YAML file's leading comment block."""
    if not path.is_file():
        return "(registered in code; no YAML file of values)"
    comment = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        comment.append(line.lstrip("#").strip())
    text = " ".join(comment)
    end = text.find(". ")
    return text if end < 0 else text[: end + 1]


def schema_rows() -> list[tuple[str, str, str, str, str]]:
    """(section heading or "", dotted key, type, default, first line of its docstring) for every
    key of :class:`hmrnn.config.Config`, in the schema's order."""
    docs = attribute_docs()
    rows: list[tuple[str, str, str, str, str]] = []
    top = schema.Config()
    for f in fields(schema.Config):
        value = getattr(top, f.name)
        if is_dataclass(value):
            heading = f"{f.name}.*: {first_line(inspect.getdoc(type(value)) or '')}"
            for i, g in enumerate(fields(value)):
                doc = docs.get((type(value).__name__, g.name), "")
                key, default = f"{f.name}.{g.name}", show(getattr(value, g.name))
                rows.append(
                    (heading if i == 0 else "", key, type_name(g.type), default, first_line(doc))
                )
        else:
            doc = docs.get(("Config", f.name), "")
            rows.append(("", f.name, type_name(f.type), show(value), first_line(doc)))
    return rows


def attribute_docs() -> dict[tuple[str, str], str]:
    """(class, field) -> the string literal under the field in hmrnn/config.py's source."""
    tree = ast.parse(inspect.getsource(schema))
    docs: dict[tuple[str, str], str] = {}
    for node in tree.body:
        if not isinstance(node, ast.ClassDef):
            continue
        for stmt, after in itertools.pairwise(node.body):
            if (
                isinstance(stmt, ast.AnnAssign)
                and isinstance(stmt.target, ast.Name)
                and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)
            ):
                docs[(node.name, stmt.target.id)] = inspect.cleandoc(after.value.value)
    return docs


def first_line(doc: str) -> str:
    """A docstring's first sentence, on one line."""
    text = " ".join(doc.split())
    end = text.find(". ")
    return text if end < 0 else text[: end + 1]


def type_name(annotation: Any) -> str:
    return str(annotation).replace("typing.", "")


def show(value: Any) -> str:
    if dataclasses.is_dataclass(value):
        return "..."
    return repr(value) if isinstance(value, str) else str(value)
