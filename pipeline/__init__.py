"""datakiln's data pipeline: what happens to data, stage by stage.

Public surface:
    load_spec, build_spec, Spec   typed run specs (YAML, `--set` overrides)
    run                           run a spec end to end and publish the dataset
    DatakilnError                 user-facing errors (one line, no traceback)
"""

from pipeline.errors import DatakilnError
from pipeline.spec import Spec, build_spec, load_spec


def run(spec, address=None, fresh=False):
    """Run `spec` (see `pipeline.runner.run`); imported lazily so `import pipeline` stays light."""
    from pipeline.runner import run as _run

    return _run(spec, address=address, fresh=fresh)


__all__ = ["DatakilnError", "Spec", "build_spec", "load_spec", "run"]
