"""Store & runs: what is cached, what was computed when, every verdict, and the review report."""

import pandas as pd
import streamlit as st

from essence.app import services
from essence.app.components.boundary import run_page
from essence.app.components.prereq import current_inputs
from essence.app.evaluation import evaluation


def render() -> None:
    st.title("Store & runs")
    store = services.store()
    info = store.info(recent=50)
    cols = st.columns(4)
    cols[0].metric("Cached profiles", info.profiles)
    cols[1].metric("Runs", info.runs)
    cols[2].metric("Verdicts", info.verdicts)
    cols[3].metric("Size", f"{(info.size_bytes or 0) / 1e6:.1f} MB" if info.size_bytes is not None else "—")
    st.caption(f"Store: `{info.path or info.url}` (schema {info.schema_version})")
    st.subheader("Runs")
    if info.recent_runs:
        st.dataframe(
            pd.DataFrame(
                [
                    {
                        "when": r.created_at,
                        "kind": r.kind,
                        "what": r.description,
                        "layer": r.layer,
                        "seconds": r.seconds,
                        "command": r.command,
                    }
                    for r in info.recent_runs
                ]
            ),
            hide_index=True,
        )
    else:
        st.info("Nothing computed yet: the class profiles land here once a page computes them.")
    inputs = current_inputs()
    st.subheader(f"Verdicts on {inputs.data.spec}")
    verdicts = store.all_verdicts(inputs.data.fingerprint)
    if verdicts:
        st.dataframe(pd.DataFrame([v.to_json() for v in verdicts]), hide_index=True)
        left, right = st.columns(2)
        left.download_button(
            "Export (CSV)", store.export_verdicts("csv", inputs.data.fingerprint), "verdicts.csv", "text/csv"
        )
        right.download_button(
            "Export (JSON)",
            store.export_verdicts("json", inputs.data.fingerprint),
            "verdicts.json",
            "application/json",
        )
    else:
        st.info("No verdicts on this dataset yet: record them on the Triage page.")
    _report(inputs)


def _report(inputs) -> None:
    from essence.app.report import review_report

    st.subheader("Review report")
    st.caption(
        "One self-contained HTML file (charts and images embedded, nothing fetched when opened): the model and its "
        "preprocessing, the diagnosis, and every reviewed case with its verdict, reviewer and time."
    )
    if st.button("Build the report", key="store-build-report"):
        from essence.app.components import longwork

        profiles = longwork.profiles(inputs, "logit", key="report")
        diag = services.diagnosis(inputs.model, inputs.data, inputs.layer, profiles)
        ev = evaluation(inputs.model, inputs.data, len(inputs.names))
        html = review_report(
            inputs.model, inputs.data, inputs.layer, diag, services.store(), predicted=ev.predicted
        )
        st.download_button(
            "Download the report (HTML)",
            html,
            file_name="essence-review.html",
            mime="text/html",
            key="store-report",
        )


run_page(render)
