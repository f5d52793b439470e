"""Outcomes from manifest columns and the features-table format (write → read)."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from copd_ifm.cohort.config import COPDGENE_OUTCOME_COLUMNS
from copd_ifm.errors import UserError
from copd_ifm.evaluation.features import META_KEY, read_feature_sets, write_features
from copd_ifm.evaluation.outcomes import OUTCOMES, outcome_values, parse_outcomes, read_manifest


def _manifest(tmp_path, **columns) -> pd.DataFrame:
    frame = pd.DataFrame({"sid": ["001", "002", "003", "004"], "image": "x.nii.gz", **columns})
    path = tmp_path / "manifest.csv"
    frame.to_csv(path, index=False)
    return read_manifest(path)


def test_continuous_outcomes_are_logs_and_invalid_values_are_missing(tmp_path):
    manifest = _manifest(tmp_path, FEV1pp_utah=[50.0, 100.0, 0.0, np.nan], FEV1_FVC_utah=[0.7, 0.35, 0.9, 0.5])
    fev = outcome_values(OUTCOMES["logFEV1pp"], manifest, COPDGENE_OUTCOME_COLUMNS)
    ratio = outcome_values(OUTCOMES["logFEV1FVC"], manifest, COPDGENE_OUTCOME_COLUMNS)
    # sid "001" stays text (leading zeros kept); 0 and empty are missing
    assert list(fev.index) == ["001", "002", "003", "004"]
    np.testing.assert_allclose(fev.to_numpy()[:2], [np.log(50.0), np.log(100.0)])
    assert fev.iloc[2:].isna().all()
    np.testing.assert_allclose(ratio.to_numpy(), np.log([0.7, 0.35, 0.9, 0.5]))


def test_ordinal_codes_checked_against_levels(tmp_path):
    good = _manifest(tmp_path, Emph_Severity=[0, 5, np.nan, 2.0])
    cle = outcome_values(OUTCOMES["CLE"], good, COPDGENE_OUTCOME_COLUMNS)
    assert cle.iloc[[0, 1, 3]].tolist() == [0.0, 5.0, 2.0] and np.isnan(cle.iloc[2])
    bad = _manifest(tmp_path, Emph_Paraseptal=[0, 1, 3, 2])
    with pytest.raises(UserError, match=r"Emph_Paraseptal.*value 3.*0\.\.2"):
        outcome_values(OUTCOMES["Paraseptal"], bad, COPDGENE_OUTCOME_COLUMNS)
    half = _manifest(tmp_path, MMRCDyspneaScor=[0, 1.5, 3, 4])
    with pytest.raises(UserError, match="MMRCDyspneaScor"):
        outcome_values(OUTCOMES["mMRC"], half, COPDGENE_OUTCOME_COLUMNS)


def test_outcome_mapping_errors_name_the_fix(tmp_path):
    manifest = _manifest(tmp_path, FEV1pp_utah=[50.0, 60.0, 70.0, 80.0])
    with pytest.raises(UserError, match="no column 'Emph_Severity'.*outcomes.CLE"):
        outcome_values(OUTCOMES["CLE"], manifest, COPDGENE_OUTCOME_COLUMNS)
    with pytest.raises(UserError, match="outcomes has no 'FEV1pp'"):
        outcome_values(OUTCOMES["logFEV1pp"], manifest, {"CLE": "Emph_Severity"})
    with pytest.raises(UserError, match="valid: logFEV1pp, logFEV1FVC, CLE, Paraseptal, mMRC"):
        parse_outcomes("logFEV1pp,FEV1")
    assert [o.name for o in parse_outcomes("CLE, logFEV1pp,CLE")] == ["CLE", "logFEV1pp"]


def _table(n: int = 5) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame({"sid": [f"s{i}" for i in range(n)],
                         **{f"graph_f{i}": rng.normal(size=n) for i in range(12)},
                         **{f"patch_f{i}": rng.normal(size=n) for i in range(3)}})


def test_feature_sets_round_trip_through_a_run_folder(tmp_path):
    run = tmp_path / "demo-ifm"
    table = _table()
    write_features(run / "features.parquet", table, {"run": "ifm-eps0.1", "config_hash": "0123abcd"})
    assert [p.name for p in run.iterdir()] == ["features.parquet"]  # no temporary file left behind
    meta = json.loads(pq.read_schema(run / "features.parquet").metadata[META_KEY])
    assert meta == {"run": "ifm-eps0.1", "config_hash": "0123abcd"}

    sets = read_feature_sets(run)
    assert list(sets) == ["ifm-eps0.1/graph", "ifm-eps0.1/patch"]
    graph = sets["ifm-eps0.1/graph"]
    # columns ordered by their index (f10 after f9), renamed to f0..f11
    assert list(graph.columns) == [f"f{i}" for i in range(12)]
    np.testing.assert_array_equal(graph.loc["s3", "f10"], table.loc[3, "graph_f10"])
    assert graph.attrs["meta"]["config_hash"] == "0123abcd"
    assert sets["ifm-eps0.1/patch"].shape == (5, 3)


def test_plain_table_is_one_set_named_after_its_run(tmp_path):
    rng = np.random.default_rng(1)
    plain = pd.DataFrame({"sid": ["a", "b", "c"], "f0": rng.normal(size=3), "f1": [1.0, np.nan, 2.0]})
    plain.to_csv(tmp_path / "baseline.csv", index=False)
    sets = read_feature_sets(tmp_path / "baseline.csv")
    assert list(sets) == ["baseline"]
    assert list(sets["baseline"].index) == ["a", "c"]  # row with a missing value dropped

    run = tmp_path / "runA"
    write_features(run / "features.parquet", plain.fillna(0.0), {})
    assert list(read_feature_sets(run)) == ["runA"]


def test_bad_feature_inputs_are_user_errors(tmp_path):
    with pytest.raises(UserError, match=r"copd-ifm extract --run .*empty"):
        (tmp_path / "empty").mkdir()
        read_feature_sets(tmp_path / "empty")
    with pytest.raises(UserError, match="features not found"):
        read_feature_sets(tmp_path / "nope.parquet")
    bad = _table().assign(age=60)
    bad.to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(UserError, match="column 'age' is not a feature column"):
        read_feature_sets(tmp_path / "bad.csv")
    with pytest.raises(ValueError, match="finite"):
        write_features(tmp_path / "x.parquet", _table().assign(graph_f0=np.inf), {})
