"""The app's pages, one per recipe step (a file each: Streamlit runs them as scripts)."""
