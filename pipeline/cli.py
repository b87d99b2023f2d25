"""`datakiln …`: parse arguments, call the Python API, print one-line errors.

User errors (bad spec, bad input, failed gates) exit with status 2 and one line on
stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from importlib import resources

from pipeline.errors import DatakilnError, find_user_error
from pipeline.redact import redact_text
from pipeline.spec import EvaluateSpec

EXIT_USER_ERROR = 2
EXIT_BUG = 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="datakiln", description="Build training datasets on Ray.")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run a spec end to end and publish the dataset")
    run.add_argument("spec", help="YAML spec (any fsspec URL)")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                     help="override a spec key (typed as YAML), e.g. --set synthesize.epochs=5")
    run.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS or an embedded local Ray)")
    run.add_argument("--fresh", action="store_true",
                     help="recompute collect + preprocess even when an earlier run left a complete stage")
    run.add_argument("--overwrite", action="store_true",
                     help="publish into a folder holding files datakiln did not write (they are kept)")
    _console_options(run)

    validate = commands.add_parser("validate", help="check a spec without running anything")
    validate.add_argument("spec")
    validate.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE")

    submit = commands.add_parser("submit", help="run a spec on a Ray cluster through the Ray Jobs API")
    submit.add_argument("spec")
    submit.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE")
    submit.add_argument("--address", help="Ray dashboard URL (default: RAY_ADDRESS or http://127.0.0.1:8265)")
    submit.add_argument("--wait", action="store_true", help="wait for the job to end; exit non-zero unless it succeeds")
    submit.add_argument("--timeout", type=float, default=None, help="with --wait: give up after this many seconds")
    submit.add_argument("--pip", action="append", default=[], metavar="REQUIREMENT", help="extra pip requirement")
    submit.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="environment variable")
    submit.add_argument("--image", help="container image with datakiln installed (runtime env image_uri)")

    job = commands.add_parser("job", help="follow a submitted job")
    job.add_argument("action", choices=["status", "logs", "stop"])
    job.add_argument("job_id")
    job.add_argument("--address")

    k8s = commands.add_parser("k8s", help="Kubernetes (KubeRay) manifests")
    k8s_commands = k8s.add_subparsers(dest="k8s_command", required=True)
    render = k8s_commands.add_parser("render", help="print a RayJob + ConfigMap for a spec")
    render.add_argument("spec")
    render.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE")
    render.add_argument("--image", default=None, help="datakiln image (see k8s/Dockerfile)")
    render.add_argument("--gpus", type=int, default=0, help="maximum GPU workers, one GPU each")
    render.add_argument("--workers", default="1:4", help="MIN:MAX CPU workers for the autoscaler")
    render.add_argument("--secret", help="Secret whose keys become env vars (storage credentials)")
    render.add_argument("--namespace")

    evaluate = commands.add_parser("evaluate", help="compare a published synthetic set with published real splits")
    evaluate.add_argument("--real", required=True, help="published dataset with data/train-* and data/test-* shards")
    evaluate.add_argument("--synthetic", help="published dataset with synthetic/train-* shards (default: --real)")
    evaluate.add_argument("--out", help="folder for metrics.json and plots (any fsspec URL)")
    evaluate.add_argument("--epochs", type=int, default=EvaluateSpec().classifier_epochs,
                          help="epochs of the fixed classifier recipe")
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.add_argument("--inception-weights", help="local FID Inception-v3 weights file: adds fid_inception")
    evaluate.add_argument("--address")

    annotate = commands.add_parser("annotate", help="the human review round trip (Label Studio)")
    annotate_commands = annotate.add_subparsers(dest="annotate_command", required=True)
    merge = annotate_commands.add_parser(
        "import", help="merge a Label Studio JSON export into the spec's human labels (the next run uses them)")
    merge.add_argument("run", help="the run directory whose review/tasks.json was labelled")
    merge.add_argument("export", help="the Label Studio JSON export")

    demo = commands.add_parser("demo", help="the whole flow on scikit-learn's bundled digits")
    demo.add_argument("--out", default="./out/digits-demo", help="where to publish (any fsspec URL)")
    demo.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE")
    _console_options(demo)
    return parser


def _console_options(command: argparse.ArgumentParser) -> None:
    shown = command.add_mutually_exclusive_group()
    shown.add_argument("--verbose", action="store_true",
                       help="also show what Ray and the libraries print (always kept in <run_dir>/logs/ray.log)")
    shown.add_argument("--quiet", action="store_true", help="print only errors and the closing summary")


def _demo_spec_path() -> str:
    return str(resources.files("pipeline").joinpath("demo.yaml"))


def _synthesizes(args: argparse.Namespace) -> bool:
    return args.command in ("run", "demo") and "synthesize.enabled=false" not in args.overrides


def _evaluate(args: argparse.Namespace) -> int:
    import torch  # noqa: F401  (before Ray and pyarrow: see _dispatch)

    from cluster.runtime import configure_data_context, connect
    from pipeline.evaluate import evaluate_published

    connect(args.address)
    configure_data_context()
    metrics = evaluate_published(args.real, args.synthetic or args.real, args.out, args.epochs, args.seed,
                                 inception_weights=args.inception_weights)
    for key, value in metrics.items():
        if isinstance(value, float):
            print(f"{key}: {value:.4f}")
    if args.out:
        print(f"metrics and plots written to {args.out}")
    return 0


def _dispatch(args: argparse.Namespace) -> int:
    from pipeline.spec import load_spec

    if args.command == "validate":
        spec = load_spec(args.spec, args.overrides)
        print(f"{args.spec}: valid (spec hash {spec.spec_hash()[:12]})")
        return 0
    if args.command == "submit":
        return _submit(args, load_spec(args.spec, args.overrides))
    if args.command == "job":
        return _job(args)
    if args.command == "k8s":
        from cluster import kube

        spec = load_spec(args.spec, args.overrides)
        documents = kube.render(spec, image=args.image or kube.DEFAULT_IMAGE, gpus=args.gpus,
                                workers=kube.parse_workers(args.workers), secret=args.secret, namespace=args.namespace)
        print(kube.render_yaml(documents), end="")
        return 0
    if args.command == "evaluate":
        return _evaluate(args)
    if args.command == "annotate":
        from pipeline.annotate import import_review

        count, path = import_review(args.run, args.export)
        print(f"{count} human labels merged into {path}; the next run of the spec uses them")
        return 0
    if _synthesizes(args):
        # torch's MKL loader needs static TLS that late loads (after pyarrow, Ray) may not find.
        import torch  # noqa: F401
    from pipeline.runner import run

    from pipeline.console import CONSOLE, NORMAL, QUIET, VERBOSE

    if args.command == "demo":
        spec = load_spec(_demo_spec_path(), [f"publish.to={args.out}", *args.overrides])
        address, fresh = None, False
    else:
        spec = load_spec(args.spec, args.overrides + ["publish.overwrite=true"] * args.overwrite)
        address, fresh = args.address, args.fresh
    CONSOLE.configure(VERBOSE if args.verbose else QUIET if args.quiet else NORMAL, capture=True)
    try:
        run(spec, address=address, fresh=fresh)  # ends with the summary
    finally:
        CONSOLE.configure()  # a caller in the same process (a test) gets the plain console back
    return 0


def _submit(args: argparse.Namespace, spec) -> int:
    from cluster import jobs

    env = dict(item.split("=", 1) for item in args.env if "=" in item)
    if len(env) != len(args.env):
        raise DatakilnError(f"--env: expected KEY=VALUE, got {[e for e in args.env if '=' not in e][0]!r}")
    options = jobs.RuntimeOptions(pip=args.pip, env=env, image=args.image)
    job_id = jobs.submit(spec, args.address, options)
    print(job_id)
    if not args.wait:
        return 0
    final = jobs.wait(job_id, args.address, timeout_s=args.timeout)
    print(f"{job_id}: {final}")
    if final != "SUCCEEDED":
        tail = jobs.logs(job_id, args.address).strip().splitlines()[-1:] or [""]
        raise DatakilnError(f"job {job_id} ended {final}: {tail[0]}")
    return 0


def _job(args: argparse.Namespace) -> int:
    from cluster import jobs

    if args.action == "status":
        print(jobs.status(args.job_id, args.address))
    elif args.action == "logs":
        print(jobs.logs(args.job_id, args.address), end="")
    else:
        print("stopped" if jobs.stop(args.job_id, args.address) else "already ended")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _dispatch(args)
    except KeyboardInterrupt:
        print("datakiln: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # user errors may arrive wrapped by Ray
        user_error = find_user_error(exc)
        if user_error is None:  # a bug: the whole traceback, credentials masked
            print(redact_text("".join(traceback.format_exception(exc))), file=sys.stderr, end="")
            return EXIT_BUG
        # Ray may append retry advice to the message; the user's error is its first line.
        print(f"datakiln: error: {redact_text(str(user_error).splitlines()[0])}", file=sys.stderr)
        return EXIT_USER_ERROR


if __name__ == "__main__":
    sys.exit(main())
