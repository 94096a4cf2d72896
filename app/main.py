"""Essence's app: routing only. Each recipe step is a page file in ``views/``; the sidebar is shared."""

from pathlib import Path

import streamlit as st

# The charts' modules (Altair, about a second to import on a 2-core CPU) are imported with the app, in the
# server's first run, not on the first visit of a page that draws a chart, whose progress box would wait.
from essence.app import cache, charts, diagnosis_charts, heap  # noqa: F401
from essence.app.components import glossary
from essence.app.components.boundary import run_page
from essence.app.components.session import reviewer_field
from essence.app.components.sidebar import render as sidebar

# Served by this server (a material or emoji icon would be fetched from the internet by the browser).
FAVICON = str(Path(__file__).resolve().parent / "assets" / "favicon.png")

st.set_page_config(page_title="Essence", page_icon=FAVICON, layout="wide")
# Clinicians see the app, not Streamlit's developer menu and "Deploy" button: ``.streamlit/config.toml`` beside
# this file says so for the whole session (``essence app`` passes it too); this holds it for every later run.
st.set_option("client.toolbarMode", "viewer")
cache.install()  # the services share Streamlit-cached resources (cleared with its resource cache)

pages = {
    "The recipe": [
        st.Page("views/overview.py", title="Overview", icon=":material/visibility:", default=True),
        st.Page("views/profiles.py", title="Class profiles", icon=":material/insights:"),
        st.Page("views/triage.py", title="Triage", icon=":material/fact_check:"),
        st.Page("views/experts.py", title="Experts & diagnosis", icon=":material/troubleshoot:"),
        st.Page("views/compare.py", title="Compare models", icon=":material/compare:"),
        st.Page("views/explain.py", title="Explain an image", icon=":material/image_search:"),
    ],
    "Your work": [
        st.Page("views/upload.py", title="Your model & data", icon=":material/upload:"),
        st.Page("views/store.py", title="Store & runs", icon=":material/database:"),
    ],
}
navigation = st.navigation(pages)
run_page(sidebar)
run_page(reviewer_field)  # drawn on every page: the name stays in the address (see components.session)
run_page(glossary.render)
try:
    navigation.run()
finally:  # a page's st.stop() or st.rerun() ends its run too
    # What this run imported joins the permanent heap, out of the collection Streamlit runs after each run.
    heap.freeze_new_modules()
