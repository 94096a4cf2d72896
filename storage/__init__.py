"""The store: cached influence profiles, runs and triage verdicts (SQLite by default, any SQLAlchemy URL).

>>> from essence.storage import Store
>>> with Store.open() as store:                       # $ESSENCE_HOME/essence.sqlite
...     profiles = store.cached_profiles(model, data, "fc1", "channel", "logit", compute)
...     store.record_verdict(data.fingerprint, 17, "label error", note="looks like class 3")

See ``docs/store.md`` for what is cached under which key, the guarantees, and PostgreSQL.
"""

from essence.storage.connect import DEFAULT_TIMEOUT_S, default_store_path, head_revision
from essence.storage.records import (
    ENGINE_VERSION,
    VERDICTS,
    ProfileKey,
    PruneReport,
    Run,
    RunInfo,
    StoreInfo,
    Verdict,
)
from essence.storage.store import Store

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "ENGINE_VERSION",
    "VERDICTS",
    "ProfileKey",
    "PruneReport",
    "Run",
    "RunInfo",
    "Store",
    "StoreInfo",
    "Verdict",
    "default_store_path",
    "head_revision",
]
