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
    5    stopped partway by a failure that is not the request's (storage, the cluster) after results
         were written: one line with what failed, what is saved and the command that continues
    130  interrupted by SIGINT (Ctrl-C); 143: stopped by SIGTERM. Either stops the run cleanly:
         one line with what is saved and the command that resumes it

Flags are declared in ``jobs.cli`` (each subcommand's own, with its own defaults; docs/cli.md is
generated from them). Every mistake in a request (a name, a missing input or dataset file, an
output that is a file, more actors than this machine holds) is answered before torch or Ray is
imported: the name checks here, the rest in ``jobs.preflight``.
"""

from __future__ import annotations

import argparse
import importlib
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

from jobs.cli import EXIT_USAGE, job_config, parse_args, prog_name, with_command  # noqa: E402 - after the clock starts; no torch, no Ray

EXIT_OK = 0
EXIT_NOTHING_SCORED = 3  # the job ran, but every video failed
EXIT_INFRASTRUCTURE = 4  # the storage or the cluster stayed down: stopped, rerun to finish
EXIT_STOPPED = 5  # a storage or cluster failure stopped the run after it wrote results (jobs.errors.JobStopped)
EXIT_SIGINT, EXIT_SIGTERM = 130, 143  # 128 + the signal's number, as shells report it

def _fail(message: str, status: int = EXIT_USAGE) -> None:
    print(f"{prog_name()}: error: {message}", file=sys.stderr)
    raise SystemExit(status)


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
            label_map=getattr(args, "label_map", None),  # benchmark has no --label-map: it needs no class names
            ann_format=args.ann_format,
            separator=args.separator,
        )
    except DatasetError as exc:
        _fail(str(exc))


def _check_model_names(model: str, protocol: str | None, views: int) -> None:
    """The preset, its protocol and the view count, checked before torch and Ray are imported
    (they take seconds to tens of seconds to load on a busy machine; a typo should not)."""
    import x3d  # presets: numpy and OpenCV only
    from worker.spec import ModelSpec  # no torch

    try:
        ModelSpec(x3d.get_preset(model), views, protocol).view_plan  # noqa: B018 - raises on a bad count
    except ValueError as exc:
        _fail(str(exc))


def _preflight(args: argparse.Namespace, model: str, output: str | None, dataset=None, num_actors: int | None = None) -> None:
    """The request's other mistakes, still before torch and Ray (``jobs.preflight``): the output
    (and, for ``--resume``, the run it holds), label's input, the dataset's files, and
    --num-actors (benchmark: its largest count) against the local machine."""
    from cluster.errors import ClusterError
    from jobs import preflight
    from jobs.datasets import DatasetError
    from jobs.errors import JobError
    from worker.spec import ModelSpec
    import x3d

    if num_actors is None and isinstance(getattr(args, "num_actors", None), int):
        num_actors = args.num_actors
    try:
        preflight.check_output(output)
        if getattr(args, "input", None):
            preflight.check_label_input(args.input)
        if dataset is not None:
            preflight.check_dataset_files(dataset)
        if num_actors is not None and preflight.starts_local_ray(args.address):
            spec = ModelSpec(x3d.get_preset(model), args.views, args.protocol, precision=args.precision)
            preflight.check_local_fit(spec, num_actors, args.num_cpus, args.actors_per_gpu)
        if args.command == "evaluate":
            if args.resume:
                preflight.check_resume_target(output)
            preflight.check_run_flags(output, _run_flags(args, model, dataset), args.resume, args.partition)
        elif args.command == "label":
            if args.resume:
                preflight.check_label_resume(output)
            if args.input:
                preflight.check_label_features(output, args.save_features)
            elif args.compact or args.rebuild_index:
                preflight.check_tidy_output(output)
    except (JobError, DatasetError, ClusterError) as exc:
        _fail(str(exc))


def _run_flags(args: argparse.Namespace, model: str, dataset) -> dict:
    """The part of an evaluate run's run.json that the flags alone give (``jobs.evaluate``
    writes the rest once the list and the weights are read)."""
    import x3d

    features = {"kind": args.features, "dtype": args.features_dtype} if args.save_features else None
    return {"job": "evaluate", "dataset": dataset.name, "model": model, "views": args.views,
            "protocol": x3d.get_preset(model).protocol(args.protocol).name, "precision": args.precision,
            "shard_size": args.shard_size, "save_probs": args.save_probs, "features": features}


def run_evaluate_command(args: argparse.Namespace) -> int:
    spec = _dataset_from_args(args)
    model = args.model or spec.model or "x3d_s"
    _check_model_names(model, args.protocol, args.views)
    if args.retry_failed and not args.resume:
        _fail("--retry-failed scores a finished run's failed videos again: add --resume (and the run's --output)")
    if args.partition is not None and not args.output:  # each would make its own timestamped folder
        _fail(f"--partition {args.partition} needs --output: every partition of a run writes into the same folder")
    _preflight(args, model, args.output, dataset=spec)

    from cluster.errors import ClusterError, InfrastructureDown
    from jobs.datasets import DatasetError
    from jobs.errors import JobError
    from jobs.evaluate import EvaluateConfig, first_error, run_evaluate
    from x3d.storage import StorageError

    cfg = job_config(EvaluateConfig, args, dataset=spec, model=model)
    try:
        summary = run_evaluate(cfg)
    except InfrastructureDown as exc:
        _infrastructure_down(str(exc), resume=True)
    except (DatasetError, JobError, ClusterError, StorageError) as exc:
        _fail(str(exc))
    if summary is None:  # a partition's part is done; another partition writes the summary
        return EXIT_OK
    if summary["num_ok"] == 0:
        return _nothing_scored(
            f"none of the {summary['num_videos']} videos could be scored (the first: {first_error(summary['output'])}); "
            f"each has an error row in {summary['output']}/predictions"
        )
    return EXIT_OK


def _infrastructure_down(message: str, resume: bool) -> None:
    """The infrastructure stayed down (``cluster.errors.InfrastructureDown``): what was written
    stays, the videos not scored are not failures, and the same command (with --resume for
    evaluate) finishes the run. One line, exit 4."""
    argv = [a for a in sys.argv[1:]]
    if resume and "--resume" not in argv:
        argv.append("--resume")
    command = " ".join([prog_name() if prog_name() == "x3d-ray" else "python submit.py", *map(shlex.quote, argv)])
    _fail(f"{message}; finish the run with: {command}", EXIT_INFRASTRUCTURE)


def _nothing_scored(message: str) -> int:
    """The job ran but every video failed: one line, and the exit status that says so (3)."""
    _fail(message, EXIT_NOTHING_SCORED)
    return EXIT_NOTHING_SCORED


def run_label_command(args: argparse.Namespace) -> int:
    if args.partition is not None:
        _fail("label does not take --partition: label runs sharing one --output would race on its index of what is done "
              "(label_index/); give each driver its own --input and --output")
    model = args.model or "x3d_s"
    _check_model_names(model, args.protocol, args.views)
    if not args.input and not (args.compact or args.rebuild_index):
        _fail("label needs --input (or --compact / --rebuild-index to only tidy --output)")
    if args.target_file_mb <= 0:
        _fail(f"--target-file-mb must be positive, got {args.target_file_mb}")
    _preflight(args, model, args.output)

    from cluster.errors import ClusterError, InfrastructureDown
    from jobs.errors import JobError
    from jobs.label import LabelConfig, compact_labels, first_failure, given_up_text, plan_label, rebuild_label_index, run_label
    from x3d.storage import StorageError

    cfg = job_config(LabelConfig, args, model=model)
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
                + (f"{given_up_text(plan['given_up'], cfg.max_attempts)}, " if plan["given_up"] else "")
                + f"{plan['new']} new or changed, {plan['retries']} failed before and retried"
                + (f", {plan['backfilled']} labelled before without features" if args.backfill_features else "")
                + f"; {plan['to_process']} to process, estimated {eta}"
                + (f"; features add {plan['features_bytes'] / 1e6:.1f} MB" if args.save_features else "")
            )
            return EXIT_OK
        else:
            manifest = run_label(cfg)
        if args.compact:
            compact_labels(cfg.output, args.target_file_mb, quiet=cfg.quiet)
    except InfrastructureDown as exc:
        _infrastructure_down(str(exc), resume=False)
    except (JobError, ClusterError, StorageError) as exc:  # not ValueError: a bug is a traceback, exit 1
        _fail(str(exc))
    if manifest and manifest["failed"] and not manifest["labelled"]:
        return _nothing_scored(
            f"none of the {manifest['failed']} videos to label could be labelled "
            f"(the first: {first_failure(cfg.output, manifest['run_id'])}); "
            f"their error rows are in {cfg.output}/labels (run {manifest['run_id']})"
        )
    return EXIT_OK


def run_benchmark_command(args: argparse.Namespace) -> int:
    if args.model:
        _check_model_names(args.model, args.protocol, args.views)
    from jobs.cli import parse_actor_counts

    data_flags = args.dataset or args.ann_file or args.data_root
    if args.synthetic and data_flags:
        _fail("--synthetic runs on in-memory clips; drop it, or drop --dataset/--video-list/--data-root")
    try:
        counts = parse_actor_counts(args.num_actors) if args.num_actors else None
    except ValueError as exc:
        _fail(str(exc))
    dataset = _dataset_from_args(args) if data_flags else None
    model = args.model or (dataset.model if dataset else None) or "x3d_s"
    _preflight(args, model, args.output, dataset=dataset, num_actors=max(counts) if counts else None)

    from cluster.errors import ClusterError
    from jobs.benchmark import BenchmarkConfig, run_benchmark
    from jobs.datasets import DatasetError
    from jobs.errors import JobError
    from x3d.storage import StorageError

    cfg = job_config(BenchmarkConfig, args, dataset=dataset, num_actors=counts, model=model)
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


def _command_line(args: list[str]) -> str:
    """``args`` as a command to paste: the installed ``x3d-ray`` as typed, else this Python and submit.py."""
    if prog_name() == "x3d-ray":
        return shlex.join([sys.argv[0], *args])
    python = "python" if shutil.which("python") and os.path.realpath(shutil.which("python")) == os.path.realpath(sys.executable) else sys.executable
    return shlex.join([python, sys.argv[0] or "submit.py", *args])


def resume_command(argv: list[str], output: str) -> str:
    """The command that continues an interrupted run: the same flags, ``--resume``, and the
    output folder (which may have been a timestamped default)."""
    args = with_command(argv)
    if not any(a == "--output" or a.startswith("--output=") for a in args):
        args += ["--output", output]
    if "--resume" not in args:
        args.append("--resume")
    return _command_line(args)


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
    from jobs.errors import JobInterrupted, JobStopped
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
            except JobStopped as failed:  # results are written: not "nothing written" (2); say how to go on
                newline = "\n" if sys.stderr.isatty() else ""
                print(f"{newline}{prog_name()}: error: {failed}; {failed.finished}; continue with: "
                      f"{resume_command(argv, failed.output)}", file=sys.stderr, flush=True)
                return failed.status
        except JobInterrupted as stop:
            name = signal.Signals(stop.signum).name
            if stop.output is None:
                line = f"interrupted ({name}) during start-up: nothing is saved; run it again with: {_command_line(argv)}"
            else:
                line = f"interrupted ({name}): {stop.finished}; resume with: {resume_command(argv, stop.output)}"
            newline = "\n" if sys.stderr.isatty() else ""  # past a progress line drawn in place
            print(f"{newline}{prog_name()}: {line}", file=sys.stderr, flush=True)
            return 128 + stop.signum


if __name__ == "__main__":
    sys.exit(main())
