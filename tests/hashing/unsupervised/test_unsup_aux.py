"""Label-free auxiliary semantics: fitted on the training split only, reproducible from the stored
state (also through a weights-only checkpoint round trip), useful as tags, and strict tag files."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from acpsearch.errors import DataError, SpecError
from acpsearch.hashing import mean_average_precision
from acpsearch.hashing.unsupervised import AuxSemantics, fit_aux, read_tag_file


def test_kmeans_tags_fitted_on_train_only_and_reproducible(digits_feats, tmp_path):
    (xt, _), (xq, yq), (xd, yd) = digits_feats["train"], digits_feats["query"], digits_feats["database"]
    aux = fit_aux(xt, seed=0)
    # fitted on the training rows alone: its PCA centre is their mean, and adding the database to the
    # call's *other* data cannot change it (a fit on train + database gives a different centre)
    assert np.allclose(aux.arrays["pca_mean"], xt.mean(0))
    assert not np.allclose(fit_aux(np.concatenate([xt, xd]), seed=0).arrays["pca_mean"], aux.arrays["pca_mean"])
    tq = aux.transform(xq)
    assert tq.shape == (len(xq), 70) and set(np.unique(tq)) == {0.0, 1.0}
    assert (tq.sum(1) == 3).all()  # one cluster per granularity (10, 20, 40)
    path = tmp_path / "aux.pt"
    torch.save({"aux": aux.state_dict()}, path)
    restored = AuxSemantics.from_state(torch.load(path, weights_only=True)["aux"])
    assert np.array_equal(restored.transform(xq), tq)
    assert np.array_equal(fit_aux(xt, seed=0).transform(xq), tq)  # same seed, same tags
    # the tags carry real semantics: ranking by tag overlap is far above chance (0.1 on ten classes)
    td = aux.transform(xd)
    assert mean_average_precision(2 * tq - 1, 2 * td - 1, yq, yd) > 0.5


def test_bovw_tags_mark_the_words_present(digits_feats):
    from acpsearch.hashing import load_dataset, make_splits

    splits = make_splits(load_dataset("digits"), seed=0)
    images = splits.train[0].numpy()
    aux = fit_aux(images, method="bovw", words=16, patch=4)
    tags = aux.transform(splits.query[0].numpy())
    assert tags.shape == (len(splits.query[0]), 16)
    assert ((tags.sum(1) >= 1) & (tags.sum(1) <= 4)).all()  # four 4x4 patches of an 8x8 digit
    assert np.array_equal(AuxSemantics.from_state(aux.state_dict()).transform(splits.query[0].numpy()), tags)
    with pytest.raises(DataError, match="bovw.*needs images"):
        fit_aux(images.reshape(len(images), -1)[:, 0], method="bovw")


def test_file_tags_and_bad_input(tmp_path):
    tags = (np.random.default_rng(0).random((20, 5)) > 0.5).astype(np.int64)
    np.savez(tmp_path / "tags.npz", tags=tags)
    got = read_tag_file(tmp_path / "tags.npz", 20)
    assert got.dtype == np.float32 and np.array_equal(got, tags)
    aux = fit_aux(None, method="file", tags=got)
    assert aux.n_tags == 5 and np.array_equal(aux.transform(None, tags=got), got)
    np.savetxt(tmp_path / "tags.txt", tags, fmt="%d", delimiter=",")
    assert np.array_equal(read_tag_file(tmp_path / "tags.txt", 20), got)

    with pytest.raises(DataError, match=r"tags\.npz: 20 tag rows for 21 images") as e:
        read_tag_file(tmp_path / "tags.npz", 21)
    assert "\n" not in str(e.value)
    bad = tags.astype(np.float64)
    bad[3, 2] = 0.5
    np.savez(tmp_path / "half.npz", tags=bad)
    with pytest.raises(DataError, match="must be 0 or 1, row 3 column 2 is 0.5"):
        read_tag_file(tmp_path / "half.npz", 20)
    np.savez(tmp_path / "other.npz", labels=tags)
    with pytest.raises(DataError, match="no array named 'tags'"):
        read_tag_file(tmp_path / "other.npz", 20)
    with pytest.raises(DataError, match="no such file"):
        read_tag_file(tmp_path / "missing.npz", 20)
    with pytest.raises(DataError, match="5 tags per row, fitted with 6"):
        fit_aux(None, method="file", tags=np.ones((4, 6))).transform(None, tags=got)
    with pytest.raises(SpecError, match="unknown method 'detector'"):
        fit_aux(got, method="detector")
