"""Sphinx configuration for the takane_kernels documentation.

Sphinx (not MkDocs) because the docstrings are reStructuredText (``code``, :class:`...`
cross references), which autodoc renders as written; the guides are Markdown (MyST), moved
from the README. Built by CI in strict mode:

    python -m sphinx -W --keep-going -n -b html docs build/docs

-W turns every warning into an error, -n (nitpicky) makes every unresolved cross reference
to our own names a warning, and ``check_public_names`` below warns about any public name
(a module's ``__all__``) that has no entry in the API reference.
"""

from __future__ import annotations

import importlib

import takane_kernels

project = "takane_kernels"
author = "the takane_kernels developers"
copyright = "2026, " + author
release = version = takane_kernels.__version__

extensions = ["sphinx.ext.autodoc", "myst_parser"]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build"]
myst_heading_anchors = 3  # README-style links to "#section" anchors resolve
myst_enable_extensions = ["dollarmath"]

html_theme = "furo"
html_title = f"takane_kernels {release}"
html_static_path: list[str] = []

autodoc_member_order = "bysource"
autodoc_typehints = "none"  # the docstrings say what each argument takes; "object" hints would be noise
autodoc_default_options = {"members": True, "special-members": "__call__"}
# methods we override without a docstring (forward, get/set_extra_state) would show
# PyTorch's text, which is not about our modules
autodoc_inherit_docstrings = False


# References into other projects' docs (numpy, torch, the standard library) are not resolved:
# the build runs offline (no intersphinx inventories). Our own names must all resolve.
nitpick_ignore_regex = [
    ("py:.*", r"(np|numpy|torch|nn|os|pathlib|typing|collections|enum|gguf|numpy\.typing)\..*"),
    ("py:.*", r"(ArrayLike|NDArray|DTypeLike|Path|PathLike|Tensor|Module|Sequence|Iterable|Mapping|IntEnum|Enum)"),
    ("py:class", r"(int|float|str|bool|bytes|object|None|tuple|list|dict)"),
]

# the public modules whose __all__ the API reference must cover
PUBLIC_MODULES = ["takane_kernels", "takane_kernels.isa", "takane_kernels.reference",
                  "takane_kernels.gguf", "takane_kernels.torch"]


def _resolve(fullname: str):
    """The object a documented dotted name stands for (None if it does not import)."""
    parts = fullname.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            for attr in parts[cut:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return None
        return obj
    return None


def check_public_names(app, env) -> None:
    """Warn (an error under -W) for every public name without an API-reference entry.

    A name counts as documented when it has its own entry, or when the object it names has
    an entry under another public name (``reference.PackedWeights`` is
    ``takane_kernels.PackedWeights``: one entry, no duplicate)."""
    from sphinx.util import logging

    log = logging.getLogger("takane_kernels.docs")
    py = env.get_domain("py")
    documented = set(py.objects)
    documented_ids = {id(o) for o in map(_resolve, documented) if o is not None}
    for modname in PUBLIC_MODULES:
        module = importlib.import_module(modname)
        if modname not in py.modules:
            log.warning("public module %s has no API page", modname)
        for name in module.__all__:
            obj = getattr(module, name)
            if isinstance(obj, type(module)):
                continue  # a submodule: it is in PUBLIC_MODULES, with its own page
            if f"{modname}.{name}" not in documented and id(obj) not in documented_ids:
                log.warning("public name %s.%s is not in the API reference", modname, name)


def escape_bars(app, what, name, obj, options, lines) -> None:
    """Our docstrings write absolute values as |x| (they are read as plain text by help());
    in reStructuredText a bare |x| is a substitution reference. Escape every bar outside
    ``literal`` spans: the docstrings use no substitutions and no line blocks."""
    for i, line in enumerate(lines):
        if "|" not in line:
            continue
        parts = line.split("``")
        lines[i] = "``".join(p.replace("|", "\\|") if j % 2 == 0 else p for j, p in enumerate(parts))


def resolve_tk_alias(app, env, node, contnode):
    """takane_kernels.torch annotates with the module alias ``tk`` (``tk.PackedWeights``):
    resolve those as ``takane_kernels.PackedWeights``."""
    target = node.get("reftarget", "")
    if node.get("refdomain") == "py" and target.startswith("tk."):
        return env.get_domain("py").resolve_xref(env, node["refdoc"], app.builder, node["reftype"],
                                                 "takane_kernels." + target[3:], node, contnode)
    return None


def setup(app):
    app.connect("missing-reference", resolve_tk_alias)
    app.connect("autodoc-process-docstring", escape_bars)
    app.connect("env-check-consistency", check_public_names)
