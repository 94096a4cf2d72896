"""The diagnosis of a rarely predicted class: the slice probe (`probe`), which preprocessing step erases the class (`suspect_steps`), the verdict (`verdict`) and its results (`results`)."""
