"""`datakiln …`: parse arguments, call the Python API, print one-line errors.

User errors (bad spec, bad input, failed gates) exit with status 2 and one line on
stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from importlib import resources

from pipeline.errors import DatakilnError, find_user_error

EXIT_USER_ERROR = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="datakiln", description="Build training datasets on Ray.")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run a spec end to end and publish the dataset")
    run.add_argument("spec", help="YAML spec (any fsspec URL)")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                     help="override a spec key (typed as YAML), e.g. --set synthesize.epochs=5")
    run.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS or an embedded local Ray)")

    validate = commands.add_parser("validate", help="check a spec without running anything")
    validate.add_argument("spec")
    validate.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE")

    demo = commands.add_parser("demo", help="the whole flow on scikit-learn's bundled digits")
    demo.add_argument("--out", default="./out/digits-demo", help="where to publish (any fsspec URL)")
    demo.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE")
    return parser


def _demo_spec_path() -> str:
    return str(resources.files("pipeline").joinpath("demo.yaml"))


def _print_result(report) -> None:
    print(f"\nDataset published at {report.target}")
    for key in ("tstr_accuracy", "trtr_accuracy", "tstr_ratio"):
        if key in report.metrics:
            print(f"  {key}: {report.metrics[key]:.4f}")
    location = report.target if "://" in report.target else os.path.abspath(report.target)
    print("Read it with:")
    print(f"  python -c \"import datasets; print(datasets.load_dataset('{location}'))\"")
    if report.lineage["rows"]["synthetic"]:
        print(f"  python -c \"import datasets; print(datasets.load_dataset('{location}', 'synthetic'))\"")


def _dispatch(args: argparse.Namespace) -> int:
    from pipeline.spec import load_spec

    if args.command == "validate":
        spec = load_spec(args.spec, args.overrides)
        print(f"{args.spec}: valid (spec hash {spec.spec_hash()[:12]})")
        return 0
    from pipeline.run import run

    if args.command == "demo":
        spec = load_spec(_demo_spec_path(), [f"publish.to={args.out}", *args.overrides])
        address = None
    else:
        spec = load_spec(args.spec, args.overrides)
        address = args.address
    _print_result(run(spec, address=address))
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
        if user_error is None:
            raise
        print(f"datakiln: error: {user_error}", file=sys.stderr)
        return EXIT_USER_ERROR


if __name__ == "__main__":
    sys.exit(main())
