"""Import `triton_kernels/` as `fastgan.triton_kernels`.

Installed, setup.py maps the top-level folder triton_kernels/ to the subpackage
fastgan.triton_kernels (never a top-level `triton_kernels`: PyPI has a package of that name). In a
source checkout without an install, the folder is loaded from beside the package under the same name.
Triton itself is imported only here, on first use of the triton backend.
"""
import importlib
import importlib.util
import os
import sys


def import_triton_kernels():
    name = "fastgan.triton_kernels"
    if name in sys.modules:
        return sys.modules[name]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.path.join(root, "triton_kernels")
    # A source checkout (setup.py beside the folder) loads its own kernels first: an editable install
    # of ANOTHER checkout (a git worktree sharing one venv) maps fastgan.triton_kernels to that
    # checkout's folder, so the kernels under test would silently be someone else's.
    own = os.path.isfile(os.path.join(root, "setup.py")) and os.path.isfile(os.path.join(path, "configs.py"))
    if not own:
        try:
            return importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
    spec = importlib.util.spec_from_file_location(
        name, os.path.join(path, "__init__.py"), submodule_search_locations=[path]
    )
    if spec is None:
        raise ModuleNotFoundError(f"{name}: neither installed nor found at {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module
