"""VAEAnomalyDetector on images (architecture="conv"): detection, determinism, samples,
and the digits benchmark's quick run."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st


def test_conv_model_separates_another_digit(conv_model, test_images):
    from sklearn.metrics import roc_auc_score

    labels = np.r_[np.zeros(len(test_images) - 40), np.ones(40)]
    assert roc_auc_score(labels, -conv_model.score_samples(test_images)) > 0.9
    assert conv_model.image_shape_ == (1, 8, 8)
    assert conv_model.latent_dim_ == 4  # auto for images: ceil(sqrt(8 * 8) / 2)


@settings(max_examples=15, deadline=None)
@given(data=st.data())
def test_conv_score_of_an_image_ignores_its_batch(conv_model, test_images, data):
    reference = conv_model.score_samples(test_images)
    rows = data.draw(st.lists(st.integers(0, len(test_images) - 1), min_size=1, max_size=40))
    assert np.array_equal(conv_model.score_samples(test_images[rows]), reference[rows])


def test_decoded_images_stay_in_range(conv_model):
    samples = conv_model.sample(5, random_state=0)
    assert samples.shape == (5, 64) and samples.min() >= 0 and samples.max() <= 1
