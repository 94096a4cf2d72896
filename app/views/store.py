"""Store & runs: what is cached, what was computed when, every verdict, and the review report."""

from pathlib import Path

import pandas as pd
import streamlit as st

from essence.app import services
from essence.app.components.boundary import run_page
from essence.app.components.prereq import current_inputs
from essence.app.components.text import plain
from essence.app.evaluation import evaluation

REPORT_KEY = "store-report-built"  # (model, data, slice) and the report's HTML, kept for this session


def render() -> None:
    st.title("Store & runs")
    store = services.store()
    info = store.info(recent=50)
    cols = st.columns(4)
    cols[0].metric("Cached profiles", info.profiles)
    cols[1].metric("Runs", info.runs)
    cols[2].metric("Verdicts", info.verdicts)
    cols[3].metric("Size", f"{(info.size_bytes or 0) / 1e6:.1f} MB" if info.size_bytes is not None else "—")
    # The store's file by its name (a path on the server is nobody's business in the browser); a database
    # server by its URL, which hides the password.
    where = f"`{Path(info.path).name}` in the server's Essence folder" if info.path else f"`{info.url}`"
    st.caption(f"Store: {where} (schema {info.schema_version})")
    st.subheader("Runs")
    if info.recent_runs:
        st.dataframe(
            pd.DataFrame(
                [
                    {
                        "when": r.created_at,
                        "what was computed": r.kind,
                        "description": r.description,
                        "slice": r.layer,
                        "seconds": round(r.seconds, 1) if r.seconds is not None else None,
                        "asked by": r.command,
                    }
                    for r in info.recent_runs
                ]
            ),
            hide_index=True,
        )
    else:
        st.info("Nothing computed yet: the class profiles land here once a page computes them.")
    inputs = current_inputs()
    st.subheader(f"Verdicts on {plain(inputs.data_label)}")
    verdicts = store.all_verdicts(inputs.data.fingerprint)
    if verdicts:
        st.dataframe(_verdict_table(verdicts), hide_index=True)
        left, right = st.columns(2)
        left.download_button(
            "Export (CSV)",
            store.export_verdicts("csv", inputs.data.fingerprint),
            "verdicts.csv",
            "text/csv",
            key="store-export-csv",
            on_click="ignore",
        )
        right.download_button(
            "Export (JSON)",
            store.export_verdicts("json", inputs.data.fingerprint),
            "verdicts.json",
            "application/json",
            key="store-export-json",
            on_click="ignore",
        )
    else:
        st.info("No verdicts on this dataset yet: record them on the Triage page.")
    _report(inputs)


def _verdict_table(verdicts) -> pd.DataFrame:
    """Every verdict, newest last, with the column names a reviewer reads."""
    return pd.DataFrame(
        [
            {
                "image": v.instance_id,
                "verdict": v.verdict,
                "note": v.note,
                "reviewer": v.reviewer,
                "when": v.created_at,
            }
            for v in verdicts
        ]
    )


def _report(inputs) -> None:
    from essence.app.report import review_report

    st.subheader("Review report")
    st.caption(
        "One self-contained HTML file (charts and images embedded, nothing fetched when opened): the model and its "
        "preprocessing, the diagnosis, and every reviewed case with its verdict, reviewer and time."
    )
    # The built report is kept in the session (for this model, data and slice), so its download button stays
    # after a download, another click or a visit to another page.
    which = (inputs.model.fingerprint, inputs.data.fingerprint, inputs.layer)
    built = st.session_state.get(REPORT_KEY)
    if st.button(
        "Build the report" if built is None or built[0] != which else "Build it again",
        key="store-build-report",
    ):
        from essence.app.components import longwork

        profiles = longwork.profiles(inputs, "logit", key="report")
        diag = longwork.run(
            "the diagnosis",
            "report-diagnosis",
            "diagnosis-" + services.profile_key(inputs.model, inputs.data, inputs.layer, "logit").digest(),
            lambda progress, cancel: services.diagnosis(
                inputs.model, inputs.data, inputs.layer, profiles, progress=progress, cancel=cancel
            ),
        )
        ev = evaluation(inputs.model, inputs.data, len(inputs.names))
        # The shortcuts where they were looked for on the Triage page (not computed here: None leaves them out).
        found = services.shortcuts(inputs.model, inputs.data, inputs.layer)
        html = review_report(
            inputs.model, inputs.data, inputs.layer, diag, services.store(), ev.predicted, shortcuts=found
        )
        built = (which, html)
        st.session_state[REPORT_KEY] = built
    if built is not None and built[0] == which:
        st.download_button(
            "Download the report (HTML)",
            built[1],
            file_name="essence-review.html",
            mime="text/html",
            key="store-report",
            on_click="ignore",
        )


run_page(render)
