"""The analyses of the recipe, each over the engine: profiles, triage, expert sweeps, the diagnosis, comparison, explanations, layer choice, exports."""
