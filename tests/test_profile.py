from __future__ import annotations

from aviary.profile import input_names


def test_valid_names_are_kept_and_others_mapped_deterministically() -> None:
    columns = ["x", "mean radius", "area error", "area_error", "2nd", "%", "Colour (EU)"]
    assert input_names(columns) == {
        "x": "x",
        "mean radius": "mean_radius",
        "area error": "area_error_2",
        "area_error": "area_error",
        "2nd": "f_2nd",
        "%": "f",
        "Colour (EU)": "Colour_EU",
    }
    assert input_names(reversed(columns)) == input_names(columns)
