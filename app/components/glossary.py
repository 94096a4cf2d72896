"""The glossary: the recipe's words in plain language, in the sidebar of every page.

The pages say the plain words first and the paper's term after them ("features of the layer (units of the
slice)"); this is where each term is defined once.
"""

from __future__ import annotations

import streamlit as st

# (term as the pages write it, its definition). Markdown: written here, never from data.
TERMS = (
    (
        "Layer (slice)",
        "the layer of the network where Essence looks inside. The model is cut there in two: the layers "
        "below turn an image into the layer's activations, the layers above turn those into the answer.",
    ),
    (
        "Feature (unit)",
        "one channel (or neuron) of that layer: one thing the layer detects in the image.",
    ),
    (
        "Influence",
        "how much a unit pushes a class's score up (positive) or down (negative): the gradient of the score "
        "with respect to the unit, averaged over the images asked about.",
    ),
    (
        "Profile (class profile)",
        "a class's influence on every unit, averaged over the class's images: what the model's decision "
        "for that class rests on.",
    ),
    (
        "Deviation, reasoning score",
        "how far one image's own influences depart from its class's profile (the reasoning score counts it "
        "in multiples of the class's typical departure): a high one is right or wrong for unusual reasons.",
    ),
    (
        "Expert",
        "a small part of the layer that recognises a class on its own: the class's α most positive and β most "
        "negative units, the rest of the layer set to zero, read as “this class or not”.",
    ),
    (
        "α and β",
        "how many units an expert keeps: α that push towards the class, β that push against it. The α × β "
        "heat maps try every pair.",
    ),
    (
        "Probe AUC",
        "how well a simple classifier trained on the layer tells a class from its nearest neighbour: 0.5 is "
        "chance, 1 is perfect. It says whether the layer carries the class at all.",
    ),
    (
        "Drowning experts",
        "the layer has units that recognise the class, but other classes' units outweigh them, so the model "
        "rarely predicts it. Remedy: give those units more weight (retrain the last layers).",
    ),
    (
        "Not read out",
        "the layer carries the class (the probe separates it), but the model's last layers never use it.",
    ),
    (
        "Not learned",
        "the layer does not carry the class (the probe is at chance): the network never learned to see it — "
        "often the preprocessing erased it before the model saw it.",
    ),
    (
        "Integrated gradients, completeness error",
        "how much each pixel counts for the score (integrated gradients); the completeness error is how far "
        "the pixels' shares together miss the score's actual change (near 0: the picture is complete).",
    ),
    (
        "Confidence",
        "the model's probability for the class it predicts (the largest of its probabilities, max p).",
    ),
    (
        "Doubt",
        "1 − confidence: how unsure the model is of its own answer. *Label doubt* is 1 − p(label): how unsure "
        "it is of the label the image was given.",
    ),
)


def render() -> None:
    """The glossary as an expander at the foot of the sidebar."""
    with st.sidebar.expander("Glossary: the words of the recipe", icon=":material/menu_book:"):
        st.markdown("\n".join(f"- **{term}**: {meaning}" for term, meaning in TERMS))
