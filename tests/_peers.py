"""The public projects fastgan replaces, loaded for comparison tests (pip install --no-deps):
torch-mimicry==0.1.16 and pytorch-metric-learning (its losses need tqdm and scipy). A missing peer
fails its tests (the test set-up installs both), it does not skip them. Mimicry's top-level
package imports its trainer and tensorboard; its nets and modules need neither, so they are loaded
under a stub package module whose __path__ is the installed one (the real __init__ never runs)."""
import importlib
import importlib.util
import sys
import types


def mimicry(module: str):
    """torch_mimicry.<module> without torch_mimicry/__init__.py."""
    name = "torch_mimicry"
    if name not in sys.modules:
        spec = importlib.util.find_spec(name)
        if spec is None:
            # Not a skip: the test set-up (scripts/env.sh, README, "Install") always installs the peers.
            raise ImportError("torch-mimicry is not installed: pip install --no-deps torch-mimicry==0.1.16")
        stub = types.ModuleType(name)
        stub.__path__ = list(spec.submodule_search_locations)
        stub.__version__ = "0.1.16"
        sys.modules[name] = stub
    return importlib.import_module(f"{name}.{module}")


class MetricLog:
    """The surface of torch_mimicry.training.metric_log.MetricLog a train_step uses (that package
    imports tensorboard): the logged values, kept as floats."""

    def __init__(self):
        self.metrics = {}

    def add_metric(self, name, value, group=None, precision=4):
        self.metrics[name] = float(value)


def pml_losses():
    try:
        import pytorch_metric_learning.losses as losses
    except ImportError as exc:  # not a skip: the test set-up always installs the peers
        raise ImportError(f"pytorch-metric-learning's losses do not import ({exc}): pip install --no-deps "
                          "pytorch-metric-learning==2.9.0, and tqdm and scipy (the [test] extra)") from exc
    return losses
