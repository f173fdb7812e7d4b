#!/usr/bin/env python
"""x3d-ray command line: parse flags, check them, hand over to a job. Nothing else lives here.

    python submit.py --dataset k400_val                  # evaluate (the default command)
    python submit.py evaluate --video-list list.txt --data-root videos/ --views 10
    python submit.py label --input s3://bucket/new-videos/ --output s3://bucket/labels/
    python submit.py benchmark --model x3d_m --views 10 --num-actors 1,2,4 --dataset k400_val

Also installed as the ``x3d-ray`` command (``x3d-ray label ...`` is ``python submit.py label ...``).

Exit status (the README's table):

    0    done; every video that could be read was scored (some may be error rows)
    2    a mistake in the request (bad flag, unknown dataset or model, missing file, wrong
         checkpoint, unreachable or too small cluster): one line on stderr, nothing written
    3    the job ran but scored nothing: every video failed (the error rows say why)
    130  interrupted by SIGINT (Ctrl-C); 143: stopped by SIGTERM. Either stops the run cleanly:
         one line with what is saved and the command that resumes it

Name checks (dataset, model, protocol, views) answer before torch or Ray is imported.
"""

from __future__ import annotations

import argparse
import importlib
from dataclasses import fields
import os
import shlex
import shutil
import signal
import sys
import time

#: when this command started (the clock the jobs report their times from): importing this
#: module is the first thing the command does, so only the interpreter's own start is missing.
#: ``main(argv)`` called from Python (tests, wrappers) counts from the call instead.
STARTED_AT = time.monotonic()

COMMANDS = ("evaluate", "label", "benchmark")
PRECISIONS = ("fp32", "bf16")  # x3d.predict.PRECISIONS; not imported, so --help stays instant
ANN_FORMATS = ("auto", "video_list", "rawframe_list", "slowfast_csv", "path_list", "prefix")  # jobs.datasets.FORMATS
EXIT_OK = 0
EXIT_USAGE = 2  # a mistake in the request, found before any work starts
EXIT_NOTHING_SCORED = 3  # the job ran, but every video failed
EXIT_SIGINT, EXIT_SIGTERM = 130, 143  # 128 + the signal's number, as shells report it
#: --separator names for separators that are awkward to type in a shell
SEPARATOR_NAMES = {"tab": "\t", "\\t": "\t", "comma": ",", "semicolon": ";", "pipe": "|"}

K400_HINT = (
    "Kinetics-400 is not on this machine: put it in MMAction2's layout (see MMAction2's "
    "tools/data/kinetics/README.md), point --data-root/--ann-file at it, or run "
    "`python submit.py --dataset sample`, which works now"
)


def prog_name() -> str:
    """``x3d-ray`` when run through the installed entry point, else ``submit.py``: usage lines
    and error messages name the command the user typed."""
    return "x3d-ray" if os.path.basename(sys.argv[0] or "") == "x3d-ray" else "submit.py"


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is a single line that says what to fix."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def _fail(message: str, status: int = EXIT_USAGE) -> None:
    print(f"{prog_name()}: error: {message}", file=sys.stderr)
    raise SystemExit(status)


def _separator(text: str) -> str:
    """``--separator``: the character itself, or a name (``tab``) for one a shell makes awkward."""
    value = SEPARATOR_NAMES.get(text.lower(), text)
    if not value:
        raise argparse.ArgumentTypeError("expected a character such as tab or ',' (omit the flag for any whitespace)")
    return value


def _names() -> tuple[list[str], list[str], list[str]]:
    """Preset, protocol and shipped dataset names for --help, read without torch or Ray
    (x3d's presets need only numpy and OpenCV; the registry is a TOML file)."""
    import x3d
    from jobs.datasets import load_registry

    presets = sorted(x3d.PRESETS)
    protocols = sorted({name for preset in x3d.PRESETS.values() for name in preset.protocols})
    return presets, protocols, sorted(load_registry())


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _dataset_flags(datasets: list[str]) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("data")
    g.add_argument("--dataset", help=f"a registered dataset: {', '.join(datasets)} (jobs/datasets.toml), or one of --datasets FILE")
    g.add_argument("--datasets", metavar="FILE", help="a TOML file adding or overriding dataset entries")
    g.add_argument("--data-root", help="folder or s3:// prefix that annotation paths are relative to")
    g.add_argument("--ann-file", "--video-list", dest="ann_file", help="annotation / video list file (local or s3://)")
    g.add_argument("--ann-format", choices=ANN_FORMATS, help="how the annotation file is laid out [auto: from its first line]")
    g.add_argument("--separator", type=_separator, metavar="SEP",
                   help="field separator of the annotation file, for paths with spaces: tab, comma or the character [any whitespace]")
    return p


def _model_flags(presets: list[str], protocols: list[str]) -> argparse.ArgumentParser:
    """Flags of jobs.options.ModelOptions, shared by every command."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("model")
    g.add_argument("--model", help=f"model preset: {', '.join(presets)} [the dataset's, else x3d_s]")
    g.add_argument("--checkpoint", help="checkpoint path, https:// URL or s3:// URI [the preset's published weights; benchmark: random]")
    g.add_argument("--views", type=int, choices=[1, 3, 10, 30], help="test views per video [evaluate, benchmark: 30; label: 10]")
    g.add_argument("--protocol", choices=protocols, help="test protocol of the preset [mmaction2]")
    g.add_argument("--precision", choices=PRECISIONS, default="fp32", help="forward pass: fp32 (the reference) or bf16 autocast [fp32]")
    g.add_argument("--memory-format", choices=("auto", "channels_last_3d", "ncdhw"), default="auto",
                   help="model memory layout [auto: channels_last_3d on CPU, NCDHW on GPU]")
    g.add_argument("--compile", action="store_true", help="torch.compile the model in each actor (GPU: measure it with benchmark)")
    return p


def _cluster_flags() -> argparse.ArgumentParser:
    """Flags of jobs.options.ClusterOptions, shared by every command."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("cluster")
    g.add_argument("--address", help="Ray cluster address [RAY_ADDRESS, else a local Ray started for the run]")
    g.add_argument("--num-cpus", type=_positive_int, help="CPUs of the local Ray started when no --address is given")
    g.add_argument("--batch-size", type=_positive_int, help="clips per forward pass")
    g.add_argument("--decode-timeout", type=float, default=300.0, help="seconds before a hung decode becomes an error row [300]")
    g.add_argument("--quiet", action="store_true", help="no progress output")
    return p


def _run_flags() -> argparse.ArgumentParser:
    """Flags of jobs.options.RunOptions: the jobs that write results shard by shard."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("run")
    g.add_argument("--num-actors", type=_positive_int, help="model actors [one per GPU; one on a CPU-only cluster]")
    g.add_argument("--shard-size", type=_positive_int, default=256, help="videos per Parquet file [256]")
    return p


def _add_feature_flags(p: argparse.ArgumentParser) -> None:
    """Flags of jobs.features.FeatureOptions (evaluate and label)."""
    p.add_argument("--save-features", action="store_true", help="store each video's feature vector beside its scores [off]")
    p.add_argument("--features", choices=("backbone", "pre_logits"), default="backbone",
                   help="which vector: backbone (pooled, MMAction2's FeatureHead; 432 for X3D-S/M) or pre_logits (2048) [backbone]")
    p.add_argument("--features-dtype", choices=("float16", "float32"), default="float16", help="stored as [float16]")


def build_parser() -> argparse.ArgumentParser:
    presets, protocols, datasets = _names()
    parser = OneLineParser(prog=prog_name(), description="X3D action recognition on Ray.",
                           epilog="exit status: 0 done, 2 a mistake in the request (nothing written), "
                                  "3 every video failed, 130/143 interrupted (SIGINT/SIGTERM)")
    sub = parser.add_subparsers(dest="command", parser_class=OneLineParser)
    common = [_model_flags(presets, protocols), _cluster_flags()]
    ev = sub.add_parser("evaluate", parents=[_dataset_flags(datasets), *common, _run_flags()],
                        help="evaluate a checkpoint on a labelled dataset [default command]")
    ev.add_argument("--label-map", help="class names, one per line (default: the model's)")
    ev.add_argument("--output", help="output folder or s3://bucket/prefix [runs/<dataset>-<model>-<views>v-<UTC time>]")
    ev.add_argument("--limit", type=_positive_int, help="only the first N videos")
    ev.add_argument("--resume", action="store_true", help="continue an interrupted run (same --output)")
    ev.add_argument("--save-probs", action=argparse.BooleanOptionalAction, default=True, help="keep the full score vector per video [on]")
    _add_feature_flags(ev)
    ev.set_defaults(views=30)

    lb = sub.add_parser("label", parents=[*common, _run_flags()],
                        help="label new or changed videos under a prefix or in a list (incremental)")
    lb.add_argument("--input", help="folder, s3://bucket/prefix/ (listed recursively) or a list file [required, except with --compact / --rebuild-index alone]")
    lb.add_argument("--output", required=True, help="output folder or s3://bucket/prefix; reruns skip what it holds")
    lb.add_argument("--top-k", type=_positive_int, default=5, help="labels kept per video [5]")
    lb.add_argument("--min-score", type=float, default=0.0, help="drop labels scoring below this [0]")
    lb.add_argument("--since", help="only videos modified since an ISO date or a look-back like 36h / 7d")
    lb.add_argument("--max-attempts", type=_positive_int, default=3, help="give up on a failing video after N runs [3]")
    lb.add_argument("--plan", action="store_true", help="dry run: count what would be processed and estimate the time")
    lb.add_argument("--resume", action="store_true", help="continue a crashed run (every run resumes anyway)")
    lb.add_argument("--compact", action="store_true", help="merge small label files into big ones (after the run, if --input is given)")
    lb.add_argument("--target-file-mb", type=float, default=128.0, help="--compact: size of the merged files in MB [128]")
    lb.add_argument("--rebuild-index", action="store_true", help="rebuild the label index from the label files (before the run, if --input is given)")
    _add_feature_flags(lb)
    lb.add_argument("--backfill-features", action="store_true",
                    help="with --save-features: versions labelled without features count as not done")
    lb.set_defaults(views=10)

    bm = sub.add_parser("benchmark", parents=[_dataset_flags(datasets), *common],
                        help="throughput per model-actor count and where the time goes")
    bm.add_argument("--synthetic", action="store_true", help="random uint8 frames of a 340x256 video in place of decoding: no reading or decoding [default]")
    bm.add_argument("--limit", type=_positive_int, help="cycle through only the first N videos [as many as the run reaches]")
    bm.add_argument("--num-actors", help="actor counts to measure, e.g. 1,2,4 [1,2,4,... up to the GPUs; 1 on CPU]")
    bm.add_argument("--duration", type=float, default=20.0, help="seconds per timed window [20]")
    bm.add_argument("--repeats", type=_positive_int, default=3, help="timed windows per actor count: median and min/max [3]")
    bm.add_argument("--warmup", type=float, default=5.0, help="untimed seconds first (and one batch per actor) [5]")
    bm.add_argument("--output", help="output folder or s3://bucket/prefix [runs/benchmark-<model>-<views>v-<UTC time>]")
    bm.set_defaults(views=30, label_map=None)  # _dataset_from_args reads label_map; a benchmark needs no class names
    return parser


#: config field -> the flag's dest where the two names differ
_FLAG_FOR_FIELD = {"local_cpus": "num_cpus", "decode_timeout_s": "decode_timeout", "duration_s": "duration", "warmup_s": "warmup"}


def _config(cls, args: argparse.Namespace, **values):
    """A job config from the parsed flags: every field that has a flag of the same name (or
    the one in ``_FLAG_FOR_FIELD``), then ``values``."""
    taken = {}
    for f in fields(cls):
        dest = _FLAG_FOR_FIELD.get(f.name, f.name)
        if f.name not in values and hasattr(args, dest):
            taken[f.name] = getattr(args, dest)
    return cls(**taken, **values)


def parse_args(argv: list[str]) -> argparse.Namespace:
    if not argv or (argv[0] not in COMMANDS and argv[0] not in ("-h", "--help")):
        argv = ["evaluate", *argv]
    return build_parser().parse_args(argv)


def _dataset_from_args(args: argparse.Namespace):
    from jobs.datasets import DatasetError, resolve_dataset

    if not (args.dataset or args.ann_file or args.data_root):
        _fail("say what to evaluate: --dataset NAME, or --video-list FILE with --data-root DIR")
    try:
        return resolve_dataset(
            args.dataset,
            datasets_file=args.datasets,
            data_root=args.data_root,
            ann_file=args.ann_file,
            label_map=args.label_map,
            ann_format=args.ann_format,
            separator=args.separator,
        )
    except DatasetError as exc:
        _fail(str(exc))


def _check_model_names(model: str, protocol: str | None, views: int) -> None:
    """The preset, its protocol and the view count, checked before torch and Ray are imported
    (they take seconds to tens of seconds to load on a busy machine; a typo should not)."""
    import x3d  # presets: numpy and OpenCV only

    try:
        x3d.get_preset(model).protocol(protocol).view_plan(views)
    except ValueError as exc:
        _fail(str(exc))


def run_evaluate_command(args: argparse.Namespace) -> int:
    spec = _dataset_from_args(args)
    model = args.model or spec.model or "x3d_s"
    _check_model_names(model, args.protocol, args.views)

    from cluster.errors import ClusterError
    from jobs.datasets import DatasetError
    from jobs.errors import JobError
    from jobs.evaluate import EvaluateConfig, first_error, run_evaluate
    from x3d.storage import StorageError

    cfg = _config(EvaluateConfig, args, dataset=spec, model=model)
    try:
        summary = run_evaluate(cfg)
    except DatasetError as exc:
        message = str(exc)
        if spec.name == "k400_val":
            message = f"{message}. {K400_HINT}"
        _fail(message)
    except (JobError, ClusterError, StorageError) as exc:
        _fail(str(exc))
    if summary["num_ok"] == 0:
        return _nothing_scored(
            f"none of the {summary['num_videos']} videos could be scored (the first: {first_error(summary['output'])}); "
            f"each has an error row in {summary['output']}/predictions"
        )
    return EXIT_OK


def _nothing_scored(message: str) -> int:
    """The job ran but every video failed: one line, and the exit status that says so (3)."""
    _fail(message, EXIT_NOTHING_SCORED)
    return EXIT_NOTHING_SCORED


def run_label_command(args: argparse.Namespace) -> int:
    model = args.model or "x3d_s"
    _check_model_names(model, args.protocol, args.views)

    from cluster.errors import ClusterError
    from jobs.errors import JobError
    from jobs.label import LabelConfig, compact_labels, plan_label, rebuild_label_index, run_label
    from x3d.storage import StorageError

    if not args.input and not (args.compact or args.rebuild_index):
        _fail("label needs --input (or --compact / --rebuild-index to only tidy --output)")
    if args.target_file_mb <= 0:
        _fail(f"--target-file-mb must be positive, got {args.target_file_mb}")
    cfg = _config(LabelConfig, args, model=model)
    try:
        if args.rebuild_index:
            rebuild_label_index(cfg.output, quiet=cfg.quiet)
        manifest = None
        if not args.input:
            pass
        elif args.plan:
            plan = plan_label(cfg)
            eta = "unknown (no earlier run to take a rate from)" if plan["estimated_s"] is None else f"{plan['estimated_s']:.0f} s"
            print(
                f"plan: {plan['listed']} listed, {plan['older']} older than --since, {plan['skipped']} already labelled, "
                f"{plan['new']} new or changed, {plan['retries']} failed before and retried"
                + (f", {plan['backfilled']} labelled before without features" if cfg.backfill_features else "")
                + f"; {plan['to_process']} to process, estimated {eta}"
                + (f"; features add {plan['features_bytes'] / 1e6:.1f} MB" if cfg.save_features else "")
            )
            return EXIT_OK
        else:
            manifest = run_label(cfg)
        if args.compact:
            compact_labels(cfg.output, args.target_file_mb, quiet=cfg.quiet)
    except (JobError, ClusterError, StorageError, ValueError) as exc:
        _fail(str(exc))
    if manifest and manifest["failed"] and not manifest["labelled"]:
        return _nothing_scored(
            f"none of the {manifest['failed']} videos to label could be labelled; "
            f"their error rows are in {cfg.output}/labels (run {manifest['run_id']})"
        )
    return EXIT_OK


def run_benchmark_command(args: argparse.Namespace) -> int:
    if args.model:
        _check_model_names(args.model, args.protocol, args.views)
    from cluster.errors import ClusterError
    from jobs.benchmark import BenchmarkConfig, parse_actor_counts, run_benchmark
    from jobs.datasets import DatasetError
    from jobs.errors import JobError
    from x3d.storage import StorageError

    data_flags = args.dataset or args.ann_file or args.data_root
    if args.synthetic and data_flags:
        _fail("--synthetic runs on in-memory clips; drop it, or drop --dataset/--video-list/--data-root")
    try:
        counts = parse_actor_counts(args.num_actors) if args.num_actors else None
    except ValueError as exc:
        _fail(str(exc))
    dataset = _dataset_from_args(args) if data_flags else None
    cfg = _config(
        BenchmarkConfig, args, dataset=dataset, num_actors=counts, model=args.model or (dataset.model if dataset else None) or "x3d_s"
    )
    try:
        run_benchmark(cfg)
    except (JobError, ClusterError, DatasetError, StorageError) as exc:
        _fail(str(exc))
    return EXIT_OK


def _import_extensions() -> None:
    """Extension (and test) hook: ``X3D_PRESETS_MODULE=pkg.mod[,pkg.other]`` is imported first.

    Such a module can ``x3d.register_preset(...)`` models that ship outside this package; the
    preset object travels to the Ray workers with the job, so only the driver imports it.
    """
    for name in filter(None, (n.strip() for n in os.environ.get("X3D_PRESETS_MODULE", "").split(","))):
        try:
            importlib.import_module(name)
        except Exception as exc:  # any failure is the user's setting, not a crash
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            _fail(f"X3D_PRESETS_MODULE: cannot import {name} ({type(exc).__name__}: {first})")


def resume_command(argv: list[str], output: str) -> str:
    """The command that continues an interrupted run: the same flags, ``--resume``, and the
    output folder (which may have been a timestamped default)."""
    args = list(argv)
    if not args or (args[0] not in COMMANDS):
        args = ["evaluate", *args]
    if not any(a == "--output" or a.startswith("--output=") for a in args):
        args += ["--output", output]
    if "--resume" not in args:
        args.append("--resume")
    python = "python" if shutil.which("python") and os.path.realpath(shutil.which("python")) == os.path.realpath(sys.executable) else sys.executable
    return shlex.join([python, sys.argv[0] or "submit.py", *args])


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "evaluate":
        return run_evaluate_command(args)
    if args.command == "label":
        return run_label_command(args)
    if args.command == "benchmark":
        return run_benchmark_command(args)
    _fail(f"unknown command {args.command!r}")
    return EXIT_USAGE


def main(argv: list[str] | None = None) -> int:
    from jobs.errors import JobInterrupted
    from jobs.interrupts import interrupt_behind, stop_on_signals

    started = STARTED_AT if argv is None else time.monotonic()
    argv = list(sys.argv[1:] if argv is None else argv)
    with stop_on_signals():  # SIGINT / SIGTERM: a clean stop and one line, exit 130 / 143
        try:
            _import_extensions()
            args = parse_args(argv)
            args.started_at = started
            os.environ.setdefault("RAY_DEDUP_LOGS", "1")
            try:
                return _dispatch(args)
            except SystemError as exc:  # a signal's JobInterrupted, wrapped by Ray's native code
                stop = interrupt_behind(exc)
                if stop is None:
                    raise
                raise stop from None
        except JobInterrupted as stop:
            name = signal.Signals(stop.signum).name
            if stop.output is None:
                line = f"interrupted ({name}) before any result was written; run the same command again"
            else:
                line = f"interrupted ({name}): {stop.finished}; resume with: {resume_command(argv, stop.output)}"
            newline = "\n" if sys.stderr.isatty() else ""  # past a progress line drawn in place
            print(f"{newline}submit.py: {line}", file=sys.stderr, flush=True)
            return 128 + stop.signum


if __name__ == "__main__":
    sys.exit(main())
