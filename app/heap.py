"""Keep what lives as long as the server out of the garbage collection Streamlit runs after every script run.

Plain Python (no Streamlit). After each run of a page Streamlit calls ``gc.collect(2)`` (its hidden
``runner.postScriptGC`` option), which walks every object the collector tracks. The server's heap is mostly the
modules it imported — PyTorch, NumPy, Streamlit, Altair, pandas and their functions, classes and constants,
about half a million objects — which never become garbage: on a 2-core CPU that walk took 0.25 s per run, and a
verdict on the Triage page is two runs. :func:`freeze_new_modules`, called at the end of every run, moves what
is alive to the collector's permanent generation (``gc.freeze()``) once the run has imported modules the
previous freeze had not seen; later collections walk only what was made since.

What a freeze costs: the objects alive at that moment are no longer examined for reference *cycles*. They are
still freed the usual way, when nothing refers to them (a model or a profile dropped from a cache is freed as
before); only an object in a cycle that was alive at a freeze stays until the process ends. Freezes happen on the
first runs of each page (while its imports arrive), after a full collection, so what they hold is what the app
had loaded then.
"""

from __future__ import annotations

import gc
import sys
import threading

_lock = threading.Lock()
_modules_frozen = 0  # len(sys.modules) at the last freeze


def freeze_new_modules() -> bool:
    """Collect, then freeze what is alive, if modules were imported since the last freeze; whether it froze."""
    global _modules_frozen
    if len(sys.modules) == _modules_frozen:
        return False
    with _lock:
        loaded = len(sys.modules)
        if loaded == _modules_frozen:
            return False
        gc.collect()  # only what is alive after a collection is frozen: no garbage is kept
        gc.freeze()
        _modules_frozen = loaded
    return True
