from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from aviary.profile import FeatureKind
from aviary.tasks.preprocess import Encoding, build_inputs, encode_features, frame_inputs, load_model, vocabulary
from tests.profiles import profile_frame

FRAME = pd.DataFrame(
    {
        "mean radius": [10.0, 12.0, 14.0, 16.0, np.nan, 20.0],
        "count": pd.array([1, 2, 3, 4, 5, 6], dtype="int64"),
        "flag": [True, False, True, True, False, False],
        "colour": ["red", "blue", "red", "", "green", "red"],
        "label": [0, 1, 0, 1, 0, 1],
    }
)
FEATURES = ("mean radius", "count", "flag", "colour")


def preprocessor(profile, encoding: Encoding):  # type: ignore[no-untyped-def]
    import keras

    inputs = build_inputs(profile)
    return keras.Model(inputs, encode_features(inputs, profile, encoding))


def test_layers_come_from_the_profile_without_touching_data() -> None:
    profile = profile_frame(FRAME, FEATURES, "label")
    assert [f.kind for f in profile.features] == [
        FeatureKind.NUMERIC, FeatureKind.INTEGER, FeatureKind.BOOLEAN, FeatureKind.CATEGORICAL
    ]
    model = preprocessor(profile, Encoding())
    out = np.asarray(model(frame_inputs(FRAME, profile)))
    # radius z, radius missing, count z, flag, flag missing, count missing..., then the colour one-hot
    radius = profile.feature("mean radius")
    assert out[0, 0] == pytest.approx((10.0 - radius.mean) / radius.std, rel=1e-5)
    assert out[4, 0] == pytest.approx(0.0) and out[4, 1] == 1.0, "missing: the training mean, flagged"
    assert out[0, 1] == 0.0
    # colour: OOV bucket first, then red (3), blue, green (1 each, by name)
    assert vocabulary(profile.feature("colour"), 10) == ["red", "blue", "green"]
    np.testing.assert_array_equal(out[:, -4:], [[0, 1, 0, 0], [0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1], [0, 1, 0, 0]])


def test_unseen_category_and_extreme_values_give_finite_features() -> None:
    profile = profile_frame(FRAME, FEATURES, "label")
    model = preprocessor(profile, Encoding())
    raw = {
        "mean_radius": np.array([1e30, -np.inf, np.inf, 3e38, np.nan], dtype=np.float32),
        "count": np.array([1e30, 0, -1e30, 5, 1], dtype=np.float32),
        "flag": np.array([1, 0, np.nan, 1, 0], dtype=np.float32),
        "colour": np.array(["purple", "", "red", "RED", "blue"], dtype=object),
    }
    out = np.asarray(model(raw))
    assert np.isfinite(out).all()
    assert out[0, 0] == 20.0 and out[1, 0] == -20.0, "clipped at the z limit"
    np.testing.assert_array_equal(out[[0, 1, 3], -4], [1, 1, 1], "unseen, missing and differently cased go to OOV")


def test_vocabulary_cap_sends_rare_values_to_the_oov_bucket_and_large_ones_embed() -> None:
    frame = pd.DataFrame({"city": [f"c{i % 5000}" for i in range(20_000)] + ["top"] * 10, "label": [0, 1] * 10_005})
    profile = profile_frame(frame, ["city"], "label")
    vocab = vocabulary(profile.feature("city"), 100)
    assert len(vocab) == 100 and vocab[0] == "top"
    model = preprocessor(profile, Encoding(max_vocabulary=100, one_hot_max=32, embedding_dim=4))
    assert model.output.shape[-1] == 4
    lookup = model.get_layer("city_lookup")
    assert lookup.vocabulary_size() == 101


def test_model_with_preprocessing_saves_and_loads(tmp_path: Path) -> None:
    import keras

    profile = profile_frame(FRAME, FEATURES, "label")
    inputs = build_inputs(profile)
    features = encode_features(inputs, profile, Encoding())
    model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(features))
    model.save(tmp_path / "m.keras")
    again = load_model(tmp_path / "m.keras")
    raw = frame_inputs(FRAME, profile)
    np.testing.assert_allclose(np.asarray(again(raw)), np.asarray(model(raw)), rtol=1e-6)
