"""The command line's flags, declared once: each subcommand's parser and ``docs/cli.md`` are made
from the table below.

Each ``Flag`` names the subcommands that take it and its default *per subcommand* (``--views``:
evaluate 30, label 10, benchmark 30). Every subparser gets its own argparse actions, built from
the table for that subcommand alone: argparse's ``parents=`` shares one action object between
the parsers that inherit it, so a ``set_defaults`` on one subcommand (benchmark's 30 views)
used to become every subcommand's default (label ran 30 views while its help said 10).

To add a flag: one ``Flag(...)`` entry in ``FLAGS`` with the subcommands that take it; its value
reaches the job config's field of the same name (``job_config``; ``FIELD_FOR_DEST`` where the
names differ). Then regenerate the reference page:

    python -m jobs.cli > docs/cli.md

(tests/test_cli_doc.py holds the page equal to this output). Importing this module costs no
torch and no Ray: ``--help`` and every flag mistake answer at once.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field, fields
from typing import Any, Callable

from jobs.partition import parse_partition

__all__ = ["COMMANDS", "EXIT_USAGE", "FLAGS", "Flag", "build_parser", "cli_markdown", "job_config", "parse_actor_counts", "parse_args", "prog_name"]

COMMANDS = ("evaluate", "label", "benchmark")
DEFAULT_COMMAND = "evaluate"  # `submit.py --dataset sample` is `submit.py evaluate --dataset sample`
EXIT_USAGE = 2  # a mistake in the request (submit.py's table of exit statuses)
PRECISIONS = ("fp32", "bf16", "tf32")  # x3d.predict.PRECISIONS; not imported, it would load torch
ANN_FORMATS = ("auto", "video_list", "rawframe_list", "slowfast_csv", "path_list", "prefix")  # "auto" + jobs.datasets.FORMATS
#: --separator names for separators that are awkward to type in a shell
SEPARATOR_NAMES = {"tab": "\t", "\\t": "\t", "comma": ",", "semicolon": ";", "pipe": "|"}
ALL = COMMANDS
PROTOCOL_CHOICES = "<the presets' protocols>"  # --protocol's choices, filled in when the parser is built
SCORING = ("evaluate", "label")  # the jobs that write results shard by shard (jobs.options.RunOptions)
DATA = ("evaluate", "benchmark")  # the jobs that read a dataset


def prog_name() -> str:
    """``x3d-ray`` when run through the installed entry point, else ``submit.py``: usage lines
    and error messages name the command the user typed."""
    return "x3d-ray" if os.path.basename(sys.argv[0] or "") == "x3d-ray" else "submit.py"


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is a single line that says what to fix."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def _separator(text: str) -> str:
    """``--separator``: the character itself, or a name (``tab``) for one a shell makes awkward."""
    value = SEPARATOR_NAMES.get(text.lower(), text)
    if not value:
        raise argparse.ArgumentTypeError("expected a character such as tab or ',' (omit the flag for any whitespace)")
    return value


def _partition(text: str):
    """``--partition I/N`` (``jobs.partition``): a mistake is the parser's one line."""
    try:
        return parse_partition(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _gpus(text: str) -> str | int:
    """``--gpus``: ``auto`` or a whole number of GPUs, 0 for a run on CPUs."""
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected auto or a whole number of GPUs, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be auto or at least 0, got {value}")
    return value


def _number(convert: type, noun: str, accept: Callable[[Any], bool], rule: str):
    """An argparse type: ``convert``'s value of the text where ``accept`` holds (a NaN never
    passes a comparison), else the parser's one line: "expected <noun>" or "must be <rule>"."""
    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {noun}, got {text!r}") from None
        if not accept(value):
            raise argparse.ArgumentTypeError(f"must be {rule}, got {text}")
        return value
    return parse


_positive_int = _number(int, "a whole number", lambda v: v >= 1, "at least 1")
#: ``--decode-timeout`` and the other waits: 0 or less would fail every video (in label, spending
#: every good video's attempts) or stop at once
_positive_seconds = _number(float, "seconds", lambda v: v > 0, "more than 0 seconds")
#: ``--min-score``: a softmax score; above 1 no label is kept (and the videos count as done),
#: below 0 is a typo
_fraction = _number(float, "a score from 0 to 1", lambda v: 0.0 <= v <= 1.0, "from 0 to 1 (scores are probabilities)")


def parse_actor_counts(text: str) -> list[int]:
    """benchmark's ``--num-actors``: ``"1,2,4"`` -> ``[1, 2, 4]`` (sorted, unique); raises
    ValueError on anything else. Here, not in ``jobs.benchmark``, so that the command line
    checks the counts against this machine before torch and Ray load."""
    try:
        counts = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise ValueError(f"--num-actors: expected counts like 1,2,4, got {text!r}") from None
    if not counts or counts[0] < 1:
        raise ValueError(f"--num-actors: expected counts of at least 1 like 1,2,4, got {text!r}")
    return counts


@dataclass(frozen=True)
class Flag:
    """One flag: its names, option group, help, the subcommands that take it and its default.

    ``default`` and ``shown`` are a value, or a dict from subcommand to value. ``shown`` is what
    the help's ``[...]`` says when the parsed default (often None) stands for something the job
    decides ("the dataset's, else x3d_s"); without it the default itself is shown.
    ``help`` may name ``{presets}``, ``{protocols}`` or ``{datasets}``.
    """

    names: tuple[str, ...]
    group: str
    help: str
    commands: tuple[str, ...] = ALL
    default: Any = None
    shown: Any = None
    options: dict[str, Any] = field(default_factory=dict)  # add_argument's other keywords: type, choices, action...

    def _per(self, value: Any, command: str) -> Any:
        return value.get(command) if isinstance(value, dict) else value

    def default_for(self, command: str) -> Any:
        return self._per(self.default, command)

    def bracket_for(self, command: str) -> str | None:
        """The ``[...]`` of the help text: what happens when the flag is not given."""
        shown = self._per(self.shown, command)
        if shown is not None:
            return str(shown)
        default = self.default_for(command)
        if self.options.get("action") is argparse.BooleanOptionalAction:
            return "on" if default else "off"
        if default is None or isinstance(default, bool):
            return None
        return f"{default:g}" if isinstance(default, float) else str(default)

    def help_for(self, command: str, names: dict[str, str]) -> str:
        text = self.help.format(**names)
        bracket = self.bracket_for(command)
        return f"{text} [{bracket}]" if bracket else text


FLAGS: tuple[Flag, ...] = (
    # ---- data: what to read (evaluate, benchmark)
    Flag(("--dataset",), "data", "a registered dataset: {datasets} (jobs/datasets.toml), or one of --datasets FILE", DATA),
    Flag(("--datasets",), "data", "a TOML file adding or overriding dataset entries", DATA, options={"metavar": "FILE"}),
    Flag(("--data-root",), "data", "folder or s3:// prefix that annotation paths are relative to", DATA),
    Flag(("--ann-file", "--video-list"), "data", "annotation / video list file (local or s3://)", DATA, options={"dest": "ann_file"}),
    Flag(("--ann-format",), "data", "how the annotation file is laid out", DATA, shown="auto: from its first line",
         options={"choices": ANN_FORMATS}),
    Flag(("--separator",), "data", "field separator of the annotation file, for paths with spaces: tab, comma or the character",
         DATA, shown="any whitespace", options={"type": _separator, "metavar": "SEP"}),
    # ---- model: which model scores, and how (every job; jobs.options.ModelOptions)
    Flag(("--model",), "model", "model preset: {presets}",
         shown={"evaluate": "the dataset's, else x3d_s", "label": "x3d_s", "benchmark": "the dataset's, else x3d_s"}),
    Flag(("--checkpoint",), "model", "checkpoint path, https:// URL or s3:// URI",
         shown={"evaluate": "the preset's published weights", "label": "the preset's published weights",
                "benchmark": "random weights: speed does not depend on them"}),
    Flag(("--views",), "model", "test views per video", default={"evaluate": 30, "label": 10, "benchmark": 30},
         options={"type": int, "choices": [1, 3, 10, 30]}),
    Flag(("--protocol",), "model", "test protocol of the preset", shown="the preset's first, mmaction2",
         options={"choices": PROTOCOL_CHOICES}),
    Flag(("--precision",), "model", "forward pass: fp32 (the reference; TF32 off on GPUs), bf16 autocast, or tf32 (fp32 with TF32 convolutions and matmuls on GPUs; fp32 on CPUs)", default="fp32",
         options={"choices": PRECISIONS}),
    Flag(("--memory-format",), "model", "model memory layout", default="auto", shown="auto: channels_last_3d on CPU, NCDHW on GPU",
         options={"choices": ("auto", "channels_last_3d", "ncdhw")}),
    Flag(("--compile",), "model", "torch.compile the model in each actor (GPU: measure it with benchmark)", default=False,
         options={"action": "store_true"}),
    Flag(("--true-frames",), "model", "score the frames the protocol names, decoded in order, on the files where decord's seeking "
         "is inexact (open GOPs, edit lists); without it those files are read as MMAction2 reads them, for its scores (docs/frames.md)",
         default=False, options={"action": "store_true"}),
    # ---- cluster: where it runs (every job; jobs.options.ClusterOptions)
    Flag(("--address",), "cluster", "Ray cluster address", shown="RAY_ADDRESS, else a local Ray started for the run"),
    Flag(("--num-cpus",), "cluster", "CPUs of the local Ray started when no --address is given", shown="this machine's",
         options={"type": _positive_int}),
    Flag(("--actors-per-gpu",), "cluster", "model actors sharing each GPU (each holds 1/N of it); measure it with benchmark",
         default=1, options={"type": _positive_int}),
    Flag(("--batch-size",), "cluster", "clips per forward pass; given, also the most an actor call and a decode group hold", shown="sized for the device", options={"type": _positive_int}),
    Flag(("--decode-timeout",), "cluster", "seconds before a hung decode becomes an error row", default=300.0,
         options={"type": _positive_seconds}),
    Flag(("--quiet",), "cluster", "no progress output", default=False, options={"action": "store_true"}),
    # ---- run: jobs that write results shard by shard (jobs.options.RunOptions)
    Flag(("--num-actors",), "run", "model actors", SCORING, shown="one per GPU; one on a CPU-only cluster",
         options={"type": _positive_int}),
    Flag(("--shard-size",), "run", "videos per Parquet file", SCORING, default=256, options={"type": _positive_int}),
    Flag(("--gpus",), "run",
         "GPUs the run wants: N (0: score on CPUs), or auto: $X3D_GPUS where the cluster sets it (cluster/ launch files set "
         "it to their GPU pool's size), else every GPU the cluster has, an actor added for each that joins mid-run. "
         "Actors for GPUs not yet there wait for the autoscaler (docs/cluster.md)", SCORING, default="auto",
         options={"type": _gpus, "metavar": "N|auto"}),
    Flag(("--storage-outage",), "run",
         "seconds the storage may fail every read before the run stops (exit 4, docs/exit-codes.md); until then videos it "
         "cannot serve are retried, never error rows of their own", SCORING, default=120.0,
         options={"type": _positive_seconds}),
    Flag(("--gpu-wait",), "run", "seconds a run meant for GPUs waits for its first GPU before it stops with one line",
         SCORING, default=600.0, options={"type": _positive_seconds}),
    # ---- evaluate
    Flag(("--label-map",), "evaluate", "class names, one per line", ("evaluate",), shown="the dataset's, else the model's"),
    Flag(("--output",), "evaluate", "output folder or s3://bucket/prefix", ("evaluate",),
         shown="runs/<dataset>-<model>-<views>v-<UTC time>"),
    Flag(("--limit",), "evaluate", "only the first N videos", ("evaluate",), options={"type": _positive_int}),
    Flag(("--resume",), "evaluate", "continue an interrupted run (same --output)", ("evaluate",), default=False,
         options={"action": "store_true"}),
    Flag(("--retry-failed",), "evaluate",
         "with --resume: score the finished shards that hold error rows again (either kind of failure)", ("evaluate",),
         default=False, options={"action": "store_true"}),
    Flag(("--partition",), "evaluate",
         "score only part I of N of the run (shards whose number is I modulo N), so N drivers share one --output; "
         "the last to finish writes the summary (docs/scaling.md)", ("evaluate",), shown="the whole run",
         options={"type": _partition, "metavar": "I/N"}),
    Flag(("--save-probs",), "evaluate", "keep the full score vector per video", ("evaluate",), default=True,
         options={"action": argparse.BooleanOptionalAction}),
    # ---- features: embeddings from the forward that scores (evaluate and label; jobs.features.FeatureOptions)
    Flag(("--save-features",), "features", "store each video's feature vector beside its scores", SCORING, default=False,
         options={"action": "store_true"}),
    Flag(("--features",), "features",
         "which vector: backbone (pooled over space and time, MMAction2's FeatureHead; 432 for X3D-S/M) or pre_logits (the head's 2048)",
         SCORING, default="backbone", options={"choices": ("backbone", "pre_logits")}),
    Flag(("--features-dtype",), "features", "how the vectors are stored", SCORING, default="float16",
         options={"choices": ("float16", "float32")}),
    Flag(("--backfill-features",), "features", "with --save-features: relabel versions labelled before without features",
         ("label",), default=False, options={"action": "store_true"}),
    # ---- label
    Flag(("--input",), "label", "folder, s3://bucket/prefix/ (listed recursively) or a list file", ("label",),
         shown="required, except with --compact / --rebuild-index alone"),
    Flag(("--output",), "label", "output folder or s3://bucket/prefix; reruns skip what it holds", ("label",),
         shown="required", options={"required": True}),
    Flag(("--top-k",), "label", "labels kept per video", ("label",), default=5, options={"type": _positive_int}),
    Flag(("--min-score",), "label", "drop labels scoring below this", ("label",), default=0.0, options={"type": _fraction}),
    Flag(("--since",), "label", "only videos modified since an ISO date or a look-back like 36h / 7d", ("label",)),
    Flag(("--max-attempts",), "label", "give up on a failing video after N runs", ("label",), default=3,
         options={"type": _positive_int}),
    Flag(("--plan",), "label", "dry run: count what would be processed and estimate the time", ("label",), default=False,
         options={"action": "store_true"}),
    Flag(("--resume",), "label", "continue a crashed run (every run resumes anyway)", ("label",), default=False,
         options={"action": "store_true"}),
    Flag(("--partition",), "label",
         "not taken: concurrent label runs on one --output would race on its index of what is done; "
         "give each driver its own --input and --output", ("label",), shown="refused", options={"metavar": "I/N"}),
    Flag(("--retry-failed",), "label", "try the videos given up after --max-attempts once more", ("label",), default=False,
         options={"action": "store_true"}),
    Flag(("--compact",), "label", "merge small label files into big ones (after the run, if --input is given)", ("label",),
         default=False, options={"action": "store_true"}),
    Flag(("--target-file-mb",), "label", "--compact: size of the merged files in MB", ("label",), default=128.0,
         options={"type": float}),
    Flag(("--rebuild-index",), "label", "rebuild the label index from the label files (before the run, if --input is given)",
         ("label",), default=False, options={"action": "store_true"}),
    # ---- benchmark
    Flag(("--synthetic",), "benchmark", "random uint8 frames of a 340x256 video in place of decoding: no reading or decoding",
         ("benchmark",), default=False, shown="on when no dataset is given", options={"action": "store_true"}),
    Flag(("--limit",), "benchmark", "cycle through only the first N videos", ("benchmark",), shown="as many as the run reaches",
         options={"type": _positive_int}),
    Flag(("--num-actors",), "benchmark", "actor counts to measure, e.g. 1,2,4", ("benchmark",),
         shown="1,2,4,... up to the GPUs; 1 on CPU"),
    Flag(("--duration",), "benchmark", "seconds per timed window", ("benchmark",), default=20.0, options={"type": float}),
    Flag(("--repeats",), "benchmark", "timed windows per actor count: median and min/max", ("benchmark",), default=3,
         options={"type": _positive_int}),
    Flag(("--warmup",), "benchmark", "untimed seconds first (and one batch per actor)", ("benchmark",), default=5.0,
         options={"type": float}),
    Flag(("--output",), "benchmark", "output folder or s3://bucket/prefix", ("benchmark",),
         shown="runs/benchmark-<model>-<views>v-<UTC time>"),
)

DESCRIPTIONS = {
    "evaluate": "evaluate a checkpoint on a labelled dataset [default command]",
    "label": "label new or changed videos under a prefix or in a list (incremental)",
    "benchmark": "throughput per model-actor count and where the time goes",
}
EPILOG = ("exit status: 0 done, 2 a mistake in the request (nothing written), "
          "3 every video failed, 4 the storage stayed down (rerun to finish), 5 stopped by a storage or cluster failure "
          "after writing results, 130/143 interrupted (SIGINT/SIGTERM)")


def flags_of(command: str) -> list[Flag]:
    return [f for f in FLAGS if command in f.commands]


def dest_of(flag: Flag) -> str:
    """The argparse dest of ``flag``: what ``job_config`` reads into the field of that name."""
    return flag.options.get("dest") or flag.names[0][2:].replace("-", "_")


def default(field: str, command: str = DEFAULT_COMMAND) -> Any:
    """The flag default of a job config's ``field`` for ``command``: the one place a flag's
    default is declared; the job configs' dataclass defaults read it (tests/test_cli.py holds
    every field with a flag to it)."""
    dest = FIELD_FOR_DEST.get(field, field)
    for flag in flags_of(command):
        if dest_of(flag) == dest:
            return flag.default_for(command)
    raise KeyError(f"no flag of {command} sets {field}")


def _names() -> dict[str, str]:
    """Preset, protocol and shipped dataset names for the help, read without torch or Ray
    (x3d's presets need only numpy and OpenCV; the registry is a TOML file)."""
    import x3d
    from jobs.datasets import load_registry

    protocols = sorted({name for preset in x3d.PRESETS.values() for name in preset.protocols})
    return {"presets": ", ".join(sorted(x3d.PRESETS)), "protocols": ",".join(protocols), "datasets": ", ".join(sorted(load_registry()))}


def _add_flags(parser: argparse.ArgumentParser, command: str, names: dict[str, str]) -> None:
    """This subcommand's flags, each a fresh argparse action (none shared with another subcommand)."""
    groups: dict[str, argparse._ArgumentGroup] = {}
    for flag in flags_of(command):
        if flag.group not in groups:
            groups[flag.group] = parser.add_argument_group(flag.group)
        options = dict(flag.options)
        if options.get("choices") == PROTOCOL_CHOICES:
            options["choices"] = names["protocols"].split(",")
        groups[flag.group].add_argument(*flag.names, default=flag.default_for(command), help=flag.help_for(command, names), **options)


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    names = _names()
    parser = OneLineParser(prog=prog or prog_name(), description="X3D action recognition on Ray.", epilog=EPILOG)
    sub = parser.add_subparsers(dest="command", parser_class=OneLineParser)
    for command in COMMANDS:
        _add_flags(sub.add_parser(command, help=DESCRIPTIONS[command], description=DESCRIPTIONS[command]), command, names)
    return parser


def with_command(argv: list[str]) -> list[str]:
    """``argv`` with the subcommand spelled out (evaluate when none is given)."""
    if not argv or (argv[0] not in COMMANDS and argv[0] not in ("-h", "--help")):
        return [DEFAULT_COMMAND, *argv]
    return list(argv)


def parse_args(argv: list[str]) -> argparse.Namespace:
    return build_parser().parse_args(with_command(argv))


#: job config field -> the flag's dest, where the two names differ
FIELD_FOR_DEST = {"feature_kind": "features", "local_cpus": "num_cpus", "decode_timeout_s": "decode_timeout", "gpu_wait_s": "gpu_wait", "storage_outage_s": "storage_outage", "duration_s": "duration", "warmup_s": "warmup"}


def job_config(cls, args: argparse.Namespace, **values):
    """A job config from the parsed flags: every field that has a flag of the same name (or the
    one in ``FIELD_FOR_DEST``), then ``values``."""
    taken = {}
    for f in fields(cls):
        dest = FIELD_FOR_DEST.get(f.name, f.name)
        if f.name not in values and hasattr(args, dest):
            taken[f.name] = getattr(args, dest)
    return cls(**taken, **values)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def cli_markdown() -> str:
    """docs/cli.md: every subcommand's flags with their parsed default and help, from ``FLAGS``."""
    names = _names()
    lines = [
        "# Command line",
        "",
        "Generated from the parsers (`jobs/cli.py`) by `python -m jobs.cli > docs/cli.md`; "
        "`tests/test_cli_doc.py` holds this page equal to that output and each subcommand's parsed defaults to the table.",
        "",
        "`x3d-ray` is the installed command; `python submit.py` is the same from a checkout. Without a subcommand it runs "
        f"`{DEFAULT_COMMAND}`: `x3d-ray --dataset sample` is `x3d-ray {DEFAULT_COMMAND} --dataset sample`.",
        "",
        f"{EPILOG}.",
        "",
    ]
    for command in COMMANDS:
        lines += [f"## `{command}`", "", DESCRIPTIONS[command] + ".", "",
                  "The *default* column is the value the parser gives when the flag is absent (`None`: the job decides, "
                  "as the help's `[...]` says).", ""]
        for group in dict.fromkeys(f.group for f in flags_of(command)):
            lines += [f"### {group}", "", "| flag | default | help |", "|---|---|---|"]
            for flag in (f for f in flags_of(command) if f.group == group):
                spelled = ", ".join(f"`{n}`" for n in flag.names)
                if flag.options.get("action") is argparse.BooleanOptionalAction:
                    spelled += ", " + ", ".join(f"`--no-{n[2:]}`" for n in flag.names)
                lines.append(f"| {spelled} | `{flag.default_for(command)!r}` | {_cell(flag.help_for(command, names))} |")
            lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"


if __name__ == "__main__":
    sys.stdout.write(cli_markdown())
